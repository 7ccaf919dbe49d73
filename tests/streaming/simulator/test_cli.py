"""The simulator runs from the command line (Django command and ``python -m``) and stops cleanly on signals."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from streaming.simulator.cli import parse_rate

from . import AUTH_SUCCESS, CONNECTED, authenticate, receive, subscribe

REPOSITORY = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"^Feed simulator listening on ws://127\.0\.0\.1:(\d+)/\{stocks,options\}$")
STARTUP_TIMEOUT_SECONDS = 20
CLI_KEY = "cli-key"


async def run_and_stop(command: list[str], stop_signal: signal.Signals) -> None:
    """Start *command* on a free port, use it like a client would, then signal it and expect exit status 0."""
    process = await asyncio.create_subprocess_exec(
        *command, "--port", "0", "--api-key", CLI_KEY, "--rate", "stocks=200,options=0", "--seed", "9",
        cwd=REPOSITORY,
        env={**os.environ, "DJANGO_DEBUG": "1"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_SECONDS)).decode().strip()
        listening = LISTENING.match(line)
        assert listening, line
        async with connect(f"ws://127.0.0.1:{listening.group(1)}/stocks") as client:
            assert await receive(client) == CONNECTED
            assert await authenticate(client, CLI_KEY) == AUTH_SUCCESS
            await subscribe(client, "Q.*")
            assert all(event["ev"] == "Q" for event in await receive(client))
            process.send_signal(stop_signal)
            assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_management_command_serves_and_exits_0_on_sigterm():
    await run_and_stop([sys.executable, "manage.py", "run_feed_simulator"], signal.SIGTERM)


async def test_module_runs_without_django_and_exits_0_on_sigint():
    await run_and_stop([sys.executable, "-m", "streaming.simulator"], signal.SIGINT)


def test_rate_is_one_value_for_both_clusters_or_per_cluster():
    assert parse_rate("2500") == 2500.0
    assert parse_rate("stocks=100, options=0.5") == {"stocks": 100.0, "options": 0.5}
    assert parse_rate("options=7") == {"stocks": 0.0, "options": 7.0}
    for bad in ("fast", "-1", "crypto=5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)
