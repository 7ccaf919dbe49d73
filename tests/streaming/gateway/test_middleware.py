"""ApiKeyMiddleware in front of a plain ASGI app, with the real key store (database and Redis cache).

The inner app records the scope it was called with, so each test sees exactly what the consumer would.
"""

from __future__ import annotations

import logging

import pytest
from channels.testing import HttpCommunicator, WebsocketCommunicator

from accounts.keys import Denial, DenialReason, Entitlement
from devstack.redis_server import RedisServer
from streaming.gateway.credentials import RESOLUTION_FAILED, Credential, MalformedCredential, StreamAuth
from streaming.gateway.middleware import ApiKeyMiddleware
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5


class InnerApp:
    """Records the scope of each call, accepts WebSockets and answers HTTP with 204."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


@pytest.fixture
def keys():
    """An options key of one user and of another, both on paid plans."""
    _, alice = make_key(make_user("alice", plans={"options": "expert"}), "options")
    _, bob = make_key(make_user("bob", plans={"options": "expert"}), "options")
    return alice, bob


async def handshake_auth(path: str = "/v1/ws/options/", headers: list[tuple[bytes, bytes]] | None = None) -> StreamAuth:
    """``scope["stream_auth"]`` as the inner app saw it for a WebSocket handshake on *path*."""
    inner = InnerApp()
    communicator = WebsocketCommunicator(ApiKeyMiddleware(inner), path, headers=headers or [])
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected
    await communicator.disconnect()
    (scope,) = inner.scopes
    return scope["stream_auth"]


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


async def test_a_key_in_the_header_is_resolved_to_its_entitlement(keys):
    alice, _ = keys
    auth = await handshake_auth(headers=bearer(alice))
    assert auth.credential == Credential("header", alice)
    assert isinstance(auth.outcome, Entitlement)
    assert (auth.outcome.product, auth.outcome.plan) == ("options", "expert")
    assert auth.outcome.key_prefix == alice.rsplit("_", 1)[0]


async def test_a_key_in_the_query_is_resolved_to_its_entitlement(keys):
    alice, _ = keys
    auth = await handshake_auth(f"/v1/ws/options/?api_key={alice}")
    assert auth.credential == Credential("query", alice)
    assert auth.outcome.key_prefix == alice.rsplit("_", 1)[0]


async def test_the_header_wins_over_the_query(keys):
    alice, bob = keys
    auth = await handshake_auth(f"/v1/ws/options/?api_key={bob}", headers=bearer(alice))
    assert auth.credential == Credential("header", alice)
    assert auth.outcome.key_prefix == alice.rsplit("_", 1)[0]


async def test_no_key_is_no_credential_and_nothing_resolved():
    """The key may still come in the auth message: the consumer decides."""
    auth = await handshake_auth("/v1/ws/options/?apikey=nope")
    assert (auth.credential, auth.outcome, auth.refusal) == (None, None, None)
    assert auth.pending is not None and auth.pending.released  # its address's slot, given back when it ended


@pytest.mark.parametrize(
    ("path", "headers", "source"),
    [
        ("/v1/ws/options/", [(b"authorization", b"Basic dXNlcjpwdw==")], "header"),
        ("/v1/ws/options/?api_key=a&api_key=b", [], "query"),
        ("/v1/ws/options/?api_key=", [], "query"),
    ],
)
async def test_a_malformed_presentation_is_reported_without_resolving_anything(path, headers, source):
    auth = await handshake_auth(path, headers)
    assert isinstance(auth.credential, MalformedCredential)
    assert auth.credential.source == source
    assert auth.outcome is None


async def test_a_key_that_cannot_be_ours_is_denied_as_malformed():
    auth = await handshake_auth(headers=bearer("not-a-cutemarkets-key"))
    assert auth.credential == Credential("header", "not-a-cutemarkets-key")
    assert auth.outcome == Denial(DenialReason.MALFORMED)


async def test_a_well_formed_key_nobody_issued_is_denied_as_unknown(keys):
    alice, _ = keys
    forged = alice[:-1] + ("A" if alice[-1] != "A" else "B")  # same public prefix, wrong secret
    auth = await handshake_auth(headers=bearer(forged))
    assert auth.outcome == Denial(DenialReason.UNKNOWN)


async def test_an_unreachable_key_cache_fails_closed(keys, settings, tmp_path):
    alice, _ = keys
    server = RedisServer(directory=tmp_path).start()
    settings.REDIS_URL = server.url
    server.kill()
    try:
        auth = await handshake_auth(headers=bearer(alice))
    finally:
        server.close()
    assert auth.credential == Credential("header", alice)
    assert auth.outcome is RESOLUTION_FAILED


async def test_stream_auth_is_in_the_scope_when_the_inner_app_starts_and_the_callers_scope_is_left_alone(keys):
    alice, _ = keys
    seen_at_start: list[StreamAuth] = []

    async def inner(scope, receive, send) -> None:
        seen_at_start.append(scope["stream_auth"])  # before it received or sent anything
        await InnerApp()(scope, receive, send)

    communicator = WebsocketCommunicator(ApiKeyMiddleware(inner), "/v1/ws/options/", headers=bearer(alice))
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected
    await communicator.disconnect()
    assert isinstance(seen_at_start[0].outcome, Entitlement)
    assert "stream_auth" not in communicator.scope


async def test_http_passes_through_without_stream_auth(keys):
    alice, _ = keys
    inner = InnerApp()
    communicator = HttpCommunicator(ApiKeyMiddleware(inner), "GET", f"/health?api_key={alice}", headers=bearer(alice))
    response = await communicator.get_response(TIMEOUT)
    assert response["status"] == 204
    (scope,) = inner.scopes
    assert "stream_auth" not in scope


async def test_no_key_reaches_a_log_line_at_any_level_even_when_resolution_fails(keys, caplog, settings, tmp_path):
    """The failure path logs the error it got: never with the key in it (the suite checks INFO and above for every
    test; this one looks at DEBUG too)."""
    caplog.set_level(logging.DEBUG)
    alice, bob = keys
    server = RedisServer(directory=tmp_path).start()
    settings.REDIS_URL = server.url
    server.kill()
    try:
        handshakes = [(f"/v1/ws/options/?api_key={bob}", bearer(alice)), (f"/v1/ws/options/?api_key={alice}", [])]
        for path, headers in handshakes:
            assert (await handshake_auth(path, headers)).outcome is RESOLUTION_FAILED
    finally:
        server.close()
    assert "API key resolution failed" in caplog.text
    secrets = [key.rsplit("_", 1)[1] for key in (alice, bob)]
    assert not [record for record in caplog.records if any(secret in record.getMessage() for secret in secrets)]
