"""The proxy's auth admission (imgate/proxy/admission.py) against hand-computed token counts."""

from __future__ import annotations

import random

from imgate.proxy.admission import MAX_RETRY_MS, Admission


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_a_full_bucket_admits_one_seconds_worth_then_refills_at_the_rate():
    clock = Clock()
    a = Admission(10, clock=clock)
    assert [a.admit() for _ in range(12)] == [True] * 10 + [False] * 2
    clock.t += 0.5  # five tokens back
    assert [a.admit() for _ in range(6)] == [True] * 5 + [False]
    clock.t += 100  # never more than one second's worth
    assert sum(a.admit() for _ in range(20)) == 10
    assert (a.admitted, a.refused) == (25, 13)


def test_zero_rate_admits_everything():
    a = Admission(0)
    assert all(a.admit() for _ in range(10_000))


def test_retry_ms_is_a_place_in_line_that_drains_at_the_rate():
    clock = Clock()
    a = Admission(100, clock=clock, rng=random.Random(7))
    for _ in range(100):
        a.admit()
    # the n-th client refused is told about n / rate seconds: 10 ms per place, jittered -10%..+20% (+<=50 ms)
    waits = [a.retry_ms() for _ in range(200)]
    for n, w in enumerate(waits, 1):
        assert n * 10 * 0.9 <= w <= n * 10 * 1.2 + 51, (n, w)
    clock.t += 1.0  # 100 of them are back by now: the line is 100 long again
    w = a.retry_ms()
    assert 101 * 10 * 0.9 <= w <= 101 * 10 * 1.2 + 51
    clock.t += 1000
    assert a.retry_ms() <= 10 * 1.2 + 51  # an empty line
    for _ in range(100_000):
        w = a.retry_ms()
    assert w == MAX_RETRY_MS
