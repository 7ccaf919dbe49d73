"""The processes of a benchmark: private Redis, a migrated SQLite database with bench users, the bench upstream,
and the server under test (the gateway under daphne or uvicorn, or the ceiling server), each on a loopback port.

A server can run from another source tree (``source=``) for A/B comparisons of two versions of the code: the tree is
put first on ``PYTHONPATH`` and used as the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import ceiling
from devstack.ports import free_port
from devstack.redis_server import RedisServer
from streaming.runtime import lock

PROJECT_DIR = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "bench-upstream-key"
SECRET_KEY = "bench-only-secret-key-not-for-production-0123456789abcdef"
READY_TIMEOUT_SECONDS = 30.0


def wait_for_port(port: int, process: subprocess.Popen, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def wait_for_health(port: int, process: subprocess.Popen, log: Path) -> None:
    """Until the gateway answers ``/healthz``: its application is loaded and its event loop serves. (Not
    ``/readyz``: a bench gateway has the upstream of one market only, which readiness reports.)"""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the gateway on port {port} did not answer /healthz\n{log.read_text(errors='replace')[-3000:]}")


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Environment:
    """Redis and the database, shared by every server of one benchmark run."""

    users: int
    stocks_users: int = 0
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cm-bench-")))
    redis: RedisServer | None = None
    keys: list[str] = field(default_factory=list)
    stocks_keys: list[str] = field(default_factory=list)
    db_queries: dict[str, int] = field(default_factory=dict)
    children: list[subprocess.Popen] = field(default_factory=list)
    """Every upstream and server started: those a failed trial did not stop are stopped by `close`."""

    def start(self) -> Environment:
        (self.directory / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(self.directory / "redis").start()
        keys_file = self.directory / "keys.json"
        stocks_keys_file = self.directory / "stocks-keys.json"
        output = subprocess.run(
            [sys.executable, "-m", "bench.setup_db", "--users", str(self.users), "--keys-file", str(keys_file),
             "--stocks-users", str(self.stocks_users), "--stocks-keys-file", str(stocks_keys_file)],
            cwd=PROJECT_DIR, env=self.django_env(), check=True, capture_output=True, text=True,
        )
        self.db_queries = json.loads(output.stdout)["db_queries"]
        self.keys = json.loads(keys_file.read_text())
        if self.stocks_users:
            self.stocks_keys = json.loads(stocks_keys_file.read_text())
        return self

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.directory / 'db.sqlite3'}"

    def django_env(self, **extra: str) -> dict[str, str]:
        assert self.redis is not None
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cutemarkets.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            # The bench upstream stands for a feed account whose quote limit was raised: the selective scenario
            # quotes ~4,000 option contracts through one upstream connection; the real feed's default is 1,000.
            "STREAM_UPSTREAM_OPTION_QUOTE_CONTRACTS": "1000000",
            **extra,
        }

    def redis_client(self):
        import redis

        assert self.redis is not None
        return redis.Redis.from_url(self.redis.url)

    def reset_redis(self) -> None:
        """Between trials: no lock, cached key or channel-layer state survives from the previous server."""
        client = self.redis_client()
        client.flushall()
        client.config_resetstat()
        client.close()

    def wait_for_released_locks(self, timeout: float = 10.0) -> None:
        """Until no connection lock (the gateway's or the ceiling's) is left in Redis: the closes' clean-up is done."""
        client = self.redis_client()
        deadline = time.monotonic() + timeout
        try:
            while held := [key for pattern in LOCK_PATTERNS for key in client.scan_iter(match=pattern, count=1000)]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(held)} connection locks still held after {timeout:g} s")
                time.sleep(0.02)
        finally:
            client.close()

    def close(self) -> None:
        for child in self.children:
            stop_process(child)
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Upstream:
    """``python -m bench.upstream`` in a child process, started without waiting for it (`wait_ready`): a trial's
    server starts meanwhile."""

    def __init__(self, environment: Environment, rate: float, market: str = "options") -> None:
        self.market = market
        self.stats_file = environment.directory / f"upstream-{os.getpid()}-{time.monotonic_ns()}.json"
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", "--port", str(self.port), "--api-key", UPSTREAM_KEY,
             "--rate", str(rate), "--stats-file", str(self.stats_file), "--market", market],
            cwd=PROJECT_DIR, stdout=subprocess.DEVNULL,
        )
        environment.children.append(self.process)

    def wait_ready(self) -> None:
        wait_for_port(self.port, self.process)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/{self.market}"

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {"time": time.time(), "events_sent": 0, "frames_sent": 0}

    def stop(self) -> None:
        stop_process(self.process)
        self.stats_file.unlink(missing_ok=True)


SERVERS = ("daphne", "uvicorn", "ceiling", "direct")
LOCK_PATTERNS = (f"{lock.KEY_PREFIX}*", f"{ceiling.REDIS_PREFIX}lock:*")
"""Redis keys of the gateway's connection locks and of the ceiling's."""
LOAD_FROM_ONE_ADDRESS = {
    "STREAM_ADDRESS_HANDSHAKE_RATE": "100000",
    "STREAM_ADDRESS_HANDSHAKE_BURST": "100000",
    "STREAM_ADDRESS_PENDING_SOCKETS": "100000",
    "STREAM_ADDRESS_FAILURES_PER_MINUTE": "100000",
}
"""Address budgets (gateway/fairness.py) for load clients that all connect from 127.0.0.1 but stand for as many
customers: with the deployed ones (10 handshakes/s, bursts of 50) the scenarios' first 100 connections got 1013. The
neighbours scenario, which measures those budgets, keeps the deployed ones."""


class Server:
    """The server under test: ``daphne`` or ``uvicorn`` serving the gateway, the ``ceiling`` fan-out server, or
    ``direct``: no server, the clients connect to the upstream itself (the baseline for added latency). Constructed
    once it and its upstream listen, and a gateway answers ``/healthz``."""

    def __init__(self, kind: str, environment: Environment, upstream: Upstream, source: Path | None = None,
                 extra_env: dict[str, str] | None = None, label: str | None = None,
                 deployed_address_budgets: bool = False) -> None:
        if kind not in SERVERS:
            raise ValueError(kind)
        self.kind = kind
        self.label = label or kind
        self.upstream = upstream
        if kind == "direct":
            upstream.wait_ready()
            self.port = upstream.port
            self.process = upstream.process
            self.log_path = None
            self.ps = psutil.Process(upstream.process.pid)
            return
        self.port = free_port()
        source = source or PROJECT_DIR
        env = environment.django_env(
            **{f"UPSTREAM_{upstream.market.upper()}_URL": upstream.url},
            UPSTREAM_API_KEY=UPSTREAM_KEY,
            PYTHONPATH=os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            **({} if deployed_address_budgets else LOAD_FROM_ONE_ADDRESS),
            **(extra_env or {}),
        )
        if kind == "daphne":
            # BENCH_DAPHNE_ARGS: more daphne options for an experiment (e.g. "--ping-interval 600": no keep-alive)
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                       "--websocket_timeout", "-1", *os.environ.get("BENCH_DAPHNE_ARGS", "").split(),
                       "cutemarkets.asgi:application"]
        elif kind == "uvicorn":
            command = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port),
                       "--ws", "websockets-sansio", "--no-access-log", "--log-level", "warning",
                       "--lifespan", "off", "cutemarkets.asgi:application"]
        else:
            assert environment.redis is not None
            command = [sys.executable, "-m", "bench.ceiling", "--port", str(self.port), "--upstream", upstream.url,
                       "--api-key", UPSTREAM_KEY, "--redis", environment.redis.url]
            source = PROJECT_DIR
        if kind == "ceiling":
            upstream.wait_ready()  # it connects upstream as it starts; a gateway only once a client subscribes
        self.log_path = environment.directory / f"{self.label}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
        environment.children.append(self.process)
        upstream.wait_ready()
        wait_for_port(self.port, self.process, self.log_path)
        if kind in ("daphne", "uvicorn"):
            wait_for_health(self.port, self.process, self.log_path)
        self.ps = psutil.Process(self.process.pid)

    def url(self) -> str:
        if self.kind == "direct":
            return self.upstream.url
        return f"ws://127.0.0.1:{self.port}/v1/ws/{self.upstream.market}/"

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss_bytes(self) -> int:
        return self.ps.memory_info().rss

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path else ""

    def stop(self) -> None:
        if self.kind != "direct":  # the upstream is stopped by its owner
            stop_process(self.process)
