"""The patched ``onPing`` on a stand-in protocol (no socket): the budget, and the keep-alive clock a ping resets.
The budget's closes through a real daphne are in tests/e2e/test_isolation.py."""

from __future__ import annotations

import time

from streaming.daphne.pings import patched_on_ping


class Protocol:
    """What ``onPing`` touches of a daphne WebSocket protocol that has no ``FlowControl`` attached."""

    STATE_OPEN = 1

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.last_ping = 0.0


def test_a_ping_within_the_budget_is_answered_and_postpones_the_keep_alive_ping() -> None:
    answered: list[bytes] = []
    on_ping = patched_on_ping(lambda protocol, payload: answered.append(payload))
    protocol = Protocol()
    before = time.time()
    on_ping(protocol, b"are you there")
    assert answered == [b"are you there"]  # no FlowControl: autobahn's own answer
    assert before <= protocol.last_ping <= time.time()  # daphne pings once nothing came for an interval from now
