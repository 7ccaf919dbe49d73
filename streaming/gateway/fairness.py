"""Admission budgets per client address, so that one address's handshakes cost only that address.

Every handshake costs the process a TLS-less HTTP parse, an accept and, with a key, a cache read and on a miss a
database query, and an open socket holds memory until it authenticates or times out. One address once made 171
handshakes a second with random keys (others' admission went from 7 to 144 ms) or held 3,000 keyless sockets
open. Each address therefore has, in each gateway process:

- a token bucket of handshakes (``STREAM_ADDRESS_HANDSHAKE_RATE`` per second, bursts of ``..._BURST``);
- a budget of failed key resolutions (``STREAM_ADDRESS_FAILURES_PER_MINUTE``): past it, the address is refused for
  the rest of that minute without its keys being looked up at all;
- a cap on its sockets not yet admitted (``STREAM_ADDRESS_PENDING_SOCKETS``).

A refusal closes with 1013 "try again later" after an ``error`` status. That answer still costs a whole WebSocket
handshake (HTTP, autobahn, an application instance, three frames): an address refused
``STREAM_ADDRESS_REFUSALS_BEFORE_DROP`` times within a minute, that is one ignoring the 1013s, has its next upgrade
requests dropped unanswered, before daphne builds anything for them (``drops``, given to the daphne shim's
``upgrade_filter``), until the minute is over. A customer's own reconnects pass: they fail
no resolution, and the handshake budget is far above any reconnect loop. IPv6 clients are budgeted per /64, the
block one subscriber usually holds. The address is the one daphne reports (behind the load balancer, the
``X-Forwarded-For`` it sets: see README, Deploying). Entries of quiet addresses are forgotten, so the table stays
bounded by the addresses active within a minute.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streaming.conf import stream_settings
from streaming.runtime.loop_local import LoopLocal
from streaming.runtime.ratelimit import TokenBucket

FAILURE_WINDOW_SECONDS = 60.0
FORGET_AFTER_SECONDS = 2 * FAILURE_WINDOW_SECONDS
PRUNE_EVERY = 1024
"""Handshakes between two sweeps of forgotten addresses."""
IPV6_BUDGET_PREFIX = 64
logger = logging.getLogger(__name__)
BLOCKED_MESSAGE = "too many failed authentications from your address: try again in a minute"


@dataclass(frozen=True, slots=True)
class AddressLimits:
    handshake_rate: float
    handshake_burst: int
    failures_per_minute: int
    pending_sockets: int
    refusals_before_drop: int


@dataclass(slots=True)
class MinuteCount:
    """Events of one kind from an address within the current minute; reaching a limit holds the address until the
    minute is over."""

    count: int = 0
    started_at: float = 0.0
    held_until: float = 0.0

    def add(self, now: float, limit: int) -> bool:
        """Count one event; True for the one that reaches *limit* (the address is held from then on)."""
        if now - self.started_at >= FAILURE_WINDOW_SECONDS:
            self.started_at, self.count = now, 0
        self.count += 1
        if self.count >= limit:
            self.held_until = self.started_at + FAILURE_WINDOW_SECONDS
        return self.count == limit

    def holds(self, now: float) -> bool:
        return self.held_until > now


@dataclass(slots=True)
class AddressState:
    handshakes: TokenBucket
    seen_at: float
    failures: MinuteCount = field(default_factory=MinuteCount)  # past the limit: keys not looked up
    refusals: MinuteCount = field(default_factory=MinuteCount)  # past the limit: upgrades dropped
    pending: int = 0


@dataclass(eq=False, slots=True)
class PendingSocket:
    """One socket of an address that is not admitted yet; ``release`` (idempotent) when it is, or when it ends."""

    state: AddressState
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state.pending -= 1


def budget_key(address: str) -> str:
    """The address an IPv4 client is budgeted by, or the /64 of an IPv6 one; unparsable text as it is."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_BUDGET_PREFIX}", strict=False))
    return str(parsed)


class AddressBudgets:
    """This process's budgets of every client address (one instance per event loop)."""

    _instances: LoopLocal[AddressBudgets] = LoopLocal()

    def __init__(self, limits: AddressLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._states: dict[str, AddressState] = {}
        self._until_prune = PRUNE_EVERY

    @classmethod
    def for_loop(cls) -> AddressBudgets:
        def make() -> AddressBudgets:
            settings = stream_settings()
            return cls(AddressLimits(
                settings.address_handshake_rate, settings.address_handshake_burst,
                settings.address_failures_per_minute, settings.address_pending_sockets,
                settings.address_refusals_before_drop,
            ))

        return cls._instances.get(make)

    def admit_handshake(self, address: str) -> PendingSocket | str:
        """A new socket from *address*: its pending slot, or why the address is refused (nothing is counted then)."""
        now = self._clock()
        state = self._state(address, now)
        if state.failures.holds(now):
            refusal = BLOCKED_MESSAGE
        elif state.pending >= self.limits.pending_sockets:
            refusal = (
                f"too many connections from your address waiting to authenticate "
                f"(at most {self.limits.pending_sockets}): try again later"
            )
        elif not state.handshakes.take():
            refusal = (
                f"too many connection attempts from your address "
                f"(more than {self.limits.handshake_rate:g} per second): try again later"
            )
        else:
            state.pending += 1
            return PendingSocket(state)
        self._refused(address, state, now)
        return refusal

    def drops(self, address: str) -> bool:
        """Whether upgrade requests from *address* are dropped unanswered: it kept connecting after enough 1013s."""
        state = self._states.get(budget_key(address))
        return state is not None and state.refusals.holds(self._clock())

    def _refused(self, address: str, state: AddressState, now: float) -> None:
        if state.refusals.add(now, self.limits.refusals_before_drop):  # once per address and minute
            logger.warning(
                "address %s refused %d times within a minute: its upgrade requests are dropped for %.0f s",
                budget_key(address), state.refusals.count, state.refusals.held_until - now,
            )

    def is_blocked(self, address: str) -> bool:
        """Whether keys from *address* are refused without being looked up (see ``resolution_failed``)."""
        state = self._states.get(budget_key(address))
        return state is not None and state.failures.holds(self._clock())

    def resolution_failed(self, address: str) -> None:
        """A key from *address* was malformed, unknown, revoked or expired; past the budget, block the address."""
        now = self._clock()
        state = self._state(address, now)
        state.failures.add(now, self.limits.failures_per_minute)

    def tracked_addresses(self) -> int:
        return len(self._states)

    def _state(self, address: str, now: float) -> AddressState:
        self._until_prune -= 1
        if self._until_prune <= 0:
            self._prune(now)
        key = budget_key(address)
        state = self._states.get(key)
        if state is None:
            bucket = TokenBucket(self.limits.handshake_rate, self.limits.handshake_burst, self._clock)
            state = self._states[key] = AddressState(bucket, now)
        state.seen_at = now
        return state

    def _prune(self, now: float) -> None:
        self._until_prune = PRUNE_EVERY
        self._states = {
            key: state for key, state in self._states.items()
            if state.pending or state.failures.holds(now) or state.refusals.holds(now)
            or now - state.seen_at < FORGET_AFTER_SECONDS
        }
