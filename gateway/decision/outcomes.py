"""Outcomes from other channels join the decisions that caused them, as rewards.

The cloud sends them in signed `outcomes` bundles (an online purchase after a follow-up e-mail,
an app redemption): each with its id, channel, amount and time, attributed to decision ids of
this store or to a receipt's claim code. `join_outcomes` runs on the store thread, inside the
bundle's own transaction (the outcomes, their joins, the rewards, the uplink events and the
bundle's version commit together, or none of them):

- an outcome id already on record counts once: its second copy is a `duplicate`, nothing more;
- a claim code is resolved to decision ids by `ClaimLookup` (the e-receipt's table owns it);
- a decision id this store never logged is `unknown`; an outcome dated more than
  `SKEW_S` before its decision is `before` it (it cannot have been caused by it);
- an outcome later than its channel's window after the decision is `late` (`store`: the
  in-store `decision.reward_window_s`; `online` and `app`: the longer
  `decision.online_window_s`);
- otherwise it is `joined`: its amount is shared equally by the decisions it joined, each one's
  reward becomes 1 (a 0 left by an in-store window that closed first included), and the joins
  go up in `outcome.joined` events of up to `JOINS_PER_EVENT` joins each (committed with them;
  each join names its outcome and decision, so the cloud counts it once).

Every outcome is kept with its status, so a repeated one is recognised whatever it was.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.codecs.payloads import PayloadError
from gateway.store import DECISION_COLUMNS, Decision, OutboxRow, Store

__all__ = [
    "CHANNELS",
    "DEFAULT_WINDOWS",
    "JOINS_PER_EVENT",
    "SKEW_S",
    "ClaimLookup",
    "JoinTally",
    "ReportedOutcome",
    "Windows",
    "join_outcomes",
    "no_claim_codes",
    "parse_outcomes",
]

# channel -> the window it joins within: "in_store" or "online".
CHANNELS: Mapping[str, str] = {"store": "in_store", "online": "online", "app": "online"}
SKEW_S = 300.0  # clocks of the cloud and the box may differ by this much
JOINS_PER_EVENT = 100  # joins per outcome.joined event (~25 kB, under an uplink batch)

# A receipt's claim code -> the decision ids of its visit, on the store thread (the connection
# of the bundle's transaction). The e-receipt feature (gateway/pos) provides it.
ClaimLookup = Callable[[sqlite3.Connection, str], Sequence[str]]
# Builds an uplink event: Outbox.row (type, priority, data, event_id=..., ts=...).
EventRow = Callable[..., OutboxRow]


def no_claim_codes(_conn: sqlite3.Connection, _code: str) -> Sequence[str]:
    """Until receipts carry claim codes: none resolves (their outcomes are `unknown`)."""
    return ()


@dataclass(frozen=True, slots=True)
class Windows:
    in_store_s: float
    online_s: float

    def of(self, channel: str) -> float:
        return self.online_s if CHANNELS.get(channel) == "online" else self.in_store_s


DEFAULT_WINDOWS = Windows(7 * 86400.0, 30 * 86400.0)  # the configuration's defaults


@dataclass(frozen=True, slots=True)
class ReportedOutcome:
    id: str
    channel: str  # store, online, app
    amount: float
    ts: float
    decision_ids: tuple[str, ...] = ()
    claim_code: str | None = None


@dataclass(slots=True)
class JoinTally:
    joined: int = 0  # outcomes that joined at least one decision
    rewards: int = 0  # (outcome, decision) pairs joined
    duplicate: int = 0
    unknown: int = 0
    late: int = 0
    before: int = 0
    amount: float = 0.0  # of the joined outcomes
    statuses: dict[str, str] = field(default_factory=dict)  # outcome id -> status

    def as_dict(self) -> dict[str, float]:
        return {
            "joined": self.joined,
            "rewards": self.rewards,
            "duplicate": self.duplicate,
            "unknown": self.unknown,
            "late": self.late,
            "before": self.before,
            "amount": round(self.amount, 2),
        }


def parse_outcomes(body: Mapping[str, object]) -> list[ReportedOutcome]:
    """The outcomes of a bundle body already validated against `bundle-outcomes`; raises
    `PayloadError` for one that names neither decision ids nor a claim code."""
    items = body.get("outcomes", [])
    assert isinstance(items, list)
    outcomes = [
        ReportedOutcome(
            id=str(o["id"]),
            channel=str(o["channel"]),
            amount=float(o.get("amount", 0.0)),
            ts=float(o["ts"]),
            decision_ids=tuple(dict.fromkeys(o.get("decision_ids", ()))),
            claim_code=o.get("claim_code"),
        )
        for o in items
    ]
    for outcome in outcomes:
        if not outcome.decision_ids and not outcome.claim_code:
            raise PayloadError("an outcome names neither decision_ids nor a claim_code")
    return outcomes


def join_outcomes(
    store: Store,
    outcomes: Iterable[ReportedOutcome],
    *,
    windows: Windows,
    now: float,
    event: EventRow,
    lookup: ClaimLookup = no_claim_codes,
) -> JoinTally:
    """Inside the caller's transaction, on the store thread: record, join, reward, uplink."""
    conn = store.conn
    tally = JoinTally()
    fresh: dict[str, ReportedOutcome] = {}
    for outcome in outcomes:
        if outcome.id in fresh:
            tally.duplicate += 1  # twice in one bundle
            continue
        fresh[outcome.id] = outcome
    seen = _existing(conn, list(fresh))
    tally.duplicate += len(seen)
    for outcome_id in seen:
        tally.statuses[outcome_id] = "duplicate"
        del fresh[outcome_id]
    targets = {
        o.id: o.decision_ids or tuple(lookup(conn, o.claim_code) if o.claim_code else ())
        for o in fresh.values()
    }
    decisions = _decisions(conn, {d for ids in targets.values() for d in ids})
    kept: list[tuple[str, str, float, float, str, float]] = []
    joins: list[tuple[str, str, str, float, float]] = []
    rewarded: list[tuple[float, str]] = []
    joined: list[dict[str, object]] = []
    for outcome in fresh.values():
        known = [decisions[d] for d in targets[outcome.id] if d in decisions]
        window = windows.of(outcome.channel)
        delays = {d.id: outcome.ts - d.ts for d in known}
        inside = [d for d in known if -SKEW_S <= delays[d.id] <= window]
        if inside:
            status = "joined"
            share = outcome.amount / len(inside)
            for decision in inside:
                delay = max(0.0, delays[decision.id])
                joins.append((outcome.id, decision.id, outcome.channel, share, delay))
                rewarded.append((now, decision.id))
                joined.append(_joined(outcome, decision, share, delay))
            tally.joined += 1
            tally.rewards += len(inside)
            tally.amount += outcome.amount
        elif not known:
            status = "unknown"
            tally.unknown += 1
        elif all(delays[d.id] > window for d in known):
            status = "late"
            tally.late += 1
        else:
            status = "before"
            tally.before += 1
        tally.statuses[outcome.id] = status
        kept.append((outcome.id, outcome.channel, outcome.amount, outcome.ts, status, now))
    conn.executemany(
        "INSERT INTO outcomes (id, channel, amount, ts, status, applied_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        kept,
    )
    conn.executemany(
        "INSERT OR IGNORE INTO outcome_joins (outcome_id, decision_id, channel, share, delay_s)"
        " VALUES (?, ?, ?, ?, ?)",
        joins,
    )
    conn.executemany(
        "UPDATE decisions SET reward = 1, reward_at = ? WHERE id = ? AND coalesce(reward, 0) < 1",
        rewarded,
    )
    for first in range(0, len(joined), JOINS_PER_EVENT):
        chunk = joined[first : first + JOINS_PER_EVENT]
        event_id = f"joins:{chunk[0]['outcome_id']}:{chunk[0]['decision_id']}"
        store.outbox.insert_one(
            event("outcome.joined", "reward", {"joins": chunk}, event_id=event_id, ts=now)
        )
    return tally


def _existing(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM outcomes WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
    )
    return [str(r[0]) for r in rows]


def _decisions(conn: sqlite3.Connection, ids: set[str]) -> dict[str, Decision]:
    rows = conn.execute(
        f"SELECT {DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant columns
        " WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(ids)),),
    )
    return {row[0]: Decision(*row) for row in rows}


def _joined(
    outcome: ReportedOutcome, decision: Decision, share: float, delay: float
) -> dict[str, object]:
    """One join, for the cloud: no customer, only the decision and what it was made of."""
    return {
        "outcome_id": outcome.id,
        "decision_id": decision.id,
        "channel": outcome.channel,
        "amount": share,
        "delay_s": delay,
        "reward": 1.0,
        **decision.joined_fields(),
    }
