"""The relay's bookkeeping: sources' items counted change by change, upstream subscriptions with grace, and which
gateway requests it may ack. Pure code, no Redis."""

from __future__ import annotations

from streaming.relay.subscriptions import SourceItems, UpstreamSubscriptions

GRACE = 5.0


# --- SourceItems --------------------------------------------------------------------------------------------------


def test_only_the_first_holder_of_an_item_makes_it_needed():
    sources = SourceItems()
    assert sources.add("g1", ["T.AAPL", "Q.*"]) == ["T.AAPL", "Q.*"]
    assert sources.add("g2", ["T.AAPL", "T.MSFT"]) == ["T.MSFT"]
    assert sources.sources() == {"g1", "g2"}


def test_only_the_last_holder_of_an_item_makes_it_unneeded():
    sources = SourceItems()
    sources.add("g1", ["T.AAPL", "Q.*"])
    sources.add("g2", ["T.AAPL"])
    assert sources.remove("g1", ["T.AAPL"]) == []
    assert sources.remove("g2", ["T.AAPL"]) == ["T.AAPL"]


def test_replaying_a_change_is_harmless():
    sources = SourceItems()
    sources.add("g1", ["T.AAPL"])
    assert sources.add("g1", ["T.AAPL"]) == []  # the snapshot had it, then its announcement arrived
    assert sources.remove("g1", ["T.AAPL"]) == ["T.AAPL"]
    assert sources.remove("g1", ["T.AAPL"]) == []
    assert sources.remove("g9", ["T.AAPL"]) == []  # a source the relay never saw


def test_dropping_a_source_unneeds_what_only_it_held():
    sources = SourceItems()
    sources.add("g1", ["T.AAPL", "Q.*"])
    sources.add("g2", ["Q.*"])
    assert sources.drop("g1") == ["T.AAPL"]
    assert sources.drop("g1") == []
    assert sources.sources() == {"g2"}
    assert sources.drop("g2") == ["Q.*"]


# --- UpstreamSubscriptions ------------------------------------------------------------------------------------------


def test_needed_items_are_subscribed_once():
    subscriptions = UpstreamSubscriptions(GRACE)
    assert subscriptions.need(["T.AAPL", "Q.*"]) == ["T.AAPL", "Q.*"]
    assert subscriptions.need(["T.AAPL"]) == []
    assert subscriptions.subscribed == {"T.AAPL", "Q.*"}


def test_unneeded_items_are_due_only_after_the_grace():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL", "Q.*"])
    subscriptions.unneed(["T.AAPL"], now=10.0)
    assert subscriptions.due(now=14.9) == []
    assert subscriptions.due(now=15.0) == ["T.AAPL"]
    assert subscriptions.due(now=30.0) == []
    assert subscriptions.subscribed == {"Q.*"}


def test_items_fall_due_in_the_order_they_became_unneeded():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.A", "T.B", "T.C"])
    subscriptions.unneed(["T.B"], now=1.0)
    subscriptions.unneed(["T.A"], now=2.0)
    subscriptions.unneed(["T.C"], now=9.0)
    assert subscriptions.due(now=7.0) == ["T.B", "T.A"]
    assert subscriptions.due(now=14.0) == ["T.C"]


def test_an_item_needed_again_within_the_grace_stays_and_its_clock_restarts():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL"])
    subscriptions.unneed(["T.AAPL"], now=1.0)
    assert subscriptions.need(["T.AAPL"]) == []  # no upstream round trip
    assert subscriptions.due(now=6.0) == []
    subscriptions.unneed(["T.AAPL"], now=5.0)
    assert subscriptions.due(now=9.0) == []
    assert subscriptions.due(now=10.0) == ["T.AAPL"]


def test_unneeding_what_is_not_subscribed_changes_nothing():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.unneed(["T.AAPL"], now=0.0)
    assert subscriptions.due(now=1.0) == []


def test_zero_grace_removes_at_once():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.need(["T.AAPL"])
    subscriptions.unneed(["T.AAPL"], now=0.0)
    assert subscriptions.due(now=0.0) == ["T.AAPL"]


def test_a_request_is_acked_once_the_upstream_answered():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL", "Q.AAPL"])
    assert subscriptions.request("g1/1", ["T.AAPL", "Q.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"]}
    assert subscriptions.answered(["Q.AAPL"]) == {"g1/1": ["Q.AAPL"]}
    assert subscriptions.answered(["T.AAPL", "Q.AAPL"]) == {}  # each request is acked once


def test_items_already_confirmed_are_acked_at_once_for_another_gateway():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL"])
    subscriptions.answered(["T.AAPL"])
    subscriptions.need(["T.AAPL", "T.*"])
    assert subscriptions.request("g2/1", ["T.AAPL", "T.*"]) == ["T.AAPL"]
    assert subscriptions.answered(["T.*"]) == {"g2/1": ["T.*"]}


def test_several_requests_wait_for_the_same_item():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL"])
    subscriptions.request("g1/1", ["T.AAPL"])
    subscriptions.request("g2/7", ["T.AAPL"])
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"], "g2/7": ["T.AAPL"]}


def test_an_item_in_its_grace_is_still_confirmed():
    subscriptions = UpstreamSubscriptions(GRACE)
    subscriptions.need(["T.AAPL"])
    subscriptions.answered(["T.AAPL"])
    subscriptions.unneed(["T.AAPL"], now=1.0)
    assert subscriptions.request("g1/2", ["T.AAPL"]) == ["T.AAPL"]


def test_items_the_relay_does_not_hold_are_never_acked():
    subscriptions = UpstreamSubscriptions(GRACE)
    assert subscriptions.request("g1/1", ["T.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {}


def test_a_resubscription_is_confirmed_only_by_its_own_answer_not_a_late_earlier_one():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.need(["T.AAPL"])  # subscribe sent
    subscriptions.unneed(["T.AAPL"], now=1.0)
    assert subscriptions.due(now=1.0) == ["T.AAPL"]  # unsubscribe sent before the first answer
    assert subscriptions.need(["T.AAPL"]) == ["T.AAPL"]  # subscribe sent again
    assert subscriptions.request("g1/1", ["T.AAPL"]) == []
    assert subscriptions.answered(["T.AAPL"]) == {}  # "subscribed to" (the first)
    assert subscriptions.answered(["T.AAPL"]) == {}  # "unsubscribed to"
    assert subscriptions.answered(["T.AAPL"]) == {"g1/1": ["T.AAPL"]}  # "subscribed to" (the second)


def test_requests_waiting_for_a_removed_item_are_forgotten():
    subscriptions = UpstreamSubscriptions(0.0)
    subscriptions.need(["T.AAPL"])
    subscriptions.request("g1/1", ["T.AAPL"])
    subscriptions.unneed(["T.AAPL"], now=1.0)
    subscriptions.due(now=1.0)
    assert subscriptions.answered(["T.AAPL", "T.AAPL"]) == {}
