"""The supervisor: readiness handshake, restart with backoff, isolation, ordered stop."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from gateway.runtime.supervisor import Backoff, Handle, State, Supervisor
from simulators.fleet import simulate_outage


class Steady:
    """Ready at once, then serves until cancelled; records its life."""

    def __init__(self, name: str, log: list[str], requires: tuple[str, ...] = ()) -> None:
        self.name, self.log, self.requires = name, log, requires

    async def run(self, handle: Handle) -> None:
        self.log.append(f"start {self.name}")
        handle.ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.log.append(f"stop {self.name}")


class Flaky:
    """Fails its first `failures` runs, then serves."""

    def __init__(self, failures: int) -> None:
        self.name = "flaky"
        self.requires: tuple[str, ...] = ()
        self.failures = failures
        self.runs = 0

    async def run(self, handle: Handle) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise OSError(f"device gone (run {self.runs})")
        handle.ready("finally")
        await asyncio.Event().wait()


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a condition the supervisor has no event for (bounded by the caller's timeout)."""
    while not condition():  # noqa: ASYNC110 - watching state from outside, no event to await
        await asyncio.sleep(0.01)


def _supervisor(components: list[object], **kw: object) -> Supervisor:
    return Supervisor(
        components,  # type: ignore[arg-type]
        restart_min_s=0.01,
        restart_max_s=0.05,
        ready_requires=kw.pop("ready_requires", ()),  # type: ignore[arg-type]
        rng=random.Random(1),
        **kw,  # type: ignore[arg-type]
    )


async def test_a_failing_component_is_restarted_while_the_others_keep_serving() -> None:
    log: list[str] = []
    flaky, steady = Flaky(failures=3), Steady("steady", log)
    states: list[tuple[State, str]] = []
    sup = _supervisor(
        [flaky, steady],
        on_change=lambda s: states.append((s.health["flaky"].state, s.health["flaky"].detail)),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    async with asyncio.timeout(5):
        await _until(lambda: sup.health["flaky"].state == State.READY)
    assert flaky.runs == 4
    assert sup.health["flaky"].restarts == 3
    degraded = [d for s, d in states if s == State.DEGRADED]
    assert degraded[0].startswith("OSError: device gone (run 1); restarting in")
    assert sup.health["steady"].state == State.READY
    assert log == ["start steady"]  # never restarted by its neighbour's failures
    stop.set()
    await task
    assert log == ["start steady", "stop steady"]


async def test_ready_needs_every_required_component_and_requires_orders_start() -> None:
    log: list[str] = []
    gate = asyncio.Event()

    class Slow:
        name = "store"
        requires = ()

        async def run(self, handle: Handle) -> None:
            await gate.wait()
            log.append("start store")
            handle.ready()
            await asyncio.Event().wait()

    sup = _supervisor(
        [Slow(), Steady("journey", log, requires=("store",))], ready_requires=("store",)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await asyncio.sleep(0.05)
    assert not sup.is_ready
    assert sup.health["journey"].detail == "waiting for store"
    assert log == []
    gate.set()
    async with asyncio.timeout(2):
        await sup.wait_ready()
        await _until(lambda: "start journey" in log)
    assert log == ["start store", "start journey"]
    stop.set()
    await task


async def test_stop_cancels_in_reverse_start_order() -> None:
    log: list[str] = []
    sup = _supervisor([Steady("store", log), Steady("mqtt", log), Steady("journey", log)])
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert log[3:] == ["stop journey", "stop mqtt", "stop store"]
    assert {h.state for h in sup.health.values()} == {State.STOPPED}


def test_unknown_requirements_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="requires unknown"):
        _supervisor([Steady("a", [], requires=("b",))])


def test_backoff_doubles_with_full_jitter_then_holds_near_its_cap_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    # Full jitter while the ceiling doubles (1, 2, 4) and on the first delay at the cap (8)...
    assert all(0 <= d <= c for d, c in zip(delays[:4], [1, 2, 4, 8], strict=True))
    # ...then within the top tenth of the cap.
    assert all(8 * 0.9 <= d <= 8 for d in delays[4:])
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next() <= 1.0


def test_backoff_jitter_spreads_stores_that_start_together() -> None:
    """Many stores failing in the same instant: their delays spread over the whole range."""
    rng = random.Random(11)
    backoffs = [Backoff(1.0, 32.0, rng) for _ in range(2000)]
    waits = [[b.next() for _ in range(6)] for b in backoffs]
    at_cap = sorted(w[5] for w in waits)  # 1, 2, 4, 8, 16, then the first delay at the cap
    # Uniform over [0, 32]: every eighth of the range holds about an eighth of the stores.
    eighths = [sum(1 for d in at_cap if k * 4 <= d < (k + 1) * 4) for k in range(8)]
    assert all(200 <= n <= 300 for n in eighths), eighths
    settled = [b.next() for b in backoffs]
    assert min(settled) >= 32 * 0.9
    assert max(settled) - min(settled) > 32 * 0.09  # the tenth of jitter is used, not fixed


def test_a_fleet_comes_back_within_one_cap_and_spread_over_it() -> None:
    """1,000 stores, all cut off in the same instant, the cloud back after 10 minutes."""
    run = simulate_outage(
        stores=1000, outage_s=600, minimum_s=1, maximum_s=32, loss_spread_s=0, seed=3
    )
    assert run.percentile(95) <= 30, run.percentile(95)
    assert run.returns_s[-1] <= 32
    # Lockstep would put the whole fleet in one second; spread evenly it is ~3 %.
    assert run.max_connect_share <= 0.06, run.per_second
    assert min(run.per_second[:30]) >= 10, run.per_second
