"""Production deployment, run for real: the containers' commands on this machine, probes, static files, logs, metrics.

There is no Docker engine here, so the test runs what docker-compose.yml runs — ``deploy/entrypoint.sh start`` for the
gateway (migrate, collectstatic, daphne with production flags) and the simulator's command line — against the suite's
database (SQLite, or PostgreSQL under `make test-postgres`) and Redis, with ``DJANGO_DEBUG`` off.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from devstack.ports import free_port
from streaming import codes
from tests.accounts.factories import make_key, make_user
from tests.deployment import compose
from tests.e2e import processes
from tests.e2e.clients import TIMEOUT, bearer, expect_statuses, read_until_closed, rejected
from tests.e2e.processes import LOG_DIR, PROJECT_DIR, wait_for_port

pytestmark = pytest.mark.e2e

START_TIMEOUT_SECONDS = 90.0  # migrate and collectstatic (hashing and compressing every file) come first
EXIT_TIMEOUT_SECONDS = 10.0
SIMULATOR_KEY = "compose-simulator-key"
PRODUCTION_SECRET = "deployment-test-secret-key-not-for-production-0123456789"
FOREIGN_HOST = "10.9.8.7:8000"  # a load balancer probing the process by its address: not in DJANGO_ALLOWED_HOSTS
HASHED_ADMIN_CSS = re.compile(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"')


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())


class ContainerCommand:
    """One service's command run through the image's entry point (deploy/entrypoint.sh), logging to a file."""

    def __init__(self, name: str, arguments: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.log_path = LOG_DIR / f"{name}-{port}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(compose.ENTRYPOINT), *arguments], cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(port, self.process, START_TIMEOUT_SECONDS)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def browser_key(transactional_db) -> str:
    return make_key(make_user("deploy-trader", plans={"options": "expert"}), "options")[1]


@pytest.fixture
def production_stack(transactional_db, tmp_path: Path):
    """The feed simulator and the gateway, started with the commands of docker-compose.yml and DEBUG off."""
    simulator_port, gateway_port = free_port(), free_port()
    simulator_command = compose.command("feed-simulator", {"FEED_SIMULATOR_API_KEY": SIMULATOR_KEY})
    simulator_command[simulator_command.index("--host") + 1] = "127.0.0.1"
    simulator_command[simulator_command.index("--port") + 1] = str(simulator_port)
    base_env = {key: value for key, value in os.environ.items() if not key.startswith(("UPSTREAM_", "STREAM_"))}
    base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is this venv's
    gateway_env = {
        **base_env,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": PRODUCTION_SECRET,
        "DATABASE_URL": processes.test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        "GATEWAY_BIND": "127.0.0.1",
        "GATEWAY_PORT": str(gateway_port),
        "UPSTREAM_OPTIONS_URL": f"ws://127.0.0.1:{simulator_port}/options",
        "UPSTREAM_STOCKS_URL": f"ws://127.0.0.1:{simulator_port}/stocks",
        "UPSTREAM_API_KEY": SIMULATOR_KEY,
        "LOG_FORMAT": "json",
    }
    simulator = ContainerCommand("compose-simulator", simulator_command, base_env, simulator_port)
    try:
        gateway = ContainerCommand("compose-gateway", compose.command("gateway", {}), gateway_env, gateway_port)
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        assert simulator.stop() == 0


async def test_the_container_commands_serve_the_gateway_in_production_mode(production_stack, browser_key):
    gateway = production_stack
    port = gateway.port

    healthz, readyz = http_get(port, "/healthz"), http_get(port, "/readyz")
    assert (healthz.status, json.loads(healthz.body)) == (200, {"status": "ok"})
    assert readyz.status == 200, readyz.body
    assert set(json.loads(readyz.body)["checks"].values()) == {"ok"}

    # A browser streams with its key in the query string, through to the simulator and back.
    async with connect(f"ws://127.0.0.1:{port}/v1/ws/options/?api_key={browser_key}") as websocket:
        await expect_statuses(websocket, "connected", "auth_success")
        await websocket.send('{"action":"subscribe","params":"T.*"}')
        async with asyncio.timeout(TIMEOUT):  # the simulator trades all the time: one arrives soon after the ack
            while not any(event.get("ev") == "T" for event in orjson.loads(await websocket.recv())):
                pass
        assert http_get(port, f"/healthz?api_key={browser_key}").status == 200

        gateway.process.send_signal(signal.SIGTERM)
        outcome = await read_until_closed(websocket)
    assert outcome.close_code == codes.CloseCode.GOING_AWAY
    # Wait for the exit without signalling again: once the reactor has stopped, Twisted restores the default
    # handlers, and a second SIGTERM while the interpreter winds down would kill the process (exit -15).
    assert await asyncio.to_thread(gateway.process.wait, EXIT_TIMEOUT_SECONDS) == 0, gateway.log()[-2000:]

    log = gateway.log()
    assert browser_key not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [record["message"] for record in records if record["logger"] == "streaming.daphne.access_log"]
    assert any("GET /healthz 200" in line for line in access)
    assert any("WSCONNECT /v1/ws/options/" in line for line in access)
    lines = log.splitlines()
    daphne_lines = lines[next(index for index, line in enumerate(lines) if '"daphne.cli"' in line):]
    assert all(line.startswith("{") for line in daphne_lines if line), "LOG_FORMAT=json: one JSON object per line"


async def test_admin_static_files_and_probes_with_debug_off(production_stack):
    port = production_stack.port

    css = http_get(port, "/static/admin/css/base.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    login = http_get(port, "/admin/login/")
    assert login.status == 200
    hashed = HASHED_ADMIN_CSS.search(login.body.decode())
    assert hashed, "the admin links its stylesheet by hashed name (manifest storage)"
    hashed_css = http_get(port, hashed[1], {"Accept-Encoding": "gzip"})
    assert hashed_css.status == 200 and hashed_css.headers.get("Content-Encoding") == "gzip"
    assert "immutable" in hashed_css.headers["Cache-Control"]

    # Probes answer whatever Host the load balancer sends; the admin still refuses unknown hosts.
    assert http_get(port, "/healthz", {"Host": FOREIGN_HOST}).status == 200
    assert http_get(port, "/readyz", {"Host": FOREIGN_HOST}).status == 200
    assert http_get(port, "/admin/login/", {"Host": FOREIGN_HOST}).status == 400


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http_get(port, "/metrics")
    assert response.status == 200, response.body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_admissions_and_rejections(gateway_factory, browser_key):
    gateway = gateway_factory("metrics")
    before = scrape(gateway.port)
    async with connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(browser_key)) as websocket:
        await expect_statuses(websocket, "connected", "auth_success")
        await websocket.send('{"action":"dance"}')
        answer = await websocket.recv()  # an error status, sent like market data, through the outbox
        second = await rejected(gateway.url("/v1/ws/options/"), bearer(browser_key))
        assert second.close_code == codes.CloseCode.ALREADY_CONNECTED
        invalid = await rejected(gateway.url("/v1/ws/options/"), bearer("cmo_" + "x" * 12 + "_" + "y" * 40))
        assert invalid.close_code == codes.CloseCode.UNAUTHORIZED
        during = scrape(gateway.port)
    after = await wait_for_metric(gateway.port, "cutemarkets_stream_connections", 0.0, market="options")

    def increase(samples: dict, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert value(during, "cutemarkets_stream_connections", market="options") == 1
    assert increase(during, "cutemarkets_stream_admissions_total", market="options") == 1
    for code in (codes.CloseCode.ALREADY_CONNECTED, codes.CloseCode.UNAUTHORIZED):
        assert increase(during, "cutemarkets_stream_rejections_total", market="options", code=str(code)) == 1
    normal_closure = str(codes.CloseCode.NORMAL_CLOSURE)
    assert increase(after, "cutemarkets_stream_closes_total", market="options", code=normal_closure) == 1
    for samples in (during, after):  # counted while the connection lives, kept once it closed
        assert increase(samples, "cutemarkets_stream_forwarded_frames_total", market="options") == 1
        assert increase(samples, "cutemarkets_stream_forwarded_bytes_total", market="options") == len(answer.encode())


async def wait_for_metric(port: int, name: str, expected: float, **labels: str) -> dict:
    """Scrape until *name* reaches *expected* (the server records a close after the client has seen it)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            samples = await asyncio.to_thread(scrape, port)
            if value(samples, name, **labels) == expected:
                return samples
            await asyncio.sleep(0.05)
