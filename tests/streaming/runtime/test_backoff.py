from streaming.runtime.backoff import Backoff


def test_first_attempt_is_immediate():
    assert Backoff().delay() == 0


def test_delays_grow_exponentially_within_jitter_and_cap():
    backoff = Backoff(base=1.0, cap=8.0)
    ceilings = []
    for _ in range(6):
        backoff.record_failure()
        ceilings.append(backoff.delay())
    for delay, ceiling in zip(ceilings, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 - 0.01 <= delay <= ceiling


def test_quick_drops_keep_growing_and_a_stable_connection_resets():
    backoff = Backoff(base=1.0, cap=60.0, stable_after=10.0)
    for _ in range(4):
        backoff.record_failure(connected_for=0.1)  # flapping: accepted, then dropped at once
    assert backoff.delay() >= 4  # the fourth delay is drawn from [4, 8]
    backoff.record_failure(connected_for=30.0)
    assert backoff.delay() <= 1.0
