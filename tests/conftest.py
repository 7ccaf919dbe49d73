"""Shared fixtures: every test runs against the real Redis named by REDIS_URL (a private server from `make test`)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.accounts.factories import ISSUED_KEYS


@pytest.fixture(autouse=True)
def clean_redis():
    """Each test starts with an empty Redis, so cached resolutions and locks never leak between tests."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog):
    """Whatever a test does, no API key it created may appear in a log record of this process."""
    caplog.set_level(logging.INFO)
    yield
    leaked = [
        record.getMessage() for record in caplog.records if any(key in record.getMessage() for key in ISSUED_KEYS)
    ]
    assert not leaked, f"API key in log lines: {leaked}"


@pytest.fixture(autouse=True)
async def settle_prefix_seeding():
    """A resolution against the flushed Redis starts seeding the issued key prefixes in the background: it ends
    within its test, before the test's database is flushed and its event loop closed."""
    yield
    from accounts import keys

    await asyncio.gather(*keys._seedings, return_exceptions=True)


@pytest.fixture(autouse=True)
async def stop_loop_services():
    """The process-wide ControlListener and LockKeeper live as long as their event loop, and channels-redis allows
    one receiving loop per layer object; each test has a loop of its own, so each gets fresh ones."""
    yield
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    from streaming.gateway.rechecks import ControlListener
    from streaming.runtime.lock_keeper import LockKeeper

    await ControlListener.stop_for_loop()
    await LockKeeper.stop_for_loop()
    layer = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    if layer is not None and hasattr(layer, "close_pools"):
        await layer.close_pools()
