"""The schema, one migration per version: append only (a released migration is never edited,
the next one is added). `Store` runs the ones a file has not seen, each in its transaction."""

from __future__ import annotations

from collections.abc import Callable

from gateway.store._outbox import create_outbox
from gateway.store._sqlite_utils import sqlite_utils

__all__ = ["MIGRATIONS"]


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("offers").create(
        {
            "id": str,
            "title": str,
            "body": str,
            "category": str,
            "discount_pct": float,
            "channels": str,  # JSON arrays
            "segments": str,
            "dayparts": str,
            "priority": int,
            "valid_from": float,
            "valid_to": float,
            "inventory": int,
            "updated_at": float,
        },
        pk="id",
    )
    db.table("consents").create(
        {"customer_ref": str, "personalisation": int, "segment": str, "updated_at": float},
        pk="customer_ref",
    )
    db.table("decisions").create(
        {
            "id": str,
            "ts": float,
            "moment": str,
            "touchpoint": str,
            "customer_ref": str,
            "offer_id": str,
            "policy": str,
            "propensity": float,
            "request_id": str,
            "reward": float,
        },
        pk="id",
    )
    db.table("decisions").create_index(["ts"])


def _migrate_v2(db: sqlite_utils.Database) -> None:
    """The outbox, the print journal, applied bundles; model facts on decisions."""
    create_outbox(db.conn)
    decisions = db.table("decisions")
    decisions.add_column("model_version", str)
    decisions.add_column("feature_hash", str)
    decisions.add_column("reward_at", float)
    db.table("print_journal").create(
        {
            "id": str,
            "lane": str,
            "printer": str,
            "state": str,  # queued, sending, printed, failed
            "copy": int,  # 1 when re-printed after a fault
            "coupon_code": str,
            "decision_id": str,
            "job": bytes,
            "attempts": int,
            "error": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"state", "created_at"},
        defaults={"copy": 0, "attempts": 0},
    )
    db.table("print_journal").create_index(["state", "created_at"])
    db.table("print_journal").create_index(["coupon_code"], unique=True)
    db.table("applied_bundles").create(
        {
            "kind": str,
            "version": int,
            "created_at": float,
            "applied_at": float,
            "body": str,
            "artifact_sha256": str,
        },
        pk="kind",
    )


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """Offer facts the decision engine uses; the context a decision was taken in."""
    offers = db.table("offers")
    offers.add_column("price_band", str)
    offers.add_column("margin", float)
    decisions = db.table("decisions")
    decisions.add_column("context", str)  # JSON, for replays and training
    decisions.create_index(["customer_ref", "ts"])  # frequency caps per customer
    decisions.create_index(["touchpoint", "ts"])  # ... and per screen
    # Decisions still waiting for their reward, for the window's expiry.
    db.execute("CREATE INDEX decisions_open ON decisions (ts) WHERE reward IS NULL")


def _migrate_v4(db: sqlite_utils.Database) -> None:
    """BLE identity keys live with the consent they depend on: withdrawn together."""
    consents = db.table("consents")
    consents.add_column("eid_key", bytes)
    consents.add_column("eid_k", int)


def _migrate_v5(db: sqlite_utils.Database) -> None:
    """Coupons printed at the till: single use, each tied to the decision that chose it."""
    db.table("coupons").create(
        {
            "code": str,
            "decision_id": str,
            "offer_id": str,
            "lane": str,
            "issued_at": float,
            "redeemed_at": float,
            "redeemed_lane": str,
        },
        pk="code",
        not_null={"decision_id", "issued_at"},
    )
    db.table("print_journal").create_index(["printer", "state", "created_at"])


def _migrate_v6(db: sqlite_utils.Database) -> None:
    """Re-sent POS events are harmless: one checkout per transaction event, and the redemption
    that used a coupon is remembered so its re-sent copy gets the same answer."""
    db.table("coupons").add_column("redeemed_event", str)
    db.execute(
        "CREATE UNIQUE INDEX decisions_checkout_request ON decisions (request_id)"
        " WHERE moment = 'checkout' AND request_id IS NOT NULL"
    )


def _migrate_v7(db: sqlite_utils.Database) -> None:
    """A POS total's checkout, committed with the total's event and settled by its decision:
    an acknowledged total gets its coupon even if the daemon dies in between."""
    db.table("pending_checkouts").create(
        {"event_id": str, "body": str, "created_at": float},
        pk="event_id",
        not_null={"body", "created_at"},
    )


def _migrate_v8(db: sqlite_utils.Database) -> None:
    """Events that are worthless after a time (in-app messages): their expiry, beside the outbox
    (whose rows keep the shape the salvage of a damaged file looks for)."""
    db.table("outbox_expiry").create({"id": str, "expires": float}, pk="id", not_null={"expires"})
    db.table("outbox_expiry").create_index(["expires"])


def _migrate_v9(db: sqlite_utils.Database) -> None:
    """A customer may opt out of in-app messages and keep the personalisation consent."""
    db.execute("ALTER TABLE consents ADD COLUMN app_messages INTEGER NOT NULL DEFAULT 1")


def _migrate_v10(db: sqlite_utils.Database) -> None:
    """Receipts sent by the lanes (issue 15): who gets them (a loyalty account, or a claim code
    printed for the app to claim), and the visit's decisions a claim links to its customer."""
    db.table("receipts").create(
        {
            "id": str,  # the pos.receipt event's id
            "lane": str,
            "txn": str,  # the pos.transaction event it is for
            "customer_ref": str,
            "claim_code": str,
            "claim_until": float,
            "decision_ids": str,  # JSON list, known when it was committed
            "coupons": str,  # JSON list of the codes redeemed on it
            "gross": float,
            "created_at": float,
            "claimed_ref": str,
            "claimed_at": float,
        },
        pk="id",
        not_null={"lane", "txn", "decision_ids", "coupons", "created_at"},
    )
    db.table("receipts").create_index(["claim_code"], unique=True)
    db.table("receipts").create_index(["txn"])


def _migrate_v11(db: sqlite_utils.Database) -> None:
    """Issue 17: offers carry a price (value-aware decisions); the catalogs decisions were made
    against, once per version, so the decision log can rebuild every candidate's features."""
    db.execute("ALTER TABLE offers ADD COLUMN price REAL")
    db.execute(
        "CREATE TABLE catalogs (version TEXT PRIMARY KEY, offers TEXT NOT NULL,"
        " created_at REAL NOT NULL)"
    )


def _migrate_v12(db: sqlite_utils.Database) -> None:
    """Issue 16: outcomes from other channels (an online purchase after a follow-up e-mail),
    each kept once by its id, and the decisions each one joined (its share, its delay)."""
    db.execute(
        "CREATE TABLE outcomes (id TEXT PRIMARY KEY, channel TEXT NOT NULL, amount REAL NOT NULL,"
        " ts REAL NOT NULL, status TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE outcome_joins (outcome_id TEXT NOT NULL, decision_id TEXT NOT NULL,"
        " channel TEXT NOT NULL, share REAL NOT NULL, delay_s REAL NOT NULL,"
        " PRIMARY KEY (outcome_id, decision_id))"
    )
    db.execute("CREATE INDEX outcome_joins_decision ON outcome_joins (decision_id)")


def _migrate_v13(db: sqlite_utils.Database) -> None:
    """Issue 11: the frequency caps count a screen's (a customer's) decisions by offer from the
    index alone, without reading each decision's row: their indexes carry the offer."""
    db.execute("DROP INDEX idx_decisions_touchpoint_ts")
    db.execute("CREATE INDEX decisions_touchpoint_caps ON decisions (touchpoint, ts, offer_id)")
    db.execute("DROP INDEX idx_decisions_customer_ref_ts")
    db.execute("CREATE INDEX decisions_customer_caps ON decisions (customer_ref, ts, offer_id)")


# Append only: a released migration is never edited, the next one is added.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_v1,
    _migrate_v2,
    _migrate_v3,
    _migrate_v4,
    _migrate_v5,
    _migrate_v6,
    _migrate_v7,
    _migrate_v8,
    _migrate_v9,
    _migrate_v10,
    _migrate_v11,
    _migrate_v12,
    _migrate_v13,
)
