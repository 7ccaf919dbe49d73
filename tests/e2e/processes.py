"""Real server processes for end-to-end tests: daphne serving the gateway, on a free loopback port.

Each process logs to a file that the suite scans afterwards (no key may ever appear in a log line).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

from devstack.ports import free_port

READY_TIMEOUT_SECONDS = 20.0
PROJECT_DIR = Path(settings.BASE_DIR)
LOG_DIR = PROJECT_DIR / "var" / "test-logs"


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def test_database_url() -> str:
    """The database the test process uses, as a URL a child process can open (it sees committed data only)."""
    database = connection.settings_dict
    if database["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{database['NAME']}"
    return (
        f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST'] or 'localhost'}:"
        f"{database['PORT'] or 5432}/{database['NAME']}"
    )


class GatewayProcess:
    """``daphne cutemarkets.asgi:application`` in a child process, with the test database and Redis."""

    def __init__(
        self, name: str, env: dict[str, str] | None = None, port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.args = args
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cutemarkets.settings",
            "DJANGO_DEBUG": "1",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "PYTHONUNBUFFERED": "1",
            "GATEWAY_SHUTDOWN_TIMEOUT": "2",
            **(env or {}),
        }
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "--websocket_timeout", "-1", *self.args, "cutemarkets.asgi:application"],
            cwd=PROJECT_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
