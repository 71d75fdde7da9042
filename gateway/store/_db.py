"""The SQLite store: offers, consents, decisions; `AsyncStore` keeps it off the event loop.

One connection writes, on the store thread; a decision's reads go through a second, read-only
connection on a thread of their own (WAL lets readers run beside a commit), so they never wait
behind an unrelated commit's fsync; a durable group commit's fsync runs on a third thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.store._outbox import OutboxRow, OutboxTable, create_outbox, transaction
from gateway.store._recovery import check_database, quarantine, salvage_outbox
from gateway.store._sqlite_utils import sqlite_utils

__all__ = [
    "AsyncStore",
    "Consent",
    "Decision",
    "Offer",
    "Opened",
    "Reader",
    "SchemaTooNew",
    "StorageFull",
    "Store",
    "StoreClosed",
    "is_storage_full",
]

T = TypeVar("T")
P = ParamSpec("P")


class SchemaTooNew(RuntimeError):
    """The database was written by a newer gateway; refusing it protects its data."""


OFFER_CHANNELS = ("kiosk", "screen", "receipt", "tablet", "app")  # an offer's channels by default


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    title: str
    body: str = ""
    category: str = ""
    discount_pct: float = 0.0
    channels: tuple[str, ...] = OFFER_CHANNELS
    segments: tuple[str, ...] = ()
    dayparts: tuple[str, ...] = ()
    priority: int = 0
    valid_from: float | None = None
    valid_to: float | None = None
    inventory: int | None = None  # None: not tracked
    price_band: str = "mid"  # low, mid, high
    margin: float = 0.0  # share of the price, 0..1


@dataclass(frozen=True, slots=True)
class Consent:
    customer_ref: str
    personalisation: bool
    segment: str | None = None
    eid_key: bytes | None = None  # the app's BLE identity key, for rotating identifiers
    eid_k: int = 10  # the identifier rotates every 2**eid_k seconds
    app_messages: bool = True  # False: opted out of in-app messages (personalisation aside)


@dataclass(frozen=True, slots=True)
class PrintJobRow:
    id: str
    lane: str
    printer: str
    coupon_code: str
    body: bytes  # the coupon as JSON; rendered to ESC/POS for the printer's profile at send time
    copy: bool
    attempts: int


# The decisions table's columns in `Decision`'s order: the one list every query uses.
DECISION_COLUMNS = (
    "id, ts, moment, touchpoint, customer_ref, offer_id, policy, propensity, request_id,"
    " model_version, feature_hash, context"
)


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    ts: float
    moment: str
    touchpoint: str
    customer_ref: str | None
    offer_id: str | None
    policy: str
    propensity: float
    request_id: str | None
    model_version: str | None = None
    feature_hash: str | None = None
    context: str | None = None  # JSON: what the features were made of


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


def _migrate_outcomes(db: sqlite_utils.Database) -> None:  # issue 16: cross-channel outcomes
    """Outcomes from other channels (an online purchase after a follow-up e-mail), each kept
    once by its id, and the decisions each one joined (its share of the amount, its delay)."""
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
    _migrate_outcomes,  # issue 16
)


class Reader:
    """What a decision reads (consent, frequency caps), over any connection to the store: the
    store's own, or a read-only one (`Reader.open`) that a commit in progress never blocks."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> Reader:
        """A read-only connection to an existing store (WAL: it reads beside the writer)."""
        uri = f"{path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """For the SQL of the features that own their tables (gateway/pos, ...): on the thread
        that owns this connection only."""
        return self._conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state of the store."""
        with self._conn:
            self._conn.execute("BEGIN")
            yield

    def consent(self, customer_ref: str) -> Consent | None:
        row = self._conn.execute(
            "SELECT personalisation, segment, app_messages FROM consents WHERE customer_ref = ?",
            (customer_ref,),
        ).fetchone()
        if row is None:
            return None
        return Consent(
            customer_ref=customer_ref,
            personalisation=bool(row[0]),
            segment=row[1],
            app_messages=bool(row[2]),
        )

    def offer_counts(
        self, customer_ref: str | None, touchpoint: str, now: float
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Offers shown to this customer in the last day, at this touchpoint in the last hour."""
        customer: dict[str, int] = {}
        if customer_ref is not None:
            customer = dict(
                self._conn.execute(
                    "SELECT offer_id, count(*) FROM decisions WHERE customer_ref = ? AND ts >= ?"
                    " AND offer_id IS NOT NULL GROUP BY offer_id",
                    (customer_ref, now - 86400),
                ).fetchall()
            )
        at_touchpoint = dict(
            self._conn.execute(
                "SELECT offer_id, count(*) FROM decisions WHERE touchpoint = ? AND ts >= ?"
                " AND offer_id IS NOT NULL GROUP BY offer_id",
                (touchpoint, now - 3600),
            ).fetchall()
        )
        return customer, at_touchpoint

    def categories_bought(self, customer_ref: str, last: int = 20) -> list[str]:
        """The categories in this customer's last checkouts' baskets, most frequent first."""
        counts: dict[str, int] = {}
        for (basket,) in self._conn.execute(
            "SELECT json_extract(context, '$.basket') FROM decisions"
            " WHERE customer_ref = ? AND moment = 'checkout' ORDER BY ts DESC LIMIT ?",
            (customer_ref, last),
        ):
            for category in json.loads(basket or "[]"):
                counts[category] = counts.get(category, 0) + 1
        return sorted(counts, key=lambda c: (-counts[c], c))

    def app_messages_since(self, customer_ref: str, since: float) -> int:
        (count,) = self._conn.execute(
            "SELECT count(*) FROM decisions WHERE customer_ref = ? AND ts >= ?"
            " AND moment = 'app_message'",
            (customer_ref, since),
        ).fetchone()
        return int(count)

    def unredeemed_coupon(self, customer_ref: str, since: float) -> str | None:
        """The offer of this customer's newest coupon issued since `since` and not redeemed."""
        row = self._conn.execute(
            "SELECT c.offer_id FROM coupons c JOIN decisions d ON d.id = c.decision_id"
            " WHERE d.customer_ref = ? AND c.redeemed_at IS NULL AND c.issued_at >= ?"
            " ORDER BY c.issued_at DESC LIMIT 1",
            (customer_ref, since),
        ).fetchone()
        return None if row is None else str(row[0])

    def served_by(self, customer_ref: str, since: float) -> str | None:
        """The associate (keyed hash) who last served this customer since `since`, if any."""
        row = self._conn.execute(
            "SELECT json_extract(context, '$.associate') FROM decisions"
            " WHERE customer_ref = ? AND moment = 'tablet_serve' AND ts >= ?"
            " ORDER BY ts DESC LIMIT 1",
            (customer_ref, since),
        ).fetchone()
        return None if row is None else row[0]


class Store(Reader):
    """The writing connection, owned by one thread at a time (see `AsyncStore`)."""

    def __init__(
        self, path: Path, outbox_budget_bytes: int = 512 * 1024 * 1024, min_free_bytes: int = 0
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        super().__init__(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._db = sqlite_utils.Database(self._conn)
        self._migrate()
        self.outbox = OutboxTable(
            self._conn,
            outbox_budget_bytes,
            free_bytes=functools.partial(_free_bytes, path.parent),
            min_free_bytes=min_free_bytes,
        )

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{self.path}: schema version {current} is newer than this gateway knows"
                f" ({len(MIGRATIONS)}); upgrade store-gateway or restore a matching backup"
            )
        for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
            with transaction(self._conn, durable=False):
                migration(self._db)
                self._conn.execute(f"PRAGMA user_version = {version}")

    def close(self) -> None:
        self._conn.close()

    def newest_times(self) -> tuple[float | None, float | None]:
        """The newest time this box stamped (a decision, an event, an applied bundle), and the
        newest creation time of a bundle the cloud signed."""
        own, signed = self._conn.execute(
            "SELECT max(coalesce((SELECT max(ts) FROM decisions), 0),"
            " coalesce((SELECT ts FROM outbox ORDER BY seq DESC LIMIT 1), 0),"
            " coalesce((SELECT max(applied_at) FROM applied_bundles), 0)),"
            " (SELECT max(created_at) FROM applied_bundles)"
        ).fetchone()
        return (float(own) or None), (None if signed is None else float(signed))

    def bump_counter(self, key: str, floor: int = 0) -> int:
        """Increment and return a durable counter (e.g. the MQTT session number), never below
        `floor`: a floor that grows with time keeps it growing across a lost database."""
        with transaction(self._conn, durable=False):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            value = max(int(row[0]) + 1 if row else 1, floor)
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )
        return value

    def upsert_offers(self, offers: Iterable[Offer], now: float, *, commit: bool = True) -> int:
        rows = [
            (
                o.id,
                o.title,
                o.body,
                o.category,
                o.discount_pct,
                json.dumps(list(o.channels)),
                json.dumps(list(o.segments)),
                json.dumps(list(o.dayparts)),
                o.priority,
                o.valid_from,
                o.valid_to,
                o.inventory,
                o.price_band,
                o.margin,
                now,
            )
            for o in offers
        ]
        # Plain SQL, not sqlite-utils: its helpers commit, and a bundle must apply all or nothing.
        sql = (
            "INSERT OR REPLACE INTO offers (id, title, body, category, discount_pct, channels,"
            " segments, dayparts, priority, valid_from, valid_to, inventory, price_band, margin,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._write(sql, rows, commit)
        return len(rows)

    def upsert_consents(
        self, consents: Iterable[Consent], now: float, *, commit: bool = True
    ) -> int:
        rows = [
            (
                c.customer_ref,
                int(c.personalisation),
                c.segment,
                c.eid_key,
                c.eid_k,
                int(c.app_messages),
                now,
            )
            for c in consents
        ]
        # An update that does not mention the app's identity key keeps the one on record.
        sql = (
            "INSERT INTO consents (customer_ref, personalisation, segment, eid_key, eid_k,"
            " app_messages, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(customer_ref) DO UPDATE SET"
            " personalisation = excluded.personalisation, segment = excluded.segment,"
            " app_messages = excluded.app_messages,"
            " eid_k = CASE WHEN excluded.eid_key IS NULL THEN consents.eid_k"
            " ELSE excluded.eid_k END,"
            " eid_key = COALESCE(excluded.eid_key, consents.eid_key),"
            " updated_at = excluded.updated_at"
        )
        self._write(sql, rows, commit)
        return len(rows)

    def _write(self, sql: str, rows: list[tuple[Any, ...]], commit: bool) -> None:
        """commit=False: inside the caller's transaction."""
        with transaction(self._conn, durable=False) if commit else contextlib.nullcontext():
            self._conn.executemany(sql, rows)

    def offers(self) -> list[Offer]:
        return [_offer(row) for row in self._db.table("offers").rows_where(order_by="id")]

    def eid_keys(self) -> dict[str, tuple[bytes, int]]:
        """customer_ref -> (identity key, rotation exponent) of customers who opted in."""
        rows = self._conn.execute(
            "SELECT customer_ref, eid_key, eid_k FROM consents"
            " WHERE personalisation = 1 AND eid_key IS NOT NULL"
        )
        return {ref: (bytes(key), int(k if k is not None else 10)) for ref, key, k in rows}

    def record_decision(self, d: Decision, event: OutboxRow | None = None) -> None:
        """Log a decision and, in the same transaction, queue its event for the cloud."""
        with transaction(self._conn, durable=False):
            self.insert_decision(d, event)

    def record_decisions(
        self, rows: Sequence[tuple[Decision, OutboxRow | None]], events: Sequence[OutboxRow] = ()
    ) -> None:
        """Several decisions of one moment (an associate's suggestions), and events they cause
        (an in-app message), in one transaction."""
        with transaction(self._conn, durable=False):
            for d, event in rows:
                self.insert_decision(d, event)
            for event in events:
                self.outbox.insert_one(event)

    def insert_decision(self, d: Decision, event: OutboxRow | None) -> None:
        """Inside the caller's transaction: the decision and its event for the cloud."""
        self._conn.execute(
            f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES ({', '.join('?' * 12)})",  # noqa: S608
            dataclasses.astuple(d),
        )
        if event is not None:
            self.outbox.insert_one(event)

    def append_outbox(self, rows: Sequence[OutboxRow], durable: bool) -> tuple[int, int, int, int]:
        """One commit; (inserted, shed, events waiting, bytes waiting)."""
        inserted, shed = self.outbox.append(rows, durable=durable)
        return inserted, shed, self.outbox.count, self.outbox.bytes

    def outbox_size(self) -> tuple[int, int]:
        """(events, bytes) waiting for the cloud."""
        return self.outbox.count, self.outbox.bytes

    def outbox_batch(
        self, cursors: Mapping[int, int], max_rows: int, max_bytes: int
    ) -> list[tuple[int, int, bytes]]:
        return self.outbox.next_batch(cursors, max_rows, max_bytes)

    def outbox_expire(self, now: float) -> dict[str, int]:
        """Drop what waited past its expiry (never uplinked late); {event type: count}."""
        return self.outbox.expire(now)

    def outbox_ack(self, seqs: Sequence[int]) -> tuple[int, int, int]:
        """Delete what the cloud acknowledged; (deleted, events waiting, bytes waiting)."""
        deleted = self.outbox.acknowledge(seqs)
        return deleted, self.outbox.count, self.outbox.bytes

    def decisions_by_id(self, ids: Sequence[str]) -> list[Decision]:
        cursor = self._conn.execute(
            f"SELECT {DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant columns
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return [Decision(*row) for row in cursor.fetchall()]

    def recent_contexts(self, limit: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT context FROM decisions WHERE context IS NOT NULL ORDER BY ts DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def decisions(self, limit: int = 100) -> list[Decision]:
        cursor = self._conn.execute(
            f"SELECT {DECISION_COLUMNS} FROM decisions ORDER BY id DESC LIMIT ?",  # noqa: S608
            (limit,),
        )
        return [Decision(*row) for row in cursor.fetchall()]


def _offer(row: Mapping[str, Any]) -> Offer:
    return Offer(
        id=row["id"],
        title=row["title"],
        body=row["body"] or "",
        category=row["category"] or "",
        discount_pct=row["discount_pct"] or 0.0,
        channels=tuple(json.loads(row["channels"] or "[]")),
        segments=tuple(json.loads(row["segments"] or "[]")),
        dayparts=tuple(json.loads(row["dayparts"] or "[]")),
        priority=row["priority"] or 0,
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        inventory=row["inventory"],
        price_band=row["price_band"] or "mid",
        margin=row["margin"] or 0.0,
    )


class StoreClosed(RuntimeError):
    """The store is not open (yet, or any more)."""


class StorageFull(RuntimeError):
    """A commit failed for want of space: devices are told to retry later, nothing is lost."""


_SQLITE_FULL = 13


def is_storage_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, or the file system's ENOSPC/EDQUOT (an fsync of the WAL)."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class Opened:
    """How the store opened: what start found, for the log line that says so."""

    path: Path
    new: bool  # no database (or an empty file) was there: a new empty one was made
    check_s: float  # the integrity check's duration
    problem: str | None = None  # what the integrity check found
    moved_to: Path | None = None  # where the damaged file went
    salvaged: int = 0  # outbox events read back from it
    unreadable_ranges: int = 0


def _free_bytes(directory: Path) -> int:
    """Space left for the gateway's user on the file system holding `directory`."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def open_store(
    path: Path,
    outbox_budget_bytes: int,
    now: float,
    min_free_bytes: int = 0,
    progress: Callable[[], None] = lambda: None,
) -> tuple[Store, Opened]:
    """Check the database, move it aside if damaged (salvaging its outbox), then open it.

    progress: called while a salvage runs, to ask for more time to start."""
    new = not path.exists() or path.stat().st_size == 0
    started = time.monotonic()
    problem = check_database(path)
    check_s = time.monotonic() - started
    if problem is None:
        return Store(path, outbox_budget_bytes, min_free_bytes), Opened(path, new, check_s)
    moved = quarantine(path, now)
    salvage = salvage_outbox(moved, progress)
    store = Store(path, outbox_budget_bytes, min_free_bytes)
    try:
        if salvage.rows:
            store.outbox.append(salvage.rows, durable=True)
    except BaseException:
        store.close()
        raise
    opened = Opened(path, True, check_s, problem, moved, len(salvage.rows), salvage.bad_ranges)
    return store, opened


class _WriteAheadLog:
    """The store's WAL file, fsynced apart from the connection that writes it.

    A commit with synchronous=FULL is a commit with NORMAL followed by an fdatasync of the WAL,
    made while the commit still holds the write lock, so every other write waits for the disk.
    This makes that same fdatasync after the lock is released: what was committed before
    `sync` is then as durable as with FULL. SQLite takes no POSIX lock on the WAL file (its
    locks are on the -shm file), so this descriptor cannot release one of its locks.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-wal")
        self._fd: int | None = None

    def sync(self) -> None:
        if self._fd is None:
            # As SQLite does for a new WAL: its directory entry is made durable too, once.
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._fd = os.open(self.path, os.O_RDONLY)
        os.fdatasync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class AsyncStore:
    """Runs `Store` calls on one dedicated thread, so SQLite never blocks the event loop, and
    `Reader` calls on another, with a read-only connection, so reads never wait for a commit;
    `sync` fsyncs the WAL on a third, so a durable commit's fsync holds up no other write.

    `await db.call(Store.bump_counter, key)` runs `store.bump_counter(key)` on the store
    thread; `await db.read(Reader.consent, ref)` runs `reader.consent(ref)` on the read thread.
    The store thread runs SQLite and nothing else: callers do their other work elsewhere.
    """

    def __init__(
        self, path: Path, outbox_budget_bytes: int = 512 * 1024 * 1024, min_free_bytes: int = 0
    ) -> None:
        self.path = path
        self.outbox_budget_bytes = outbox_budget_bytes
        self.min_free_bytes = min_free_bytes
        self._store: Store | None = None
        self._reader: Reader | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._wal = _WriteAheadLog(path)
        self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync")

    @property
    def is_open(self) -> bool:
        return self._store is not None

    async def open(
        self, now: float | None = None, progress: Callable[[], None] = lambda: None
    ) -> Opened:
        """Check (a damaged file is moved aside, its outbox salvaged), open and migrate.

        progress: called from the store thread while a salvage runs."""
        job = functools.partial(
            open_store,
            self.path,
            self.outbox_budget_bytes,
            time.time() if now is None else now,
            self.min_free_bytes,
            progress,
        )
        self._store, opened = await _run(self._executor, job)
        # After the store: the file exists, migrated, in WAL mode.
        self._reader = await _run(self._read_executor, functools.partial(Reader.open, self.path))
        return opened

    async def call(
        self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._store is None:
            raise StoreClosed(f"{self.path} is not open")
        return await _run(self._executor, functools.partial(fn, self._store, *args, **kwargs))

    async def read(
        self, fn: Callable[Concatenate[Reader, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a read on the read thread: it sees the last commit, and waits for none."""
        if self._reader is None:
            raise StoreClosed(f"{self.path} is not open")
        return await _run(self._read_executor, functools.partial(fn, self._reader, *args, **kwargs))

    async def sync(self) -> None:
        """Make every commit so far durable (fsync the WAL), off the store thread."""
        if self._store is None:
            raise StoreClosed(f"{self.path} is not open")
        await _run(self._sync_executor, self._wal.sync)

    async def close(self) -> None:
        await _run(self._sync_executor, self._wal.close)
        reader, self._reader = self._reader, None
        if reader is not None:
            await _run(self._read_executor, reader.close)
        store, self._store = self._store, None
        if store is not None:
            await _run(self._executor, store.close)


async def _run(executor: ThreadPoolExecutor, job: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, job)
