"""Rewards join their decision within the window, once; after it, the reward is 0."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.decision.log import record_decision
from gateway.decision.rewards import RewardJoiner, reward_of
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Decision, Store
from gateway.sync.outbox import Outbox

WINDOW = 3600.0


class Manual:
    """The system's two clocks, moved by hand; `keeper` is the daemon's clock over them."""

    def __init__(self, now: float) -> None:
        self.wall = now
        self.mono = 100.0
        self.keeper = TimeKeeper(
            wall=lambda: self.wall, mono=lambda: self.mono, synchronized=lambda: True, floor=0.0
        )

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _decision(i: int, ts: float) -> Decision:
    return Decision(f"d{i}", ts, "kiosk_identify", "kiosk-1", None, "OFF-1", "nba", 0.8, None, "v1")


async def test_rewards_join_within_the_window_once_and_expire_to_zero(tmp_path: Path) -> None:
    manual = Manual(10_000.0)
    clock = manual.keeper
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, "s1", clock, Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    for i, ts in enumerate((9_000.0, 9_500.0, 5_000.0)):  # d2 is already past its window
        await db.call(record_decision, _decision(i, ts))
    joiner = RewardJoiner(db, outbox, clock, WINDOW)

    assert await joiner.join("d0", "pos.redemption") is True
    assert await joiner.join("d0", "kiosk.tap") is False  # once only
    assert await joiner.join("d2", "pos.redemption") is False  # too late
    assert await joiner.join("nope", "kiosk.tap") is False
    assert await db.call(reward_of, "d0") == 1.0

    manual.advance(WINDOW + 1 - 500.0)  # d1's window passes with no reward
    assert await joiner.expire() == 2  # d1 and d2
    assert await db.call(reward_of, "d1") == 0.0
    assert await db.call(reward_of, "d2") == 0.0
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


async def test_a_wall_clock_jump_closes_no_window_early(tmp_path: Path) -> None:
    """NTP correcting a stale clock by 8 days while running: the windows opened before the
    jump still last WINDOW seconds of real time (they closed at once with reward 0)."""
    manual = Manual(1_000_000.0)
    clock = manual.keeper
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, "s1", clock, Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    joiner = RewardJoiner(db, outbox, clock, WINDOW)
    for i in range(3):
        await db.call(record_decision, _decision(i, clock.now()))
    manual.advance(60.0)
    manual.wall += 8 * 86400  # the jump: the wall clock only
    assert clock.now() == manual.wall  # stamps follow the corrected clock
    await db.call(record_decision, _decision(3, clock.now()))

    assert await joiner.expire() == 0  # 60 s of a 3,600 s window have passed
    assert await joiner.join("d0", "kiosk.tap") is True  # not "too late"
    manual.advance(WINDOW - 60.0 + 1)  # the windows opened before the jump pass
    assert await joiner.expire() == 2  # d1, d2; d3 (after the jump) has 60 s left
    assert await db.call(reward_of, "d3") is None
    manual.advance(60.0)
    assert await joiner.expire() == 1
    writer.cancel()
    await db.close()


def test_stamps_never_go_back_and_follow_the_floor_when_the_clock_is_behind() -> None:
    manual = Manual(2_000_000.0)
    keeper = TimeKeeper(
        wall=lambda: manual.wall, mono=lambda: manual.mono, synchronized=lambda: False, floor=0.0
    )
    first = keeper.now()
    manual.wall -= 3600  # a backward step, not synchronised: stamps hold
    manual.advance(10.0)
    assert keeper.now() == first + 10.0
    assert not keeper.trusted()
    assert "behind the gateway's own stamps" in keeper.trust().reason
    # Booted years back: a signed bundle from the cloud is a floor the clock can't be under.
    keeper.raise_floor(manual.wall + 5 * 365 * 86400, "a signed offers bundle", firm=True)
    assert keeper.now() > manual.wall + 5 * 365 * 86400 - 1
    assert "days behind a signed offers bundle" in keeper.trust().reason
