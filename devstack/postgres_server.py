"""A private PostgreSQL server for `make test-postgres` and CI: a fresh cluster in a temporary directory.

Like ``devstack.redis_server`` it never touches a shared server: the cluster is created with ``initdb`` in its own
directory, listens on a free loopback port (and a socket in that directory), trusts local connections, persists
nothing durably, and is deleted with its owner. PostgreSQL refuses to run as root, so under root (CI) the server runs
as the ``postgres`` system user that Debian's package creates. ``python -m devstack.postgres_server -- CMD...`` runs
CMD with ``DATABASE_URL`` pointing at a fresh database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from devstack.ports import free_port
from devstack.wrapped_command import main

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.05
DATABASE = "cutemarkets"
USER = "cutemarkets"
PASSWORD = "cutemarkets"  # ignored (trust authentication on loopback), but a URL with one is what deployments use
SYSTEM_USER = "postgres"
BINARY_DIRECTORIES = "/usr/lib/postgresql/*/bin"
SPEED_OVER_DURABILITY = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresServerError(RuntimeError):
    """PostgreSQL is missing, or its cluster could not be created or started."""


def binary_directory() -> Path:
    """Where initdb, postgres and createdb are: Debian's newest ``/usr/lib/postgresql/N/bin``, else the PATH."""
    candidates = sorted(glob.glob(BINARY_DIRECTORIES), key=lambda path: int(Path(path).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresServerError("PostgreSQL is not installed (apt-get install postgresql).")
    return Path(initdb).resolve().parent


class PostgresServer:
    """One private ``postgres`` process with a database ``DATABASE`` owned by the superuser ``USER``."""

    def __init__(self, directory: Path | None = None, port: int = 0) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="cm-postgres-"))
        self.port = port or free_port()
        self.bin = binary_directory()
        self.log_path = self.directory / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgres://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> PostgresServer:
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        data = self.directory / "data"
        self._run(self.bin / "initdb", "--pgdata", str(data), "--username", USER, "--auth", "trust",
                  "--encoding", "UTF8", "--no-instructions")
        settings = [f"--{option}" for option in SPEED_OVER_DURABILITY]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.directory),
                 "-c", "listen_addresses=127.0.0.1", *settings],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, user=self._run_as,
            )
        self._wait_ready()
        self._run(self.bin / "createdb", "--host", "127.0.0.1", "--port", str(self.port), "--username", USER, DATABASE)
        return self

    def _run(self, *command: object) -> None:
        result = subprocess.run(
            [str(part) for part in command], cwd=self.directory, user=self._run_as, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PostgresServerError(f"{Path(str(command[0])).name} failed: {result.stderr.strip()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PostgresServerError(f"postgres exited with code {self.process.returncode}: {self._log_tail()}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "--quiet", "--host", "127.0.0.1", "--port", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(POLL_SECONDS)
        raise PostgresServerError(f"postgres did not accept connections in time: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT): roll back open transactions and disconnect clients, then exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    main(PostgresServer, "DATABASE_URL", "devstack.postgres_server")
