"""The bench harness's own arithmetic: send-time stamps and event-weighted percentiles."""

from __future__ import annotations

import time

import numpy as np
import orjson

from bench.upstream import PLACEHOLDER_BYTES, read_stamp, stamp
from bench.workers import split, weighted_percentiles


def test_stamp_replaces_every_placeholder_with_one_send_time():
    frame = b"[{" + b"},{".join([b'"ev":"T","q":1,' + PLACEHOLDER_BYTES, b'"ev":"Q","q":2,' + PLACEHOLDER_BYTES]) + b"}]"
    before = time.time_ns()
    stamped = stamp(frame)
    events = orjson.loads(stamped)
    assert events[0]["bt"] == events[1]["bt"] == read_stamp(stamped)
    assert before <= events[0]["bt"] <= time.time_ns()
    assert len(stamped) == len(frame)
    assert read_stamp(b'[{"ev":"status"}]') is None


def test_weighted_percentiles_count_each_value_by_its_weight():
    values = np.array([5.0, 1.0, 100.0])
    weights = np.array([1, 98, 1])
    result = weighted_percentiles(values, weights)
    assert result["p50"] == 1.0
    assert result["p99"] == 5.0
    assert result["p99.9"] == 100.0
    assert result["max"] == 100.0


def test_weighted_percentiles_of_nothing_are_nan():
    result = weighted_percentiles(np.array([]), np.array([], dtype=np.int64))
    assert all(value != value for value in result.values())


def test_split_spreads_items_evenly():
    assert split(list(range(5)), 2) == [[0, 2, 4], [1, 3]]
