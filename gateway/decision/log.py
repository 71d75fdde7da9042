"""The decision log: every decision with its propensity and context, and its event for the cloud
in the same transaction. Its SQL lives here; functions taking a `Store` run on the store thread
(`await db.call(record_decision, decision, event)`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from gateway.store import DECISION_COLUMNS, Decision, OutboxRow, Store, transaction

__all__ = [
    "decisions_by_id",
    "insert_decision",
    "latest_decisions",
    "recent_contexts",
    "record_decision",
    "record_decisions",
]

_PLACEHOLDERS = ", ".join("?" * len(DECISION_COLUMNS.split(",")))


def record_decision(store: Store, d: Decision, event: OutboxRow | None = None) -> None:
    """Log a decision and, in the same transaction, queue its event for the cloud."""
    record_decisions(store, [(d, event)])


def record_decisions(
    store: Store,
    rows: Sequence[tuple[Decision, OutboxRow | None]],
    events: Sequence[OutboxRow] = (),
) -> None:
    """Several decisions (a moment's suggestions, moments decided together) with their events,
    and the events they cause (an in-app message), in one transaction."""
    with transaction(store.conn, durable=False):
        for d, event in rows:
            insert_decision(store, d, event)
        for event in events:
            store.outbox.insert_one(event)


def insert_decision(store: Store, d: Decision, event: OutboxRow | None) -> None:
    """Inside the caller's transaction: the decision and its event for the cloud."""
    store.conn.execute(
        f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES ({_PLACEHOLDERS})",  # noqa: S608
        dataclasses.astuple(d),
    )
    if event is not None:
        store.outbox.insert_one(event)


def decisions_by_id(store: Store, ids: Sequence[str]) -> list[Decision]:
    cursor = store.conn.execute(
        f"SELECT {DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant columns
        " WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids)),),
    )
    return [Decision(*row) for row in cursor.fetchall()]


def recent_contexts(store: Store, limit: int) -> list[str]:
    """The newest decisions' contexts (JSON), for a model's warm-up."""
    rows = store.conn.execute(
        "SELECT context FROM decisions WHERE context IS NOT NULL ORDER BY ts DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def latest_decisions(store: Store, limit: int = 100) -> list[Decision]:
    cursor = store.conn.execute(
        f"SELECT {DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?",  # noqa: S608
        (limit,),
    )
    return [Decision(*row) for row in cursor.fetchall()]
