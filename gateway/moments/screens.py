"""Screens: zone events become moments for the zone's screens, and what a screen shows is held
for a while (`ble.screen_hold_s`) so that passers-by do not flip it every second."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.ble.presence import ZoneEvent
from gateway.moments.moment import Moment, ZoneMoment
from gateway.runtime.config import ScreenConfig

__all__ = ["ScreenHold", "ZoneScreens"]


class ScreenHold:
    """A screen keeps what it shows for `hold_s`; a new customer may take over an anonymous
    screen at once, and the same audience is not decided for twice."""

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._last: dict[str, tuple[float, str | None]] = {}  # screen -> (when, for whom)

    def wants(self, screen: str, ref: str | None, now: float) -> bool:
        last = self._last.get(screen)
        if last is None:
            return True
        at, shown_for = last
        if ref is not None:
            if shown_for is None:
                return True
            if ref == shown_for:
                return False
        return now - at >= self._hold_s

    def shown(self, screens: tuple[str, ...], ref: str | None, now: float) -> None:
        for screen in screens:
            self._last[screen] = (now, ref)


class ZoneScreens:
    """Presence's hook: an entry or a dwell is a moment for each screen of its zone (exits
    change nothing). Whether a screen takes it is the hold's call, when it is decided."""

    def __init__(
        self,
        screens: Mapping[str, ScreenConfig],
        submit: Callable[[Moment], bool],
        now: Callable[[], float],
    ) -> None:
        self._screens_in: dict[str, list[str]] = {}
        for screen_id, screen in screens.items():
            self._screens_in.setdefault(screen.zone, []).append(screen_id)
        self._submit = submit
        self._now = now

    def on_zone_event(self, event: ZoneEvent) -> None:
        if event.kind == "exit":
            return
        for screen_id in self._screens_in.get(event.zone, ()):
            moment = ZoneMoment(
                touchpoint=screen_id,
                customer_ref=event.customer_ref,
                zone=event.zone,
                dwell_s=event.dwell_s,
                kind=event.kind,
                received=self._now(),
            )
            if not self._submit(moment):
                return  # the journey's queue is full: it said so
