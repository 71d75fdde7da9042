"""E-receipts and receipt claims; their SQL lives here (run on the store thread).

A lane sends the receipt of a sale as a `pos.receipt` device event after its total. A customer
who identified at the lane (a loyalty scan) gets it in their loyalty account: the receipt goes
up with their keyed ref, never a contact detail. Anyone else gets a claim code printed as a QR
on the lane's printer; the app scans it, and the cloud's signed `claims` bundle names the
customer who claimed it: that visit's decisions become theirs from then on.

The receipt, its claim code and the claim slip's print job commit with the event itself, before
the lane is acknowledged. The uplinked receipt is shaped after the ARTS / OMG DRAPI digital
receipt (docs/cloud.md has the mapping).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.flows.printing import ClaimSlip
from gateway.store import OutboxRow, PrintJobRow, Store

__all__ = [
    "Claimed",
    "Visit",
    "apply_claims",
    "claim_decisions",
    "commit_write",
    "drapi",
    "link_claims",
]

# The lane's totals, under the names ARTS / DRAPI gives them.
_TOTALS = (
    ("net", "TransactionNetAmount"),
    ("tax", "TransactionTaxAmount"),
    ("discount", "TransactionDiscountAmount"),
    ("gross", "TransactionGrandAmount"),
)


@dataclass(frozen=True, slots=True)
class Visit:
    """What a lane's total left for its receipt, known on the loop from the total on."""

    customer_ref: str | None = None  # scanned at the lane (keyed), whatever the consent
    decision_ids: tuple[str, ...] = ()  # the checkout's, once decided
    coupon: str | None = None  # the code printed for it


def drapi(
    data: Mapping[str, Any],
    *,
    receipt_id: str,
    store_id: str,
    lane: str,
    ts: float,
    visit: Visit,
    claim_code: str | None,
) -> dict[str, Any]:
    """The receipt as it goes up: the lane's lines, totals and tenders in ARTS / DRAPI naming,
    the decisions behind the sale, and how it reaches the customer."""
    lines = [
        {
            "SequenceNumber": number,
            "Sale": {
                "ItemID": line["sku"],
                "Description": line["description"],
                "MerchandiseHierarchy": line.get("category"),
                "Quantity": line["quantity"],
                "RegularSalesUnitPrice": line["unit_price"],
                "ExtendedAmount": line["amount"],
            },
        }
        for number, line in enumerate(data["lines"], start=1)
    ]
    totals = data["totals"]
    total = [{"TotalType": name, "Amount": totals[key]} for key, name in _TOTALS if key in totals]
    if visit.customer_ref is not None:
        delivery = {"Method": "loyalty_account", "CustomerRef": visit.customer_ref}
    elif claim_code is not None:
        delivery = {"Method": "claim_code", "ClaimCode": claim_code}
    else:  # anonymous, and no printer on the lane for a claim slip
        delivery = {"Method": "none"}
    return {
        "DigitalReceipt": {
            "ReceiptID": receipt_id,
            "TransactionID": data["transaction"],
            "BusinessUnit": {"UnitID": store_id},
            "WorkstationID": lane,
            "ReceiptDateTime": datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds"),
            "CurrencyCode": data["currency"],
            "LineItem": lines,
            "Total": total,
            "Tender": [{"TenderType": t["method"], "Amount": t["amount"]} for t in data["tenders"]],
            "Coupon": {"Printed": visit.coupon, "Redeemed": list(data.get("coupons", ()))},
        },
        "decision_ids": sorted({*visit.decision_ids, *data.get("decision_ids", ())}),
        "delivery": delivery,
    }


def commit_write(
    *,
    receipt_id: str,
    lane: str,
    data: Mapping[str, Any],
    visit: Visit,
    slip: ClaimSlip | None,
    job: PrintJobRow | None,
    now: float,
) -> Callable[[sqlite3.Connection], None]:
    """The receipt's rows, for the outbox to run in its event's commit. A re-sent receipt (same
    event id) changes nothing: the first one's claim code stands, and prints once."""
    decision_ids = json.dumps(sorted({*visit.decision_ids, *data.get("decision_ids", ())}))
    coupons = json.dumps(list(data.get("coupons", ())))

    def write(conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO receipts (id, lane, txn, customer_ref, claim_code,"
            " claim_until, decision_ids, coupons, gross, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                receipt_id,
                lane,
                data["transaction"],
                visit.customer_ref,
                slip.code if slip else None,
                slip.issued_at + slip.valid_days * 86400.0 if slip else None,
                decision_ids,
                coupons,
                data["totals"]["gross"],
                now,
            ),
        )
        if cursor.rowcount != 1 or job is None:
            return
        conn.execute(
            "INSERT INTO print_journal (id, lane, printer, state, copy, coupon_code, job,"
            " attempts, created_at, updated_at) VALUES (?, ?, ?, 'queued', 0, ?, ?, 0, ?, ?)",
            (job.id, job.lane, job.printer, job.coupon_code, job.body, now, now),
        )

    return write


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claim's outcome, as it goes up (`receipt.claimed`)."""

    code: str
    status: str  # claimed, already_claimed, claimed_by_another, expired, unknown
    receipt_id: str | None = None
    decision_ids: tuple[str, ...] = ()


def link_claims(
    store: Store,
    claims: Sequence[tuple[str, str]],
    now: float,
    uplink: Callable[[str, str, Mapping[str, Any]], OutboxRow],
) -> list[Claimed]:
    """Inside the claims bundle's transaction: each (code, customer ref) claimed links its
    visit's decisions (the checkout's, the redeemed coupons', the lane's) to the customer where
    they had none; each outcome is an event for the cloud, committed with it."""
    conn = store.conn
    outcomes = []
    for code, ref in claims:
        row = conn.execute(
            "SELECT id, txn, decision_ids, coupons, claimed_ref, claim_until FROM receipts"
            " WHERE claim_code = ?",
            (code,),
        ).fetchone()
        if row is None:
            outcome = Claimed(code, "unknown")
        elif row[4] is not None:
            status = "already_claimed" if row[4] == ref else "claimed_by_another"
            outcome = Claimed(code, status, row[0])  # the first claim stands
        elif now > row[5]:
            outcome = Claimed(code, "expired", row[0])
        else:
            ids = _visit_decisions(conn, row[1], json.loads(row[2]), json.loads(row[3]))
            conn.execute(
                "UPDATE decisions SET customer_ref = ? WHERE customer_ref IS NULL"
                " AND id IN (SELECT value FROM json_each(?))",
                (ref, json.dumps(ids)),
            )
            conn.execute(
                "UPDATE receipts SET claimed_ref = ?, claimed_at = ? WHERE id = ?",
                (ref, now, row[0]),
            )
            outcome = Claimed(code, "claimed", row[0], tuple(ids))
        body: dict[str, Any] = {
            "claim_code": code,
            "status": outcome.status,
            "receipt_id": outcome.receipt_id,
            "decision_ids": list(outcome.decision_ids),
        }
        if outcome.status == "claimed":
            body["customer_ref"] = ref
        store.outbox.insert_one(uplink("receipt.claimed", "transaction", body))
        outcomes.append(outcome)
    return outcomes


def apply_claims(
    store: Store,
    body: Mapping[str, Any],
    now: float,
    *,
    uplink: Callable[[str, str, Mapping[str, Any]], OutboxRow],
) -> dict[str, int]:
    """A verified `claims` bundle (the BundleApplier's applier for its kind): its tally by
    outcome is what the store keeps of it (the refs are on the receipts)."""
    claims = [(str(c["code"]), str(c["customer_ref"])) for c in body["claims"]]
    tally: dict[str, int] = {}
    for outcome in link_claims(store, claims, now, uplink):
        tally[outcome.status] = tally.get(outcome.status, 0) + 1
    return tally


def claim_decisions(conn: sqlite3.Connection, code: str) -> list[str]:
    """The decisions of the visit whose receipt printed `code` (an outcomes bundle's outcome
    attributed to a claim code); none for a code this store never printed."""
    row = conn.execute(
        "SELECT txn, decision_ids, coupons FROM receipts WHERE claim_code = ?", (code,)
    ).fetchone()
    if row is None:
        return []
    return _visit_decisions(conn, row[0], json.loads(row[1]), json.loads(row[2]))


def _visit_decisions(
    conn: sqlite3.Connection, txn: str, named: list[str], coupons: list[str]
) -> list[str]:
    """The decisions of a receipt's visit: named at commit, the checkout's (decided after the
    receipt, perhaps), and those of the coupons redeemed on it."""
    rows = conn.execute(
        "SELECT id FROM decisions WHERE request_id = ? AND moment = 'checkout'"
        " UNION SELECT decision_id FROM coupons WHERE code IN (SELECT value FROM json_each(?))",
        (txn, json.dumps(coupons)),
    ).fetchall()
    return sorted({*named, *(str(r[0]) for r in rows)})
