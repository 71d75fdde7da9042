"""The journey: one queue of moments, each decided (`decide`), committed, then posted.

Intakes (kiosks, zone screens, lanes, later tablets) submit typed moments; the journey owns the
queue and runs each plan: decide on the store's read thread (reads and scoring never queue behind
a commit), commit on the store thread (the decision, its uplink event, a coupon's print job, in
one transaction), then post the content and wake the printer. Decisions are committed before
their content is published. Moments waiting are decided in batches (one read, one commit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable

import structlog

from gateway.codecs.payloads import STORAGE_FULL, encode_error
from gateway.codecs.topics import Topics
from gateway.decision.catalog import save_catalog
from gateway.decision.engine import DecisionEngine
from gateway.decision.experiments import ExperimentTest, parse_tests
from gateway.decision.offers import load_offers
from gateway.moments.decide import Plan, commit, decide, decide_each
from gateway.moments.moment import (
    CheckoutMoment,
    Moment,
    Publisher,
    TabletMoment,
    ZoneMoment,
)
from gateway.moments.render import UplinkRow
from gateway.moments.screens import ScreenHold
from gateway.pos import checkout
from gateway.runtime.clock import Clock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Offer, Store, StoreClosed, is_storage_full, transaction
from gateway.sync.bundles import applied_body

__all__ = ["Journey"]

log = structlog.get_logger("gateway.journey")
_FULL_LOG_EVERY_S = 10.0
# Moments waiting are decided up to this many at a time, each counting the ones before it in
# its caps: one read and one commit for them all, not one each (when 5,000 visitors spread in
# 15 s, 200 screens took 1-3 s one by one, issue 14). A device's moment waits for at most one
# batch of screens.
BATCH = 8
# Screens' moments come in bursts (a second's reports from 40 nodes at once: 200 screens
# wanting content) and nobody waits at a screen: up to 32 a batch. In batches of 8 the last
# screen of a burst waited 0.9 s (p99), in 32s 0.24 s; a kiosk's p99 held (47 ms), its p50
# rose 4 ms (scripts/bench.py store --quick, one run each, 2026-12-08).
SCREEN_BATCH = 32


class Journey:
    name = "journey"
    requires = ("store",)

    def __init__(
        self,
        *,
        topics: Topics,
        store: AsyncStore,
        publisher: Publisher,
        engine: DecisionEngine,
        clock: Clock,
        metrics: Metrics,
        hold: ScreenHold,
        uplink: UplinkRow | None = None,
        appended: asyncio.Event | None = None,
        on_print_job: Callable[[str], None] = lambda _printer: None,
        on_checkout: Callable[[str, str, str | None], None] = lambda _total, _decision, _code: None,
        pending: Callable[[], Awaitable[Iterable[Moment]]] | None = None,
        queue_size: int = 1000,
    ) -> None:
        """uplink: builds the decision's event (Outbox.row); appended: wakes the uplink.
        pending: moments taken before a stop and not decided yet (a lane's acknowledged total).
        on_checkout(total id, decision id, coupon code): a checkout decided, for its receipt."""
        self._topics = topics
        self._store = store
        self._publisher = publisher
        self._engine = engine
        self._clock = clock
        self._metrics = metrics
        self._hold = hold
        self._uplink = uplink
        self._appended = appended
        self._on_print_job = on_print_job
        self._on_checkout = on_checkout
        self._pending = pending
        self._queue: collections.deque[Moment] = collections.deque()
        self._queue_size = queue_size
        # Screen moments wait apart, after the devices', one per screen: signage neither
        # delays a device that asked (a kiosk, a lane, a tablet) nor fills the queue they share,
        # and 5,000 visitors entering zones at once wait as 200 moments (issue 14).
        self._ambient: dict[str, ZoneMoment] = {}
        # Other moments nobody waits for (in-app messages) come last: when 500 opted-in
        # visitors entered zones at once, their messages held kiosks ~0.5 s and screens ~1.5 s.
        self._later: collections.deque[Moment] = collections.deque()
        self._wake = asyncio.Event()
        self._offers: list[Offer] = []
        self._tests: tuple[ExperimentTest, ...] = ()  # the experiments bundle's running tests
        self._skipped = 0
        self._full_logged = float("-inf")
        # Paused from the console (issue 18): every moment decided as anonymous, kept in `meta`.
        self.personalisation_paused = False

    def submit(self, moment: Moment) -> bool:
        """Queue a moment (never blocks); False when its queue is full and it is skipped.
        A zone moment waits only if its screen wants it now (the hold is asked again when it
        is decided), in its screen's place: it replaces the one waiting there, unless that one
        is an identified visitor's and it is not. It is decided when no device's moment waits."""
        self._wake.set()
        if isinstance(moment, ZoneMoment):
            screen, ref = moment.touchpoint, moment.customer_ref
            if self._hold.wants(screen, ref, self._clock.now()):
                waiting = self._ambient.get(screen)
                if waiting is None or ref is not None or waiting.customer_ref is None:
                    self._ambient[screen] = moment
            return True
        queue = self._queue if moment.waited_for else self._later
        if len(queue) >= self._queue_size:
            self._skipped += 1
            now = self._clock.monotonic()
            if now - self._full_logged >= _FULL_LOG_EVERY_S:
                self._full_logged = now
                log.warning(
                    "journey queue full, moments skipped",
                    skipped=self._skipped,
                    last=moment.name,
                    touchpoint=moment.touchpoint,
                )
            return False
        queue.append(moment)
        return True

    async def reload_catalog(self) -> None:
        offers = await self._store.call(load_offers)
        # Kept once per version: the decision log names the version its candidates index.
        await self._store.call(save_catalog, offers, self._clock.now())
        self._offers = offers

    async def reload_experiments(self) -> None:
        """The tests of the last experiments bundle applied (none before the first)."""
        body = await self._store.call(applied_body, "experiments")
        self._tests = parse_tests(json.loads(body)) if body else ()

    async def pause_personalisation(self, paused: bool) -> None:
        """Pause (or resume) personalisation for the store; it stays so across restarts."""
        await self._store.call(_write_paused, paused)
        self.personalisation_paused = paused
        log.warning("personalisation paused" if paused else "personalisation resumed")

    async def run(self, handle: Handle) -> None:
        self.personalisation_paused = await self._store.call(_read_paused)
        await self.reload_catalog()
        await self.reload_experiments()
        if self._pending is not None:
            for moment in await self._pending():
                log.info("resuming a moment taken before the stop", moment=moment.name)
                self.submit(moment)
        handle.ready(f"{len(self._offers)} offers")
        try:
            while True:
                moments = await self._next()
                try:
                    await self._act(moments)
                except (sqlite3.Error, StoreClosed) as exc:
                    if not is_storage_full(exc):
                        raise  # the store is in trouble: the supervisor restarts and reports it
                    for moment in moments:
                        self._refuse_for_space(moment)
                except Exception as exc:  # noqa: BLE001 - one bad moment must not stall the rest
                    log.error(
                        "journey moment failed, skipped",
                        moment=moments[0].name,
                        moments=len(moments),
                        error=type(exc).__name__,
                    )
        except asyncio.CancelledError:
            # Drain: what was already taken in is still answered before the link goes away.
            for queue in (self._queue, self._later):
                while queue:
                    with contextlib.suppress(Exception):
                        await self._act([queue.popleft()])
            raise

    async def _next(self) -> list[Moment]:
        """Devices' moments first, else the screens' waiting longest, else the rest."""
        while True:
            if self._queue:
                return self._device_batch()
            if self._ambient:
                return self._screen_batch()
            if self._later:
                return [self._later.popleft()]
            self._wake.clear()
            await self._wake.wait()

    def _device_batch(self) -> list[Moment]:
        """The devices' moments first in line, in order, up to BATCH; a checkout alone (its
        coupon commits durably, with the pending checkout it settles)."""
        batch = [self._queue.popleft()]
        while (
            self._queue
            and len(batch) < BATCH
            and not isinstance(batch[0], CheckoutMoment)
            and not isinstance(self._queue[0], CheckoutMoment)
        ):
            batch.append(self._queue.popleft())
        return batch

    def _screen_batch(self) -> list[Moment]:
        """Up to SCREEN_BATCH screens' moments, longest waiting first."""
        screens = list(itertools.islice(self._ambient, SCREEN_BATCH))
        return [self._ambient.pop(screen) for screen in screens]

    def _refuse_for_space(self, moment: Moment) -> None:
        """No room to record the decision: a device that asked hears so (a checkout stays
        pending, and is decided at the next start; a zone moment passes)."""
        log.warning("storage full: moment not decided", moment=moment.name)
        asked = moment.request_topic(self._topics)
        if asked is not None:
            error = encode_error(asked, STORAGE_FULL, self._clock.now(), moment.request_id)
            self._publisher.post(self._topics.gateway_errors, error)

    async def _act(self, moments: list[Moment]) -> None:
        """Decide, commit, carry out: one moment, or a batch of them together."""
        now = self._clock.now()
        if self.personalisation_paused:
            moments = [dataclasses.replace(m, customer_ref=None) for m in moments]
        moments = [
            m
            for m in moments
            if not isinstance(m, ZoneMoment) or self._hold.wants(m.touchpoint, m.customer_ref, now)
        ]
        if not moments:
            return
        decide_one = functools.partial(
            decide,
            engine=self._engine,
            offers=self._offers,
            now=now,
            time_trusted=self._clock.trusted(),
            topics=self._topics,
            uplink=self._uplink,
            tests=self._tests,
        )
        plans = await self._store.read(decide_each, moments, decide_one)
        # Nothing to do for a moment without decisions (an in-app message past its caps).
        plans = [plan for plan in plans if plan.decided]
        if not plans:
            return
        try:
            await self._store.call(commit, plans)
        except sqlite3.IntegrityError:
            moment = plans[0].moment
            if not isinstance(moment, CheckoutMoment):
                raise
            # A re-sent transaction event (same id): its coupon was decided and queued already.
            log.info("checkout already decided for this transaction", lane=moment.touchpoint)
            if moment.request_id is not None:
                await self._store.call(checkout.settle_now, moment.request_id)
            return
        if self._appended is not None:
            self._appended.set()  # their events committed with them: wake the uplink
        for plan in plans:
            self._carry_out(plan, now)

    def _carry_out(self, plan: Plan, now: float) -> None:
        """The committed plan's I/O: content posted, the printer woken, the tallies."""
        moment = plan.moment
        for topic, payload, retain in plan.posts:
            self._publisher.post(topic, payload, retain=retain)
        if plan.job is not None:
            self._on_print_job(plan.job.printer)
        first = plan.decided[0].decision
        if isinstance(moment, CheckoutMoment) and moment.request_id is not None:
            code = plan.job.coupon_code if plan.job is not None else None
            self._on_checkout(moment.request_id, first.id, code)
        self._hold.shown(moment.screens, first.customer_ref, now)
        audience = "personal" if plan.personal else "anonymous"
        self._metrics.decisions.labels(moment.name, audience).inc(len(plan.decided))
        waited = self._clock.monotonic() - moment.received
        self._metrics.decision_seconds.labels(moment.name).observe(waited)
        if isinstance(moment, TabletMoment):
            self._metrics.associate_suggestions.labels(moment.associate).inc(len(plan.decided))
        if plan.assisted_by is not None:
            self._metrics.associate_assisted_sales.labels(plan.assisted_by).inc()
        offers = [d.decision.offer_id for d in plan.decided]
        log.info(
            "customer identified" if plan.personal else "anonymous visitor",
            moment=moment.name,
            touchpoint=moment.touchpoint,
            customer=first.customer_ref,
            offer=offers[0] if len(offers) == 1 else offers,
            reason=plan.decided[0].outcome.reason,
            decision=first.id,
        )


_PAUSED_KEY = "personalisation_paused"


def _read_paused(store: Store) -> bool:
    row = store.conn.execute("SELECT value FROM meta WHERE key = ?", (_PAUSED_KEY,)).fetchone()
    return row is not None and row[0] == "1"


def _write_paused(store: Store, paused: bool) -> None:
    with transaction(store.conn, durable=True):
        store.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (_PAUSED_KEY, "1" if paused else "0"),
        )
