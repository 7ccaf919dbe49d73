import pytest

from accounts.keys import Denial, DenialReason, Entitlement
from streaming import codes
from streaming.gateway.rules import Rule, decide, reject


def entitlement(product="options", websocket_access=True, plan="expert") -> Entitlement:
    return Entitlement(
        user_id=1, key_id=1, key_prefix="cmo_x", product=product, plan=plan,
        websocket_access=websocket_access, max_subscriptions=1_000,
    )


@pytest.mark.parametrize(
    ("market", "outcome", "configured", "rule"),
    [
        ("options", None, True, Rule.MISSING_KEY),
        ("options", Denial(DenialReason.MALFORMED), True, Rule.INVALID_KEY),
        ("options", Denial(DenialReason.UNKNOWN), True, Rule.INVALID_KEY),
        ("options", Denial(DenialReason.REVOKED), True, Rule.REVOKED_KEY),
        ("options", Denial(DenialReason.EXPIRED), True, Rule.EXPIRED_KEY),
        ("options", Denial(DenialReason.INACTIVE_USER), True, Rule.INACTIVE_USER),
        ("crypto", entitlement(), True, Rule.UNSUPPORTED_MARKET),
        ("", entitlement(), True, Rule.UNSUPPORTED_MARKET),
        ("stocks", entitlement("options"), True, Rule.PRODUCT_MISMATCH),
        ("options", entitlement("stocks"), True, Rule.PRODUCT_MISMATCH),
        ("options", entitlement(), False, Rule.NOT_CONFIGURED),
        ("options", entitlement(websocket_access=False, plan="developer"), True, Rule.NO_STREAM_ACCESS),
    ],
)
def test_each_4401_rule(market, outcome, configured, rule):
    rejection = decide(market, outcome, configured)
    assert rejection.rule is rule
    assert rejection.code == codes.CloseCode.UNAUTHORIZED
    assert rejection.status == codes.Status.AUTH_FAILED
    assert rejection.message.startswith("authentication failed")


def test_first_failing_rule_decides():
    # Invalid key beats unsupported market; product mismatch beats missing configuration and plan.
    assert decide("crypto", Denial(DenialReason.UNKNOWN), False).rule is Rule.INVALID_KEY
    assert decide("stocks", entitlement("options", websocket_access=False), False).rule is Rule.PRODUCT_MISMATCH
    assert decide("options", entitlement(websocket_access=False), False).rule is Rule.NOT_CONFIGURED


def test_admitted():
    granted = entitlement()
    assert decide("options", granted, True) is granted


def test_messages_name_the_rule_without_secrets():
    assert "this API key is for stocks" in decide("options", entitlement("stocks"), True).message
    assert "developer" in decide("options", entitlement(websocket_access=False, plan="developer"), True).message


def test_lock_outcomes():
    busy = reject(Rule.ALREADY_CONNECTED)
    assert (busy.code, busy.status) == (4409, "max_connections")
    unavailable = reject(Rule.LOCK_UNAVAILABLE)
    assert (unavailable.code, unavailable.status) == (1011, "error")
    timeout = reject(Rule.AUTH_TIMEOUT)
    assert (timeout.code, timeout.status, timeout.message) == (4401, "auth_timeout", codes.MESSAGE_AUTH_TIMEOUT)
