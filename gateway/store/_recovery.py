"""Storage at start: a state directory the gateway cannot write is named; a damaged database is
moved aside and what its outbox still holds is read back, row by row, into a new one.

No `sqlite3 .recover` (the CLI is not on a store box, and Python's sqlite3 does not offer it):
the damaged file is opened read-only and the outbox is read by rowid ranges; a range that raises
is skipped by a binary search for the first key that reads again, so one bad page costs the rows
on that page, not the rest of the table.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.store._outbox import OutboxRow

__all__ = [
    "Salvage",
    "StateDirUnusable",
    "check_database",
    "check_writable",
    "quarantine",
    "quarantine_name",
    "salvage_outbox",
]

# The primary result codes that mean "the file is damaged", not "the file is busy or unreadable".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SIDE_FILES = ("-wal", "-shm")
_READ_CHUNK = 500
_RANKS = (0, 1, 2)
_OUTBOX_COLUMNS = 6  # seq, id, rank, type, ts, body
_PROGRESS_PAGES = 8192  # 32 MiB of 4 KiB pages: a few seconds of scanning


class StateDirUnusable(Exception):
    """The state directory or the database file cannot be written: a configuration error."""

    def __init__(self, path: Path, problem: str, remedy: str) -> None:
        super().__init__(f"{path}: {problem}; {remedy}")
        self.path = path


def check_writable(state_dir: Path, database: Path) -> None:
    """Raise `StateDirUnusable` if the gateway cannot create and write its files there.

    A missing directory is created (a first start outside systemd); one that cannot be, or
    that refuses a new file, is named. Root passes permission bits, not a read-only mount,
    so a probe file tells the truth where `os.access` on the directory would not.
    """
    remedy = (
        "make it writable by the gateway's user (systemd's StateDirectory= does),"
        " or point store.state_dir at a writable directory"
    )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirUnusable(state_dir, f"cannot create it ({exc.strerror})", remedy) from None
    if not state_dir.is_dir():
        raise StateDirUnusable(state_dir, "is not a directory", remedy)
    probe = state_dir / f".write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk is not a config error
            raise StateDirUnusable(state_dir, f"not writable ({exc.strerror})", remedy) from None
    for path in (database, *(_side(database, s) for s in _SIDE_FILES)):
        try:
            os.close(os.open(path, os.O_RDWR))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StateDirUnusable(
                path,
                f"the database file is not writable ({exc.strerror})",
                "give it to the gateway's user (chown store-gateway:store-gateway) and mode 0600",
            ) from None


def check_database(path: Path) -> str | None:
    """None if the file passes `PRAGMA quick_check` (or is absent or empty), else the problem.

    quick_check, not integrity_check: it checks every page and record but not that indexes
    match their tables, so it reads the file once (see docs/install.md for its measured cost).
    Errors other than damage (locked, unreadable) are raised: moving a good file aside over a
    transient fault would lose it.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        # Read-write: a WAL left by a crash is replayed, as the store itself would do.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if _damaged(exc):
            return str(exc)
        raise
    problems = [str(r[0]) for r in rows]
    if problems == ["ok"]:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def quarantine_name(path: Path, now: float) -> Path:
    """`gateway.sqlite3.corrupt-20261207T041500Z`: beside it, sorted by time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return path.with_name(f"{path.name}.corrupt-{stamp}")


def quarantine(path: Path, now: float) -> Path:
    """Move the database and its -wal/-shm aside (together: the WAL belongs to that file)."""
    target = quarantine_name(path, now)
    n = 1
    while target.exists():  # two damaged files in one second: keep both
        target = target.with_name(f"{quarantine_name(path, now).name}.{n}")
        n += 1
    for suffix in _SIDE_FILES:
        side = _side(path, suffix)
        if side.exists():
            side.rename(_side(target, suffix))
    path.rename(target)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the renames survive a power cut
    finally:
        os.close(directory)
    return target


@dataclass(frozen=True, slots=True)
class Salvage:
    rows: list[OutboxRow]
    bad_ranges: int  # rowid ranges skipped because they did not read
    invalid: int  # rows that read but were not events (garbage in a page that parsed)


def salvage_outbox(path: Path, progress: Callable[[], None] = lambda: None) -> Salvage:
    """Every outbox row of a damaged file (and its WAL) that still reads and looks like an event.

    Two passes, merged by event id and put back in their old order: SQLite's own reading of
    the table, skipping ranges that raise; then a scan of every page of the file and of the
    WAL for table leaf cells shaped like outbox rows, which finds rows whose b-tree pages
    above them were lost (a truncated file keeps its early leaves, unreachable from the root).
    The scan can bring back rows the cloud had already acknowledged (their page was freed,
    not wiped): uplink is at-least-once, and the receiver drops them by id.

    progress: called now and then (a large file takes minutes on a small box), to say so.
    """
    progress()
    found: dict[str, tuple[int, OutboxRow]] = {}
    bad: list[int] = []  # where each skipped range began
    invalid = 0
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        bad.append(0)
    else:
        try:
            for row in _readable_rows(conn, bad):
                parsed = _event(row)
                if parsed is None:
                    invalid += 1
                else:
                    found[parsed.id] = (int(row[0]), parsed)  # type: ignore[call-overload]
        finally:
            conn.close()
    for rowid, values in _scanned_records(path, progress):
        parsed = _event((rowid, *values[1:]))
        if parsed is not None:
            found.setdefault(parsed.id, (rowid, parsed))
    rows = [row for _, row in sorted(found.values(), key=lambda item: item[0])]
    return Salvage(rows, len(bad), invalid)


_SELECT = (
    "SELECT seq, id, rank, type, ts, body FROM outbox NOT INDEXED"
    " WHERE seq > ? ORDER BY seq LIMIT ?"
)


def _readable_rows(conn: sqlite3.Connection, bad: list[int]) -> Iterator[tuple[object, ...]]:
    """Rows by rowid; past a range that raises, on from the first key that reads again."""
    try:
        (top,) = conn.execute("SELECT max(seq) FROM outbox").fetchone()
    except sqlite3.DatabaseError:
        top = None
    if top is None:  # the right edge is damaged too: probe up to a bound no box reaches
        top = 1 << 40
    after = 0
    while after < top:
        try:
            chunk = conn.execute(_SELECT, (after, _READ_CHUNK)).fetchall()
        except sqlite3.DatabaseError:
            # Near the damage: one row per query (a cursor reads ahead, and would lose the
            # last good row with the bad one), then over the range that does not read.
            while (row := _one(conn, after)) is not None:
                yield row
                after = int(row[0])  # type: ignore[call-overload]
            bad.append(after)
            after = _first_readable(conn, after, top)
            continue
        if not chunk:
            return
        yield from chunk
        after = int(chunk[-1][0])


def _one(conn: sqlite3.Connection, after: int) -> tuple[object, ...] | None:
    """The row after `after`; None at the damage (or the end: the caller's next seek says)."""
    try:
        row: tuple[object, ...] | None = conn.execute(_SELECT, (after, 1)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return row


def _reads_from(conn: sqlite3.Connection, key: int) -> bool:
    try:
        conn.execute(_SELECT, (key - 1, 1)).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True


def _first_readable(conn: sqlite3.Connection, after: int, top: int) -> int:
    """The last key before the first one, above `after`, from which a read succeeds.

    A damaged page holds a contiguous range of keys: reads starting inside it (or just before
    it, stepping into it) fail, reads starting after it succeed, so the boundary is found by
    doubling, then halving. Returns `top` if nothing above reads.
    """
    step = 1  # a read from after + 1 is the one that failed: the result is past it
    while after + step <= top and not _reads_from(conn, after + step):
        step *= 2
    high = min(after + step, top)
    if high <= after + 1 or not _reads_from(conn, high):
        return top
    low = after + step // 2  # fails (or is `after` itself)
    while high - low > 1:
        middle = (low + high) // 2
        if _reads_from(conn, middle):
            high = middle
        else:
            low = middle
    return high - 1


def _event(row: tuple[object, ...]) -> OutboxRow | None:
    """The row as an outbox row if it is one: a garbage page can parse into nonsense."""
    _, eid, rank, kind, ts, body = row
    if not (
        isinstance(eid, str)
        and rank in _RANKS
        and isinstance(rank, int)
        and isinstance(kind, str)
        and isinstance(ts, int | float)
        and isinstance(body, bytes)
    ):
        return None
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("id") != eid:
        return None
    return OutboxRow(eid, rank, kind, float(ts), body)


def _scanned_records(
    path: Path, progress: Callable[[], None]
) -> Iterator[tuple[int, list[object]]]:
    """(rowid, values) of the table leaf cells shaped like outbox rows in the file's pages and
    its WAL's: six columns, the first (seq, the rowid) stored as NULL."""
    page_size = _page_size(path)
    with contextlib.suppress(OSError), path.open("rb") as f:
        number = 0
        while page := f.read(page_size):
            yield from _leaf_cells(page, 100 if number == 0 else 0)
            number += 1
            if number % _PROGRESS_PAGES == 0:
                progress()
    wal = _side(path, "-wal")
    with contextlib.suppress(OSError), wal.open("rb") as f:
        header = f.read(32)
        size = int.from_bytes(header[8:12], "big") if len(header) == 32 else 0
        if size < 512 or size & (size - 1):
            return
        while len(frame := f.read(24 + size)) == 24 + size:
            yield from _leaf_cells(frame[24:], 0)


def _page_size(path: Path) -> int:
    """From the file's header, or the most common size when the header is gone."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError:
        return 4096
    if header[:16] != b"SQLite format 3\x00":
        return 4096
    size = int.from_bytes(header[16:18], "big")
    size = 65536 if size == 1 else size
    return size if size >= 512 and not size & (size - 1) else 4096


def _leaf_cells(page: bytes, at: int) -> Iterator[tuple[int, list[object]]]:
    """The cells of a table b-tree leaf page (type 13) whose record fits in the page."""
    if len(page) < at + 8 or page[at] != 13:
        return
    cells = int.from_bytes(page[at + 3 : at + 5], "big")
    local_max = len(page) - 35  # larger payloads spill to overflow pages: not followed
    for i in range(min(cells, (len(page) - at - 8) // 2)):
        pointer = int.from_bytes(page[at + 8 + 2 * i : at + 10 + 2 * i], "big")
        try:
            size, pos = _varint(page, pointer)
            rowid, pos = _varint(page, pos)
            if size > local_max or pos + size > len(page):
                continue
            values = _record(page[pos : pos + size], _OUTBOX_COLUMNS)
            if values is not None:
                yield _signed(rowid), values
        except (IndexError, ValueError, UnicodeDecodeError):
            continue  # a cell the damage reached


def _record(payload: bytes, columns: int) -> list[object] | None:
    """The record's values, or None (not decoded) unless it has `columns` columns and the first
    is NULL: other tables' rows are skipped for the price of their header."""
    header_size, pos = _varint(payload, 0)
    types = []
    while pos < header_size:
        serial, pos = _varint(payload, pos)
        types.append(serial)
    if len(types) != columns or types[0] != 0:
        return None
    values: list[object] = []
    data = header_size
    for serial in types:
        if serial == 0:
            values.append(None)
        elif serial <= 6:
            width = (0, 1, 2, 3, 4, 6, 8)[serial]
            values.append(int.from_bytes(payload[data : data + width], "big", signed=True))
            data += width
        elif serial == 7:
            (number,) = struct.unpack(">d", payload[data : data + 8])
            values.append(number)
            data += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            width = (serial - 12) // 2
            chunk = payload[data : data + width]
            if len(chunk) != width:
                raise ValueError("record runs past its cell")
            values.append(chunk.decode() if serial % 2 else bytes(chunk))
            data += width
        else:
            raise ValueError("reserved serial type")
    return values


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise ValueError("unreachable")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)
