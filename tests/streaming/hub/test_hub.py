"""The hub's routing fast path: a group taking every event of a frame gets the upstream frame itself."""

from __future__ import annotations

import orjson

from streaming.hub.hub import UpstreamHub
from streaming.hub.index import Subscription


class Client:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)


def test_a_group_taking_every_event_gets_the_upstream_frame_unchanged():
    hub = UpstreamHub("stocks", "ws://unused", "key", idle_seconds=1)
    whole, narrow = Client(), Client()
    hub.index.set_subscriptions(whole, {Subscription("T", "*"), Subscription("Q", "*")})
    hub.index.set_subscriptions(narrow, {Subscription("T", "AAPL")})
    frame = b'[{"ev":"T","sym":"AAPL","p":1.5},  {"ev":"Q","sym":"MSFT","bp":2}]'
    hub._dispatch(frame)
    assert whole.frames == [frame] and whole.frames[0] is frame
    assert orjson.loads(narrow.frames[0]) == [{"ev": "T", "sym": "AAPL", "p": 1.5}]
    hub._dispatch(b'[{"ev":"T","sym":"MSFT","p":1}]')  # T.* alone covers it too
    assert whole.frames[-1] == b'[{"ev":"T","sym":"MSFT","p":1}]' and len(narrow.frames) == 1


def test_non_ascii_events_are_forwarded_as_utf8():
    hub = UpstreamHub("stocks", "ws://unused", "key", idle_seconds=1)
    narrow = Client()
    hub.index.set_subscriptions(narrow, {Subscription("T", "AAPL")})
    hub._dispatch('[{"ev":"T","sym":"AAPL","x":"é"},{"ev":"T","sym":"MSFT"}]'.encode())
    assert orjson.loads(narrow.frames[0]) == [{"ev": "T", "sym": "AAPL", "x": "é"}]
