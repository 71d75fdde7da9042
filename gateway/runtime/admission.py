"""Admission of device messages: a fair share per device, and repeated trouble summarised.

Pure and synchronous (a clock is given), so the MQTT link asks it about every message without an
await, and tests drive time by hand.

- `Budgets`: one token bucket per device (refilled at the kind's rate, holding at most its
  burst). A message that finds the bucket empty is refused at once with a `busy` answer, before
  it is parsed: one device's flood costs the others almost nothing.
- `Answers`: at most a few answers of each kind (`invalid`, `busy`, ...) per device per second
  on the shared errors topic, so a flood of garbage does not become a flood of replies.
- `TroubleLog`: the first refusal of a kind (device, reason) is logged at once; repeats within
  the interval are counted and logged as one line with the count when the interval ends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from gateway.codecs.topics import SECTIONS
from gateway.runtime.clock import Clock
from gateway.runtime.config import BudgetsConfig

__all__ = ["Answers", "Budget", "Budgets", "Trouble", "TroubleLog", "budgets_of"]

Device = tuple[str, str]  # (kind, device id), e.g. ("kiosk", "kiosk-1")
_MAX_DEVICES = 4096  # devices are broker users; a bound all the same (LRU beyond it)


@dataclass(frozen=True, slots=True)
class Budget:
    rate_per_s: float  # sustained messages per second
    burst: int  # messages accepted at once from a full bucket


def budgets_of(config: BudgetsConfig) -> dict[str, Budget]:
    """Per-kind budgets from the `[budgets]` section: the device kinds, and "node" (BLE
    scanner nodes)."""
    return {
        kind: Budget(getattr(config, f"{kind}_per_s"), getattr(config, f"{kind}_burst"))
        for kind in (*SECTIONS, "node")
    }


class _Buckets:
    """Token buckets keyed by device (or device and more), least recently used dropped beyond
    `_MAX_DEVICES`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._state: OrderedDict[Hashable, list[float]] = OrderedDict()  # [tokens, updated]

    def take(self, key: Hashable, budget: Budget) -> float:
        """Take one token; 0.0 if taken, else the seconds until one is available."""
        now = self._clock.monotonic()
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = [float(budget.burst), now]
            if len(self._state) > _MAX_DEVICES:
                self._state.popitem(last=False)
        else:
            self._state.move_to_end(key)
            state[0] = min(budget.burst, state[0] + (now - state[1]) * budget.rate_per_s)
            state[1] = now
        if state[0] >= 1.0:
            state[0] -= 1.0
            return 0.0
        return (1.0 - state[0]) / budget.rate_per_s if budget.rate_per_s > 0 else float("inf")


class Budgets:
    """Per-device message budgets, by kind; kinds without a budget are not limited."""

    def __init__(self, budgets: Mapping[str, Budget], clock: Clock) -> None:
        self._budgets = dict(budgets)
        self._buckets = _Buckets(clock)

    def retry_after(self, device: Device) -> float:
        """0.0 if the device may send this message now, else seconds to wait (it is refused)."""
        budget = self._budgets.get(device[0])
        return 0.0 if budget is None else self._buckets.take(device, budget)


class Answers:
    """Whether a device may get one more answer of a kind (a refusal's reason) on the shared
    errors topic now. Each kind has its own budget: a flood whose garbage used up its
    `invalid` answers still hears `busy` once it is over its message budget."""

    def __init__(self, clock: Clock, per_s: float = 2.0, burst: int = 10) -> None:
        self._budget = Budget(per_s, burst)
        self._buckets = _Buckets(clock)

    def allow(self, device: Device, reason: str) -> bool:
        return self._buckets.take((device, reason), self._budget) == 0.0


@dataclass(frozen=True, slots=True)
class Trouble:
    """A summary line to log: `count` refusals of `key` since the last line about it."""

    key: tuple[str, ...]
    count: int
    last_error: str
    first: bool  # the first of its kind in this interval (count is 1)


@dataclass(slots=True)
class _Open:
    since: float  # start of the interval
    repeats: int  # refusals not yet logged
    last_error: str


class TroubleLog:
    """Aggregates repeated per-message trouble into one line per key and interval.

    The first refusal of a key is logged at once; while it goes on, one line per interval says
    how many more there were; an interval without any closes the key (the next is "first").
    """

    def __init__(
        self, clock: Clock, emit: Callable[[Trouble], None], interval_s: float = 10.0
    ) -> None:
        self._clock = clock
        self._emit = emit
        self._interval_s = interval_s
        self._open: OrderedDict[tuple[str, ...], _Open] = OrderedDict()  # oldest interval first

    def note(self, key: tuple[str, ...], error: str) -> None:
        now = self._clock.monotonic()
        entry = self._open.get(key)
        if entry is None:
            self._open[key] = _Open(now, 0, error)
            if len(self._open) > _MAX_DEVICES:
                old_key, old = self._open.popitem(last=False)
                self._summarise(old_key, old)
            self._emit(Trouble(key, 1, error, first=True))
        else:
            entry.repeats += 1
            entry.last_error = error
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the keys whose interval ended (call now and then: a quiet key is closed here)."""
        now = self._clock.monotonic() if now is None else now
        while self._open:
            key, entry = next(iter(self._open.items()))
            if now - entry.since < self._interval_s:
                break
            del self._open[key]
            if entry.repeats:  # still going: summarise and keep counting in a new interval
                self._summarise(key, entry)
                self._open[key] = _Open(now, 0, entry.last_error)

    def _summarise(self, key: tuple[str, ...], entry: _Open) -> None:
        if entry.repeats:
            self._emit(Trouble(key, entry.repeats, entry.last_error, first=False))
