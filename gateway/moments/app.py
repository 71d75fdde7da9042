"""The customer's app in the store: seen (a resolved rotating BLE identifier, a QR check-in at a
kiosk or a tablet), it may get an in-app message, pushed by the cloud.

Pop-up fatigue is the playbook's warning: at most `app.per_visit` messages per visit (a visit
ends after `app.visit_gap_s` unseen), `app.per_day` per day (counted in the decision log), none
in `app.quiet_hours`, and only for a customer with a personalisation consent (the decision's
read). The message is an `app.message` event that expires `app.ttl_s` after it is decided.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.ble.presence import ZoneEvent
from gateway.moments.moment import AppMoment, Moment
from gateway.runtime.clock import Clock
from gateway.runtime.config import AppConfig, quiet_hours

__all__ = ["AppPresence"]

_MAX_VISITORS = 10_000  # customers remembered for the per-visit cap (oldest forgotten)


class AppPresence:
    def __init__(self, config: AppConfig, submit: Callable[[Moment], bool], clock: Clock) -> None:
        self._config = config
        self._submit = submit
        self._clock = clock
        self._quiet = quiet_hours(config.quiet_hours) if config.quiet_hours else None
        # customer ref -> (last seen, monotonic; messages this visit)
        self._visits: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def on_zone_event(self, event: ZoneEvent) -> None:
        """Presence's hook: a resolved customer entering a zone."""
        if event.kind == "enter" and event.customer_ref is not None:
            self.seen(event.customer_ref, event.zone, "ble")

    def checked_in(self, ref: str, zone: str | None) -> None:
        """The app's QR code was shown at a kiosk or scanned by a tablet."""
        self.seen(ref, zone, "qr")

    def seen(self, ref: str, zone: str | None, trigger: str) -> None:
        """The app of `ref` is here (BLE, or a QR check-in)."""
        if not self._config.enabled:
            return
        now = self._clock.monotonic()
        last, sent = self._visits.pop(ref, (float("-inf"), 0))
        if now - last > self._config.visit_gap_s:
            sent = 0  # a new visit
        self._visits[ref] = (now, sent)
        while len(self._visits) > _MAX_VISITORS:
            self._visits.popitem(last=False)
        if sent >= self._config.per_visit or self._quiet_now():
            return
        moment = AppMoment(
            touchpoint="app",
            customer_ref=ref,
            received=now,
            zone=zone,
            trigger=trigger,
            ttl_s=self._config.ttl_s,
            per_day=self._config.per_day,
        )
        if self._submit(moment):
            self._visits[ref] = (now, sent + 1)

    def _quiet_now(self) -> bool:
        if self._quiet is None:
            return False
        local = time.localtime(self._clock.now())
        minute = local.tm_hour * 60 + local.tm_min
        start, end = self._quiet
        return start <= minute < end if start <= end else minute >= start or minute < end
