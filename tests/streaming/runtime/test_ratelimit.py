from streaming.runtime.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.1  # one token back
    assert bucket.take() and not bucket.take()
    clock.now += 100  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_taking_several_units_is_all_or_nothing():
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=1_000, clock=clock)
    assert bucket.take(600)
    assert not bucket.take(500)  # 400 left: nothing spent
    assert bucket.take(400)
    clock.now += 2.0
    assert bucket.take(200) and not bucket.take(1)
