"""Shared fixtures: every test runs against the real Redis named by REDIS_URL (a private server from `make test`)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_redis():
    """Each test starts with an empty Redis, so cached resolutions and locks never leak between tests."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()
