"""The relay's reconciliation with grace, and which gateway requests it may ack: pure bookkeeping, no Redis."""

from __future__ import annotations

from streaming.relay.subscriptions import UpstreamSubscriptions

GRACE = 5.0


def test_new_items_are_added_at_once():
    subscriptions = UpstreamSubscriptions(GRACE)
    assert subscriptions.reconcile({"T.AAPL", "Q.*"}, now=0.0) == ({"T.AAPL", "Q.*"}, set())
    assert subscriptions.reconcile({"T.AAPL", "Q.*"}, now=1.0) == (set(), set())


def test_unneeded_items_are_removed_only_after_the_grace():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL", "Q.*"}, now=0.0)
    assert subscriptions.reconcile({"Q.*"}, now=10.0) == (set(), set())
    assert subscriptions.reconcile({"Q.*"}, now=14.9) == (set(), set())
    assert subscriptions.reconcile({"Q.*"}, now=15.0) == (set(), {"T.AAPL"})
    assert subscriptions.subscribed == {"Q.*"}


def test_an_item_needed_again_within_the_grace_stays_and_its_clock_restarts():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    subscriptions.reconcile(set(), now=1.0)
    assert subscriptions.reconcile({"T.AAPL"}, now=4.0) == (set(), set())
    subscriptions.reconcile(set(), now=5.0)
    assert subscriptions.reconcile(set(), now=9.0) == (set(), set())
    assert subscriptions.reconcile(set(), now=10.0) == (set(), {"T.AAPL"})


def test_zero_grace_removes_at_once():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    assert subscriptions.reconcile(set(), now=0.0) == (set(), {"T.AAPL"})


def test_a_request_is_acked_once_the_upstream_answered():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL", "Q.AAPL"}, now=0.0)
    assert subscriptions.request("g1/1", ["T.AAPL", "Q.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"]}
    assert subscriptions.answered(["Q.AAPL"]) == {"g1/1": ["Q.AAPL"]}
    assert subscriptions.answered(["T.AAPL", "Q.AAPL"]) == {}  # each request is acked once


def test_items_already_confirmed_are_acked_at_once_for_another_gateway():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    subscriptions.answered(["T.AAPL"])
    subscriptions.reconcile({"T.AAPL", "T.*"}, now=1.0)
    assert subscriptions.request("g2/1", ["T.AAPL", "T.*"]) == ["T.AAPL"]
    assert subscriptions.answered(["T.*"]) == {"g2/1": ["T.*"]}


def test_several_requests_wait_for_the_same_item():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    subscriptions.request("g1/1", ["T.AAPL"])
    subscriptions.request("g2/7", ["T.AAPL"])
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"], "g2/7": ["T.AAPL"]}


def test_an_item_in_its_grace_is_still_confirmed():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    subscriptions.answered(["T.AAPL"])
    subscriptions.reconcile(set(), now=1.0)
    assert subscriptions.request("g1/2", ["T.AAPL"]) == ["T.AAPL"]


def test_items_the_relay_does_not_hold_are_never_acked():
    subscriptions = UpstreamSubscriptions(GRACE)
    assert subscriptions.request("g1/1", ["T.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {}


def test_a_resubscription_is_confirmed_only_by_its_own_answer_not_a_late_earlier_one():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)  # subscribe sent
    subscriptions.reconcile(set(), now=1.0)  # unsubscribe sent before the first answer
    subscriptions.reconcile({"T.AAPL"}, now=2.0)  # subscribe sent again
    assert subscriptions.request("g1/1", ["T.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {}  # "subscribed to" (the first)
    assert subscriptions.answered(["T.AAPL"]) == {}  # "unsubscribed to"
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"]}  # "subscribed to" (the second)


def test_requests_waiting_for_a_removed_item_are_forgotten():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.reconcile({"T.AAPL"}, now=0.0)
    subscriptions.request("g1/1", ["T.AAPL"])
    subscriptions.reconcile(set(), now=1.0)
    assert subscriptions.answered(["T.AAPL", "T.AAPL"]) == {}
