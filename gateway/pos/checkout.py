"""A lane's checkout, from the total to the coupon: its SQL lives here.

The total's event commits with a *pending checkout* (the lane, the customer's ref, the basket),
so that an acknowledged total gets its coupon even if the daemon dies right after; the decision
that prints the coupon settles it in its own transaction, and a start finds the ones left.
Functions taking a `Store` or a connection run on the store thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from gateway.decision.log import insert_decision
from gateway.moments.moment import CheckoutMoment
from gateway.store import Decision, OutboxRow, PrintJobRow, Store, transaction

__all__ = ["pending", "pending_write", "record", "settle"]


def pending_write(moment: CheckoutMoment, ts: float) -> Callable[[sqlite3.Connection], None]:
    """The write that keeps a total's checkout, for the outbox to run in the total's commit."""
    body = json.dumps(
        {
            "lane": moment.touchpoint,
            "customer_ref": moment.customer_ref,
            "basket": moment.basket,
            "total": moment.total,
        },
        separators=(",", ":"),
    )

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO pending_checkouts (event_id, body, created_at) VALUES (?, ?, ?)",
            (moment.request_id, body, ts),
        )

    return write


def pending(store: Store) -> list[tuple[str, dict[str, object]]]:
    """(the total's event id, lane/customer_ref/basket) of checkouts not decided yet, oldest
    first."""
    rows = store.conn.execute(
        "SELECT event_id, body FROM pending_checkouts ORDER BY created_at"
    ).fetchall()
    return [(str(event_id), json.loads(body)) for event_id, body in rows]


def settle(conn: sqlite3.Connection, event_id: str) -> None:
    """Inside the caller's transaction, or alone (autocommit)."""
    conn.execute("DELETE FROM pending_checkouts WHERE event_id = ?", (event_id,))


def settle_now(store: Store, event_id: str) -> None:
    settle(store.conn, event_id)


def record(
    store: Store, decision: Decision, event: OutboxRow | None, job: PrintJobRow | None
) -> None:
    """The checkout's decision, its uplink event, its coupon and print job (when it chose an
    offer), and the pending checkout it settles: all or nothing. Fsynced with a coupon (a
    printed coupon must be known after a power cut)."""
    with transaction(store.conn, durable=job is not None):
        insert_decision(store, decision, event)
        if decision.request_id is not None:
            settle(store.conn, decision.request_id)
        if job is None:
            return
        store.conn.execute(
            "INSERT INTO coupons (code, decision_id, offer_id, lane, issued_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (job.coupon_code, decision.id, decision.offer_id, job.lane, decision.ts),
        )
        store.conn.execute(
            "INSERT INTO print_journal (id, lane, printer, state, copy, coupon_code,"
            " decision_id, job, attempts, created_at, updated_at)"
            " VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, 0, ?, ?)",
            (job.id, job.lane, job.printer, job.coupon_code, decision.id, job.body, decision.ts,
             decision.ts),
        )  # fmt: skip
