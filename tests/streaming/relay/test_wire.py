"""The relay envelope, gap detection and ack filtering: pure functions, no Redis."""

from __future__ import annotations

import re

import orjson
import pytest

from streaming.exceptions import RelayGap, UpstreamUnavailable
from streaming.relay.wire import (
    KIND_ACK,
    KIND_END,
    KIND_FRAME,
    KIND_HEARTBEAT,
    Change,
    RelayNames,
    SequenceCheck,
    ack_frame,
    decode,
    decode_ack,
    decode_change,
    encode,
    encode_ack,
    encode_change,
    source_of,
    upstream_acks,
    without_upstream_acks,
)

FRAME = b'[{"ev":"T","sym":"BRK.B","p":1.5,"c":[0,12]},{"ev":"Q","sym":"O:SPY260515C00500000"}]'


def status(message: str, state: str = "success") -> dict:
    return {"ev": "status", "status": state, "message": message}


@pytest.mark.parametrize("kind", [KIND_FRAME, KIND_ACK, KIND_HEARTBEAT, KIND_END])
def test_envelope_round_trip_keeps_the_payload_byte_for_byte(kind):
    payload = b"" if kind == KIND_HEARTBEAT else FRAME
    assert decode(encode(12, 345, kind, payload)) == (12, 345, kind, payload)


def test_payload_may_contain_the_separator():
    assert decode(encode(1, 2, KIND_FRAME, b"a:b:c")).payload == b"a:b:c"


@pytest.mark.parametrize("message", [b"", b"[1]", b"1:2", b"1:2:", b"1:2:Z[]", b"x:2:F[]", b"1:y:F[]", b":2:F[]"])
def test_anything_else_is_a_gap(message):
    with pytest.raises(RelayGap):
        decode(message)


def test_a_gap_is_an_upstream_failure_so_the_hub_closes_its_clients():
    assert issubclass(RelayGap, UpstreamUnavailable)


def test_sequence_takes_its_baseline_from_the_first_envelope_and_then_wants_each_next_one():
    sequence = SequenceCheck()
    sequence.check(7, 1000)
    sequence.check(7, 1001)
    sequence.check(7, 1002)
    assert (sequence.epoch, sequence.seq) == (7, 1002)


@pytest.mark.parametrize(
    ("epoch", "seq", "message"),
    [(7, 13, "2 message(s) missed"), (7, 10, "10 after 10"), (7, 3, "3 after 10"), (8, 11, "epoch changed from 7 to 8"),
     (8, 1, "epoch changed")],
)
def test_skips_repeats_reorders_and_new_epochs_are_gaps(epoch, seq, message):
    sequence = SequenceCheck()
    sequence.check(7, 10)
    with pytest.raises(RelayGap, match=re.escape(message)):
        sequence.check(epoch, seq)


def test_ack_round_trip():
    items = ["T.AAPL", "Q.O:SPY260515C00500000", "T.*", "T.BRK.B"]
    assert decode_ack(encode_ack("host-1-ab/3", items)) == ("host-1-ab/3", items)


@pytest.mark.parametrize(
    ("change", "token", "items"),
    [(Change.ADDED, "host-1-ab/3", ["T.AAPL", "Q.O:SPY260515C00500000", "T.BRK.B"]),
     (Change.REMOVED, "host-1-ab", ["T.*"]), (Change.RELEASED, "host-1-ab", [])],
)
def test_change_round_trip(change, token, items):
    assert decode_change(encode_change(change, token, items)) == (change, token, items)
    assert source_of(token) == "host-1-ab"


@pytest.mark.parametrize("text", ["", "host-1-ab/3 T.AAPL", "?host-1-ab T.AAPL", "+ T.AAPL"])
def test_anything_else_is_not_a_change(text):
    with pytest.raises(ValueError):
        decode_change(text)


def test_ack_frame_is_the_upstreams_own_ack():
    assert orjson.loads(ack_frame(["T.AAPL", "Q.*"])) == [status("subscribed to: T.AAPL"), status("subscribed to: Q.*")]


def test_upstream_acks_reads_subscribed_and_unsubscribed_items():
    frame = orjson.dumps([status("subscribed to: T.AAPL"), status("unsubscribed to: Q.*"), status("x", "error")])
    assert upstream_acks(frame) == (["T.AAPL"], ["Q.*"])
    assert upstream_acks(FRAME) == ([], [])


def test_data_frames_pass_untouched_and_the_upstreams_success_statuses_are_dropped():
    assert without_upstream_acks(FRAME) is FRAME
    assert without_upstream_acks(orjson.dumps([status("subscribed to: T.AAPL")])) is None
    error = status("something went wrong", "error")
    mixed = orjson.dumps([status("subscribed to: T.AAPL"), error, {"ev": "T", "sym": "A"}])
    assert orjson.loads(without_upstream_acks(mixed)) == [error, {"ev": "T", "sym": "A"}]
    only_error = orjson.dumps([error])
    assert without_upstream_acks(only_error) is only_error


def test_names_live_under_the_prefix_per_market():
    names = RelayNames("cm:relay:", "stocks")
    assert names.frames == "cm:relay:stocks:frames"
    assert names.items("p1") == "cm:relay:stocks:items:p1"
    assert {names.requests, names.lease, names.epoch, names.live, names.sources} == {
        f"cm:relay:stocks:{name}" for name in ("requests", "lease", "epoch", "live", "sources")
    }
