"""The composition root: builds the components from the config (`build`); `daemon` runs them.

This module and `gateway.runtime.cli` are the only parts of `gateway` that import drivers; the
rest of the core never does (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from drivers.cloud import CloudLink, https_fetcher
from drivers.mqtt import MqttLink
from gateway.ble.service import Presence
from gateway.codecs.identity import IdentityResolver, load_or_create_hash_key, parse_public_key
from gateway.codecs.payloads import session_floor
from gateway.codecs.topics import SECTIONS, Topics
from gateway.decision.engine import DecisionEngine
from gateway.decision.manager import ModelManager
from gateway.decision.offers import upsert_offers
from gateway.decision.outcomes import Windows
from gateway.decision.readout import DailyReadout
from gateway.decision.rewards import RewardJoiner
from gateway.escpos import load_profile
from gateway.flows.device_events import DeviceEvents
from gateway.flows.printing import PrintJournal
from gateway.moments import AppPresence, Journey, Kiosks, ScreenHold, Tablets, ZoneScreens
from gateway.moments.followup import Followups
from gateway.pos import receipts
from gateway.pos.lanes import PosLanes
from gateway.runtime.builders import both, build_camera, build_presence, build_printers
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import Config
from gateway.runtime.metrics import Metrics
from gateway.runtime.sdnotify import Notifier
from gateway.runtime.supervisor import Component, Handle
from gateway.runtime.timekeeping import ClockWatch
from gateway.store import AsyncStore, Opened, Store, check_writable, load_seed
from gateway.sync.bundles import BundleApplier, Reaction
from gateway.sync.outbox import Outbox

__all__ = ["Gateway", "StoreComponent", "build"]

log = structlog.get_logger("gateway.app")
DATABASE_NAME = "gateway.sqlite3"


class StoreComponent:
    """Opens the SQLite store (migrating it) and loads the seed file, if any."""

    name = "store"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        db: AsyncStore,
        seed_file: Path | None,
        hash_key: bytes,
        clock: TimeKeeper,
        notifier: Notifier | None = None,
    ):
        self.db = db
        self._notifier = notifier
        self._seed_file = seed_file
        self._hash_key = hash_key
        self._clock = clock

    async def run(self, handle: Handle) -> None:
        notifier = self._notifier
        # A salvage of a large file can outlast TimeoutStartSec= on a small box: each sign of
        # progress buys a minute (systemd would kill it mid-salvage and restart empty).
        progress = (lambda: notifier.extend_start(60)) if notifier else (lambda: None)
        _log_opened(await self.db.open(self._clock.now(), progress))
        try:
            # The clock can't be earlier than what the box recorded, or the cloud signed.
            own, signed = await self.db.call(Store.newest_times)
            if own is not None:
                self._clock.raise_floor(own, "the newest time in the database", firm=False)
            if signed is not None:
                self._clock.raise_floor(signed, "the newest signed bundle", firm=True)
            detail = str(self.db.path)
            if self._seed_file is not None:
                offers, consents = load_seed(self._seed_file, self._hash_key)
                now = self._clock.now()
                await self.db.call(upsert_offers, offers, now)
                await self.db.call(Store.upsert_consents, consents, now)
                detail += f", seeded {len(offers)} offers and {len(consents)} consents"
            handle.ready(detail)
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.db.close())


def _log_opened(opened: Opened) -> None:
    """One line for what start found: a damaged file moved aside, or a new empty database."""
    path = str(opened.path)
    if opened.moved_to is not None:
        log.error(
            "database damaged: moved aside, outbox salvaged into a new one",
            path=path,
            moved_to=str(opened.moved_to),
            problem=opened.problem,
            salvaged_events=opened.salvaged,
            remedy="keep the moved file for support; check the storage (dmesg, the SD card)"
            " and replace it if this happens again",
        )
    elif opened.new:
        log.warning(
            "new empty database",
            path=path,
            hint="expected on a first start; otherwise the database was deleted or the card"
            " replaced, and what it held that the cloud had not received is gone",
        )
    log.info("store opened", path=path, quick_check_ms=round(opened.check_s * 1000, 1))


@dataclass(frozen=True, slots=True)
class Gateway:
    """The daemon's components, named and typed; `components()` in the order they start (and
    stop in reverse). The health server is added by `run_gateway`."""

    store: StoreComponent
    clock: ClockWatch
    link: MqttLink
    nodes_link: MqttLink | None  # scanner nodes' reports, apart from the devices' requests
    outbox: Outbox
    models: ModelManager
    journey: Journey
    rewards: RewardJoiner
    tablets: Tablets | None
    printers: tuple[Component, ...]  # the print journal, then one driver per printer
    camera: tuple[Component, ...]  # the purposes, then the camera source
    presence: Presence | None
    radio: Component | None  # the local BLE adapter
    cloud: CloudLink | None
    readout: DailyReadout | None = None  # the daily experiment summary (issue 16)

    def components(self) -> list[Component]:
        named: list[Component | None] = [
            self.store,
            self.clock,
            self.link,
            self.nodes_link,
            self.outbox,
            self.models,
            self.journey,
            self.rewards,
            self.tablets,
            *self.printers,
            *self.camera,
            self.presence,
            self.radio,
            self.cloud,
            self.readout,
        ]
        return [c for c in named if c is not None]


def build(
    config: Config, clock: TimeKeeper, metrics: Metrics, notifier: Notifier | None = None
) -> Gateway:
    """Every component of the daemon, wired: the composition root."""
    state_dir = config.store.state_dir
    check_writable(state_dir, state_dir / DATABASE_NAME)  # else a one-line exit 78, in cli
    topics = Topics(config.store.id)
    hash_key = load_or_create_hash_key(config.identity.hash_key_file or state_dir / "identity.key")
    token = config.identity.token_public_key
    db = AsyncStore(
        state_dir / DATABASE_NAME,
        int(config.outbox.max_mb * 1024 * 1024),
        min_free_bytes=int(config.outbox.min_free_mb * 1024 * 1024),
    )
    metrics.store_wal_restarts.set_function(lambda: db.wal_restarts)
    # Device kind -> the ids config.toml declares (the link and the events refuse the rest).
    declared = {kind: set(getattr(config, section)) for kind, section in SECTIONS.items()}
    scanners = set(config.ble.scanners)
    link = MqttLink(
        config.mqtt,
        topics,
        # At least the time: a lost database does not send the number back to 1 (docs/mqtt.md).
        session_source=lambda: db.call(
            Store.bump_counter, "mqtt_session", floor=session_floor(clock.now())
        ),
        metrics=metrics,
        clock=clock,
        client_secret=hash_key,
        budgets=config.budgets,
        declared={**declared, "node": scanners},
        requires=("store",),
    )
    nodes_link = None
    if config.ble.enabled and config.ble.nodes_topic and config.mqtt.nodes_connection:
        nodes_link = MqttLink(
            config.mqtt,
            topics,
            session_source=None,
            metrics=metrics,
            clock=clock,
            client_secret=hash_key,
            budgets=config.budgets,
            declared={"node": scanners},
            suffix="nodes",
        )
    outbox = Outbox(db, config.store.id, clock, metrics)
    engine = DecisionEngine(config.decision)
    metrics.decision_ess_week.set_function(lambda: engine.ess.projected_per_week(clock.now()))
    models = ModelManager(
        engine,
        state_dir / "models" / "nba.onnx",
        config.decision.model_file,
        db,
        outbox=outbox,
        now=clock.now,
    )
    profiles = {pid: load_profile(p.profile) for pid, p in config.printers.items()}
    printing = PrintJournal(db, profiles, clock, metrics=metrics)
    identity = IdentityResolver(
        hash_key,
        parse_public_key(token) if token else None,
        config.identity.token_leeway_s,
        clock.now,
    )
    journey = Journey(
        topics=topics,
        store=db,
        publisher=link,
        engine=engine,
        clock=clock,
        metrics=metrics,
        hold=ScreenHold(config.ble.screen_hold_s),
        uplink=outbox.row,
        appended=outbox.appended,
        on_print_job=printing.queued,
        on_checkout=lambda total, decision, code: lanes.checked_out(total, decision, code),  # noqa: PLW0108
        pending=lambda: lanes.pending(),  # noqa: PLW0108 - the lanes are built below
    )
    app = AppPresence(config.app, journey.submit, clock)
    kiosks = Kiosks(
        topics=topics,
        kiosks=config.kiosks,
        identity=identity,
        publisher=link,
        submit=journey.submit,
        clock=clock,
        checked_in=app.checked_in,
    )
    followups = Followups(db, outbox, clock)
    tablets = Tablets(
        topics=topics,
        tablets=config.tablets,
        identity=identity,
        hash_key=hash_key,
        submit=journey.submit,
        clock=clock,
        metrics=metrics,
        checked_in=app.checked_in,
        session_ended=followups.session_ended,
    )
    rewards = RewardJoiner(db, outbox, clock, config.decision.reward_window_s)
    lanes = PosLanes(
        topics=topics,
        lanes=config.lanes,
        identity=identity,
        submit=journey.submit,
        db=db,
        publisher=link,
        clock=clock,
        rewards=rewards,
        on_print_job=printing.queued,
        on_e_receipt=followups.receipt_sent,
    )
    events = DeviceEvents(
        topics,
        outbox,
        link,
        declared=declared,
        clock=clock,
        rewards=rewards,
        hooks=[lanes],
    )
    link.route(topics.pos_basket_filter, "pos_basket", lanes.on_basket)
    link.route(topics.pos_loyalty_filter, "pos_loyalty", lanes.on_loyalty)
    link.route(topics.kiosk_identify_filter, "kiosk_identify", kiosks.on_identify)
    link.route(topics.tablet_serve_filter, "tablet_serve", tablets.on_serve)
    link.route(topics.tablet_close_filter, "tablet_close", tablets.on_close)
    link.route(topics.device_events_filter, "device_events", events.on_event)
    presence, radio = build_presence(
        config,
        db=db,
        link=nodes_link or link,
        clock=clock,
        metrics=metrics,
        hash_key=hash_key,
        on_zone=both(
            ZoneScreens(config.screens, journey.submit, clock.monotonic).on_zone_event,
            app.on_zone_event,
        ),
        outbox=outbox,
    )
    cloud = None
    if config.cloud.enabled:

        async def apply_settings(body: Mapping[str, Any]) -> None:
            models.apply_settings(dict(body.get("settings", {})))

        reactions: dict[str, Reaction] = {
            "offers": lambda _body: journey.reload_catalog(),
            "model": lambda _body: models.load(),
            "config": apply_settings,
            "experiments": lambda _body: journey.reload_experiments(),
        }
        if presence is not None:
            reactions["consents"] = lambda _body: presence.reload_keys()
        key = config.cloud.bundle_public_key
        bundles = BundleApplier(
            db=db,
            store_id=config.store.id,
            public_key=parse_public_key(key) if key else None,
            models_dir=state_dir / "models",
            fetch=https_fetcher(config.cloud.artifact_ca_file),
            outbox=outbox,
            clock=clock,
            metrics=metrics,
            reactions=reactions,
            appliers={"claims": functools.partial(receipts.apply_claims, uplink=outbox.row)},
            on_signed_time=lambda t: clock.raise_floor(t, "a signed bundle", firm=True),
            outcome_windows=Windows(
                config.decision.reward_window_s, config.decision.online_window_s
            ),
            claim_lookup=receipts.claim_decisions,
        )
        cloud = CloudLink(
            config.cloud,
            config.store.id,
            db=db,
            appended=outbox.appended,
            on_bundle=bundles.handle,
            metrics=metrics,
        )
    return Gateway(
        store=StoreComponent(db, config.catalog.seed_file, hash_key, clock, notifier),
        clock=ClockWatch(clock, metrics),
        link=link,
        nodes_link=nodes_link,
        outbox=outbox,
        models=models,
        journey=journey,
        rewards=rewards,
        tablets=tablets if config.tablets else None,
        printers=build_printers(config, printing, profiles, clock, metrics),
        camera=build_camera(config, kiosks, clock, metrics, outbox),
        presence=presence,
        radio=radio,
        cloud=cloud,
        readout=DailyReadout(state_dir / DATABASE_NAME, outbox, clock, metrics),
    )
