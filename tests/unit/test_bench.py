"""The timing loop: samples sized to ``min_time_s``, the cutoff, and fewer samples for slow calls."""

from __future__ import annotations

from uhop.measure.bench import benchmark


class _Clock:
    """A clock that only moves when the timed function runs: each call costs ``per_call`` s."""

    def __init__(self, per_call: float) -> None:
        self.now, self.per_call, self.calls = 0.0, per_call, 0

    def __call__(self) -> float:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += self.per_call


def test_slow_calls_take_fewer_samples_within_max_time():
    c = _Clock(0.1)
    t = benchmark(c.fn, [[]], repeat=7, min_time_s=0.05, timer=c)
    assert t.n == 7 and abs(t.median_s - 0.1) < 1e-12  # one call per sample, seven samples
    c = _Clock(0.1)
    t = benchmark(c.fn, [[]], repeat=7, min_time_s=0.05, timer=c, max_time_s=0.45)
    assert t.n == 4 and c.calls == 1 + 1 + 4  # warm-up, first call, four samples
    c = _Clock(0.5)
    t = benchmark(c.fn, [[]], repeat=7, min_time_s=0.05, timer=c, max_time_s=0.45)
    assert t.n == 3  # never fewer than three samples
    c = _Clock(1e-4)  # fast calls: max_time_s changes nothing
    t = benchmark(c.fn, [[]], repeat=7, min_time_s=0.05, timer=c, max_time_s=0.45)
    assert t.n == 7


def test_a_first_call_past_the_cutoff_ends_the_timing():
    c = _Clock(0.3)
    t = benchmark(c.fn, [[]], repeat=7, min_time_s=0.05, timer=c, cutoff_s=0.1)
    assert t.n == 1 and t.median_s == 0.3 and c.calls == 2
