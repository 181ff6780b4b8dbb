"""quantlib.timing.time_ms, the one timer, on a simulated clock and a simulated GPU: which calls
are warm-up, captured, replayed and timed, per call, median or mean, and the eager fallback."""
import contextlib

import pytest
import torch

from quantlib import timing
from quantlib.timing import time_ms


class FakeGPU:
    """A GPU whose work takes simulated ms: eager work advances the clock, work issued inside a
    capture is recorded into the graph and costs its time on each replay."""

    def __init__(self, monkeypatch, capture_error=None):
        self.t, self.capturing, self.capture_error = 0.0, None, capture_error
        gpu = self

        class Graph:
            def __init__(self):
                self.work = []

            def replay(self):
                gpu.t += sum(self.work)

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at = None

            def record(self):
                self.at = gpu.t

            def elapsed_time(self, end):
                return end.at - self.at

        @contextlib.contextmanager
        def graph(g):
            if gpu.capture_error is not None:
                raise gpu.capture_error
            gpu.capturing = g
            try:
                yield
            finally:
                gpu.capturing = None

        class Stream:
            def wait_stream(self, other):
                pass

        for name, value in {"CUDAGraph": Graph, "Event": Event, "graph": graph,
                            "Stream": Stream, "current_stream": Stream,
                            "stream": lambda s: contextlib.nullcontext(),
                            "synchronize": lambda: None}.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def work(self, ms):
        if self.capturing is not None:
            self.capturing.work.append(ms)
        else:
            self.t += ms


def recorder(gpu, cost=lambda i: i + 1.0):
    seen = []

    def fn(i):
        seen.append((i, gpu.capturing is not None))
        gpu.work(cost(i))
    return fn, seen


@pytest.mark.parametrize("stat", ["median", "mean"])
def test_events_time_the_replays_of_one_captured_group(monkeypatch, stat):
    gpu = FakeGPU(monkeypatch)
    fn, seen = recorder(gpu)
    ms, how = time_ms(fn, 5, calls=3, warmup=6, stat=stat)
    assert how == "cuda graph" and ms == pytest.approx((1 + 2 + 3) / 3)
    # 6 warm-up calls cycling over the 3 inputs, then the group captured once; replays only
    assert seen == [(0, False), (1, False), (2, False)] * 2 + [(0, True), (1, True), (2, True)]


def test_a_failed_capture_times_eager_calls_and_says_so(monkeypatch):
    gpu = FakeGPU(monkeypatch, capture_error=RuntimeError("operation not permitted"))
    fn, seen = recorder(gpu)
    logged = []
    ms, how = time_ms(fn, 4, calls=2, warmup=1, log=logged.append)
    assert how == "eager (RuntimeError)" and ms == pytest.approx(1.5)
    assert len(logged) == 1 and "no CUDA graph (RuntimeError" in logged[0]
    assert len(seen) == 1 + 2 + 4 * 2 and not any(cap for _, cap in seen)   # warm, warm group
    ms, how = time_ms(fn, 4, calls=2, graph=False, log=logged.append)
    assert how == "eager" and ms == pytest.approx(1.5) and len(logged) == 1
    with pytest.raises(RuntimeError, match="not permitted"):
        time_ms(fn, 1, fallback=False)


@pytest.mark.parametrize("stat,want", [("median", 1.0), ("mean", (1 + 1 + 100) / 3)])
def test_wall_clock_median_or_mean_per_call(monkeypatch, stat, want):
    clock = {"t": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    costs = iter([5.0, 5.0] + [1.0, 1.0] * 2 + [100.0, 100.0])   # s: 2 warm-up, 3 groups of 2
    seen = []

    def fn(i):
        seen.append(i)
        clock["t"] += next(costs)
    ms, how = time_ms(fn, 3, calls=2, warmup=2, clock="wall", stat=stat)
    assert how == "eager" and ms == pytest.approx(want * 1e3)
    assert seen == [0, 1] * 4


def test_bad_arguments_are_refused():
    for kw in ({"clock": "cpu"}, {"stat": "max"}, {"reps": 0}, {"calls": 0}, {"warmup": -1}):
        with pytest.raises(ValueError, match="clock|reps"):
            time_ms(lambda i: None, **{"reps": 1, **kw})
