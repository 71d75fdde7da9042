"""The SQLite store: the connections and consents (the row types of the tables the features own
are in _rows.py; their SQL lives with them: the catalog and the decision log in gateway/decision,
...).

One connection writes, on the store thread; a decision's reads go through a second, read-only
connection on a thread of their own (WAL lets readers run beside a commit), so they never wait
behind an unrelated commit's fsync; a durable group commit's fsync runs on a third thread.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from gateway.store._migrations import MIGRATIONS
from gateway.store._outbox import OutboxRow, OutboxTable, transaction
from gateway.store._recovery import check_database, quarantine, salvage_outbox
from gateway.store._rows import Consent
from gateway.store._sqlite_utils import sqlite_utils

__all__ = [
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
        self, customer_ref: str | None, touchpoint: str, now: float, at_least: tuple[int, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Offers shown to this customer in the last day, at this touchpoint in the last hour,
        each only if shown `at_least` (day, hour) times: the frequency caps need no other, and
        each row fetched is a hand-off of the GIL on the read thread (issue 11)."""
        day, hour = at_least
        customer: dict[str, int] = {}
        if customer_ref is not None:
            customer = dict(
                self._conn.execute(
                    "SELECT offer_id, count(*) FROM decisions WHERE customer_ref = ? AND ts >= ?"
                    " AND offer_id IS NOT NULL GROUP BY offer_id HAVING count(*) >= ?",
                    (customer_ref, now - 86400, day),
                ).fetchall()
            )
        at_touchpoint = dict(
            self._conn.execute(
                "SELECT offer_id, count(*) FROM decisions WHERE touchpoint = ? AND ts >= ?"
                " AND offer_id IS NOT NULL GROUP BY offer_id HAVING count(*) >= ?",
                (touchpoint, now - 3600, hour),
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

    def checkpoint_apart(self, wal_limit_bytes: int) -> None:
        """No checkpoint inside this connection's commits: `AsyncStore` runs them apart. A WAL
        that grew past `wal_limit_bytes` (its restart put off by a long reader) is cut back
        to that size when it starts over, not kept at its largest on the card for ever."""
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn.execute(f"PRAGMA journal_size_limit={int(wal_limit_bytes)}")

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

    def eid_keys(self) -> dict[str, tuple[bytes, int]]:
        """customer_ref -> (identity key, rotation exponent) of customers who opted in."""
        rows = self._conn.execute(
            "SELECT customer_ref, eid_key, eid_k FROM consents"
            " WHERE personalisation = 1 AND eid_key IS NOT NULL"
        )
        return {ref: (bytes(key), int(k if k is not None else 10)) for ref, key, k in rows}

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

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])


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
