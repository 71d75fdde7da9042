"""The journey's decisions: read and scored beside the store thread, committed on it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.ble.presence import ZoneEvent
from gateway.codecs.identity import IdentityResolver, customer_ref
from gateway.codecs.payloads import encode_kiosk_identify
from gateway.codecs.topics import Topics
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.log import latest_decisions
from gateway.decision.model import Scorer
from gateway.decision.offers import upsert_offers
from gateway.flows.device_events import DeviceEvents
from gateway.moments import AppPresence, Journey, Kiosks, Moment, ScreenHold, Tablets, ZoneScreens
from gateway.moments.moment import AppMoment, KioskMoment, ZoneMoment
from gateway.pos import checkout
from gateway.pos.lanes import PosLanes
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import (
    AppConfig,
    DecisionConfig,
    KioskConfig,
    LaneConfig,
    ScreenConfig,
    TabletConfig,
)
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Consent, Offer, StorageFull, Store
from gateway.sync.outbox import Outbox

REPO = Path(__file__).resolve().parent.parent
HASH_KEY = b"journey-test-key" * 2
LOYALTY = "4000000000001"
REF = customer_ref(HASH_KEY, "loyalty", LOYALTY)


class RecordingEngine(DecisionEngine):
    """The real engine; notes each decision's customer as it returns (on whatever thread)."""

    def __init__(self, config: DecisionConfig) -> None:
        super().__init__(config)
        self.customers: list[str | None] = []
        self.decided = threading.Event()

    def decide(self, *args: Any, **kwargs: Any) -> Outcome:
        outcome = super().decide(*args, **kwargs)
        self.customers.append(kwargs["customer_ref"])
        self.decided.set()
        return outcome


@dataclass
class Screens:
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.posts.append((topic, json.loads(payload)))
        self.posted.set()


@dataclass
class Rig:
    db: AsyncStore
    outbox: Outbox
    journey: Journey
    kiosks: Kiosks
    zones: ZoneScreens
    lanes: PosLanes
    events: DeviceEvents
    engine: RecordingEngine
    screens: Screens
    printed: list[str]
    wall: list[float]  # the fixed clock: moved by hand
    clock: TimeKeeper


TOPICS = Topics("test-store")
TX = "0190f4a2-7c1e-7000-8000-00000000a001"  # a total's event id
T0 = 1_800_000_000.0


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The moment pipeline as app.py builds it, in process: a SQLite file, the shipped model,
    a fixed clock and a list-backed publisher; no broker, no subprocess."""
    db = AsyncStore(tmp_path / "gateway.sqlite3")
    await db.open()
    await db.call(upsert_offers, [Offer("OFF-1", "Coffee"), Offer("OFF-2", "Bread")], 0.0)
    await db.call(Store.upsert_consents, [Consent(REF, True, "coffee-lovers")], 0.0)
    wall = [T0]
    clock = TimeKeeper(
        wall=lambda: wall[0], mono=lambda: wall[0], synchronized=lambda: True, floor=0.0
    )
    metrics = Metrics()
    outbox = Outbox(db, "test-store", clock, metrics)
    engine = RecordingEngine(DecisionConfig(holdout_share=0.0))
    engine.install(Scorer.load(REPO / "models" / "nba.onnx"), replay=[])
    screens, printed = Screens(), []
    lanes_config = {"pos-1": LaneConfig(printer="receipt-1")}
    identity = IdentityResolver(HASH_KEY, None, 0, clock.now)
    journey = Journey(
        topics=TOPICS,
        store=db,
        publisher=screens,
        engine=engine,
        clock=clock,
        metrics=metrics,
        hold=ScreenHold(30.0),
        uplink=outbox.row,
        appended=outbox.appended,
        on_print_job=printed.append,
        pending=lambda: lanes.pending(),  # noqa: PLW0108 - the lanes are built below
    )
    kiosks = Kiosks(
        topics=TOPICS,
        kiosks={"kiosk-1": KioskConfig(zone="entrance", screens=("entrance-1",))},
        identity=identity,
        publisher=screens,
        submit=journey.submit,
        clock=clock,
    )
    zones = ZoneScreens(
        {"coffee-1": ScreenConfig(zone="coffee"), "coffee-2": ScreenConfig(zone="coffee")},
        journey.submit,
        clock.monotonic,
    )
    lanes = PosLanes(
        topics=TOPICS,
        lanes=lanes_config,
        identity=identity,
        submit=journey.submit,
        db=db,
        publisher=screens,
        clock=clock,
    )
    events = DeviceEvents(
        TOPICS,
        outbox,
        screens,
        declared={"pos": {"pos-1"}},
        clock=clock,
        hooks=[lanes],
    )
    ready = asyncio.Event()  # the journey has read the catalog
    tasks = [
        asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None))),
        asyncio.create_task(journey.run(Handle("journey", lambda *_: ready.set()))),
    ]
    async with asyncio.timeout(10):
        await ready.wait()
    yield Rig(
        db, outbox, journey, kiosks, zones, lanes, events, engine, screens, printed, wall, clock
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await db.close()


def _hold_next_commit(store: Store, held: threading.Event, release: threading.Event) -> None:
    """Runs on the store thread: the next COMMIT there stops (write lock taken, store thread
    busy) until `release`, as a commit waiting for a slow fsync would."""
    armed = [True]

    def trace(statement: str) -> None:
        if armed[0] and statement == "COMMIT":
            armed[0] = False
            held.set()
            release.wait(10)

    store._conn.set_trace_callback(trace)


async def test_a_decision_reads_and_scores_while_an_unrelated_commit_holds_the_store(
    rig: Rig,
) -> None:
    held, release = threading.Event(), threading.Event()
    await rig.db.call(_hold_next_commit, held, release)
    try:
        # A POS total (durable) is being committed and its commit does not finish.
        accepted = asyncio.create_task(
            rig.outbox.accept("pos.transaction", "transaction", {"total": 9.5})
        )
        assert await asyncio.to_thread(held.wait, 5)

        topic = TOPICS.kiosk_identify("kiosk-1")
        rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-1"))

        # The consent was read and the model scored meanwhile: the customer is known to it.
        assert await asyncio.to_thread(rig.engine.decided.wait, 5)
        assert rig.engine.customers == [REF]
        # ... but the decision is committed before its content is shown: not yet.
        await asyncio.sleep(0.1)
        assert rig.screens.posts == []
        assert not accepted.done()
    finally:
        release.set()

    async with asyncio.timeout(5):
        await accepted
        await rig.screens.posted.wait()
    assert [topic.split("/")[-2] for topic, _ in rig.screens.posts] == ["kiosk-1", "entrance-1"]
    content = [body for _, body in rig.screens.posts]
    assert {c["audience"] for c in content} == {"personal"}
    assert {c["request_id"] for c in content} == {"req-1"}
    (decision,) = await rig.db.call(latest_decisions)
    assert decision.customer_ref == REF
    assert decision.id == content[0]["decision_id"]
    assert decision.policy == "nba"
    # The decision's event for the cloud committed with it; the total is committed too.
    batch = await rig.db.call(Store.outbox_batch, {0: 0, 1: 0, 2: 0}, 10, 10**6)
    assert sorted(json.loads(body)["type"] for _, _, body in batch) == [
        "decision",
        "pos.transaction",
    ]


async def test_a_decision_commits_while_an_unrelated_durable_commit_waits_for_its_fsync(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_fsync, release = threading.Event(), threading.Event()
    fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        in_fsync.set()
        release.wait(10)
        fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    try:
        accepted = asyncio.create_task(
            rig.outbox.accept("pos.transaction", "transaction", {"total": 9.5})
        )
        assert await asyncio.to_thread(in_fsync.wait, 5)  # committed, its WAL being fsynced

        topic = TOPICS.kiosk_identify("kiosk-1")
        rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-2"))
        async with asyncio.timeout(5):
            await rig.screens.posted.wait()  # decided, committed, shown
        (decision,) = await rig.db.call(latest_decisions)
        assert decision.customer_ref == REF
        assert not accepted.done()  # the total is acknowledged only once it is durable
    finally:
        release.set()
    async with asyncio.timeout(5):
        await accepted


async def _posted(rig: Rig, count: int) -> list[tuple[str, dict[str, Any]]]:
    async with asyncio.timeout(5):
        while len(rig.screens.posts) < count:
            rig.screens.posted.clear()
            await rig.screens.posted.wait()
    return rig.screens.posts


async def test_the_frequency_caps_count_what_was_shown_in_their_windows(rig: Rig) -> None:
    """An offer is shown at most `cap_touchpoint_per_hour` times on a screen in an hour, and
    `cap_customer_per_day` times to a customer in a day; once a window passes it is back."""

    async def identify() -> str | None:
        n = len(rig.screens.posts)
        rig.kiosks.on_identify(
            TOPICS.kiosk_identify("kiosk-1"),
            encode_kiosk_identify("loyalty", LOYALTY, f"req-{rig.wall[0]}-{n}"),
        )
        posts = await _posted(rig, n + 2)  # the kiosk and its screen
        return posts[-1][1]["offer"]["id"] if posts[-1][1]["offer"] else None

    config = rig.engine.config
    rig.engine.config = dataclasses.replace(config, cap_touchpoint_per_hour=2)
    shown = [await identify() for _ in range(4)]  # two offers, each twice at this kiosk
    assert sorted(shown) == ["OFF-1", "OFF-1", "OFF-2", "OFF-2"]  # type: ignore[type-var]
    assert await identify() is None  # both at the kiosk's cap this hour
    rig.wall[0] += 3601
    assert await identify() is not None  # an hour on: shown again

    rig.engine.config = dataclasses.replace(config, cap_customer_per_day=1)
    rig.wall[0] += 86401
    assert sorted([await identify(), await identify()]) == ["OFF-1", "OFF-2"]  # type: ignore[type-var]
    rig.wall[0] += 3601  # the kiosk's hour has passed, the customer's day has not
    assert await identify() is None
    rig.wall[0] += 86401
    assert await identify() is not None


async def test_zone_moments_reach_the_zones_screens_and_the_hold_keeps_what_they_show(
    rig: Rig,
) -> None:
    def zone(kind: str, ref: str | None) -> None:
        rig.zones.on_zone_event(ZoneEvent(kind, "coffee", ref or "d_anon", ref, rig.wall[0], 20.0))  # type: ignore[arg-type]

    zone("enter", None)  # an anonymous visitor: both screens of the zone decide
    posts = await _posted(rig, 2)
    assert sorted(t.split("/")[-2] for t, _ in posts) == ["coffee-1", "coffee-2"]
    assert {body["audience"] for _, body in posts} == {"anonymous"}
    zone("dwell", None)  # held: nothing new within screen_hold_s
    zone("exit", REF)  # exits change nothing
    zone("enter", REF)  # an identified customer takes over an anonymous screen at once
    posts = await _posted(rig, 4)
    assert {body["audience"] for _, body in posts[2:]} == {"personal"}
    zone("dwell", REF)  # the same audience: not decided for twice
    rig.wall[0] += 31  # the hold passes
    zone("dwell", None)
    posts = await _posted(rig, 6)
    assert len(posts) == 6
    decisions = await rig.db.call(latest_decisions)
    assert sorted(d.moment for d in decisions) == ["zone_dwell"] * 2 + ["zone_enter"] * 4


async def test_a_kiosk_moment_is_decided_before_the_screen_moments_waiting(rig: Rig) -> None:
    """Signage waits behind a device that asked (issue 14: zone entries queued ahead of a
    kiosk's identification made the kiosk wait seconds)."""
    for n in range(30):
        event = ZoneEvent("enter", "coffee", f"d_{n}", None, rig.wall[0], 20.0)  # type: ignore[arg-type]
        rig.zones.on_zone_event(event)
    topic = TOPICS.kiosk_identify("kiosk-1")
    rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-first"))
    posts = await _posted(rig, 4)
    assert [body["request_id"] for _, body in posts[:2]] == ["req-first"] * 2  # kiosk, screen
    # Each coffee screen takes the first entry, then is held: the 29 others are not decided.
    await asyncio.sleep(0.2)
    assert sorted(t.split("/")[-2] for t, _ in rig.screens.posts[2:]) == ["coffee-1", "coffee-2"]


async def test_a_screen_keeps_one_moment_waiting_and_an_identified_visitor_keeps_her_place(
    rig: Rig,
) -> None:
    """Visitors entering at once wait as one moment per screen; anonymous ones arriving after
    an identified customer's do not take her place."""

    def enter(ref: str | None, n: int) -> None:
        event = ZoneEvent("enter", "coffee", ref or f"d_{n}", ref, rig.wall[0], 20.0)  # type: ignore[arg-type]
        rig.zones.on_zone_event(event)

    enter(None, 0)
    enter(REF, 1)
    for n in range(2, 40):
        enter(None, n)
    posts = await _posted(rig, 2)
    await asyncio.sleep(0.2)
    assert len(rig.screens.posts) == 2  # one decision per screen
    assert {body["audience"] for _, body in posts} == {"personal"}


async def test_screens_decided_together_keep_a_customers_cap_across_her_screens(
    rig: Rig,
) -> None:
    """Screens waiting are decided in batches (one read, one commit); within one, a
    customer's second screen counts her first screen's decision, not committed yet, in her
    caps."""
    rig.engine.config = dataclasses.replace(
        rig.engine.config, cap_customer_per_day=1, exploration=0.0
    )
    for n in range(20):  # other screens waiting too: a batch is under way
        rig.journey.submit(
            ZoneMoment(kind="enter", touchpoint=f"aisle-{n}", customer_ref=None, zone="aisle")
        )
    rig.zones.on_zone_event(ZoneEvent("enter", "coffee", REF, REF, rig.wall[0], 20.0))  # type: ignore[arg-type]
    posts = await _posted(rig, 22)
    assert len(posts) == 22  # every screen waiting got its content
    offers = {t.split("/")[-2]: body["offer"]["id"] for t, body in posts if "coffee" in t}
    assert sorted(offers.values()) == ["OFF-1", "OFF-2"]  # one each: her cap is one a day


async def test_devices_decided_together_keep_the_customers_and_the_kiosks_caps(
    rig: Rig,
) -> None:
    """Devices' moments waiting are decided in batches too, each counting the decisions
    before it, committed or not: the customer's cap across kiosks, a kiosk's across its own."""
    rig.engine.config = dataclasses.replace(
        rig.engine.config, cap_customer_per_day=1, cap_touchpoint_per_hour=2, exploration=0.0
    )

    def identify(kiosk: str, ref: str | None = None) -> None:
        rig.journey.submit(KioskMoment(touchpoint=kiosk, customer_ref=ref, request_id="r"))

    identify("kiosk-x")  # one decision at kiosk-x committed before the batch
    await _posted(rig, 1)
    for n in range(4):  # four kiosks at once: the second and fourth are hers
        identify(f"kiosk-{n}", REF if n in (1, 3) else None)
    for _ in range(4):  # and four more identifications at kiosk-x
        identify("kiosk-x")
    posts = await _posted(rig, 9)
    offers = {t.split("/")[-2]: body["offer"] for t, body in posts if "kiosk-x" not in t}
    assert sorted(offers) == [f"kiosk-{n}" for n in range(4)]
    # Her cap is one a day: each of the two offers once, not the model's best twice.
    assert sorted(offers[k]["id"] for k in ("kiosk-1", "kiosk-3")) == ["OFF-1", "OFF-2"]
    # The kiosk's cap is two an hour: each offer twice, then none left to show.
    at_x = [body["offer"] for t, body in posts if "kiosk-x" in t]
    assert sorted(o["id"] for o in at_x if o) == ["OFF-1", "OFF-1", "OFF-2", "OFF-2"]
    assert at_x.count(None) == 1


async def test_a_screen_whose_decision_fails_does_not_keep_the_others_dark(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide = rig.engine.decide

    def failing_at_aisle_3(*args: Any, **kwargs: Any) -> Outcome:
        if kwargs["touchpoint_id"] == "aisle-3":
            raise ValueError("a bad offer row")
        return decide(*args, **kwargs)

    monkeypatch.setattr(rig.engine, "decide", failing_at_aisle_3)
    for n in range(6):
        rig.journey.submit(
            ZoneMoment(kind="enter", touchpoint=f"aisle-{n}", customer_ref=None, zone="aisle")
        )
    posts = await _posted(rig, 5)
    await asyncio.sleep(0.2)
    screens = sorted(t.split("/")[-2] for t, _ in rig.screens.posts)
    assert screens == ["aisle-0", "aisle-1", "aisle-2", "aisle-4", "aisle-5"]
    assert len(posts) == 5


async def test_a_checkout_moment_prints_a_coupon_for_the_lanes_customer(rig: Rig) -> None:
    rig.lanes.on_basket(TOPICS.pos_basket("pos-1"), b'{"categories": ["coffee", "bakery"]}')
    loyalty = json.dumps({"method": "loyalty", "value": LOYALTY}).encode()
    rig.lanes.on_loyalty(TOPICS.pos_loyalty("pos-1"), loyalty)
    total = json.dumps(
        {"id": TX, "type": "pos.transaction", "priority": "transaction", "data": {"total": 9.5}}
    ).encode()
    await rig.events.on_event(TOPICS.device_events("pos", "pos-1"), total)  # committed
    async with asyncio.timeout(5):
        while not rig.printed:  # noqa: ASYNC110 - the hook is a plain callable
            await asyncio.sleep(0.01)
    assert rig.printed == ["receipt-1"]
    (decision,) = await rig.db.call(latest_decisions)
    assert (decision.moment, decision.touchpoint, decision.customer_ref) == (
        "checkout",
        "pos-1",
        REF,
    )
    assert decision.request_id == TX
    assert json.loads(decision.context or "{}")["basket"]  # the basket reached the features
    assert await rig.db.call(checkout.pending) == []  # settled with the decision
    # A receipt posts no content: the lane's acknowledgement is all.
    assert [t.rsplit("/", 2)[-2:] for t, _ in rig.screens.posts] == [["events", "ack"]]


def _database_full(store: Store, full: bool) -> None:
    """SQLite's own SQLITE_FULL: the file may not grow past the pages it has, and its free
    pages are taken (a row that needs a new page, one over a page long, fails)."""
    if not full:
        store.conn.execute("PRAGMA max_page_count = 1073741823")
        return
    store.conn.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with contextlib.suppress(sqlite3.OperationalError):  # database or disk is full
        while True:
            store.conn.execute("INSERT INTO filler VALUES (zeroblob(4000))")


async def test_a_total_refused_for_space_gets_its_coupon_when_the_lane_sends_it_again(
    rig: Rig,
) -> None:
    """The checkout waits for its total's commit: a commit that fails (storage full) leaves it
    to the lane's re-send of the total, once, not to the next total of the lane."""
    lines = ["coffee"] * 700  # a basket's lines: more than a page
    total = json.dumps(
        {
            "id": TX,
            "type": "pos.transaction",
            "priority": "transaction",
            "data": {"total": 9.5, "lines": lines},
        }
    ).encode()
    topic = TOPICS.device_events("pos", "pos-1")
    await rig.db.call(_database_full, True)
    with pytest.raises(StorageFull):
        await rig.events.on_event(topic, total)
    await rig.db.call(_database_full, False)
    await asyncio.sleep(0.1)
    assert rig.printed == []
    await rig.events.on_event(topic, total)  # the lane sends it again: committed
    async with asyncio.timeout(5):
        while not rig.printed:  # noqa: ASYNC110 - the hook is a plain callable
            await asyncio.sleep(0.01)
    await rig.events.on_event(topic, total)  # and once more (an ack lost): nothing new
    await asyncio.sleep(0.2)
    assert rig.printed == ["receipt-1"]
    (decision,) = await rig.db.call(latest_decisions)
    assert (decision.moment, decision.request_id) == ("checkout", TX)
    assert await rig.db.call(checkout.pending) == []


async def test_an_in_app_message_goes_up_for_a_consenting_customer_unless_opted_out(
    rig: Rig,
) -> None:
    app = AppPresence(AppConfig(per_visit=5), rig.journey.submit, rig.clock)

    async def messages() -> list[dict[str, Any]]:
        rows = await rig.db.call(Store.outbox_batch, {0: -1, 1: -1, 2: -1}, 100, 10**7)
        events = [json.loads(body) for _, _, body in rows]
        return [e for e in events if e["type"] == "app.message"]

    async def seen_then_another(card: str) -> None:
        """The app is seen, then another consenting customer's: once hers is decided, the
        first (queued before it) has been."""
        other = customer_ref(HASH_KEY, "loyalty", card)
        await rig.db.call(Store.upsert_consents, [Consent(other, True, "coffee-lovers")], 0.0)
        app.seen(REF, "coffee", "ble")
        app.seen(other, "coffee", "ble")
        async with asyncio.timeout(5):
            while not any(m["data"]["customer"] == other for m in await messages()):  # noqa: ASYNC110 - polling the outbox table
                await asyncio.sleep(0.01)

    await seen_then_another("4000000000002")
    message, _ = await messages()
    assert message["data"]["customer"] == REF
    assert message["data"]["kind"] == "welcome"
    assert message["data"]["expires_at"] == message["ts"] + AppConfig().ttl_s
    opted_out = Consent(REF, True, "coffee-lovers", app_messages=False)
    await rig.db.call(Store.upsert_consents, [opted_out], 1.0)
    await seen_then_another("4000000000003")
    sent = [m["data"]["customer"] for m in await messages()]
    assert sent.count(REF) == 1  # opted out of messages: no second one
    assert len(sent) == 3


async def test_a_kiosk_moment_is_decided_before_the_in_app_messages_waiting(rig: Rig) -> None:
    """Nobody waits for an in-app message (the cloud pushes it): 500 opted-in visitors
    entering at once queued theirs ahead of kiosks, which waited ~0.5 s (issue 14)."""
    for _ in range(20):
        rig.journey.submit(
            AppMoment(touchpoint="app", customer_ref=REF, trigger="ble", ttl_s=60.0, per_day=100)
        )
    topic = TOPICS.kiosk_identify("kiosk-1")
    rig.kiosks.on_identify(topic, encode_kiosk_identify("loyalty", "4000000000999", "req-k"))
    async with asyncio.timeout(5):
        while len(rig.engine.customers) < 21:  # noqa: ASYNC110 - decided on the read thread
            await asyncio.sleep(0.01)
    assert rig.engine.customers == [None] + [REF] * 20  # the anonymous kiosk visitor first


def test_a_full_queue_refuses_a_devices_moment_and_keeps_the_others(tmp_path: Path) -> None:
    """The queues are bounded: past `queue_size` waiting, a device's moment is refused (its
    intake answers the device), while a screen's still takes its screen's place."""
    clock = TimeKeeper(wall=lambda: T0, mono=lambda: T0, synchronized=lambda: True, floor=0.0)
    journey = Journey(
        topics=TOPICS,
        store=AsyncStore(tmp_path / "gateway.sqlite3"),  # not opened: nothing is decided
        publisher=Screens(),
        engine=DecisionEngine(DecisionConfig()),
        clock=clock,
        metrics=Metrics(),
        hold=ScreenHold(30.0),
        queue_size=3,
    )
    kiosk = [
        KioskMoment(touchpoint="kiosk-1", customer_ref=None, request_id=f"r{n}") for n in range(4)
    ]
    assert [journey.submit(moment) for moment in kiosk] == [True, True, True, False]
    app = AppMoment(touchpoint="app", customer_ref=REF, trigger="ble", ttl_s=60.0, per_day=1)
    assert [journey.submit(app) for _ in range(4)] == [True, True, True, False]
    assert journey.submit(ZoneMoment(kind="enter", touchpoint="coffee-1", customer_ref=None))


def test_a_serving_session_forgets_its_customer_when_closed_or_idle() -> None:
    """The tablet names the customer once per session; closed, or idle past session_idle_s,
    the session is gone and a request in it is anonymous."""
    mono = [0.0]
    clock = TimeKeeper(
        wall=lambda: T0 + mono[0], mono=lambda: mono[0], synchronized=lambda: True, floor=0.0
    )
    moments: list[Moment] = []
    tablets = Tablets(
        topics=TOPICS,
        tablets={"tablet-1": TabletConfig(zone="coffee", session_idle_s=60)},
        identity=IdentityResolver(HASH_KEY, None, 0, clock.now),
        hash_key=HASH_KEY,
        submit=lambda m: moments.append(m) is None,
        clock=clock,
        metrics=Metrics(),
    )
    serve = TOPICS.tablet_serve("tablet-1")

    def ask(session: str, identify: bool = False) -> str | None:
        body: dict[str, object] = {"session": session, "associate": "A-7"}
        if identify:
            body["identify"] = {"method": "loyalty", "value": LOYALTY}
        tablets.on_serve(serve, json.dumps(body).encode())
        return moments[-1].customer_ref

    assert ask("s1", identify=True) == REF
    assert ask("s1") == REF  # the session's customer
    mono[0] += 59
    assert tablets.sweep() == 0
    assert ask("s1") == REF  # each request keeps it alive
    mono[0] += 61
    assert tablets.sweep() == 1  # idle: forgotten
    assert ask("s1") is None
    assert ask("s2", identify=True) == REF
    tablets.on_close(TOPICS.tablet_close("tablet-1"), b'{"session": "s2"}')
    assert ask("s2") is None
    assert "A-7" not in repr(moments)  # only the associate's keyed hash
