"""Ports for child processes to bind: the development stack's servers, the tests' and the benchmarks' processes."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()  # never the same port twice in one process, though the first may not be bound yet


def free_port() -> int:
    """A port nothing listens on, for a process started later to bind. Chosen below the kernel's ephemeral range:
    a port from that range (what ``bind(0)`` hands out) can become the local end of some process's outgoing
    connection before the child binds it, which then fails with "address already in use"."""
    lowest_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, lowest_ephemeral - 10_000), lowest_ephemeral)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")
