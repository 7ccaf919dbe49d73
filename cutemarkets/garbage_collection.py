"""The cyclic garbage collector, tuned for a server that holds thousands of long-lived connections.

With CPython's defaults (a young collection every 700 net allocations of containers, a full one whenever the
survivors grew by a quarter) the gateway spent a large share of an admission storm's CPU in the collector: every
connection's objects (protocol, transport, consumer, tasks) survive into the old generation, and each full
collection walked all of them and everything Django and the app loaded at start-up, stopping the event loop, i.e.
every customer's stream, for up to 400 ms at a time (bench, admission storm: 12 full collections and 3.3 s in the
collector out of about 11 s of gateway CPU; see BENCHMARKS.md).

Two changes: what start-up made is frozen (moved to the permanent generation the collector never walks; it lives as
long as the process anyway), and young collections run every ``YOUNG_THRESHOLD`` allocations, so the short-lived
objects of a message or a handshake are mostly freed by reference counting before a collection sees them and far
fewer are promoted. Cyclic garbage is still collected; a young generation that large costs a few megabytes.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
"""Net allocations of container objects between young collections (CPython: 700)."""
MIDDLE_THRESHOLD = 20
"""Young collections between collections of the middle generation (CPython: 10)."""
OLD_THRESHOLD = 100
"""Middle collections between full collections (CPython: 10); a full one also waits for a quarter more survivors."""


def tune_for_server() -> None:
    """Call once, after start-up imported and built everything that lives as long as the process."""
    gc.collect()  # start-up's garbage is not frozen with what it keeps
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
