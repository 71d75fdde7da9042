"""Where the daemon stalls: event-loop lag and garbage-collector pauses, into /metrics.

The loop's lag is sampled as a timer's lateness: a task sleeps `interval_s` and measures how
much later than asked it woke. Everything that holds the loop (a long callback, a collection,
a blocking call) shows there, whatever caused it. The collector's own pauses are timed by a
`gc.callbacks` hook, per generation.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.runtime.metrics import Metrics

__all__ = ["GIL_SWITCH_INTERVAL_S", "timing_gc", "watch_loop"]

LOOP_SAMPLE_S = 0.025
# After each hand-off to a store or encoding thread the loop waits for the GIL: 1 ms, not
# Python's 5, bounds each wait (issue 14: a quarter of the loop's samples under load). The
# daemon sets it, and the benchmarks that run its parts in their own process.
GIL_SWITCH_INTERVAL_S = 0.001


async def watch_loop(metrics: Metrics, interval_s: float = LOOP_SAMPLE_S) -> None:
    """Forever: the lateness of a `interval_s` sleep, into `gateway_loop_lag_seconds`."""
    worst = 0.0
    clock = time.monotonic
    while True:
        asked = clock() + interval_s
        await asyncio.sleep(interval_s)
        lag = max(0.0, clock() - asked)
        metrics.loop_lag.observe(lag)
        if lag > worst:
            worst = lag
            metrics.loop_lag_max.set(lag)


@contextmanager
def timing_gc(metrics: Metrics, *, freeze_survivors: bool = True) -> Iterator[None]:
    """While inside: every collection's pause into `gateway_gc_pause_seconds`.

    freeze_survivors: what a full collection leaves alive is frozen (`gc.freeze`), as the
    daemon does with what it built at start: a full collection then looks only at what came
    since, not again at every long-lived object (5,000 devices' presence: ~100 ms a pass on
    an x86 core, several times that on a Pi). Frozen objects are still freed when nothing
    refers to them; only a cycle among them would outlive its last reference."""
    children = {g: metrics.gc_pause.labels(str(g)) for g in range(3)}
    started = 0.0
    clock = time.perf_counter

    def hook(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = clock()
        else:
            generation = info["generation"]
            children[generation].observe(clock() - started)
            if generation == 2 and freeze_survivors:
                gc.freeze()

    callback: Callable[[str, dict[str, Any]], None] = hook
    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
