"""The clock's health: whether the box's time can be trusted, said once in the log, always in
`/healthz` and `/metrics`."""

from __future__ import annotations

import asyncio

import structlog

from gateway.runtime.clock import TimeKeeper
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle

__all__ = ["ClockWatch"]

log = structlog.get_logger("gateway.clock")
_EVERY_S = 5.0
_REPORTED_JUMP_S = 10.0  # smaller steps are NTP's ordinary corrections


class ClockWatch:
    """Reads the time's trust every few seconds; degraded while the clock is known wrong."""

    name = "clock"
    requires: tuple[str, ...] = ()

    def __init__(self, keeper: TimeKeeper, metrics: Metrics) -> None:
        self._keeper = keeper
        self._metrics = metrics
        self._trusted: bool | None = None

    def check(self, handle: Handle) -> None:
        trust = self._keeper.trust()
        m = self._metrics
        for jump in self._keeper.jumps():
            m.clock_jumps.inc()
            if abs(jump) >= _REPORTED_JUMP_S:
                log.warning(
                    "wall clock jumped; durations are measured on the monotonic clock",
                    by_s=round(jump, 1),
                )
        m.clock_trusted.set(int(trust.trusted))
        m.clock_synchronized.set(-1 if trust.synchronized is None else int(trust.synchronized))
        m.clock_behind_seconds.set(round(trust.behind_s, 3))
        if trust.trusted:
            if self._trusted is False:
                log.info("clock trusted again", reason=trust.reason)
            handle.ready(trust.reason)
        else:
            if self._trusted is not False:
                log.warning(
                    "clock is wrong: offers with an end date are not served, expiry is judged on"
                    " the time the box knows",
                    reason=trust.reason,
                )
            # Stable text: the supervisor logs every change of a component's detail.
            handle.degraded(trust.reason.split(", ", 1)[-1])
        self._trusted = trust.trusted

    async def run(self, handle: Handle) -> None:
        while True:
            self.check(handle)
            await asyncio.sleep(_EVERY_S)
