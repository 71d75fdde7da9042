"""`AsyncStore`: the store's threads, so SQLite never blocks the event loop."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import structlog

from gateway.store._db import Opened, Reader, Store, StoreClosed, open_store

__all__ = ["AsyncStore"]

log = structlog.get_logger("gateway.store")

T = TypeVar("T")
P = ParamSpec("P")


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


_RESTART_WAIT_MS = 100


class _Checkpointer:
    """Copies the WAL back into the database on a thread and connection of its own.

    SQLite's automatic checkpoint runs inside the commit that takes the WAL past 1,000 pages,
    on the store thread, with an fsync of the WAL and one of the database: on an SD card every
    write queued behind it (a decision) waits 20 ms or more for the disk. The writer's is
    turned off; this thread runs a PASSIVE checkpoint (it blocks neither the writer nor the
    readers) every `every_s` while the WAL is being written. A passive checkpoint lets the WAL
    start over only once it has caught up with every frame, which steady writes can put off
    for ever: past `restart_bytes` it runs a RESTART checkpoint, which waits for the writer's
    transaction in progress and holds the next one until the WAL is copied (the stall of the
    automatic checkpoint, but once per `restart_bytes` of a busy store, not every 4 MB), for at
    most `_RESTART_WAIT_MS` more while a reader holds an older snapshot. What is in use
    decides, not the file's size: a restarted WAL keeps its size.
    """

    def __init__(
        self, database: Path, every_s: float = 2.0, restart_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self._database = database
        self._restart_bytes = restart_bytes
        self._wal = database.with_name(database.name + "-wal")
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self.restarts = 0  # RESTART checkpoints tried: each holds the writes for its fsyncs

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
        try:
            # A restart holds every write while it waits for the readers: a reader on an old
            # snapshot (a long report) holds them this long a period, not the 5 s the
            # store's own connections wait; the restart is tried again the next period.
            conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            frame_bytes = int(page_size) + 24  # a WAL frame: its header and one page
            checkpointed: tuple[int, int] | None = None
            failing = False
            while not self._stop.wait(self._every_s):
                try:
                    stat = os.stat(self._wal)
                except FileNotFoundError:
                    continue
                if (stat.st_size, stat.st_mtime_ns) == checkpointed:
                    continue  # nothing written since the last checkpoint
                try:
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # The frames in use, not the file's size: a restarted WAL is written again
                    # from its start and keeps its size, and judged by that, every checkpoint
                    # after the first restart was one (a 30-45 ms stall of every write each
                    # period under the fsync of an SD card, issue 11).
                    if frames * frame_bytes >= self._restart_bytes:
                        self.restarts += 1
                        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except sqlite3.Error as exc:
                    if not failing:  # said once per streak, not every period
                        log.warning("WAL checkpoint failed; retrying", error=str(exc))
                    failing = True
                    continue
                failing = False
                checkpointed = (stat.st_size, stat.st_mtime_ns)
        finally:
            conn.close()


class AsyncStore:
    """Runs `Store` calls on one dedicated thread, so SQLite never blocks the event loop, and
    `Reader` calls on another, with a read-only connection, so reads never wait for a commit;
    `sync` fsyncs the WAL on a third, so a durable commit's fsync holds up no other write,
    and checkpoints run on a fourth (`_Checkpointer`), so no write waits behind one.

    `await db.call(Store.bump_counter, key)` runs `store.bump_counter(key)` on the store
    thread; `await db.read(Reader.consent, ref)` runs `reader.consent(ref)` on the read thread.
    The store thread runs SQLite and nothing else: callers do their other work elsewhere.
    """

    def __init__(
        self,
        path: Path,
        outbox_budget_bytes: int = 512 * 1024 * 1024,
        min_free_bytes: int = 0,
        checkpoint_every_s: float = 2.0,
        wal_restart_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.path = path
        self._checkpoint_every_s = checkpoint_every_s
        self._wal_restart_bytes = wal_restart_bytes
        self.outbox_budget_bytes = outbox_budget_bytes
        self.min_free_bytes = min_free_bytes
        self._store: Store | None = None
        self._reader: Reader | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        self._wal = _WriteAheadLog(path)
        self._sync_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync")
        self._checkpointer: _Checkpointer | None = None

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
        store, opened = await _run(self._executor, job)
        self._store = store
        # After the store: the file exists, migrated, in WAL mode.
        self._reader = await _run(self._read_executor, functools.partial(Reader.open, self.path))
        # Twice the restart's size: a WAL restarted on time (a little past it) is reused as
        # it is, not cut and grown again each time (the size change costs each fsync more).
        wal_limit = 2 * self._wal_restart_bytes
        await _run(self._executor, functools.partial(store.checkpoint_apart, wal_limit))
        self._checkpointer = _Checkpointer(
            self.path, self._checkpoint_every_s, self._wal_restart_bytes
        )
        self._checkpointer.start()
        return opened

    @property
    def wal_restarts(self) -> int:
        """WAL restarts tried since the store opened: each holds every write for its fsyncs."""
        return 0 if self._checkpointer is None else self._checkpointer.restarts

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
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.stop)
        await _run(self._sync_executor, self._wal.close)
        reader, self._reader = self._reader, None
        if reader is not None:
            await _run(self._read_executor, reader.close)
        store, self._store = self._store, None
        if store is not None:
            await _run(self._executor, store.close)


async def _run(executor: ThreadPoolExecutor, job: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, job)
