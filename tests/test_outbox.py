"""The outbox: accepted means committed, drained by priority, telemetry shed at the budget."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.runtime.clock import SystemClock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, OutboxRow, Store
from gateway.store._outbox import effective_budget
from gateway.sync.outbox import Outbox

RANKS = {0: -1, 1: -1, 2: -1}


def _row(i: int, rank: int, size: int = 100) -> OutboxRow:
    body = json.dumps({"id": f"e{i:03d}", "pad": "x" * size}).encode()
    return OutboxRow(id=f"e{i:03d}", rank=rank, type="t", ts=float(i), body=body)


def test_batches_come_in_priority_then_arrival_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    rows = [_row(0, 2), _row(1, 0), _row(2, 1), _row(3, 0), _row(4, 2)]
    assert store.append_outbox(rows, durable=False)[:2] == (5, 0)
    batch = store.outbox_batch(RANKS, 10, 10**6)
    assert [rank for _, rank, _ in batch] == [0, 0, 1, 2, 2]
    assert [json.loads(body)["id"] for _, _, body in batch] == [
        "e001",
        "e003",
        "e002",
        "e000",
        "e004",
    ]
    # Past the cursors, nothing: what is on its way is not sent twice on one connection.
    cursors = {0: batch[1][0], 1: batch[2][0], 2: batch[4][0]}
    assert store.outbox_batch(cursors, 10, 10**6) == []
    # A new urgent event jumps the queue.
    store.append_outbox([_row(5, 0)], durable=True)
    assert [r for _, r, _ in store.outbox_batch(cursors, 10, 10**6)] == [0]


def test_caps_limit_a_batch_and_acknowledged_rows_leave(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    store.append_outbox([_row(i, 1, size=1000) for i in range(10)], durable=False)
    assert len(store.outbox_batch(RANKS, 3, 10**6)) == 3
    small = store.outbox_batch(RANKS, 100, 2500)
    assert len(small) == 2  # by bytes
    assert store.outbox_ack([seq for seq, _, _ in small])[:2] == (2, 8)
    assert store.outbox.count == 8
    store.close()
    reopened = Store(tmp_path / "g.sqlite3")
    assert reopened.outbox.count == 8  # the counters are rebuilt from the table
    assert reopened.outbox.bytes == sum(len(_row(i, 1, size=1000).body) for i in range(8))


def test_duplicate_ids_are_ignored_and_counted_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    store.append_outbox([_row(1, 0), _row(2, 0)], durable=True)
    inserted, *_ = store.append_outbox([_row(2, 0), _row(3, 0)], durable=True)
    assert inserted == 1
    assert store.outbox.count == 3
    assert store.outbox.bytes == sum(len(_row(i, 0).body) for i in (1, 2, 3))


def test_disk_budget_sheds_oldest_telemetry_and_never_transactions(tmp_path: Path) -> None:
    one = len(_row(0, 2).body)
    store = Store(tmp_path / "g.sqlite3", outbox_budget_bytes=10 * one)
    store.append_outbox([_row(i, 2) for i in range(6)], durable=False)  # telemetry
    store.append_outbox([_row(i, 0) for i in range(10, 16)], durable=True)  # transactions
    assert store.outbox.bytes <= 10 * one
    left = {json.loads(b)["id"] for _, _, b in store.outbox_batch(RANKS, 100, 10**9)}
    assert {f"e{i:03d}" for i in range(10, 16)} <= left  # every transaction kept
    assert left & {"e000", "e001"} == set()  # the oldest telemetry went first
    assert {"e002", "e003", "e004", "e005"} <= left
    assert store.outbox.shed_total() == 2
    # Only transactions left to shed: they stay, over budget.
    store.append_outbox([_row(i, 0) for i in range(20, 40)], durable=True)
    assert store.outbox.counts_by_rank().get(0) == 26
    assert store.outbox.counts_by_rank().get(2, 0) == 0


class _Ready(Handle):
    def __init__(self) -> None:
        super().__init__("outbox", lambda *_: None)


async def test_accept_returns_only_after_the_commit_and_batches_form(tmp_path: Path) -> None:
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    metrics = Metrics()
    outbox = Outbox(db, "s1", SystemClock(), metrics)
    writer = asyncio.create_task(outbox.run(_Ready()))
    reader = sqlite3.connect(tmp_path / "g.sqlite3")

    async def producer(n: int) -> list[str]:
        ids = []
        for i in range(50):
            eid = await outbox.accept("pos.transaction", "transaction", {"n": n, "i": i})
            # Accepted means committed: another connection sees it at once.
            assert reader.execute("SELECT 1 FROM outbox WHERE id = ?", (eid,)).fetchone()
            ids.append(eid)
        return ids

    results = await asyncio.gather(*(producer(n) for n in range(40)))
    ids = [eid for r in results for eid in r]
    assert len(set(ids)) == 2000
    assert metrics.registry.get_sample_value("gateway_events_accepted_total") == 2000
    body = json.loads(reader.execute("SELECT body FROM outbox LIMIT 1").fetchone()[0])
    assert set(body) == {"id", "store", "ts", "type", "schema", "priority", "data"}
    assert body["store"] == "s1"
    writer.cancel()
    reader.close()
    await db.close()


async def test_committed_is_called_once_the_row_commits_before_it_is_durable(
    tmp_path: Path,
) -> None:
    """A checkout is decided on its total's commit: the fsync that makes the total durable
    runs beside the coupon's own durable commit instead of before it."""
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    order: list[str] = []
    fsync = db.sync

    async def sync() -> None:  # the real fsync, noted
        order.append("fsync")
        await fsync()

    db.sync = sync  # type: ignore[method-assign]
    outbox = Outbox(db, "s1", SystemClock(), Metrics())
    writer = asyncio.create_task(outbox.run(_Ready()))
    reader = sqlite3.connect(tmp_path / "g.sqlite3")
    try:
        row = outbox.row("pos.transaction", "transaction", {"total": 9.5})

        def committed() -> None:
            visible = reader.execute("SELECT 1 FROM outbox WHERE id = ?", (row.id,)).fetchone()
            order.append("committed" if visible else "called before the commit")

        durable = outbox.submit(row, [committed])
        durable.add_done_callback(lambda _: order.append("durable"))
        await durable
        await outbox.submit(outbox.row("t", "transaction", {}))  # a later commit
        assert order == ["committed", "fsync", "durable", "fsync"]
    finally:
        writer.cancel()
        reader.close()
        await db.close()


def test_budget_shrinks_by_what_the_disk_lacks_under_its_free_floor() -> None:
    assert effective_budget(1000, 400, room=10_000) == 1000  # room: the own budget rules
    assert effective_budget(1000, 400, room=0) == 400  # at the floor: no growth
    assert effective_budget(1000, 400, room=-150) == 250  # under it: shed the deficit
    assert effective_budget(1000, 400, room=-10_000) == 0


def test_under_the_free_space_floor_old_telemetry_makes_room_for_transactions(
    tmp_path: Path,
) -> None:
    """A real 16 MiB tmpfs: once free space is under the floor, each commit sheds the oldest
    telemetry, transactions are all kept, and the file system keeps its free floor."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {mounted.stderr.strip()}")
    try:
        store = Store(small / "g.sqlite3", min_free_bytes=0)
        for start in range(0, 4000, 200):  # ~4 MiB of telemetry waiting for the cloud
            store.append_outbox([_row(i, 2, 900) for i in range(start, start + 200)], False)
        free = _free(small)
        with (small / "filler").open("wb") as f:  # 3 MiB left, under a 4 MiB floor
            f.write(b"\0" * (free - 3 * 2**20))
        store.outbox.min_free_bytes = 4 * 2**20
        for start in range(10_000, 11_000, 100):  # ~1 MiB of transactions
            store.append_outbox([_row(i, 0, 900) for i in range(start, start + 100)], True)
        ranks = store.outbox.counts_by_rank()
        assert ranks[0] == 1000  # every transaction kept
        assert 0 < store.outbox.shed_total() == 4000 - ranks.get(2, 0)
        store.close()  # checkpointed: the WAL (up to 1000 pages between checkpoints) is gone
        # The transactions went into the pages the shed telemetry left: the file system kept
        # its 3 MiB, where without the floor the database would have grown by ~1 MiB.
        assert _free(small) > 3 * 2**20 - 64 * 1024
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _free(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize
