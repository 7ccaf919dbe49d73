import pytest

from streaming.gateway.credentials import (
    Credential,
    MalformedCredential,
    credential_from_scope,
    redacted_query,
)


def scope(headers=(), query=b""):
    return {"type": "websocket", "headers": list(headers), "query_string": query}


def test_bearer_header():
    credential = credential_from_scope(scope([(b"authorization", b"Bearer cmo_abc_def")]))
    assert credential == Credential("header", "cmo_abc_def")
    assert "cmo_abc_def" not in repr(credential)


def test_scheme_is_case_insensitive_and_whitespace_tolerated():
    assert credential_from_scope(scope([(b"authorization", b"  bearer   k1  ")])) == Credential("header", "k1")


def test_query_parameter_with_percent_encoding():
    assert credential_from_scope(scope(query=b"x=1&api_key=a%2Bb")) == Credential("query", "a+b")


def test_header_is_preferred_over_query():
    credential = credential_from_scope(scope([(b"authorization", b"Bearer from-header")], b"api_key=from-query"))
    assert credential == Credential("header", "from-header")


def test_no_key():
    assert credential_from_scope(scope(query=b"apikey=nope")) is None


@pytest.mark.parametrize(
    ("headers", "query", "problem"),
    [
        ([(b"authorization", b"Basic dXNlcjpwdw==")], b"", "Bearer"),
        ([(b"authorization", b"Bearer")], b"", "Bearer"),
        ([(b"authorization", b"Bearer a b")], b"", "Bearer"),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], b"", "several Authorization"),
        ([], b"api_key=a&api_key=b", "several api_key"),
        ([], b"api_key=", "empty api_key"),
    ],
)
def test_malformed(headers, query, problem):
    credential = credential_from_scope(scope(headers, query))
    assert isinstance(credential, MalformedCredential)
    assert problem in credential.problem


def test_non_ascii_header_is_read_not_crashed():
    credential = credential_from_scope(scope([(b"authorization", "Bearer clé".encode("latin-1"))]))
    assert isinstance(credential, Credential)


def test_redacted_query():
    assert redacted_query(b"api_key=cmo_secret&x=1") == "api_key=%5Bredacted%5D&x=1"
    assert "secret" not in redacted_query(b"api_key=secret&api_key=secret2")
