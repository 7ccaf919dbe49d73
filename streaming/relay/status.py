"""What a feed relay reports about itself, for its probe port (``/healthz``, ``/readyz``) and its metrics.

The relay sets plain attributes as things happen (a published frame costs one integer increment, no lock, no metric
object); probes and scrapes read them on the same event loop when they ask. Readiness says whether the relay does its
part: streaming, if it holds the market's lease, or standing by with Redis answering, ready to take over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

OK = "ok"
UNREACHABLE = "unreachable"
NOT_REACHED_YET = "not reached yet"
LEASE_HELD = "held"
LEASE_STANDBY = "held by another relay"
LEASE_UNKNOWN = "unknown"
UPSTREAM_CONNECTED = "connected"
UPSTREAM_NOT_CONNECTED = "not connected"
UPSTREAM_NOT_NEEDED = "not needed"


@dataclass(frozen=True, slots=True)
class Readiness:
    """The ``/readyz`` answer, shaped like the gateway's (``cutemarkets.health.readyz``)."""

    ready: bool
    checks: dict[str, str]
    failed: list[str]

    def body(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "unavailable", "checks": self.checks, "failed": self.failed}


class RelayStatus:
    """One relay's state, set by `streaming.relay.leader.FeedRelay` and its sessions.

    *redis_fresh_seconds*: how recent a standby's last lease attempt must have been answered for it to count as ready
    (a few of its polls: an attempt hanging on a silent Redis makes it stale).
    """

    def __init__(self, market: str, redis_fresh_seconds: float) -> None:
        self.market = market
        self.redis_fresh_seconds = redis_fresh_seconds
        self.running = False
        self.lease_held = False
        self.upstream_connected = False
        self.frames_published = 0
        self.registered_items = 0
        self.lease_acquisitions = 0
        self.upstream_failures = 0
        self._redis_answered_at: float | None = None
        self._redis_failed = False

    def redis_answered(self) -> None:
        """A lease attempt got Redis's answer (taken or held by another relay)."""
        self._redis_answered_at = time.monotonic()
        self._redis_failed = False

    def redis_failed(self) -> None:
        """A lease attempt could not reach Redis."""
        self._redis_failed = True

    def readiness(self) -> Readiness:
        """Ready while holding the lease with the upstream connection open, or while standing by with Redis
        answering. A holder's Redis is not checked here: its lease keeper gives the lease up within two thirds of the
        TTL once Redis stops confirming it, which makes it a standby that cannot reach Redis."""
        if self.lease_held:
            upstream = UPSTREAM_CONNECTED if self.upstream_connected else UPSTREAM_NOT_CONNECTED
            checks = {"redis": OK, "lease": LEASE_HELD, "upstream": upstream}
            failed = [] if self.upstream_connected else ["upstream"]
        else:
            redis = self._standby_redis()
            checks = {
                "redis": redis,
                "lease": LEASE_STANDBY if redis == OK else LEASE_UNKNOWN,
                "upstream": UPSTREAM_NOT_NEEDED,
            }
            failed = [] if redis == OK else ["redis"]
        return Readiness(not failed, checks, failed)

    def _standby_redis(self) -> str:
        if self._redis_failed:
            return UNREACHABLE
        if self._redis_answered_at is None:
            return NOT_REACHED_YET
        if time.monotonic() - self._redis_answered_at > self.redis_fresh_seconds:
            return UNREACHABLE
        return OK
