"""Cross-channel outcomes: signed `outcomes` bundles join the decisions they came from.

Against a real SQLite store, a real outbox (the joins go up as events) and bundles signed by the
cloud simulator's signer: joined, duplicate, unknown, late, forged and replayed, each as
docs/cloud.md says.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.decision.log import record_decision
from gateway.decision.outcomes import Windows
from gateway.decision.rewards import reward_of
from gateway.runtime.clock import SystemClock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Decision, Store
from gateway.sync.bundles import BundleApplier, applied_body, applied_version
from gateway.sync.outbox import Outbox
from simulators.cloud import BundleSigner

STORE = "s42"
DAY = 86400.0
WINDOWS = Windows(in_store_s=7 * DAY, online_s=30 * DAY)


@dataclass
class Rig:
    applier: BundleApplier
    db: AsyncStore
    signer: BundleSigner
    claims: dict[str, list[str]]

    async def events(self, type: str) -> list[dict[str, Any]]:
        rows = await self.db.call(Store.outbox_batch, {0: -1, 1: -1, 2: -1}, 100_000, 10**9)
        return [e for e in (json.loads(body) for _, _, body in rows) if e["type"] == type]

    async def decide(self, decision_id: str, days_ago: float, reward: float | None = None) -> None:
        ts = time.time() - days_ago * DAY
        decision = Decision(decision_id, ts, "kiosk_identify", "kiosk-1", "c_x", "OFF-1", "nba",
                            0.9, None)  # fmt: skip
        await self.db.call(record_decision, decision)
        if reward is not None:  # an in-store window already closed
            await self.db.call(_set_reward, decision_id, reward)

    async def send(self, version: int, outcomes: Sequence[dict[str, Any]]) -> str:
        message = self.signer.make("outcomes", version, {"outcomes": list(outcomes)}, store=STORE)
        return await self.applier.handle("outcomes", message)

    async def joins(self) -> list[dict[str, Any]]:
        """Every join uplinked, in order (outcome.joined events carry up to 100 each)."""
        events = await self.events("outcome.joined")
        assert all(e["priority"] == "reward" for e in events)
        return [join for e in events for join in e["data"]["joins"]]

    async def joined(self) -> list[str]:
        return [f"{j['outcome_id']}:{j['decision_id']}" for j in await self.joins()]

    async def reward(self, decision_id: str) -> float | None:
        return await self.db.call(reward_of, decision_id)


def _set_reward(store: Store, decision_id: str, reward: float) -> None:
    store.conn.execute("UPDATE decisions SET reward = ? WHERE id = ?", (reward, decision_id))


def _outcome(oid: str, ids: list[str], *, days_ago: float = 0.0, channel: str = "online",
             amount: float = 40.0) -> dict[str, Any]:  # fmt: skip
    return {"id": oid, "channel": channel, "amount": amount, "ts": time.time() - days_ago * DAY,
            "decision_ids": ids}  # fmt: skip


def _claim(oid: str, code: str) -> dict[str, Any]:
    return {"id": oid, "channel": "online", "amount": 12.5, "ts": time.time(), "claim_code": code}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, STORE, SystemClock(), Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    signer = BundleSigner()
    claims: dict[str, list[str]] = {}

    def lookup(_conn: sqlite3.Connection, code: str) -> list[str]:
        return claims.get(code, [])

    applier = BundleApplier(
        db=db,
        store_id=STORE,
        public_key=signer.public_key,
        models_dir=tmp_path / "models",
        fetch=_no_fetch,
        outbox=outbox,
        clock=SystemClock(),
        metrics=Metrics(),
        reactions={},
        outcome_windows=WINDOWS,
        claim_lookup=lookup,
    )
    yield Rig(applier, db, signer, claims)
    writer.cancel()
    await db.close()


async def _no_fetch(url: str, limit: int) -> bytes:
    raise OSError("no artifacts here")


async def test_an_online_purchase_joins_its_decision_after_the_in_store_window_closed(
    rig: Rig,
) -> None:
    await rig.decide("d-1", days_ago=10, reward=0.0)  # in store: nothing within 7 days
    await rig.decide("d-2", days_ago=3)
    assert await rig.send(1, [_outcome("o-1", ["d-1"], days_ago=1, amount=55.0)]) == "applied"
    assert await rig.reward("d-1") == 1.0  # converted online, 9 days after the decision
    (data,) = await rig.joins()
    assert (data["outcome_id"], data["decision_id"]) == ("o-1", "d-1")
    assert (data["channel"], data["amount"], data["reward"]) == ("online", 55.0, 1.0)
    assert 9 * DAY - 60 < data["delay_s"] < 9 * DAY + 60
    assert "customer" not in data  # the join names the decision, never who it was
    # Two decisions of one visit share an outcome's amount.
    await rig.send(2, [_outcome("o-2", ["d-1", "d-2"], amount=30.0)])
    shares = [j["amount"] for j in await rig.joins()][1:]
    assert shares == [15.0, 15.0]
    applied = [e["data"] for e in await rig.events("bundle.applied")]
    assert applied[0]["outcomes"]["joined"] == 1
    assert applied[1]["outcomes"] == {"joined": 1, "rewards": 2, "duplicate": 0, "unknown": 0,
                                      "late": 0, "before": 0, "amount": 30.0}  # fmt: skip
    # The applied body keeps the tally, not the outcomes.
    body = await rig.db.call(lambda s: applied_body(s, "outcomes"))
    assert json.loads(body or "")["rewards"] == 2


async def test_the_same_outcome_twice_counts_once(rig: Rig) -> None:
    await rig.decide("d-1", days_ago=2)
    first = _outcome("o-1", ["d-1"])
    assert await rig.send(1, [first, first]) == "applied"  # twice in one bundle
    assert await rig.send(2, [first, _outcome("o-2", ["d-1"])]) == "applied"  # again, later
    assert await rig.joined() == ["o-1:d-1", "o-2:d-1"]
    tallies = [e["data"]["outcomes"] for e in await rig.events("bundle.applied")]
    assert [(t["joined"], t["duplicate"]) for t in tallies] == [(1, 1), (1, 1)]
    rows = await rig.db.call(
        lambda s: s.conn.execute("SELECT count(*), sum(share) FROM outcome_joins").fetchone()
    )
    assert rows == (2, 80.0)


async def test_unknown_late_and_early_outcomes_join_nothing(rig: Rig) -> None:
    await rig.decide("d-old", days_ago=40)
    await rig.decide("d-store", days_ago=9)
    await rig.decide("d-new", days_ago=1)
    outcomes = [
        _outcome("o-unknown", ["d-nobody"]),
        _outcome("o-late", ["d-old"]),  # online, 40 days on: past the 30-day window
        _outcome("o-store-late", ["d-store"], channel="store"),  # 9 days: past the in-store 7
        _outcome("o-app", ["d-store"], channel="app"),  # the same 9 days, online window: joins
        _outcome("o-before", ["d-new"], days_ago=2),  # a day before the decision
        _claim("o-claim", "RC-UNKNOWN"),
    ]
    assert await rig.send(1, outcomes) == "applied"
    tally = (await rig.events("bundle.applied"))[0]["data"]["outcomes"]
    assert tally == {"joined": 1, "rewards": 1, "duplicate": 0, "unknown": 2, "late": 2,
                     "before": 1, "amount": 40.0}  # fmt: skip
    assert await rig.joined() == ["o-app:d-store"]
    assert await rig.reward("d-old") is None
    assert await rig.reward("d-new") is None
    statuses = dict(await rig.db.call(
        lambda s: s.conn.execute("SELECT id, status FROM outcomes").fetchall()
    ))  # fmt: skip
    assert statuses == {"o-unknown": "unknown", "o-late": "late", "o-store-late": "late",
                        "o-app": "joined", "o-before": "before", "o-claim": "unknown"}  # fmt: skip
    # Kept with its status: sent again, a late outcome is a duplicate, not late twice.
    assert await rig.send(2, [outcomes[1]]) == "applied"
    assert (await rig.events("bundle.applied"))[1]["data"]["outcomes"]["duplicate"] == 1


async def test_a_claim_code_joins_through_the_receipts_lookup(rig: Rig) -> None:
    await rig.decide("d-till", days_ago=5)
    rig.claims["RC-7Q2K"] = ["d-till"]
    assert await rig.send(1, [_claim("o-1", "RC-7Q2K")]) == "applied"
    assert await rig.reward("d-till") == 1.0
    assert await rig.joined() == ["o-1:d-till"]


async def test_forged_and_replayed_outcomes_bundles_are_refused_and_join_nothing(
    rig: Rig,
) -> None:
    await rig.decide("d-1", days_ago=1)
    assert await rig.send(3, [_outcome("o-1", ["d-1"])]) == "applied"
    forged = BundleSigner().make("outcomes", 4, {"outcomes": [_outcome("o-2", ["d-1"])]},
                                 store=STORE)  # fmt: skip
    assert "signature does not verify" in await rig.applier.handle("outcomes", forged)
    replayed = await rig.send(2, [_outcome("o-3", ["d-1"])])
    assert "older than the applied 3 (replayed?)" in replayed
    # The retained v3 delivered again on reconnect: a no-op.
    again = rig.signer.make("outcomes", 3, {"outcomes": []}, store=STORE)
    assert await rig.applier.handle("outcomes", again) == "duplicate"
    malformed = await rig.send(5, [{"id": "o-4", "channel": "fax", "ts": 1.0,
                                    "decision_ids": ["d-1"]}])  # fmt: skip
    assert malformed.startswith("rejected:")
    assert await rig.joined() == ["o-1:d-1"]
    assert await rig.db.call(applied_version, "outcomes") == 3
    assert len(await rig.events("bundle.rejected")) == 3


async def test_many_joins_go_up_in_events_of_a_hundred(rig: Rig) -> None:
    for k in range(3):
        await rig.decide(f"d-{k}", days_ago=1)
    outcomes = [_outcome(f"o-{i:03d}", [f"d-{i % 3}"], amount=1.0) for i in range(250)]
    outcomes.append({"id": "o-none", "channel": "online", "ts": time.time()})  # names nothing
    refused = await rig.send(1, outcomes)
    assert "neither decision_ids nor a claim_code" in refused  # all or nothing
    assert await rig.send(2, outcomes[:-1]) == "applied"
    events = await rig.events("outcome.joined")
    assert [len(e["data"]["joins"]) for e in events] == [100, 100, 50]
    assert len(set(await rig.joined())) == 250
