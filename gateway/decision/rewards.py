"""Rewards join the decisions they came from: a redemption at the till, a kiosk tap, an
associate's "accepted". Within `decision.reward_window_s` the reward is 1; when the window
passes with none, 0. Windows are measured on the monotonic clock (`Clock.stamped_ago`): a jump of
the wall clock closes none early. Both work offline, and each outcome goes up to the cloud as a
`decision.outcome` event (priority reward) committed with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import structlog

from gateway.decision.log import decisions_by_id
from gateway.runtime.clock import Clock
from gateway.runtime.supervisor import Handle
from gateway.store import DECISION_COLUMNS, AsyncStore, Decision, OutboxRow, Store, transaction
from gateway.sync.outbox import Outbox

__all__ = ["REWARD_EVENTS", "RewardJoiner", "expire_rewards", "join_reward", "reward_of"]

log = structlog.get_logger("gateway.rewards")
# Device event types that reward the decision named in their data's `decision_id`.
REWARD_EVENTS: Mapping[str, float] = {
    "pos.redemption": 1.0,
    "kiosk.tap": 1.0,
    "tablet.accepted": 1.0,
    "tablet.declined": 0.0,  # the associate's answer closes the window: no sale from it
}
_EXPIRY_EVERY_S = 60.0
_EXPIRY_BATCH = 1000


class RewardJoiner:
    name = "rewards"
    requires = ("store",)

    def __init__(self, db: AsyncStore, outbox: Outbox, clock: Clock, window_s: float) -> None:
        self._db = db
        self._outbox = outbox
        self._clock = clock
        self._window_s = window_s
        self._tasks: set[asyncio.Task[bool]] = set()

    def _outcome(self, decision: Decision, reward: float, why: str, now: float) -> OutboxRow:
        return self._outbox.row(
            "decision.outcome",
            "reward",
            {
                "decision_id": decision.id,
                "reward": reward,
                "why": why,
                **decision.joined_fields(),
            },
            event_id=f"{decision.id}:outcome",
            ts=now,
        )

    async def join(self, decision_id: str, event_type: str) -> bool:
        """Reward the decision now; False if unknown, already rewarded, or past its window."""
        reward = REWARD_EVENTS.get(event_type, 1.0)
        now = self._clock.now()
        decisions = await self._db.call(decisions_by_id, [decision_id])
        if not decisions:
            log.info("reward for an unknown decision", decision=decision_id, type=event_type)
            return False
        event = self._outcome(decisions[0], reward, event_type, now)
        opened_since = self._clock.stamped_ago(self._window_s)
        joined = await self._db.call(
            join_reward, decision_id, reward, now, since=opened_since, event=event
        )
        if joined:
            self._outbox.appended.set()
        log.info(
            "reward joined" if joined else "reward not joined (late or repeated)",
            decision=decision_id,
            type=event_type,
        )
        return joined

    def join_soon(self, decision_id: str, event_type: str) -> None:
        """From a synchronous callback: join in the background, keeping a reference."""
        task = asyncio.create_task(self.join(decision_id, event_type))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def expire(self) -> int:
        now = self._clock.now()

        def outcome(decision: Decision) -> OutboxRow:
            return self._outcome(decision, 0.0, "window expired", now)

        closed_before = self._clock.stamped_ago(self._window_s)
        closed = await self._db.call(expire_rewards, now, closed_before, outcome, _EXPIRY_BATCH)
        if closed:
            self._outbox.appended.set()
        return closed

    async def run(self, handle: Handle) -> None:
        handle.ready(f"window {self._window_s:g} s")
        while True:
            while await self.expire() == _EXPIRY_BATCH:
                pass
            await asyncio.sleep(_EXPIRY_EVERY_S)


# The rewards' SQL, run on the store thread.


def join_reward(
    store: Store, decision_id: str, reward: float, now: float, *, since: float, event: OutboxRow
) -> bool:
    """Set a decision's reward if it is still open and its window too (stamped at or after
    `since`); the outcome event commits with it. False: unknown, joined, too late."""
    with transaction(store.conn, durable=False):
        cursor = store.conn.execute(
            "UPDATE decisions SET reward = ?, reward_at = ? WHERE id = ? AND reward IS NULL"
            " AND ts >= ?",
            (reward, now, decision_id, since),
        )
        if cursor.rowcount != 1:
            return False
        store.outbox.insert_one(event)
    return True


def expire_rewards(
    store: Store,
    now: float,
    closed_before: float,
    outcome: Callable[[Decision], OutboxRow],
    limit: int,
) -> int:
    """Close decisions stamped before `closed_before` with no reward: reward 0, outcome."""
    with transaction(store.conn, durable=False):
        rows = store.conn.execute(
            f"SELECT {DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant columns
            " WHERE reward IS NULL AND ts < ? ORDER BY ts LIMIT ?",
            (closed_before, limit),
        ).fetchall()
        for row in rows:
            decision = Decision(*row)
            store.conn.execute(
                "UPDATE decisions SET reward = 0, reward_at = ? WHERE id = ?", (now, decision.id)
            )
            store.outbox.insert_one(outcome(decision))
    return len(rows)


def reward_of(store: Store, decision_id: str) -> float | None:
    row = store.conn.execute("SELECT reward FROM decisions WHERE id = ?", (decision_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])
