"""install()'s start-up guard (streaming.daphne.compatibility): a daphne, autobahn or Twisted lacking an internal the
shim relies on is refused, with a message naming it, in this process and when a real daphne loads the gateway.

This process has ``daphne.server`` imported (Django's ``daphne`` app imports it), so each case here breaks one
internal the way a new release could, with ``monkeypatch``, which puts it back afterwards.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import autobahn.websocket.protocol
import pytest
from daphne.access import AccessLogGenerator
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.abstract import FileDescriptor

from devstack.ports import free_port
from streaming.daphne import compatibility, install
from streaming.exceptions import IncompatibleServer

REPO_ROOT = Path(__file__).resolve().parents[3]
EXIT_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.02

PATCHED = (
    (WebSocketProtocol, "handle_reply"),
    (Server, "create_application"),
    (Server, "kill_all_applications"),
    (AccessLogGenerator, "write_entry"),
    (WebSocketProtocol, "sendCloseFrame"),
    (WebSocketProtocol, "_max_message_size_exceeded"),
    (WebSocketProtocol, "_sendAutoPing"),
)


def send_close_frame_with_a_renamed_keyword(
    self: Any, code: Any = None, reason: Any = None, isReply: Any = False
) -> None:
    """An autobahn whose ``sendCloseFrame`` calls the reason ``reason``."""


def create_application_with_one_more_parameter(self: Any, protocol: Any, scope: Any, loop: Any) -> None:
    """A daphne whose ``create_application`` takes one more argument."""


def access_log_that_no_longer_writes_entries(self: Any, protocol: Any, action: Any, details: Any) -> None:
    """A daphne that writes its access log without ``write_entry``."""


def create_application_without_a_queue(self: Any, protocol: Any, scope: Any) -> None:
    """A daphne that gives its applications their messages some other way than through a queue it makes."""


def frame_begin_without_a_size_check(self: Any, length: int) -> None:
    """An autobahn that checks message sizes somewhere else."""


def connection_made_without_a_send_queue(self: Any) -> None:
    """An autobahn that no longer keeps a ``send_queue`` on its connections."""


BREAKAGES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "daphne lost handle_reply": (
        lambda patch: patch.delattr(WebSocketProtocol, "handle_reply"),
        "daphne.ws_protocol.WebSocketProtocol.handle_reply: missing",
    ),
    "daphne moved its Server class": (
        lambda patch: patch.delattr(sys.modules["daphne.server"], "Server"),
        "daphne.server.Server.create_application: daphne.server.Server is missing",
    ),
    "daphne lost its access module": (
        lambda patch: patch.setitem(sys.modules, "daphne.access", None),
        "daphne.access.AccessLogGenerator.write_entry: cannot import daphne.access",
    ),
    "daphne changed create_application": (
        lambda patch: patch.setattr(Server, "create_application", create_application_with_one_more_parameter),
        "create_application: takes (self, protocol, scope, loop), expected (self, protocol, scope)",
    ),
    "daphne no longer calls write_entry": (
        lambda patch: patch.setattr(AccessLogGenerator, "__call__", access_log_that_no_longer_writes_entries),
        "daphne.access.AccessLogGenerator.__call__: no longer uses 'write_entry'",
    ),
    "autobahn renamed a keyword of sendCloseFrame": (
        # On daphne's class, which the shim's own sendCloseFrame (wrapping autobahn's) already shadows here:
        lambda patch: patch.setattr(WebSocketProtocol, "sendCloseFrame", send_close_frame_with_a_renamed_keyword),
        "daphne.ws_protocol.WebSocketProtocol.sendCloseFrame: takes (self, code, reason, isReply)",
    ),
    "autobahn no longer assigns send_queue": (
        lambda patch: patch.setattr(
            autobahn.websocket.protocol.WebSocketProtocol, "_connectionMade", connection_made_without_a_send_queue
        ),
        "daphne.ws_protocol.WebSocketProtocol.send_queue: missing",
    ),
    "daphne no longer makes an input queue in create_application": (
        lambda patch: patch.setattr(Server, "create_application", create_application_without_a_queue),
        "daphne.server.Server.create_application: no longer uses 'Queue'",
    ),
    "autobahn checks message sizes elsewhere": (
        lambda patch: patch.setattr(
            autobahn.websocket.protocol.WebSocketProtocol, "onMessageFrameBegin", frame_begin_without_a_size_check
        ),
        "daphne.ws_protocol.WebSocketProtocol.onMessageFrameBegin: no longer uses '_max_message_size_exceeded'",
    ),
    "autobahn lost pformat": (
        lambda patch: patch.delattr(autobahn.websocket.protocol, "pformat"),
        "autobahn.websocket.protocol.pformat: missing",
    ),
    "Twisted lost bufferSize": (
        lambda patch: patch.delattr(FileDescriptor, "bufferSize"),
        "twisted.internet.tcp.Server.bufferSize: missing",
    ),
}


def versions() -> list[str]:
    return [f"{name} {importlib.metadata.version(name)}" for name in ("daphne", "autobahn", "Twisted")]


def test_the_installed_versions_have_every_internal_the_shim_relies_on() -> None:
    assert install.install() is True
    assert compatibility.problems() == []  # also once patched: the checks look at daphne's own functions
    assert install.install() is True


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_install_refuses_a_missing_or_changed_internal_and_patches_nothing(
    monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    install.install()
    breaks, named = BREAKAGES[breakage]
    breaks(monkeypatch)
    before = [cls.__dict__.get(name) for cls, name in PATCHED]
    with pytest.raises(IncompatibleServer) as refused:
        install.install()
    message = str(refused.value)
    assert named in message
    assert all(version in message for version in versions())
    assert "requirements/production.txt and requirements/development.txt pin the tested versions" in message
    assert [cls.__dict__.get(name) for cls, name in PATCHED] == before


def test_each_problem_is_one_line_naming_the_internal_and_why_it_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(FileDescriptor, "bufferSize")
    monkeypatch.delattr(autobahn.websocket.protocol, "pformat")
    assert compatibility.problems() == [
        "twisted.internet.tcp.Server.bufferSize: missing (the high-water mark that pauses flow control)",
        "autobahn.websocket.protocol.pformat: missing (replaced: no configuration dump on every connection)",
    ]


LAUNCHER = """
import sys

import autobahn.websocket.protocol
import daphne.server
from daphne.cli import CommandLineInterface


def sendCloseFrame(self, code=None, reason=None, isReply=False):
    pass  # an autobahn release that renamed reasonUtf8


autobahn.websocket.protocol.WebSocketProtocol.sendCloseFrame = sendCloseFrame
CommandLineInterface.entrypoint()
"""
"""daphne's command line (``python -m daphne``), on an autobahn whose ``sendCloseFrame`` changed shape."""


@pytest.mark.e2e
def test_daphne_refuses_to_serve_the_gateway_on_an_incompatible_autobahn(tmp_path: Path) -> None:
    port = free_port()
    stderr_path = tmp_path / "daphne.stderr"
    started = time.monotonic()
    with open(stderr_path, "wb") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "-b", "127.0.0.1", "-p", str(port), "cutemarkets.asgi:application"],
            cwd=REPO_ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "cutemarkets.settings"},
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
    try:
        while True:  # until it exits, nothing may accept a connection on its port
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            try:
                process.wait(POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                assert time.monotonic() - started < EXIT_TIMEOUT_SECONDS, "daphne did not exit"
    finally:
        process.kill()
        process.wait()
    stderr = stderr_path.read_text(errors="replace")
    assert process.returncode != 0, stderr
    assert "streaming.exceptions.IncompatibleServer: streaming.daphne cannot patch the installed" in stderr
    assert "daphne.ws_protocol.WebSocketProtocol.sendCloseFrame: takes (self, code, reason, isReply)" in stderr
    assert all(version in stderr for version in versions())
    assert "pin the tested versions" in stderr
