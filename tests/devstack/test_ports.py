"""devstack/ports.py: the ports the tests, the benchmarks and the development stack hand to child processes."""

from __future__ import annotations

import socket

from devstack.ports import EPHEMERAL_PORTS, free_port


def test_ports_are_below_the_ephemeral_range_never_repeated_and_bindable() -> None:
    lowest_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < lowest_ephemeral for port in ports)
    for port in ports[:5]:
        with socket.socket() as child:  # what the child process does with it
            child.bind(("127.0.0.1", port))

