"""The daemon's life: build the gateway, run it under the supervisor with systemd's readiness
and watchdog, health and metrics, until SIGTERM, then drain within the configured bound."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import structlog

from gateway import __version__
from gateway.ble.service import Presence
from gateway.flows.printing import PrintJournal
from gateway.runtime.app import build
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import Config
from gateway.runtime.health import HealthServer, judge
from gateway.runtime.metrics import Metrics
from gateway.runtime.pauses import GIL_SWITCH_INTERVAL_S, timing_gc, watch_loop
from gateway.runtime.sdnotify import Notifier
from gateway.runtime.supervisor import State, Supervisor

__all__ = ["run_gateway"]

log = structlog.get_logger("gateway.app")


async def run_gateway(
    config: Config,
    *,
    notifier: Notifier | None = None,
    clock: TimeKeeper | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain within the configured bound."""
    started = time.monotonic()
    notifier = notifier or Notifier()
    clock = clock or TimeKeeper()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gateway = build(config, clock, metrics, notifier)
    presence = gateway.presence
    components = gateway.components()
    supervisor: Supervisor
    if config.health.enabled:
        components.append(
            HealthServer(
                config.health.host,
                config.health.port,
                report=lambda: _health_report(supervisor, config, started, presence),
                metrics=metrics.render,
            )
        )
    metrics.start_at_zero([c.name for c in components], config.printers)
    if config.console.enabled:  # issue 18
        from gateway.console.wiring import build_console

        journal = gateway.printers[0] if gateway.printers else None
        console = build_console(
            config, db=gateway.store.db, link=gateway.link, outbox=gateway.outbox,
            journey=gateway.journey, models=gateway.models,
            journal=journal if isinstance(journal, PrintJournal) else None,
            clock=clock, metrics=metrics,
            health=lambda: _health_report(supervisor, config, started, presence)[1],
        )  # fmt: skip
        components.append(console)
    supervisor = Supervisor(
        components,
        restart_min_s=config.supervisor.restart_min_s,
        restart_max_s=config.supervisor.restart_max_s,
        ready_requires=("store", "mqtt"),
        on_change=_Readiness(config, metrics, notifier, started),
        clock=clock,
    )

    def request_stop(signame: str) -> None:
        if stop.is_set():
            return
        log.info("stopping", signal=signame, bound_s=config.supervisor.shutdown_timeout_s)
        notifier.stopping()
        # The bound is a promise to systemd: past it, leave without finishing the drain.
        loop.call_later(config.supervisor.shutdown_timeout_s, _leave_now)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    watchdog = asyncio.create_task(_feed_watchdog(notifier), name="watchdog")
    lag = asyncio.create_task(watch_loop(metrics), name="loop-lag")  # issue 14
    log.info("starting", store=config.store.id, version=__version__)
    try:
        with timing_gc(metrics):
            await supervisor.run(stop)
    finally:
        watchdog.cancel()
        lag.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()
    log.info("stopped", store=config.store.id)


class _Readiness:
    """The supervisor's changes, told: per-component gauges, and systemd's READY=1 once."""

    def __init__(
        self, config: Config, metrics: Metrics, notifier: Notifier, started: float
    ) -> None:
        self._config, self._metrics, self._notifier = config, metrics, notifier
        self._started = started
        self._told = False

    def __call__(self, sup: Supervisor) -> None:
        metrics = self._metrics
        for name, h in sup.health.items():
            metrics.component_up.labels(name).set(1 if h.state == State.READY else 0)
            metrics.component_restarts.labels(name).set(h.restarts)
        if sup.is_ready and not self._told:
            self._told = True
            # Everything imported and built so far lives as long as the process: keep it out of
            # the collector, so a full collection costs microseconds, not a 10+ ms pause.
            gc.freeze()
            self._notifier.ready(sup.summary)
            startup_s = round(time.monotonic() - self._started, 3)
            log.info("gateway ready", store=self._config.store.id, startup_s=startup_s)
        else:
            self._notifier.status(sup.summary)


def _health_report(
    supervisor: Supervisor, config: Config, started: float, presence: Presence | None = None
) -> tuple[bool, Mapping[str, Any]]:
    now = time.monotonic()
    verdict = judge(supervisor.health, ready_once=supervisor.is_ready)
    components = {
        name: {
            "state": str(h.state),
            "detail": h.detail,
            "restarts": h.restarts,
            "for_s": round(now - h.since, 3),
        }
        for name, h in supervisor.health.items()
    }
    body = {
        "status": verdict.status,
        "degraded": list(verdict.degraded),
        "store_id": config.store.id,
        "version": __version__,
        "uptime_s": round(now - started, 3),
        "components": components,
    }
    if presence is not None:
        body["ble"] = presence.health()
    return verdict.serving, body


async def _feed_watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 from the event loop itself, so a blocked loop is what systemd notices."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 2)


def _leave_now() -> None:
    log.error("drain exceeded supervisor.shutdown_timeout_s; exiting without finishing it")
    os._exit(0)
