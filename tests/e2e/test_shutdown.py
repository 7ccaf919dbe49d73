"""Graceful shutdown through a real daphne process: SIGTERM closes every live stream with 1001 and releases its lock."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import pytest
import redis
from django.conf import settings
from websockets.asyncio.client import connect

from streaming import codes
from streaming.daphne import close
from streaming.runtime import lock
from tests.accounts.factories import make_key, make_user
from tests.e2e.clients import bearer, expect_statuses, read_until_closed

pytestmark = pytest.mark.e2e

CLIENTS = 3
EXIT_TIMEOUT_SECONDS = 5.0
"""A drained process exits well within this: the clients reply to the close at once and cleanup is a few Redis calls."""


@pytest.fixture
def traders(transactional_db) -> list[str]:
    """Options keys of three different users on the Expert plan (one connection each is allowed)."""
    return [
        make_key(make_user(f"shutdown-trader-{index}", plans={"options": "expert"}), "options")[1]
        for index in range(CLIENTS)
    ]


def lock_keys() -> list[bytes]:
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        return sorted(client.scan_iter(match=f"{lock.KEY_PREFIX}*"))


async def test_sigterm_closes_every_stream_with_1001_and_releases_the_locks(gateway_factory, traders):
    gateway = gateway_factory("shutdown")
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(key)))
            for key in traders
        ]
        for client in clients:
            await expect_statuses(client, "connected", "auth_success")
        assert len(lock_keys()) == CLIENTS

        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        outcomes = await asyncio.gather(*(read_until_closed(client) for client in clients))
        exit_code = await asyncio.to_thread(gateway.process.wait, EXIT_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - started

    assert [(outcome.close_code, outcome.close_reason) for outcome in outcomes] == [
        (codes.CloseCode.GOING_AWAY, close.SHUTDOWN_REASON.decode())
    ] * CLIENTS
    assert exit_code == 0, gateway.log()
    assert elapsed < EXIT_TIMEOUT_SECONDS
    assert lock_keys() == []
    assert gateway.log().count(f"code={codes.CloseCode.GOING_AWAY}") >= CLIENTS  # each consumer saw its disconnect
