"""A tiny autotuner for the GEMM launchers: time each candidate configuration once per shape on
the GPU (from a CUDA graph, so Python and launch overheads are not timed) and keep the fastest.

Every candidate computes the full, correct result, so whichever wins changes the speed, never
the numbers' accuracy. The first call on a new shape pays the compiles; later calls look the
winner up. Autotuning runs eager CUDA work, so inside a CUDA-graph capture a shape not yet
tuned takes the first (default) config instead: warm up outside the capture to get the tuned one.
"""
from __future__ import annotations

AUTOTUNE = True    # False: take each launcher's first config (quick checks compile one kernel)
LAST_CONFIG = None  # the config the latest launch used (benchmarks report it)


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (no timing, no host
    synchronisation, no new allocations outside the graph's pool may happen then)."""
    import torch
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def time_config(launch, cfg, n=10):
    """ms per launch of one config: n launches captured in a CUDA graph, one replay timed (a
    capture that fails raises: `pick` skips that config)."""
    from quantlib.timing import time_ms
    return time_ms(lambda _: launch(cfg), 1, calls=n, fallback=False)[0]


def pick(launch, cfgs):
    """The fastest of `cfgs` for `launch(cfg)`; configs that fail to compile or launch (too
    much shared memory, say) are skipped."""
    best, best_t = None, float("inf")
    for cfg in cfgs:
        try:
            t = time_config(launch, cfg)
        except Exception:  # noqa: BLE001, S112 (a config that does not fit is skipped)
            continue
        if t < best_t:
            best, best_t = cfg, t
    if best is None:
        raise RuntimeError("no kernel configuration could be launched")
    return best


def tuned(cache: dict, key, cfgs, launch, interpret: bool):
    """launch(best config): one config is launched as given; several are tuned once per `key`
    on a GPU (the winner cached) or, on the interpreter or with AUTOTUNE off, the first is
    taken (and nothing cached)."""
    global LAST_CONFIG
    if len(cfgs) == 1 or interpret or not AUTOTUNE:
        LAST_CONFIG = cfgs[0]
    elif key not in cache and capturing():   # never time candidates inside a CUDA-graph
        LAST_CONFIG = cfgs[0]                # capture: the default config (not cached)
    else:
        if key not in cache:
            cache[key] = pick(launch, cfgs)
        LAST_CONFIG = cache[key]
    return launch(LAST_CONFIG)
