"""A private ``redis-server`` on a unix socket, for `make run`, `make test` and tests that stop or restart Redis.

Local runs and CI must never touch a shared Redis: each instance lives in its own temporary directory, persists
nothing, and is stopped with its owner. ``python -m devstack.redis_server -- CMD...`` runs CMD with ``REDIS_URL``
pointing at a fresh instance (used by the Makefile when ``REDIS_URL`` is unset).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from devstack.wrapped_command import main

READY_TIMEOUT_SECONDS = 10.0


class RedisServerError(RuntimeError):
    """redis-server is missing or did not become ready."""


class RedisServer:
    """One private redis-server process listening on a unix socket (and optionally a TCP port)."""

    def __init__(self, directory: Path | None = None, port: int = 0) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="cm-redis-"))
        self.socket_path = self.directory / "redis.sock"
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server).")
        command = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--loglevel", "warning",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RedisServerError(f"redis-server exited with code {self.process.returncode}.")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.socket_path))
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RedisServerError("redis-server did not answer PING in time.")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop without a shutdown sequence, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    main(RedisServer, "REDIS_URL", "devstack.redis_server")
