"""Admission rules of the public contract, as plain functions over plain data.

``decide`` applies the 4401 rules in the documented order (the first that fails decides) and returns either the
caller's ``Entitlement`` or a ``Rejection`` carrying the close code and the status message to send. The 4409 and
1011 outcomes of the connection lock are built here too, so every rejection text lives in one place. Messages name
the rule that failed and nothing about other users or keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from accounts.keys import Denial, DenialReason, Entitlement
from streaming import codes
from streaming.conf import MARKETS
from streaming.gateway.credentials import ResolutionFailed


class Rule(enum.StrEnum):
    MISSING_KEY = "missing_key"
    MALFORMED_CREDENTIAL = "malformed_credential"
    INVALID_KEY = "invalid_key"
    REVOKED_KEY = "revoked_key"
    EXPIRED_KEY = "expired_key"
    INACTIVE_USER = "inactive_user"
    UNSUPPORTED_MARKET = "unsupported_market"
    PRODUCT_MISMATCH = "product_mismatch"
    NOT_CONFIGURED = "not_configured"
    NO_STREAM_ACCESS = "no_stream_access"
    AUTH_TIMEOUT = "auth_timeout"
    ALREADY_CONNECTED = "already_connected"
    LOCK_UNAVAILABLE = "lock_unavailable"
    RESOLUTION_FAILED = "resolution_failed"
    ADDRESS_OVER_BUDGET = "address_over_budget"


@dataclass(frozen=True, slots=True)
class Rejection:
    code: codes.CloseCode
    status: codes.Status
    message: str
    rule: Rule


DENIAL_RULES = {
    DenialReason.MALFORMED: Rule.INVALID_KEY,
    DenialReason.UNKNOWN: Rule.INVALID_KEY,
    DenialReason.REVOKED: Rule.REVOKED_KEY,
    DenialReason.EXPIRED: Rule.EXPIRED_KEY,
    DenialReason.INACTIVE_USER: Rule.INACTIVE_USER,
}

MESSAGES = {
    Rule.MISSING_KEY: "authentication failed: no API key (use 'Authorization: Bearer <key>' or ?api_key=)",
    Rule.MALFORMED_CREDENTIAL: "authentication failed: {problem}",
    Rule.INVALID_KEY: "authentication failed: invalid API key",
    Rule.REVOKED_KEY: "authentication failed: this API key has been revoked",
    Rule.EXPIRED_KEY: "authentication failed: this API key has expired",
    Rule.INACTIVE_USER: "authentication failed: this account is inactive",
    Rule.UNSUPPORTED_MARKET: "authentication failed: unsupported market (use /v1/ws/options/ or /v1/ws/stocks/)",
    Rule.PRODUCT_MISMATCH: "authentication failed: this API key is for {key_product}; use it on /v1/ws/{key_product}/",
    Rule.NOT_CONFIGURED: "authentication failed: streaming is not configured for the {market} market",
    Rule.NO_STREAM_ACCESS: (
        "authentication failed: your {market} plan ({plan}) does not include WebSocket access; "
        "Expert or Commercial is required"
    ),
    Rule.AUTH_TIMEOUT: codes.MESSAGE_AUTH_TIMEOUT,
    Rule.ALREADY_CONNECTED: (
        "Maximum number of websocket connections exceeded: this account already has an active connection"
    ),
    Rule.LOCK_UNAVAILABLE: "stream gateway error: the connection registry is unavailable, try again shortly",
    Rule.RESOLUTION_FAILED: "stream gateway error: the API key could not be checked, try again shortly",
    Rule.ADDRESS_OVER_BUDGET: "{reason}",
}

GATEWAY_ERRORS = (Rule.LOCK_UNAVAILABLE, Rule.RESOLUTION_FAILED)


def reject(rule: Rule, **details: str) -> Rejection:
    message = MESSAGES[rule].format(**details)
    if rule is Rule.ALREADY_CONNECTED:
        return Rejection(codes.CloseCode.ALREADY_CONNECTED, codes.Status.MAX_CONNECTIONS, message, rule)
    if rule is Rule.ADDRESS_OVER_BUDGET:
        return Rejection(codes.CloseCode.TRY_AGAIN_LATER, codes.Status.ERROR, message, rule)
    if rule in GATEWAY_ERRORS:
        return Rejection(codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, message, rule)
    if rule is Rule.AUTH_TIMEOUT:
        return Rejection(codes.CloseCode.UNAUTHORIZED, codes.Status.AUTH_TIMEOUT, message, rule)
    return Rejection(codes.CloseCode.UNAUTHORIZED, codes.Status.AUTH_FAILED, message, rule)


def decide(
    market: str, outcome: Entitlement | Denial | ResolutionFailed | None, upstream_configured: bool
) -> Entitlement | Rejection:
    """Apply the 4401 rules in order; the connection lock (4409) comes after, only for an Entitlement."""
    if isinstance(outcome, ResolutionFailed):
        return reject(Rule.RESOLUTION_FAILED)
    if outcome is None:
        return reject(Rule.MISSING_KEY)
    if isinstance(outcome, Denial):
        return reject(DENIAL_RULES[outcome.reason])
    if market not in MARKETS:
        return reject(Rule.UNSUPPORTED_MARKET)
    if outcome.product != market:
        return reject(Rule.PRODUCT_MISMATCH, key_product=outcome.product)
    if not upstream_configured:
        return reject(Rule.NOT_CONFIGURED, market=market)
    if not outcome.websocket_access:
        return reject(Rule.NO_STREAM_ACCESS, market=market, plan=outcome.plan)
    return outcome
