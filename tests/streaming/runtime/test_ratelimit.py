import time

from streaming.runtime.ratelimit import TokenBucket


def test_a_burst_is_allowed_then_the_rate(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1  # one token back
    assert bucket.take() and not bucket.take()
    now[0] += 100  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_taking_several_units_is_all_or_nothing(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    bucket = TokenBucket(rate=100, burst=1_000)
    assert bucket.take(600)
    assert not bucket.take(500)  # 400 left: nothing spent
    assert bucket.take(400)
    now[0] += 2.0
    assert bucket.take(200) and not bucket.take(1)
