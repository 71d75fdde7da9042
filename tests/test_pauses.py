"""Event-loop lag and collector pauses reach /metrics."""

from __future__ import annotations

import asyncio
import gc
import time

from gateway.runtime.metrics import Metrics
from gateway.runtime.pauses import timing_gc, watch_loop


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels or None)
    assert found is not None, name
    return found


async def test_a_blocked_loop_shows_as_lag() -> None:
    metrics = Metrics()
    watcher = asyncio.create_task(watch_loop(metrics, interval_s=0.005))
    await asyncio.sleep(0.05)
    time.sleep(0.08)  # noqa: ASYNC251 - the blocking call under test
    await asyncio.sleep(0.02)
    watcher.cancel()
    assert _value(metrics, "gateway_loop_lag_max_seconds") >= 0.07
    assert _value(metrics, "gateway_loop_lag_seconds_count") >= 5
    assert _value(metrics, "gateway_loop_lag_seconds_bucket", le="0.05") < _value(
        metrics, "gateway_loop_lag_seconds_count"
    )


def test_collections_are_timed_while_inside_only() -> None:
    metrics = Metrics()
    with timing_gc(metrics, freeze_survivors=False):
        gc.collect()
    gc.collect()
    assert _value(metrics, "gateway_gc_pause_seconds_count", generation="2") == 1
    assert _value(metrics, "gateway_gc_pause_seconds_sum", generation="2") > 0


def test_what_a_full_collection_leaves_is_frozen_and_still_freed_by_reference() -> None:
    """The next full collection looks only at what came since (issue 14: 5,000 devices'
    presence made each one a ~100 ms pause of the loop)."""
    gc.unfreeze()
    try:
        kept = [[n] for n in range(1000)]  # lists: always tracked by the collector
        with timing_gc(Metrics()):
            gc.collect()
        assert gc.get_freeze_count() >= len(kept)
        frozen = gc.get_freeze_count()
        del kept  # no cycle: reference counting frees them, frozen or not
        assert gc.get_freeze_count() <= frozen - 1000
    finally:
        gc.unfreeze()
