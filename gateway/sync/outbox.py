"""Accepting events: an event is accepted once it is committed, never before.

Callers hand events in; one writer commits whatever is waiting in a single transaction (group
commit: batches form by themselves while a commit is under way, so a burst costs one fsync, and a
lone event waits for nothing). A batch holding a transaction, reward or consent is durable: once
committed, its WAL is fsynced (`AsyncStore.sync`, what `synchronous=FULL` would do inside the
commit, but off the store thread, so other writes need not wait for the disk); telemetry and
decisions are not fsynced (safe against a crash of the process, not against a power cut). Only
then are the callers told "accepted".
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import structlog

from gateway.codecs.ids import uuid7
from gateway.runtime.clock import Clock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, OutboxRow, StorageFull, Store, is_storage_full
from gateway.sync.wire import PRIORITY_RANK

__all__ = ["EVENT_SCHEMA_VERSION", "Outbox", "backlog_by_rank"]

log = structlog.get_logger("gateway.outbox")
EVENT_SCHEMA_VERSION = 1
_MAX_BATCH = 5000
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once, not per event


class Outbox:
    name = "outbox"
    requires = ("store",)

    def __init__(self, db: AsyncStore, store_id: str, clock: Clock, metrics: Metrics) -> None:
        self._db = db
        self._store_id = store_id
        self._clock = clock
        self._metrics = metrics
        self._pending: list[_Waiting] = []
        self._full = False  # the last commit failed for want of space
        self._wake = asyncio.Event()
        # Set after every commit: the uplink waits on it instead of polling the table.
        self.appended = asyncio.Event()

    def row(
        self,
        type: str,
        priority: str,
        data: Mapping[str, Any],
        *,
        event_id: str | None = None,
        ts: float | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
        expires: float | None = None,
    ) -> OutboxRow:
        """The event envelope, serialised once, exactly as it will be uplinked."""
        now = self._clock.now() if ts is None else ts
        eid = event_id or uuid7(int(now * 1000))
        body = {
            "id": eid,
            "store": self._store_id,
            "ts": now,
            "type": type,
            "schema": EVENT_SCHEMA_VERSION,
            "priority": priority,
            "data": data,
        }
        encoded = _ENCODER.encode(body).encode()
        rank = PRIORITY_RANK[priority]
        return OutboxRow(eid, rank, type, now, encoded, also=also, expires=expires)

    def submit(
        self, row: OutboxRow, committed: Sequence[Callable[[], object]] = ()
    ) -> asyncio.Future[None]:
        """Queue for the next commit; the future resolves once the row is committed (durably,
        for a durable row). committed: called in turn on the loop as soon as the row's
        transaction commits, before its fsync: for work that makes its own result durable
        before anyone sees it (a checkout's coupon, whose durable commit makes the total
        durable too)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Waiting(row, future, committed))
        self._wake.set()
        return future

    async def accept(
        self, type: str, priority: str, data: Mapping[str, Any], *, event_id: str | None = None
    ) -> str:
        """Commit one event; returns its id once it is durable."""
        row = self.row(type, priority, data, event_id=event_id)
        await self.submit(row)
        return row.id

    async def run(self, handle: Handle) -> None:
        # What the last run left waiting, at once (not only after the next commit).
        waiting, size = await self._db.call(Store.outbox_size)
        self._metrics.outbox_events.set(waiting)
        self._metrics.outbox_bytes.set(size)
        handle.ready()
        if self._pending:  # left by a commit that failed before this restart
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                await self._commit(batch)

    async def _commit(self, batch: list[_Waiting]) -> None:
        rows = [each.row for each in batch]
        durable = any(row.rank == 0 for row in rows)
        try:
            inserted, shed, waiting, size = await self._db.call(
                Store.append_outbox, rows, durable=False
            )
            _committed(batch)
            if durable:
                await self._db.sync()
        except Exception as exc:
            if not is_storage_full(exc):
                failure = exc
                _settle(batch, lambda f: f.set_exception(failure))
                raise
            # Not committed (or committed but not fsynced): each device hears "storage full,
            # retry later" and sends again, its ids making a copy that did get in harmless; the
            # outbox keeps serving instead of being restarted, and commits once there is room.
            full = StorageFull(str(exc))
            _settle(batch, lambda f: f.set_exception(full))
            if not self._full:
                self._full = True
                log.error(
                    "storage full: events refused until there is room",
                    path=str(self._db.path),
                    error=str(exc),
                    remedy="free space on the state directory's file system",
                )
            return
        except BaseException:
            _settle(batch, lambda f: f.set_exception(RuntimeError("outbox stopped")))
            raise
        if self._full:
            self._full = False
            log.warning("storage has room again: events accepted", path=str(self._db.path))
        _settle(batch, lambda f: f.set_result(None))
        self._metrics.events_accepted.inc(inserted)
        self._metrics.outbox_events.set(waiting)
        self._metrics.outbox_bytes.set(size)
        if shed:
            self._metrics.events_shed.inc(shed)
            log.warning("disk budget reached: oldest telemetry shed", shed=shed)
        self.appended.set()


class _Waiting(NamedTuple):
    """A submitted row: its future, and what to call once it commits (before its fsync)."""

    row: OutboxRow
    future: asyncio.Future[None]
    committed: Sequence[Callable[[], object]]


def _committed(batch: list[_Waiting]) -> None:
    for waiting in batch:
        for committed in waiting.committed:
            try:
                committed()
            except Exception:  # the caller's trouble, not the commit's
                log.exception("after-commit callback failed", type=waiting.row.type)


def _settle(batch: list[_Waiting], action: Callable[[asyncio.Future[None]], None]) -> None:
    for waiting in batch:
        if not waiting.future.done():
            action(waiting.future)


def backlog_by_rank(store: Store) -> dict[int, int]:
    """Events waiting per priority rank (0 transactions, rewards, consents; 1 decisions; 2
    telemetry): the console's overview. Walks the (rank, seq) index."""
    rows = store.conn.execute("SELECT rank, count(*) FROM outbox GROUP BY rank")
    return {int(rank): int(n) for rank, n in rows.fetchall()}
