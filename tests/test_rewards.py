"""Rewards join their decision within the window, once; after it, the reward is 0."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.clock import Clock
from gateway.decision.rewards import RewardJoiner
from gateway.metrics import Metrics
from gateway.store import AsyncStore, Decision, Store
from gateway.supervisor import Handle
from gateway.sync.outbox import Outbox

WINDOW = 3600.0


class Manual(Clock):
    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def _decision(i: int, ts: float) -> Decision:
    return Decision(f"d{i}", ts, "kiosk_identify", "kiosk-1", None, "OFF-1", "nba", 0.8, None, "v1")


async def test_rewards_join_within_the_window_once_and_expire_to_zero(tmp_path: Path) -> None:
    clock = Manual(10_000.0)
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, "s1", clock, Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    for i, ts in enumerate((9_000.0, 9_500.0, 5_000.0)):  # d2 is already past its window
        await db.call(Store.record_decision, _decision(i, ts))
    joiner = RewardJoiner(db, outbox, clock, WINDOW)

    assert await joiner.join("d0", "pos.redemption") is True
    assert await joiner.join("d0", "kiosk.tap") is False  # once only
    assert await joiner.join("d2", "pos.redemption") is False  # too late
    assert await joiner.join("nope", "kiosk.tap") is False
    assert await db.call(Store.reward_of, "d0") == 1.0

    clock.t = 9_500.0 + WINDOW + 1  # d1's window passes with no reward
    assert await joiner.expire() == 2  # d1 and d2
    assert await db.call(Store.reward_of, "d1") == 0.0
    assert await db.call(Store.reward_of, "d2") == 0.0
    assert await joiner.expire() == 0

    rows = await db.call(Store.outbox_batch, {0: -1, 1: -1, 2: -1}, 100, 10**9)
    outcomes = {e["data"]["decision_id"]: e for e in (json.loads(b) for _, _, b in rows)}
    assert {k: v["data"]["reward"] for k, v in outcomes.items()} == {
        "d0": 1.0,
        "d1": 0.0,
        "d2": 0.0,
    }
    assert outcomes["d0"]["priority"] == "reward"
    assert outcomes["d0"]["data"]["propensity"] == 0.8  # enough to evaluate off-policy
    writer.cancel()
    await db.close()
