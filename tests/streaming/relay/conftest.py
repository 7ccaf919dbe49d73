"""Fixtures of the relay tests: Django settings for relay mode, under each test module's own Redis prefix."""

from __future__ import annotations

import pytest

UNUSED_URL = "ws://127.0.0.1:9/"  # relay mode: the gateway side serves the market but never connects to it


@pytest.fixture
def relay_settings(settings, request):
    """Relay mode with the test module's ``PREFIX``, so modules never share Redis keys."""
    settings.STREAM_FANOUT = "relay"
    settings.STREAM_RELAY_PREFIX = request.module.PREFIX
    settings.STREAM_RELAY_REGISTRATION_TTL = 3.0
    settings.STREAM_UPSTREAMS = {market: {"URL": UNUSED_URL, "API_KEY": ""} for market in ("options", "stocks")}
    return settings
