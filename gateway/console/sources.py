"""What the console reads: the gateway's components (`Sources`), and the devices' recent
activity (`Activity`) that only the console keeps."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.codecs.topics import Topics
from gateway.runtime.config import Config
from gateway.runtime.metrics import Metrics
from gateway.store import AsyncStore

__all__ = ["Activity", "Sources"]

_HOUR_S = 3600.0


class Activity:
    """When each declared device was last heard from, and its refusals in the last hour.

    Fed by the store link (`MqttLink.on_device`); bounded by the devices config.toml declares.
    """

    def __init__(self, declared: Mapping[str, Collection[str]], clock: Callable[[], float]):
        self._known = {(kind, d) for kind, ids in declared.items() for d in ids}
        self._clock = clock
        self.last_seen: dict[tuple[str, str], float] = {}
        self._errors: dict[tuple[str, str], deque[float]] = {}
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def seen(self, device: tuple[str, str], refused: bool) -> None:
        if device not in self._known:
            return
        now = self._clock()
        self.last_seen[device] = now
        if refused:
            errors = self._errors.setdefault(device, deque(maxlen=1000))
            errors.append(now)

    def errors_last_hour(self, device: tuple[str, str]) -> int:
        errors = self._errors.get(device)
        if not errors:
            return 0
        since = self._clock() - _HOUR_S
        while errors and errors[0] < since:
            errors.popleft()
        return len(errors)

    def per_minute(self, name: str, total: float) -> float | None:
        """The rate of a growing total over the last minute or so (None until two samples)."""
        now = time.monotonic()
        samples = self._samples.setdefault(name, deque())
        samples.append((now, total))
        while len(samples) > 2 and samples[1][0] < now - 60:
            samples.popleft()
        (t0, v0), (t1, v1) = samples[0], samples[-1]
        if t1 - t0 < 1:
            return None
        return (v1 - v0) / (t1 - t0) * 60


@dataclass(frozen=True, slots=True)
class Sources:
    """What the console reads: the gateway's components, by name, never through a driver."""

    config: Config
    topics: Topics
    metrics: Metrics
    health: Callable[[], Mapping[str, Any]]  # the /healthz body
    retained: Callable[[str], bytes | None]  # the retained state on a topic (screen content)
    db: AsyncStore
    activity: Activity
    clock: Callable[[], float]
    personalisation_paused: Callable[[], bool] = lambda: False
    # Decisions since start the rules took instead of the model (no model, or a control slot)
    fallbacks: Callable[[], int] = lambda: 0
