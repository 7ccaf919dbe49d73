"""Liveness and readiness for load balancers: ``/healthz`` says the process answers, ``/readyz`` whether it can serve.

Readiness checks what admitting a connection needs — the database (keys, plans), Redis (connection lock, key cache,
control messages) and an upstream feed configured for each market — and names each failure, so an operator sees at
once what to fix. The error details go to the log, not into the public response.
"""

from __future__ import annotations

import logging

import redis.exceptions
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django_redis import get_redis_connection

from streaming.conf import FAILURE_MODE_OPEN, MARKETS, stream_settings

logger = logging.getLogger(__name__)

OK = "ok"
UNREACHABLE = "unreachable"
NOT_CONFIGURED = "not configured"
SERVICE_UNAVAILABLE = 503


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and its event loop answers; nothing else is checked (restart only if this fails)."""
    return JsonResponse({"status": OK})


def readyz(request: HttpRequest) -> JsonResponse:
    """200 with every check when the process can admit connections, else 503 naming the failed checks."""
    checks = readiness_checks()
    failed = [name for name, result in checks.items() if result != OK and not _tolerated(name)]
    body = {"status": "unavailable" if failed else "ready", "checks": checks, "failed": failed}
    response = JsonResponse(body, status=SERVICE_UNAVAILABLE if failed else 200)
    response._has_been_logged = True  # not an ERROR from django.request on every probe: the checks log their cause
    return response


def readiness_checks() -> dict[str, str]:
    """Each dependency's state: ``database``, ``redis`` and ``upstream:<market>``, each ``ok`` or what is wrong."""
    checks = {"database": _database(), "redis": _redis()}
    settings = stream_settings()
    for market in MARKETS:
        checks[f"upstream:{market}"] = OK if settings.upstream(market) is not None else NOT_CONFIGURED
    return checks


def _tolerated(check: str) -> bool:
    """With STREAM_LOCK_FAILURE_MODE=open the operator chose to keep admitting while Redis is down."""
    return check == "redis" and stream_settings().lock_failure_mode == FAILURE_MODE_OPEN


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        logger.warning("readiness: database unreachable: %s", error)
        return UNREACHABLE
    return OK


def _redis() -> str:
    try:
        get_redis_connection("default").ping()
    except redis.exceptions.RedisError as error:
        logger.warning("readiness: Redis unreachable: %s", error)
        return UNREACHABLE
    return OK
