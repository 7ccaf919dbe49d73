"""A Polygon.io/Massive-compatible market-data feed simulator: the gateway's upstream for development and tests.

It serves the real feed's protocol (same URLs, status strings and event shapes) with seeded, internally consistent
stock and option data, at any rate from a trickle to the machine's maximum, plus hooks for tests to drive it,
record it and break it on purpose.
"""

from .server import FeedSimulator

__all__ = ["FeedSimulator"]
