"""The three Redis clients (key cache, channel layer, connection lock) find their master through a real Sentinel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from devstack.ports import free_port
from devstack.redis_server import RedisServer
from streaming.runtime import lock

PROJECT_DIR = Path(__file__).resolve().parents[2]
MASTER = "gateway-master"
READY_TIMEOUT_SECONDS = 10.0
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"  # proves that nothing falls back to REDIS_URL
LOCKED_USER = 7
PROBE = f"""
import asyncio
import django
django.setup()
from channels.layers import get_channel_layer
from django.core.cache import cache
from streaming.runtime.lock import ConnectionLock
from streaming.runtime.redis_client import redis_client

cache.set("sentinel-probe", "cached", 60)
assert cache.get("sentinel-probe") == "cached"

async def main():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {{"type": "sentinel.probe"}})
    assert (await layer.receive(channel))["type"] == "sentinel.probe"
    assert await ConnectionLock(redis_client(), {LOCKED_USER}, ttl=60).acquire()

asyncio.run(main())
"""


@pytest.fixture
def sentinel(tmp_path):
    """A data Redis on a TCP port and one Sentinel (redis-server --sentinel) monitoring it as MASTER."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    (tmp_path / "master").mkdir()
    with RedisServer(directory=tmp_path / "master", port=free_port()) as master:
        port = free_port()
        config = tmp_path / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        )
        process = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_master(port)
            yield master, port
        finally:
            process.terminate()
            process.wait(timeout=5)


def wait_for_master(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with redis.Redis(port=port, socket_timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER):
                    return
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.05)
    raise TimeoutError("sentinel did not report the master")


def test_cache_channel_layer_and_lock_reach_the_master_named_by_sentinel(sentinel):
    master, sentinel_port = sentinel
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cutemarkets.settings",
        "REDIS_URL": UNREACHABLE_REDIS_URL,
        "REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}",
        "REDIS_SENTINEL_MASTER": MASTER,
    }
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with redis.Redis.from_url(master.url) as client:
        assert client.exists(f"{lock.KEY_PREFIX}{LOCKED_USER}")
        assert client.keys("cm:*sentinel-probe")
