"""Fixtures for gateway tests: a configured upstream, customers with keys, and the ASGI application."""

from __future__ import annotations

import pytest

UNUSED_UPSTREAM = "ws://127.0.0.1:9/"


@pytest.fixture
def stream_config(settings):
    """Streaming configured for both markets (the upstream itself is not contacted by admission tests)."""
    settings.STREAM_UPSTREAMS = {
        market: {"URL": UNUSED_UPSTREAM + market, "API_KEY": "upstream-key"} for market in ("options", "stocks")
    }
    settings.STREAM_REJECT_GRACE = 0.05
    return settings


@pytest.fixture
def application(stream_config):
    from cutemarkets.asgi import application

    return application

