"""The clock the core is given, so tests and simulators can drive time.

A store box often has no real-time clock battery: it boots at the last time it saved, or years
back, and NTP (when the internet is there) corrects it while running. `TimeKeeper`, the daemon's
clock, knows what it can of that:

- a floor: the time can't be earlier than this release, the newest event the box committed or a
  bundle the cloud signed. A system clock behind the floor is not trusted, and stamps follow the
  floor (advanced on the monotonic clock) instead;
- stamps never go back: a backward step of the system clock holds them until it catches up;
- durations stay true across jumps: `stamped_ago` turns "window_s ago" into the stamp this clock
  gave at that moment, measured on the monotonic clock, so an 8-day forward jump closes no
  window early;
- the kernel's NTP state (adjtimex, what `timedatectl` shows) says whether it is synchronised.
"""

from __future__ import annotations

import bisect
import calendar
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "RELEASE_FLOOR",
    "Clock",
    "SystemClock",
    "TimeKeeper",
    "TimeTrust",
    "c_library",
    "kernel_synchronized",
]

# This release cannot run before it was made: bump with each release.
RELEASE_FLOOR = float(calendar.timegm((2026, 12, 1, 0, 0, 0)))
# A clock this far behind what the box knows is wrong, not merely set back by NTP.
_BEHIND_TOLERANCE_S = 120.0
# The wall clock moving this much more than the monotonic one between two readings is a jump.
_JUMP_S = 2.0
_MAX_SEGMENTS = 64


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals."""
        ...

    def trusted(self) -> bool:
        """False: the wall clock is known to be wrong; time-bounded things take the safest
        reading (an offer whose end can't be checked is not served)."""
        ...

    def stamped_ago(self, seconds: float) -> float:
        """The stamp `now()` gave `seconds` ago (measured on the monotonic clock): the cut-off
        of a window over stored stamps that no wall-clock jump shortens."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def stamped_ago(self, seconds: float) -> float:
        return time.time() - seconds

    def trusted(self) -> bool:
        return True


@functools.cache
def c_library() -> ctypes.CDLL | None:
    """The C library, loaded once: find_library runs ldconfig in a subprocess (~3 ms)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def kernel_synchronized() -> bool | None:
    """The kernel's NTP state (adjtimex: TIME_ERROR means unsynchronised); None if unknown."""
    libc = c_library()
    try:
        timex = ctypes.create_string_buffer(512)  # struct timex, modes 0: read only
        state = int(libc.adjtimex(timex)) if libc is not None else -1
    except AttributeError:  # not Linux
        return None
    return None if state < 0 else state != 5


@dataclass(frozen=True, slots=True)
class TimeTrust:
    trusted: bool  # False: the system clock is known to be wrong (behind what the box knows)
    synchronized: bool | None  # the kernel's NTP state; None: unknown
    behind_s: float  # how far the system clock reads behind the floor (0 when it does not)
    reason: str

    @property
    def verified(self) -> bool:
        return self.trusted and bool(self.synchronized)


class TimeKeeper:
    """The daemon's clock (see the module's docstring)."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        synchronized: Callable[[], bool | None] = kernel_synchronized,
        floor: float = RELEASE_FLOOR,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self._synchronized = synchronized
        self._synced = synchronized()
        m = mono()
        # At least this stamp at this monotonic reading. Firm: this release, signed bundles.
        # Soft: what the box stamped itself (its events, its last stamp), which an NTP-synchronised
        # clock overrules (a clock once ahead must not hold every later stamp).
        self._firm = (floor, m, "this release's date")
        self._soft = (float("-inf"), m, "the gateway's own stamps")
        self._behind = (0.0, "")
        # From each jump of the stamps on: (first stamp, stamp minus monotonic). Stamps from
        # before the first segment (earlier runs) are read at the first segment's offset.
        self._segments: list[tuple[float, float]] = []
        self._jumps: list[float] = []  # each jump's size since the watcher last asked
        self.now()

    def now(self) -> float:
        wall, m = self._wall(), self._mono()
        floor, floor_m, source = self._firm
        at_least = floor + (m - floor_m)
        if not self._synced:
            soft, soft_m, soft_source = self._soft
            if soft + (m - soft_m) > at_least:
                at_least, source = soft + (m - soft_m), soft_source
        self._behind = (at_least - wall, source) if at_least > wall else (0.0, "")
        stamp = max(wall, at_least)
        # A stamp held up by a floor keeps that floor's name (the reason says what it is).
        self._soft = (stamp, m, source if at_least > wall else "the gateway's own stamps")
        offset = stamp - m
        if not self._segments:
            self._segments.append((stamp, offset))
        elif abs(offset - self._segments[-1][1]) > _JUMP_S:
            self._jumps.append(offset - self._segments[-1][1])
            self._segments.append((stamp, offset))
            if len(self._segments) > _MAX_SEGMENTS:
                del self._segments[0]
        return stamp

    def monotonic(self) -> float:
        return self._mono()

    def stamped_ago(self, seconds: float) -> float:
        self.now()
        target = self._mono() - seconds  # the monotonic reading `seconds` ago
        # Each segment maps its monotonic span to stamps by its offset: find the one holding it.
        starts = [first - offset for first, offset in self._segments]
        i = max(0, bisect.bisect_right(starts, target) - 1)
        return target + self._segments[i][1]

    def trusted(self) -> bool:
        return self._behind[0] <= _BEHIND_TOLERANCE_S

    def raise_floor(self, stamp: float, source: str, *, firm: bool) -> None:
        """Time is at least `stamp` now. Firm: signed by the cloud; else the box's own record."""
        m = self._mono()
        floor, floor_m, _ = self._firm if firm else self._soft
        if stamp > floor + (m - floor_m):
            if firm:
                self._firm = (stamp, m, source)
            else:
                self._soft = (stamp, m, source)
        self.now()

    def jumps(self) -> list[float]:
        """The jumps of the stamps since the last call, in seconds (forward positive)."""
        jumps, self._jumps = self._jumps, []
        return jumps

    def trust(self) -> TimeTrust:
        """Reads the kernel's NTP state afresh (now() uses the last reading: it is hot)."""
        self._synced = synchronized = self._synchronized()
        self.now()
        behind, source = self._behind
        if behind > _BEHIND_TOLERANCE_S:
            return TimeTrust(
                False,
                synchronized,
                behind,
                f"the system clock reads {_iso(self._wall())}, {_span(behind)} behind"
                f" {source}: stamps follow that instead; check the clock",
            )
        if synchronized:
            return TimeTrust(True, True, behind, "synchronised (NTP)")
        why = "the kernel reports no NTP synchronisation" if synchronized is False else "unknown"
        return TimeTrust(True, synchronized, behind, f"not verified ({why})")


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds:.0f} s"
