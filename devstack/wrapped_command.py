"""Run a command with a private server's URL in its environment, and stop the server afterwards, even on Ctrl-C.

Both `python -m devstack.redis_server -- CMD` and `python -m devstack.postgres_server -- CMD` are this, with their
own server and variable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any


def run_with_server(server: AbstractContextManager[Any], variable: str, command: list[str]) -> int:
    with server as running:
        child = subprocess.Popen(command, env=dict(os.environ, **{variable: running.url}))
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            return child.wait()


def main(server_factory: Callable[[], AbstractContextManager[Any]], variable: str, module: str) -> None:
    arguments = sys.argv[1:]
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    if not arguments:
        sys.exit(f"usage: python -m {module} -- COMMAND [ARGS...]")
    sys.exit(run_with_server(server_factory(), variable, arguments))
