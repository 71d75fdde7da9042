"""One supervisor: starts every component, restarts a failed one with backoff, stops them in order.

A component is an object with a `name` and `async def run(handle)` that runs until cancelled. It
calls `handle.ready()` once it serves (the readiness handshake) and `handle.degraded(why)` when
it can't for a while (e.g. the broker went away and it is reconnecting). A component may name,
in `requires`, the components that must have been ready once before it first starts (the journey
needs the store open). If `run` raises, the supervisor marks it degraded, waits a jittered,
capped, exponential delay and runs it again; the other components keep serving.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import structlog

from gateway.runtime.clock import Clock, SystemClock

__all__ = ["Backoff", "Component", "ComponentHealth", "Handle", "State", "Supervisor"]

log = structlog.get_logger("gateway.supervisor")


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(slots=True)
class ComponentHealth:
    state: State = State.STARTING
    detail: str = ""
    restarts: int = 0
    since: float = 0.0  # monotonic time of the last state change


class Handle:
    """What a component gets to report its state with."""

    def __init__(self, name: str, report: Callable[[str, State, str], None]) -> None:
        self.name = name
        self._report = report

    def ready(self, detail: str = "") -> None:
        self._report(self.name, State.READY, detail)

    def degraded(self, detail: str) -> None:
        self._report(self.name, State.DEGRADED, detail)


class Component(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def requires(self) -> tuple[str, ...]:
        """Components that must have been ready once before this one first starts."""
        ...

    async def run(self, handle: Handle) -> None: ...


class Backoff:
    """Capped exponential delays with jitter, so a chain's stores never retry in lockstep.

    Below the cap a delay is drawn from [0, ceiling] (full jitter), the first delay at the cap
    too: that one puts each store at a uniformly random phase of the cap's period, whenever its
    outage began. From then on a delay is drawn from [0.9 cap, cap]: a store keeps its phase and
    retries about once a cap, so after a long outage the fleet comes back spread evenly over one
    period and no later. Wider jitter at the cap lumps the returns (full jitter: 7 % of the fleet
    in its busiest second), a longer cap delays them (`scripts/bench.py fleet`, docs/cloud.md).
    """

    SETTLED_JITTER = 0.1  # share of the cap drawn at random once the cap is reached

    def __init__(self, minimum: float, maximum: float, rng: random.Random) -> None:
        self.minimum, self.maximum, self._rng = minimum, maximum, rng
        self.attempt = 0

    def _ceiling(self, attempt: int) -> float:
        return min(self.maximum, self.minimum * (1 << attempt))

    def next(self) -> float:
        ceiling = self._ceiling(self.attempt)
        settled = self.attempt > 0 and self._ceiling(self.attempt - 1) >= self.maximum
        self.attempt = min(self.attempt + 1, 64)
        if not settled:
            return self._rng.uniform(0, ceiling)
        return ceiling - self._rng.uniform(0, ceiling * self.SETTLED_JITTER)

    def reset(self) -> None:
        self.attempt = 0


class Supervisor:
    def __init__(
        self,
        components: Sequence[Component],
        *,
        restart_min_s: float,
        restart_max_s: float,
        ready_requires: Iterable[str],
        on_change: Callable[[Supervisor], None] = lambda _: None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._components = list(components)
        self._restart = (restart_min_s, restart_max_s)
        self._requires = frozenset(ready_requires)
        self._on_change = on_change
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.health = {c.name: ComponentHealth(since=self._clock.monotonic()) for c in components}
        self.is_ready = False  # every required component has been ready at least once
        self._ready_event = asyncio.Event()
        self._first_ready = {c.name: asyncio.Event() for c in components}
        self._stopping = False
        for c in components:
            unknown = set(c.requires) - set(self._first_ready)
            if unknown:
                raise ValueError(f"component {c.name} requires unknown {sorted(unknown)}")

    def _report(self, name: str, state: State, detail: str) -> None:
        health = self.health[name]
        if health.state == state and health.detail == detail:
            return
        health.state, health.detail, health.since = state, detail, self._clock.monotonic()
        if state == State.READY:
            self._first_ready[name].set()
        log.info("component state", component=name, state=str(state), detail=detail)
        if not self.is_ready and all(self.health[n].state == State.READY for n in self._requires):
            self.is_ready = True
            self._ready_event.set()
        self._on_change(self)

    @property
    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        bad = [
            f"{n} {h.state}: {h.detail}" for n, h in self.health.items() if h.state != State.READY
        ]
        return "serving" if not bad else "; ".join(bad)

    async def wait_ready(self) -> None:
        await self._ready_event.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """Run every component until `stop` is set, then cancel them in reverse start order."""
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._keep_running(c), name=f"component:{c.name}")
                for c in self._components
            ]
            await stop.wait()
            self._stopping = True
            # Reverse order: intake stops before what it feeds (journey before MQTT before store).
            for component, task in reversed(list(zip(self._components, tasks, strict=True))):
                task.cancel()
                await asyncio.wait({task})
                self._report(component.name, State.STOPPED, "")

    async def _keep_running(self, component: Component) -> None:
        name = component.name
        handle = Handle(name, self._report)
        backoff = Backoff(*self._restart, self._rng)
        health = self.health[name]
        for required in component.requires:
            if not self._first_ready[required].is_set():
                self._report(name, State.STARTING, f"waiting for {required}")
                await self._first_ready[required].wait()
        while True:
            started = self._clock.monotonic()
            try:
                await component.run(handle)
                reason = "run() returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.error("component failed", component=name, exc_info=exc)
            if self._stopping:
                return
            # A component that served a while before failing starts its backoff afresh.
            if health.state == State.READY and self._clock.monotonic() - started > 30:
                backoff.reset()
            delay = backoff.next()
            health.restarts += 1
            self._report(name, State.DEGRADED, f"{reason}; restarting in {delay:.1f}s")
            await asyncio.sleep(delay)
