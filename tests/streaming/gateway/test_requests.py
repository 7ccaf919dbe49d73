"""Client requests without a socket: the plan-cap split, the flood refusal, and the auth message in each phase,
with a stand-in for the connection that records what it is asked to send. Subscriptions through a real hub and
upstream are in tests/e2e/test_streaming.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from streaming import codes
from streaming.gateway.admission import Admission, Phase
from streaming.gateway.credentials import SOURCE_HEADER, MalformedCredential, StreamAuth
from streaming.gateway.protocol import ClientMessage
from streaming.gateway.requests import ClientRequests, over_plan_cap
from streaming.gateway.rules import Rule
from streaming.hub.hub import UpstreamHub
from streaming.hub.index import Subscription
from streaming.runtime.tasks import BackgroundTasks
from tests.streaming.gateway.test_admission import Applicant


def items(*texts: str) -> list[Subscription]:
    return [Subscription(*text.split(".", 1)) for text in texts]


class Connection(Applicant):
    """A connection without a socket (a ``Client``): it records statuses, queued frames and its last word."""

    def __init__(self) -> None:
        super().__init__()
        self.hub: UpstreamHub | None = None
        self.statuses: list[tuple[codes.Status, str]] = []
        self.frames: list[bytes] = []
        self.closed: tuple[int, codes.Status, str] | None = None

    def queue(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)

    def deliver(self, frames: list[bytes], events: int = 0, received_at: float = 0.0) -> None:
        self.frames.extend(frames)

    def upstream_failed(self, message: str) -> None:
        self.closed = (codes.CloseCode.INTERNAL_ERROR, codes.Status.ERROR, message)

    async def send_status(self, status: codes.Status, message: str) -> None:
        self.statuses.append((status, message))

    async def close_with_status(self, code: int, status: codes.Status, message: str) -> None:
        self.phase = Phase.CLOSED
        self.closed = (code, status, message)


@pytest.fixture
async def tasks() -> AsyncIterator[BackgroundTasks]:
    background = BackgroundTasks()
    yield background
    await background.stop()


def requests_of(connection: Connection, tasks: BackgroundTasks) -> ClientRequests:
    return ClientRequests(connection, Admission(connection, tasks))


# --- the plan's cap -------------------------------------------------------------------------------------------------


def test_a_subscription_within_the_cap_passes_and_items_already_held_count_once():
    held = frozenset(items("T.A", "T.B"))
    assert over_plan_cap(items("T.C"), frozenset(), cap=1) is None
    assert over_plan_cap(items("T.A", "T.B", "T.C"), held, cap=3) is None


def test_a_subscription_over_the_cap_is_refused_whole_in_the_feeds_words():
    refusal = over_plan_cap(items("T.A", "T.C", "T.D"), frozenset(items("T.A", "T.B")), cap=3)
    assert refusal == (
        "Subscription limit reached for feed. Please remove some subscriptions and try again. "
        "(2 held + 2 new > 3 items per connection on your plan; nothing was subscribed)"
    )


def test_a_connection_over_its_cap_keeps_what_it_holds_and_gets_nothing_new():
    """A plan can shrink under a live connection: what it holds stays, nothing is added."""
    held = frozenset(items("T.A", "T.B", "T.C"))
    assert over_plan_cap(items("T.B"), held, cap=2) is None  # nothing new: nothing to refuse
    assert over_plan_cap(items("T.B", "T.D"), held, cap=2) is not None


def refusals(reason: str) -> float:
    labels = {"market": Connection().market, "reason": reason}
    return REGISTRY.get_sample_value("cutemarkets_stream_refusals_total", labels) or 0.0


# --- floods ---------------------------------------------------------------------------------------------------------


async def test_the_message_budget_comes_from_the_settings(settings, tasks):
    settings.STREAM_CLIENT_MESSAGE_RATE = 0.001
    settings.STREAM_CLIENT_MESSAGE_BURST = 2
    budget = requests_of(Connection(), tasks).message_budget
    assert [budget.take() for _ in range(3)] == [True, True, False]


async def test_refused_messages_are_answered_until_the_client_is_closed_1008(settings, tasks):
    settings.STREAM_CLIENT_MESSAGE_RATE = 4
    settings.STREAM_CLIENT_REFUSALS_BEFORE_CLOSE = 3
    connection = Connection()
    requests = requests_of(connection, tasks)
    before = refusals("message_rate")
    for _ in range(2):
        await requests.refuse_flood()
    assert connection.statuses == [
        (codes.Status.ERROR, "rate limit exceeded (4 messages per second): message ignored")
    ] * 2
    assert connection.closed is None
    assert refusals("message_rate") - before == 2
    await requests.refuse_flood()
    assert connection.closed == (
        codes.CloseCode.POLICY_VIOLATION, codes.Status.ERROR, "too many messages: more than 4 per second, closing"
    )


# --- the auth message -----------------------------------------------------------------------------------------------


async def test_an_auth_message_after_admission_is_confirmed_again(tasks):
    connection = Connection()
    connection.phase = Phase.ADMITTED
    await requests_of(connection, tasks).on_auth_message(ClientMessage(codes.Action.AUTH, "any key"))
    assert connection.statuses == [(codes.Status.AUTH_SUCCESS, codes.MESSAGE_AUTHENTICATED)]
    assert connection.rejections.empty()


async def test_an_auth_message_while_a_rejection_waits_gets_that_rejection(settings, tasks):
    settings.STREAM_REJECT_GRACE = 30
    connection = Connection()
    admission = Admission(connection, tasks)
    await admission.start(StreamAuth(MalformedCredential(SOURCE_HEADER, "several Authorization headers")))
    await ClientRequests(connection, admission).on_auth_message(ClientMessage(codes.Action.AUTH, "a better key"))
    assert connection.rejections.get_nowait().rule is Rule.MALFORMED_CREDENTIAL


@pytest.mark.parametrize("params", [None, "", 42, ["cmo_key"]], ids=["none", "empty", "number", "list"])
async def test_an_auth_message_without_a_key_string_is_4401_at_once(tasks, params):
    connection = Connection()
    await requests_of(connection, tasks).on_auth_message(ClientMessage(codes.Action.AUTH, params))
    rejection = connection.rejections.get_nowait()
    assert (rejection.code, rejection.rule) == (codes.CloseCode.UNAUTHORIZED, Rule.MISSING_KEY)


async def test_an_auth_message_after_the_close_is_decided_is_ignored(tasks):
    connection = Connection()
    connection.phase = Phase.CLOSING
    await requests_of(connection, tasks).on_auth_message(ClientMessage(codes.Action.AUTH, "cmo_key"))
    assert connection.statuses == [] and connection.rejections.empty() and connection.closed is None
