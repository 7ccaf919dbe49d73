"""Each metrics function moves exactly its series, with bounded label values."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from streaming import metrics


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class Changes:
    """How much each sample moved since this object was made."""

    def __init__(self) -> None:
        self._before = self._samples()

    @staticmethod
    def _samples() -> dict[tuple[str, frozenset], float]:
        return {
            (entry.name, frozenset(entry.labels.items())): entry.value
            for family in REGISTRY.collect()
            for entry in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self._samples().get(key, 0.0) - self._before.get(key, 0.0)


def test_every_series_with_known_labels_exists_from_the_start():
    for market in ("options", "stocks"):
        assert sample("cutemarkets_stream_connections", market=market) is not None
        assert sample("cutemarkets_upstream_reconnects_total", market=market) is not None
        assert sample("cutemarkets_stream_forwarded_frames_total", market=market) is not None
        assert sample("cutemarkets_stream_send_delay_seconds_bucket", market=market, le="+Inf") is not None
        assert sample("cutemarkets_stream_send_delay_seconds_count", market=market) is not None
    for reason in ("lost", "unreachable"):
        assert sample("cutemarkets_stream_lock_refresh_failures_total", reason=reason) is not None


def test_admission_opens_a_live_connection_and_its_close_ends_it():
    changes = Changes()
    metrics.admitted("options")
    assert changes("cutemarkets_stream_admissions_total", market="options") == 1
    assert changes("cutemarkets_stream_connections", market="options") == 1
    metrics.connection_closed("options", 1000)
    assert changes("cutemarkets_stream_connections", market="options") == 0
    assert changes("cutemarkets_stream_closes_total", market="options", code="1000") == 1


def test_rejections_count_by_close_code():
    changes = Changes()
    for code in (4401, 4409, 4409, 1011):
        metrics.rejected("stocks", code)
    assert changes("cutemarkets_stream_rejections_total", market="stocks", code="4401") == 1
    assert changes("cutemarkets_stream_rejections_total", market="stocks", code="4409") == 2
    assert changes("cutemarkets_stream_rejections_total", market="stocks", code="1011") == 1
    assert changes("cutemarkets_stream_admissions_total", market="stocks") == 0


def test_labels_stay_bounded_whatever_the_client_sends():
    """Any path and any close code a client picks end up in one "other" series, not a new one each."""
    changes = Changes()
    metrics.rejected("crypto-" + "x" * 50, 4001)
    metrics.connection_closed("options", 3999)
    assert changes("cutemarkets_stream_rejections_total", market="other", code="other") == 1
    assert changes("cutemarkets_stream_closes_total", market="options", code="other") == 1
    assert sample("cutemarkets_stream_rejections_total", market="crypto-" + "x" * 50, code="4001") is None


class Sent:
    def __init__(self) -> None:
        self.frames_sent = 0
        self.bytes_sent = 0
        self.send_delay_counts = [0] * (len(metrics.SEND_DELAY_BOUNDS) + 1)
        self.send_delay_seconds = 0.0

    def observe(self, slot: int, seconds: float) -> None:
        """What the outbox does for one write (streaming/gateway/outbox.py, ``Outbox._sent``)."""
        self.send_delay_counts[slot] += 1
        self.send_delay_seconds += seconds


def test_forwarded_frames_and_bytes_are_summed_from_live_connections_and_kept_when_they_close():
    changes = Changes()
    first, second = Sent(), Sent()
    metrics.FORWARDED.track("stocks", first)
    metrics.FORWARDED.track("stocks", second)
    first.frames_sent, first.bytes_sent = 3, 1200
    second.frames_sent, second.bytes_sent = 1, 100
    assert changes("cutemarkets_stream_forwarded_frames_total", market="stocks") == 4
    assert changes("cutemarkets_stream_forwarded_bytes_total", market="stocks") == 1300
    assert changes("cutemarkets_stream_forwarded_frames_total", market="options") == 0
    metrics.FORWARDED.retire("stocks", first)
    metrics.FORWARDED.retire("stocks", first)  # a second close counts nothing twice
    first.frames_sent = 1000  # no longer looked at
    second.frames_sent = 2
    assert changes("cutemarkets_stream_forwarded_frames_total", market="stocks") == 5
    metrics.FORWARDED.retire("stocks", second)
    assert changes("cutemarkets_stream_forwarded_frames_total", market="stocks") == 5


def test_send_delays_are_summed_into_cumulative_buckets_and_kept_when_connections_close():
    changes = Changes()
    first, second = Sent(), Sent()
    metrics.FORWARDED.track("options", first)
    metrics.FORWARDED.track("options", second)
    bounds = metrics.SEND_DELAY_BOUNDS
    first.observe(bounds.index(0.001), 0.0008)  # 0.8 ms: in the bucket up to 1 ms
    first.observe(len(bounds), 7.0)  # past the last bound: +Inf only
    second.observe(bounds.index(0.05), 0.03)

    def bucket(le: str) -> float:
        return changes("cutemarkets_stream_send_delay_seconds_bucket", market="options", le=le)

    assert [bucket("0.0005"), bucket("0.001"), bucket("0.025"), bucket("0.05"), bucket("5.0"), bucket("+Inf")] == [
        0, 1, 1, 2, 2, 3
    ]
    assert changes("cutemarkets_stream_send_delay_seconds_count", market="options") == 3
    assert changes("cutemarkets_stream_send_delay_seconds_sum", market="options") == pytest.approx(7.0308)
    assert changes("cutemarkets_stream_send_delay_seconds_count", market="stocks") == 0
    metrics.FORWARDED.retire("options", first)
    first.observe(0, 0.0001)  # no longer looked at
    second.observe(0, 0.0001)
    assert changes("cutemarkets_stream_send_delay_seconds_count", market="options") == 4
    assert bucket("0.0005") == 1
    metrics.FORWARDED.retire("options", second)
    assert changes("cutemarkets_stream_send_delay_seconds_count", market="options") == 4
    assert changes("cutemarkets_stream_send_delay_seconds_sum", market="options") == pytest.approx(7.0309)


def test_upstream_state_and_reconnects():
    changes = Changes()
    metrics.upstream_state("options", True)
    assert sample("cutemarkets_upstream_connected", market="options") == 1
    metrics.upstream_state("options", False)
    assert sample("cutemarkets_upstream_connected", market="options") == 0
    metrics.upstream_reconnect("options")
    assert changes("cutemarkets_upstream_reconnects_total", market="options") == 1


def test_slow_consumers_and_lock_refresh_failures():
    changes = Changes()
    metrics.slow_consumer("options")
    metrics.lock_refresh_failure("unreachable")
    assert changes("cutemarkets_stream_slow_consumer_disconnects_total", market="options") == 1
    assert changes("cutemarkets_stream_lock_refresh_failures_total", reason="unreachable") == 1
    assert changes("cutemarkets_stream_lock_refresh_failures_total", reason="lost") == 0
