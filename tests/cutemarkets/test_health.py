"""/healthz and /readyz through Django, with a real private Redis that the tests stop to make readiness fail."""

from __future__ import annotations

import json

import pytest

from devstack.redis_server import RedisServer

pytestmark = pytest.mark.django_db

CONFIGURED_UPSTREAMS = {
    market: {"URL": f"ws://127.0.0.1:9/{market}", "API_KEY": "upstream-key"} for market in ("options", "stocks")
}


@pytest.fixture
def private_redis(settings, tmp_path):
    """The cache (what readiness pings) on a Redis of the test's own, which it may stop."""
    with RedisServer(directory=tmp_path) as server:
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": server.url}}
        yield server


@pytest.fixture(autouse=True)
def upstreams(settings):
    settings.STREAM_UPSTREAMS = CONFIGURED_UPSTREAMS


def get(client, path: str):
    response = client.get(path)
    return response.status_code, json.loads(response.content)


def test_healthz_answers_while_the_process_runs(client):
    assert get(client, "/healthz") == (200, {"status": "ok"})


def test_ready_when_every_dependency_is_up(client, private_redis):
    status, body = get(client, "/readyz")
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "ok", "upstream:options": "ok", "upstream:stocks": "ok"},
        "failed": [],
    }


def test_not_ready_names_redis_when_it_is_down(client, private_redis):
    private_redis.kill()
    status, body = get(client, "/readyz")
    assert (status, body["status"], body["failed"]) == (503, "unavailable", ["redis"])
    assert body["checks"]["redis"] == "unreachable"


def test_not_ready_names_each_unconfigured_upstream(client, private_redis, settings):
    settings.STREAM_UPSTREAMS = {**CONFIGURED_UPSTREAMS, "options": {"URL": "", "API_KEY": "upstream-key"}}
    status, body = get(client, "/readyz")
    assert (status, body["failed"]) == (503, ["upstream:options"])
    assert body["checks"]["upstream:options"] == "not configured"


def test_fail_open_mode_stays_ready_without_redis_but_says_so(client, private_redis, settings):
    settings.STREAM_LOCK_FAILURE_MODE = "open"
    private_redis.kill()
    status, body = get(client, "/readyz")
    assert (status, body["failed"], body["checks"]["redis"]) == (200, [], "unreachable")


def test_probes_answer_only_get_and_head(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405
