"""The bench harness's own arithmetic: send-time stamps and event-weighted percentiles."""

from __future__ import annotations

import time

import numpy as np
import orjson

from bench.upstream import PLACEHOLDER_BYTES, read_stamp, stamp
from bench.workers import split, weighted_percentiles


def test_stamp_replaces_every_placeholder_with_one_send_time():
    bodies = [b'"ev":"T","q":1,' + PLACEHOLDER_BYTES, b'"ev":"Q","q":2,' + PLACEHOLDER_BYTES]
    frame = b"[{" + b"},{".join(bodies) + b"}]"
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


def test_compare_reports_latency_added_to_direct_clients_per_run():
    from bench.scenarios import Target, compare

    def trial(run: int, target: str, p50: float, p99: float) -> dict:
        return {"run": run, "target": target, "delivered_events_per_s": 100.0, "delivered_frames_per_s": 10.0,
                "events_per_frame": 10.0, "upstream_events_per_s": 100.0, "server_cpu_percent": 10.0,
                "server_cpu_us_per_event": 1.0, "server_rss_mb_max": 50.0, "clients_closed_by_server": {},
                "latency_ms": {"p50": p50, "p99": p99, "p99.9": p99, "max": p99}}

    targets = [Target("gateway", "daphne"), Target("ceiling", "ceiling"), Target("direct", "direct")]
    trials = [trial(0, "gateway", 3.0, 9.0), trial(0, "ceiling", 2.0, 6.0), trial(0, "direct", 1.0, 4.0),
              trial(1, "gateway", 8.0, 20.0), trial(1, "ceiling", 2.5, 7.0), trial(1, "direct", 6.0, 10.0)]
    result = compare(trials, targets, "ceiling", runs=2)
    # per run: gateway - direct = (2, 5) and (2, 10): the medians of the differences, not of the absolute figures
    assert result["gateway"]["added_latency_ms_vs_direct"]["p50"] == 2.0
    assert result["gateway"]["added_latency_ms_vs_direct"]["p99"] == 7.5
    assert "added_latency_ms_vs_direct" not in result["direct"]


def test_flat_profile_counts_each_function_once_per_stack():
    from bench.flat_profile import shares

    lines = ["main (a/app.py:1);send (b/net.py:9);send (b/net.py:12) 3\n", "main (a/app.py:1) 1\n"]
    total, inclusive, own = shares(lines)
    assert total == 4
    assert inclusive == {"main (app.py)": 4, "send (net.py)": 3}  # recursion counted once
    assert own == {"send (net.py)": 3, "main (app.py)": 1}
