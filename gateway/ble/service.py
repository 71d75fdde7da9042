"""The presence component: every BLE source's sightings -> the presence engine -> zone events.

Zone events go to the journey (screens in that zone) and, as telemetry, to the uplink. The
identity keys of opted-in customers are loaded from the store at start and after each consents
bundle, so a withdrawn consent stops resolving at once. Scanner health (adverts per second,
seconds since the last advert, restarts) is published in /metrics and /healthz.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.ble.eid import EidResolver
from gateway.ble.presence import PresenceEngine, ZoneEvent
from gateway.ble.scanners import ScannerStats
from gateway.ble.sighting import Sighting
from gateway.runtime.clock import Clock
from gateway.runtime.config import BleConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Store
from gateway.sync.outbox import Outbox

__all__ = ["Presence"]

log = structlog.get_logger("gateway.ble")

_TICK_S = 1.0
_EID_LOOK_S = 300.0  # how long rotating identifiers may all go unmatched before a warning


class Presence:
    name = "presence"
    requires = ("store",)

    def __init__(
        self,
        config: BleConfig,
        *,
        db: AsyncStore,
        clock: Clock,
        metrics: Metrics,
        stats: ScannerStats,
        on_event: Callable[[ZoneEvent], None],
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self.stats = stats
        self._on_event = on_event
        self._outbox = outbox
        self.resolver = EidResolver(drift_windows=config.eid_drift_windows)
        self.engine = PresenceEngine(config, self._resolve)
        self._reloading = asyncio.Lock()
        self._eids_at = (0.0, 0, 0)  # (monotonic, resolved, unresolved) at the last look

    def _resolve(self, observed: bytes, now: float) -> str | None:
        return self.resolver.resolve(observed, now)  # late bound: reload_keys swaps resolvers

    def on_sighting(self, sighting: Sighting) -> None:
        """Every source calls this (on the event loop); cheap: no I/O, no awaits."""
        for event in self.engine.observe(sighting):
            self._emit(event)

    async def reload_keys(self) -> None:
        # One reload at a time, in order: an older key set must never land after a newer one
        # (a withdrawn consent would resolve again).
        async with self._reloading:
            await self._reload_keys()

    async def _reload_keys(self) -> None:
        keys = await self._db.call(Store.eid_keys)
        # Precomputing 10,000 customers' windows takes ~0.1 s: off the loop, then swapped in.
        resolver = EidResolver(drift_windows=self.config.eid_drift_windows)
        await asyncio.to_thread(resolver.load, keys, self._clock.now())
        self.resolver = resolver
        log.info("identity keys loaded", customers=len(keys))

    async def run(self, handle: Handle) -> None:
        await self.reload_keys()
        handle.ready(self._detail())
        while True:
            await asyncio.sleep(_TICK_S)
            now = self._clock.now()
            # Rotate the precomputed identifier windows here, mostly not inside a lookup.
            self.resolver.refresh(now)
            for event in self.engine.tick(now):
                self._emit(event)
            self._report(handle)

    def _emit(self, event: ZoneEvent) -> None:
        self._metrics.ble_zone_events.labels(event.kind).inc()
        self._on_event(event)
        if self._outbox is not None and event.kind != "dwell":
            data = {
                "kind": event.kind,
                "zone": event.zone,
                "subject": event.subject,  # a customer ref, or a daily-rotated device hash
                "identified": event.customer_ref is not None,
                "dwell_s": round(event.dwell_s, 1),
            }
            self._outbox.submit(self._outbox.row("presence.zone", "telemetry", data, ts=event.at))

    def _scanners(self) -> dict[str, dict[str, float]]:
        """Per scanner, sorted: rate, silence, restarts, adapter resets (metrics and /healthz)."""
        now = self._clock.monotonic()
        return {
            name: {
                "adverts_per_s": self.stats.adverts_per_s(name, now),
                "seconds_since_last_advert": self.stats.silent_for(name, now),
                "restarts": state.restarts,
                "adapter_resets": state.adapter_resets,
            }
            for name, state in sorted(self.stats.scanners.items())
        }

    def _report(self, handle: Handle) -> None:
        silent = []
        m = self._metrics
        for scanner, row in self._scanners().items():
            m.ble_adverts_per_s.labels(scanner).set(row["adverts_per_s"])
            m.ble_seconds_since_last_advert.labels(scanner).set(row["seconds_since_last_advert"])
            m.ble_scanner_restarts.labels(scanner).set(row["restarts"])
            m.ble_adapter_resets.labels(scanner).set(row["adapter_resets"])
            if row["seconds_since_last_advert"] > self.config.watchdog_s:
                silent.append(scanner)
        m.ble_devices.set(len(self.engine))
        for zone, (known, anonymous) in self.engine.occupancy().items():
            m.ble_zone_occupancy.labels(zone, "identified").set(known)
            m.ble_zone_occupancy.labels(zone, "anonymous").set(anonymous)
        c = self.engine.counters
        m.ble_unresolved_eids.set(c.eid_unresolved)
        self._check_eids(c.eid_resolved, c.eid_unresolved)
        m.ble_dropped.labels("noisy_address").set(c.noisy_address)
        m.ble_dropped.labels("cloned_identifier").set(c.cloned_identifier)
        m.ble_dropped.labels("unknown_scanner").set(c.unknown_scanner)
        if silent:
            handle.degraded(f"silent for more than {self.config.watchdog_s:g} s: {silent}")
        else:
            handle.ready(self._detail())

    def _check_eids(self, resolved: int, unresolved: int) -> None:
        """Rotating identifiers heard, none matching a key for a while: say so, with the likely
        cause (they rotate with time: a wrong clock turns every opted-in phone anonymous)."""
        now = self._clock.monotonic()
        at, resolved_then, unresolved_then = self._eids_at
        if now - at < _EID_LOOK_S:
            return
        self._eids_at = (now, resolved, unresolved)
        if at and len(self.resolver) and resolved == resolved_then and unresolved > unresolved_then:
            log.warning(
                "rotating identifiers heard, none matched a customer key; if opted-in phones"
                " are in the store, check the clock (identifiers rotate with time)",
                unresolved=unresolved - unresolved_then,
                minutes=round((now - at) / 60, 1),
                clock_trusted=self._clock.trusted(),
            )

    def _detail(self) -> str:
        # Stable text: the supervisor logs every change of a component's detail.
        return f"{len(self.stats.scanners)} scanner(s), {len(self.resolver)} customer keys"

    def health(self) -> dict[str, object]:
        """The /healthz section: per scanner rate, silence, restarts; zone occupancy."""
        return {
            "scanners": {
                name: {
                    **row,
                    "adverts_per_s": round(row["adverts_per_s"], 2),
                    "seconds_since_last_advert": round(row["seconds_since_last_advert"], 1),
                }
                for name, row in self._scanners().items()
            },
            "devices": len(self.engine),
            "zones": {
                zone: {"identified": known, "anonymous": anonymous}
                for zone, (known, anonymous) in sorted(self.engine.occupancy().items())
            },
        }
