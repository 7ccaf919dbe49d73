"""Close codes and status messages of the public contract, defined once.

Status messages use the market-data stream's own shape, ``[{"ev":"status","status":...,"message":...}]``, so that
official Polygon/Massive clients parse them like the upstream's.
"""

from __future__ import annotations

import orjson

# WebSocket close codes (RFC 6455 and the contract's application codes).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNAUTHORIZED = 4401
CLOSE_ALREADY_CONNECTED = 4409

# Values of the "status" field.
STATUS_CONNECTED = "connected"
STATUS_AUTH_SUCCESS = "auth_success"
STATUS_AUTH_FAILED = "auth_failed"
STATUS_AUTH_TIMEOUT = "auth_timeout"
STATUS_MAX_CONNECTIONS = "max_connections"
STATUS_SUCCESS = "success"
STATUS_ERROR = "error"
STATUS_SLOW_CONSUMER = "slow_consumer"

MESSAGE_CONNECTED = "Connected Successfully"
MESSAGE_AUTHENTICATED = "authenticated"
MESSAGE_AUTH_TIMEOUT = "No authentication request received."


def status_event(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


def status_frame_bytes(status: str, message: str) -> bytes:
    """One status message as a UTF-8 text frame: a JSON array holding one status event."""
    return orjson.dumps([status_event(status, message)])


def status_frame(status: str, message: str) -> str:
    return status_frame_bytes(status, message).decode()


CONNECTED_FRAME = status_frame(STATUS_CONNECTED, MESSAGE_CONNECTED)
AUTH_SUCCESS_FRAME = status_frame(STATUS_AUTH_SUCCESS, MESSAGE_AUTHENTICATED)
