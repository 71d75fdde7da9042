"""Per-scanner health: adverts per second, time since the last advert, restarts, adapter resets.

Every BLE source (the local radio, scanner nodes over MQTT, the simulator) reports into one
`ScannerStats`; /metrics and /healthz read it. Pure bookkeeping, clock injected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ScannerState", "ScannerStats"]

_RATE_WINDOW_S = 10.0


@dataclass(slots=True)
class ScannerState:
    adverts: int = 0
    last_advert: float | None = None  # monotonic
    restarts: int = 0
    adapter_resets: int = 0
    started: float = 0.0  # monotonic time the scanner (re)started
    # adverts counted per one-second bucket over the last _RATE_WINDOW_S seconds
    _buckets: dict[int, int] = field(default_factory=dict)


class ScannerStats:
    def __init__(self) -> None:
        self.scanners: dict[str, ScannerState] = {}

    def _state(self, scanner: str) -> ScannerState:
        state = self.scanners.get(scanner)
        if state is None:
            state = self.scanners[scanner] = ScannerState()
        return state

    def started(self, scanner: str, now: float) -> None:
        self._state(scanner).started = now

    def advert(self, scanner: str, now: float, count: int = 1) -> None:
        state = self._state(scanner)
        state.adverts += count
        state.last_advert = now
        second = int(now)
        state._buckets[second] = state._buckets.get(second, 0) + count
        if len(state._buckets) > _RATE_WINDOW_S + 2:
            for old in [s for s in state._buckets if s < second - _RATE_WINDOW_S]:
                del state._buckets[old]

    def restarted(self, scanner: str, now: float) -> None:
        state = self._state(scanner)
        state.restarts += 1
        state.started = now

    def adapter_reset(self, scanner: str) -> None:
        self._state(scanner).adapter_resets += 1

    def adverts_per_s(self, scanner: str, now: float) -> float:
        state = self._state(scanner)
        since = int(now) - int(_RATE_WINDOW_S)
        recent = sum(n for s, n in state._buckets.items() if since <= s < int(now))
        return recent / _RATE_WINDOW_S

    def silent_for(self, scanner: str, now: float) -> float:
        """Seconds since the last advert, or since the scanner started if it has heard none."""
        state = self._state(scanner)
        last = state.last_advert if state.last_advert is not None else state.started
        return max(0.0, now - last)
