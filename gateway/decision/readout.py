"""The experiment readout, once a day: an `experiment.summary` event and gauges on /metrics.

The readout (`gateway.decision.report`) reads the decision log over a read-only connection of
its own, in a child process (seconds of Python over a big log would hold the GIL the event loop
needs; neither the loop nor the store thread waits for it). Its figures go up as one
`experiment.summary` event per day (id `experiment.summary:{day}`: a restart the same day makes
no second one at the cloud) and set the `gateway_experiment_*` gauges.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import structlog

from gateway.decision.report_figures import Readout
from gateway.decision.report_text import summary
from gateway.runtime.clock import Clock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.sync.outbox import Outbox

__all__ = ["READOUT_DAYS", "DailyReadout", "publish_gauges"]

log = structlog.get_logger("gateway.readout")
READOUT_DAYS = 14.0
_EVERY_S = 86400.0
_FIRST_AFTER_S = 60.0  # after the start settles


class DailyReadout:
    name = "readout"
    requires = ("store", "outbox")

    def __init__(
        self,
        database: Path,
        outbox: Outbox,
        clock: Clock,
        metrics: Metrics,
        *,
        every_s: float = _EVERY_S,
        first_after_s: float = _FIRST_AFTER_S,
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._clock = clock
        self._metrics = metrics
        self._every_s = every_s
        self._first_after_s = first_after_s

    async def once(self) -> Readout:
        """Read, publish the gauges, and commit the day's summary event."""
        now = self._clock.now()
        job = functools.partial(_read, self._database, since_days=READOUT_DAYS, now=now)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            readout = await asyncio.get_running_loop().run_in_executor(child, job)
        publish_gauges(self._metrics, readout)
        day = int(now // 86400)
        await self._outbox.accept(
            "experiment.summary", "decision", summary(readout),
            event_id=f"experiment.summary:{day}",
        )  # fmt: skip
        log.info("experiment summary", day=day, decisions=readout.touchpoints[-1].decisions)
        return readout

    async def run(self, handle: Handle) -> None:
        handle.ready(f"every {self._every_s:g} s")
        await asyncio.sleep(self._first_after_s)
        while True:
            try:
                await self.once()
            except Exception:  # a readout that fails is tried again tomorrow; it serves nothing
                log.exception("experiment readout failed")
            await asyncio.sleep(self._every_s)


def publish_gauges(metrics: Metrics, readout: Readout) -> None:
    """The readout's figures as gauges (labels: touchpoint, comparison, arm, ...)."""
    for part in readout.touchpoints:
        tp = part.touchpoint
        for name, comparison in (
            ("personalised", part.personalised),
            ("switchback", part.switchback),
        ):
            if comparison is not None:
                conversion = metrics.experiment_conversion
                conversion.labels(tp, name, "treatment").set(comparison.conversion[0])
                conversion.labels(tp, name, "control").set(comparison.conversion[1])
                _lift(metrics, tp, name, (comparison.lift, comparison.low, comparison.high))
        revenue = part.revenue
        if revenue is not None:
            for channel, pair in (
                ("in_store", revenue.in_store),
                ("online", revenue.online),
                ("together", revenue.together),
            ):
                metrics.experiment_revenue_per_visit.labels(tp, channel, "treatment").set(pair[0])
                metrics.experiment_revenue_per_visit.labels(tp, channel, "control").set(pair[1])
            _lift(metrics, tp, "revenue_per_visit", (revenue.lift, revenue.low, revenue.high))
        ope = part.off_policy
        if ope is not None:
            values = {
                "ips": ope.ips[0] if ope.ips else None,
                "snips": ope.snips[0] if ope.snips else None,
                "rules": ope.rules_conversion,
            }
            for estimator, value in values.items():
                if value is not None:
                    metrics.experiment_off_policy.labels(tp, estimator).set(value)


def _lift(
    metrics: Metrics, touchpoint: str, comparison: str, bounds: tuple[float | None, ...]
) -> None:
    for bound, value in zip(("value", "low", "high"), bounds, strict=True):
        if value is not None:
            metrics.experiment_lift.labels(touchpoint, comparison, bound).set(value)


def _read(database: Path, *, since_days: float, now: float) -> Readout:
    """The readout, in the child process: numpy is imported there, never in the daemon."""
    from gateway.decision.report import read

    return read(database, since_days=since_days, now=now)
