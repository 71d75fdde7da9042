"""The journey's decisions: read and scored beside the store thread, committed on it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import SystemClock
from gateway.config import DecisionConfig, KioskConfig
from gateway.decision.engine import DecisionEngine, Outcome
from gateway.decision.model import Scorer
from gateway.identity import customer_ref
from gateway.journey import Journey
from gateway.metrics import Metrics
from gateway.payloads import encode_kiosk_identify
from gateway.store import AsyncStore, Consent, Offer, Store
from gateway.supervisor import Handle
from gateway.sync.outbox import Outbox
from gateway.topics import Topics

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
    engine: RecordingEngine
    screens: Screens


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = AsyncStore(tmp_path / "gateway.sqlite3")
    await db.open()
    await db.call(Store.upsert_offers, [Offer("OFF-1", "Coffee"), Offer("OFF-2", "Bread")], 0.0)
    await db.call(Store.upsert_consents, [Consent(REF, True, "coffee-lovers")], 0.0)
    clock, metrics = SystemClock(), Metrics()
    outbox = Outbox(db, "test-store", clock, metrics)
    engine = RecordingEngine(DecisionConfig(holdout_share=0.0))
    engine.install(Scorer.load(REPO / "models" / "nba.onnx"), replay=[])
    screens = Screens()
    journey = Journey(
        topics=Topics("test-store"),
        kiosks={"kiosk-1": KioskConfig(zone="entrance", screens=("entrance-1",))},
        store=db,
        publisher=screens,
        hash_key=HASH_KEY,
        token_key=None,
        token_leeway_s=0,
        metrics=metrics,
        clock=clock,
        engine=engine,
        outbox=outbox,
    )
    ready = asyncio.Event()  # the journey has read the catalog
    tasks = [
        asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None))),
        asyncio.create_task(journey.run(Handle("journey", lambda *_: ready.set()))),
    ]
    async with asyncio.timeout(10):
        await ready.wait()
    yield Rig(db, outbox, journey, engine, screens)
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

        topic = Topics("test-store").kiosk_identify("kiosk-1")
        rig.journey.on_kiosk_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-1"))

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
    (decision,) = await rig.db.call(Store.decisions)
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

        topic = Topics("test-store").kiosk_identify("kiosk-1")
        rig.journey.on_kiosk_identify(topic, encode_kiosk_identify("loyalty", LOYALTY, "req-2"))
        async with asyncio.timeout(5):
            await rig.screens.posted.wait()  # decided, committed, shown
        (decision,) = await rig.db.call(Store.decisions)
        assert decision.customer_ref == REF
        assert not accepted.done()  # the total is acknowledged only once it is durable
    finally:
        release.set()
    async with asyncio.timeout(5):
        await accepted
