"""The cyclic garbage collector, tuned for a server that holds thousands of long-lived connections.

With CPython's defaults (a young collection every 700 net allocations of containers, a full one whenever the
survivors grew by a quarter) the gateway spent a large share of an admission storm's CPU in the collector: every
connection's objects (protocol, transport, consumer, tasks) survive into the old generation, and each full
collection walked all of them and everything Django and the app loaded at start-up, stopping the event loop, i.e.
every customer's stream, for up to 440 ms at a time (bench, admission storm: 13 full collections and 4.0 s in the
collector in 23 s; BENCHMARKS.md).

Two changes: what start-up made is frozen (moved to the permanent generation the collector never walks; it lives as long
as the process anyway), and young collections run every ``YOUNG_THRESHOLD`` allocations rather than 700, so far fewer
collections walk far fewer survivors (BENCHMARKS.md has the storm's figures). 50,000 did no better than 10,000 and makes
each young collection's pause five times longer. Cyclic garbage is still collected; a young generation that large costs
a megabyte or two.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net allocations of container objects between young collections (CPython: 700)."""
MIDDLE_THRESHOLD = 10
"""Young collections between collections of the middle generation (as CPython's)."""
OLD_THRESHOLD = 10
"""Middle collections between full ones (as CPython's); a full one also waits for a quarter more survivors."""


def tune_for_server() -> None:
    """Call once, after start-up imported and built everything that lives as long as the process."""
    gc.collect()  # start-up's garbage is not frozen with what it keeps
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
