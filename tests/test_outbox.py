"""The outbox: accepted means committed, drained by priority, telemetry shed at the budget."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from gateway.clock import SystemClock
from gateway.metrics import Metrics
from gateway.store import AsyncStore, OutboxRow, Store
from gateway.supervisor import Handle
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
