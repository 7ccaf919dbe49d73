"""Command line of the feed simulator, shared by ``python -m streaming.simulator`` and ``run_feed_simulator``.

Both entry points declare the same options through ``add_arguments`` and run ``serve_until_signalled``, which
prints one line once listening and shuts down cleanly (exit status 0) on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from .protocol import CLUSTERS
from .server import DEFAULT_AUTH_TIMEOUT_SECONDS, FeedSimulator

API_KEY_ENV = "FEED_SIMULATOR_API_KEY"
DEFAULT_API_KEY = "simulator"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_RATE = "1000"


def parse_rate(value: str) -> float | dict[str, float]:
    """``"5000"`` (each cluster) or ``"stocks=5000,options=2000"`` (clusters not named get 0), in events/s."""
    if "=" not in value:
        return _non_negative(value)
    rates = dict.fromkeys(CLUSTERS, 0.0)
    for part in value.split(","):
        cluster, _, number = part.partition("=")
        cluster = cluster.strip()
        if cluster not in rates:
            raise argparse.ArgumentTypeError(f"unknown cluster {cluster!r} (expected one of {', '.join(CLUSTERS)})")
        rates[cluster] = _non_negative(number)
    return rates


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the simulator's options on *parser*."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"Interface to listen on (default {DEFAULT_HOST}).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}; 0 = any).")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV, DEFAULT_API_KEY),
        help=f"The one accepted API key (default ${API_KEY_ENV}, else {DEFAULT_API_KEY!r}).",
    )
    parser.add_argument(
        "--rate",
        type=parse_rate,
        default=parse_rate(DEFAULT_RATE),
        help="Events per second per cluster: N for each cluster, or stocks=N,options=M; 0 = none "
        f"(default {DEFAULT_RATE}).",
    )
    parser.add_argument("--seed", default=None, help="Seed for a reproducible sequence of events.")
    parser.add_argument(
        "--max-connections", type=int, default=None, help="Authenticated connections per cluster (default: no limit)."
    )
    parser.add_argument(
        "--auth-timeout",
        type=float,
        default=DEFAULT_AUTH_TIMEOUT_SECONDS,
        help=f"Seconds a client has to authenticate (default {DEFAULT_AUTH_TIMEOUT_SECONDS:g}).",
    )


def simulator_from_options(options: Mapping[str, Any]) -> FeedSimulator:
    """A simulator configured from parsed options (an argparse namespace's ``vars`` or Django's options)."""
    return FeedSimulator(
        api_key=options["api_key"],
        rate=options["rate"],
        seed=options["seed"],
        max_connections=options["max_connections"],
        auth_timeout=options["auth_timeout"],
        host=options["host"],
        port=options["port"],
    )


async def serve_until_signalled(simulator: FeedSimulator, announce: Callable[[str], None]) -> None:
    """Run *simulator* until SIGINT or SIGTERM, announcing its URLs once it listens."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with simulator:
        announce(f"Feed simulator listening on ws://{simulator.host}:{simulator.port}/{{{','.join(CLUSTERS)}}}")
        await stopping.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming.simulator", description="Run the feed simulator.")
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    asyncio.run(serve_until_signalled(simulator_from_options(options), lambda line: print(line, flush=True)))
    return 0
