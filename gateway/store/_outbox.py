"""The event outbox: what the box accepted and the cloud has not yet acknowledged.

Rows are drained by (rank, seq): priority class first, then arrival. A row leaves only when the
cloud broker acknowledged the message that carried it. Above the disk budget the oldest
telemetry is shed (counted); ranks 0 (transactions, rewards, consents) are never shed. The budget
shrinks when the file system's free space falls under a floor (`outbox.min_free_mb`), so old
telemetry makes room before the disk fills and transactions are accepted as long as possible.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "SHEDDABLE_RANK",
    "OutboxRow",
    "OutboxTable",
    "create_outbox",
    "effective_budget",
    "transaction",
]

SHEDDABLE_RANK = 2  # telemetry
# A JSON array as the one parameter: any number of rows, no SQL built from strings.
_DELETE = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))"
_SIZE = (
    "SELECT coalesce(sum(length(body)), 0) FROM outbox"
    " WHERE seq IN (SELECT value FROM json_each(?))"
)


@contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool) -> Iterator[None]:
    """BEGIN IMMEDIATE .. COMMIT (rolled back on an exception). durable: the commit fsyncs
    the WAL (synchronous=FULL), for what carries money or consent; NORMAL otherwise."""
    if durable:
        conn.execute("PRAGMA synchronous = FULL")
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            yield
    finally:
        if durable:
            conn.execute("PRAGMA synchronous = NORMAL")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    rank: int
    type: str
    ts: float
    body: bytes  # the event as JSON, exactly as uplinked
    # The caller's own write, run in the event's transaction (a lane's pending checkout): what
    # an acknowledged event sets in motion survives a crash right after its commit.
    also: Callable[[sqlite3.Connection], None] | None = None
    # Worthless after this time (an in-app message pushed late): never uplinked past it.
    expires: float | None = None


def create_outbox(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE outbox ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " id TEXT NOT NULL UNIQUE,"
        " rank INTEGER NOT NULL,"
        " type TEXT NOT NULL,"
        " ts REAL NOT NULL,"
        " body BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX outbox_drain ON outbox (rank, seq)")


def effective_budget(budget: int, waiting: int, room: int) -> int:
    """The outbox's budget now: its own, less what the disk lacks to keep its free floor.

    room: bytes the database may still take before the file system falls under the floor
    (free space plus the database's free pages, minus the floor); negative under the floor.
    """
    return min(budget, max(0, waiting + room))


class OutboxTable:
    def __init__(
        self,
        conn: sqlite3.Connection,
        budget_bytes: int,
        *,
        free_bytes: Callable[[], int] | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        """free_bytes: the file system's free space, checked against min_free_bytes."""
        self._conn = conn
        self.budget_bytes = budget_bytes
        self._free_bytes = free_bytes
        self.min_free_bytes = min_free_bytes
        self.count = self.bytes = 0
        self._recount()

    def _recount(self) -> None:
        row = self._conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox")
        count, total = row.fetchone()
        self.count, self.bytes = int(count), int(total)

    def append(self, rows: Sequence[OutboxRow], *, durable: bool) -> tuple[int, int]:
        """Insert (a duplicate id is ignored) and commit; returns (inserted, shed).

        durable: fsync the WAL on commit (synchronous=FULL), for money and consent.
        """
        try:
            return self._append(rows, durable=durable)
        except BaseException:
            self._recount()  # rolled back (a full disk, say): the counts moved with it
            raise

    def _append(self, rows: Sequence[OutboxRow], *, durable: bool) -> tuple[int, int]:
        conn = self._conn
        with transaction(conn, durable=durable):
            before = conn.total_changes
            (last_seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, rank, type, ts, body) VALUES (?, ?, ?, ?, ?)",
                [(r.id, r.rank, r.type, r.ts, r.body) for r in rows],
            )
            inserted = conn.total_changes - before
            if inserted == len(rows):
                added = sum(len(r.body) for r in rows)
            else:  # a device re-sent events already here: size what went in (a range of seq)
                (added,) = conn.execute(
                    "SELECT coalesce(sum(length(body)), 0) FROM outbox WHERE seq > ?",
                    (last_seq,),
                ).fetchone()
            for row in rows:
                if row.also is not None:
                    row.also(conn)
            self._expiries(rows)
            self.count += inserted
            self.bytes += added
            budget = self._budget()
            shed = self._shed(budget) if self.bytes > budget else 0
        return inserted, shed

    def _budget(self) -> int:
        if self._free_bytes is None or self.min_free_bytes <= 0:
            return self.budget_bytes
        # Pages freed by shedding are reused before the file grows: they count as room.
        (page_size,) = self._conn.execute("PRAGMA page_size").fetchone()
        (free_pages,) = self._conn.execute("PRAGMA freelist_count").fetchone()
        room = self._free_bytes() + int(free_pages) * int(page_size) - self.min_free_bytes
        return effective_budget(self.budget_bytes, self.bytes, room)

    def insert_one(self, row: OutboxRow) -> None:
        """Inside the caller's transaction (a decision and its event commit together)."""
        cursor = self._conn.execute(
            "INSERT OR IGNORE INTO outbox (id, rank, type, ts, body) VALUES (?, ?, ?, ?, ?)",
            (row.id, row.rank, row.type, row.ts, row.body),
        )
        if cursor.rowcount:
            self.count += 1
            self.bytes += len(row.body)
            self._expiries((row,))

    def _expiries(self, rows: Sequence[OutboxRow]) -> None:
        dated = [(r.id, r.expires) for r in rows if r.expires is not None]
        if dated:
            self._conn.executemany(
                "INSERT OR IGNORE INTO outbox_expiry (id, expires) VALUES (?, ?)", dated
            )

    def expire(self, now: float) -> dict[str, int]:
        """Delete the events past their expiry that are still waiting; {type: how many}."""
        gone: dict[str, int] = {}
        with transaction(self._conn, durable=False):
            rows = self._conn.execute(
                "SELECT o.seq, o.type, length(o.body) FROM outbox_expiry e"
                " JOIN outbox o ON o.id = e.id WHERE e.expires <= ?",
                (now,),
            ).fetchall()
            for seq, type_, size in rows:
                self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self.count -= 1
                self.bytes -= size
                gone[type_] = gone.get(type_, 0) + 1
            # Those gone to the cloud in time leave their date behind: it goes too.
            self._conn.execute("DELETE FROM outbox_expiry WHERE expires <= ?", (now,))
        return gone

    def _shed(self, budget: int) -> int:
        """Delete the oldest telemetry until under budget; returns how many rows went."""
        shed = 0
        while self.bytes > budget:
            victims = self._conn.execute(
                "SELECT seq, length(body) FROM outbox WHERE rank >= ? ORDER BY rank DESC, seq"
                " LIMIT 256",
                (SHEDDABLE_RANK,),
            ).fetchall()
            if not victims:
                break  # only what must never be dropped is left: keep it, over budget
            need = self.bytes - budget
            chosen, freed = [], 0
            for seq, size in victims:
                chosen.append(seq)
                freed += size
                if freed >= need:
                    break
            self._delete(chosen)
            self.bytes -= freed
            self.count -= len(chosen)
            shed += len(chosen)
        if shed:
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES ('outbox_shed', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value",
                (shed,),
            )
        return shed

    def _delete(self, seqs: Sequence[int]) -> None:
        self._conn.execute(_DELETE, (json.dumps(list(seqs)),))

    def next_batch(
        self, cursors: Mapping[int, int], max_rows: int, max_bytes: int
    ) -> list[tuple[int, int, bytes]]:
        """(seq, rank, body) rows after the cursors, highest priority first, within the caps."""
        out: list[tuple[int, int, bytes]] = []
        size = 0
        for rank in sorted(cursors):
            rows = self._conn.execute(
                "SELECT seq, body FROM outbox WHERE rank = ? AND seq > ? ORDER BY seq LIMIT ?",
                (rank, cursors[rank], max_rows - len(out)),
            ).fetchall()
            for seq, body in rows:
                if out and size + len(body) > max_bytes:
                    return out
                out.append((seq, rank, body))
                size += len(body)
            if len(out) >= max_rows:
                break
        return out

    def acknowledge(self, seqs: Sequence[int]) -> int:
        """Delete what the cloud acknowledged; returns the rows deleted."""
        ids = json.dumps(list(seqs))
        with self._conn:
            freed = self._conn.execute(_SIZE, (ids,)).fetchone()[0]
            deleted = self._conn.execute(_DELETE, (ids,)).rowcount
        self.count -= deleted
        self.bytes -= int(freed)
        return int(deleted)

    def shed_total(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'outbox_shed'").fetchone()
        return int(row[0]) if row else 0

    def counts_by_rank(self) -> dict[int, int]:
        rows = self._conn.execute("SELECT rank, count(*) FROM outbox GROUP BY rank").fetchall()
        return {int(rank): int(n) for rank, n in rows}
