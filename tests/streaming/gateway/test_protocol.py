import pytest

from streaming.gateway import protocol
from streaming.gateway.protocol import ClientError, ClientMessage, parse_client_message, parse_subscriptions
from streaming.hub.index import Subscription


def test_valid_messages():
    assert parse_client_message('{"action":"subscribe","params":"T.AAPL"}') == ClientMessage("subscribe", "T.AAPL")
    assert parse_client_message('{"action":"auth"}') == ClientMessage("auth", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", protocol.MESSAGE_INVALID_JSON),
        ("", protocol.MESSAGE_INVALID_JSON),
        ("[]", protocol.MESSAGE_NOT_OBJECT),
        ("null", protocol.MESSAGE_NOT_OBJECT),
        ('{"action":5}', protocol.MESSAGE_NO_ACTION),
        ('{"action":""}', protocol.MESSAGE_NO_ACTION),
        ("x" * (protocol.MAX_MESSAGE_BYTES + 1), protocol.MESSAGE_TOO_LARGE),
        ('{"a":"' + "é" * (protocol.MAX_MESSAGE_BYTES // 2) + '"}', protocol.MESSAGE_TOO_LARGE),
    ],
)
def test_errors(text, message):
    assert parse_client_message(text) == ClientError(message)


def test_binary_and_unknown_action():
    assert parse_client_message(None, b"\x00") == ClientError(protocol.MESSAGE_BINARY)
    error = parse_client_message('{"action":"' + "\x07" * 100 + '"}')
    assert isinstance(error, ClientError) and "\x07" not in error.message and len(error.message) < 150


def test_subscriptions_split_on_first_dot_trim_and_dedupe():
    items, errors = parse_subscriptions(" T.BRK.B,Q.AAPL , T.BRK.B,AM.*,", "stocks")
    assert items == [Subscription("T", "BRK.B"), Subscription("Q", "AAPL"), Subscription("AM", "*")]
    assert errors == []


def test_subscription_errors_do_not_stop_valid_items():
    items, errors = parse_subscriptions("LULD.AAPL,T.O:SPY260515C00500000,T.,XX.Y,NODOT,T.bad sym", "options")
    assert items == [Subscription("T", "O:SPY260515C00500000")]
    assert len(errors) == 5
    assert "unknown event type 'LULD'" in errors[0]


@pytest.mark.parametrize("params", [None, 5, ["T.A"], {"x": 1}])
def test_params_must_be_a_string(params):
    assert parse_subscriptions(params, "stocks") == ([], [protocol.MESSAGE_BAD_PARAMS])
