"""The SQLite store: migrations, refusal of newer schemas, durable counters, decisions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.codecs.payloads import SESSION_EPOCH, session_floor
from gateway.decision.log import latest_decisions, record_decision
from gateway.decision.offers import load_offers, upsert_offers
from gateway.pos.coupons import redeem
from gateway.store import (
    AsyncStore,
    Consent,
    Decision,
    Offer,
    SchemaTooNew,
    Store,
    StoreClosed,
    load_seed,
)
from gateway.store._db import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent


def test_a_new_store_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    conn = sqlite3.connect(tmp_path / "g.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_from_a_newer_gateway_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer than this gateway"):
        Store(path)


def test_the_frequency_caps_are_counted_from_an_index_alone(tmp_path: Path) -> None:
    """Every decision counts its screen's decisions of the last hour: from the index, without
    reading each decision's row (issue 11: half the read thread's time at a busy kiosk)."""
    store = Store(tmp_path / "g.sqlite3")
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.offer_counts("c_1", "kiosk-1", 1_800_000_000.0, (3, 30))
    store.conn.set_trace_callback(None)
    assert len(statements) == 2  # the customer's day, the screen's hour
    for sql in statements:
        plan = " ".join(row[-1] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING COVERING INDEX" in plan, plan
    store.close()


def test_counters_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    store = Store(path)
    assert [store.bump_counter("s"), store.bump_counter("s")] == [1, 2]
    store.close()
    assert Store(path).bump_counter("s") == 3


def test_a_counter_never_falls_under_its_floor_and_keeps_growing_above_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    assert store.bump_counter("s", floor=session_floor(SESSION_EPOCH + 100)) == 100
    assert store.bump_counter("s", floor=session_floor(SESSION_EPOCH + 50)) == 101  # clock back
    store.close()
    assert session_floor(0) == 1  # a clock before the epoch still gives a valid session


def test_offers_consents_and_decisions_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    offer = Offer("OFF-1", "t", "b", "c", 10.0, ("kiosk",), ("vip",), ("morning",), 3, 1.0, 2.0, 5)
    upsert_offers(store, [offer], now=1.0)
    upsert_offers(store, [offer], now=2.0)  # upsert: no duplicate
    assert load_offers(store) == [offer]
    store.upsert_consents([Consent("c_1", True, "vip")], now=1.0)
    assert store.consent("c_1") == Consent("c_1", True, "vip")
    assert store.consent("c_unknown") is None
    decision = Decision("d1", 1.0, "kiosk_identify", "kiosk-1", None, "OFF-1", "rules/1", 1.0, "r1")
    record_decision(store, decision)
    assert latest_decisions(store) == [decision]


def test_seed_hashes_loyalty_numbers_and_rejects_bad_files(tmp_path: Path) -> None:
    key = bytes(32)
    offers, consents = load_seed(REPO / "examples" / "demo-seed.json", key)
    assert {o.id for o in offers} >= {"OFF-FRUIT", "OFF-BEANS-MEMBER"}
    assert all(c.customer_ref.startswith("c_") for c in consents)
    bad = tmp_path / "seed.json"
    bad.write_text('{"offers": [{"id": "x"}]}')
    from gateway.store import SeedError

    with pytest.raises(SeedError, match=r"seed.json: data.offers\[0\] must contain"):
        load_seed(bad, key)


async def test_async_store_runs_off_the_loop_and_refuses_calls_when_closed(tmp_path: Path) -> None:
    db = AsyncStore(tmp_path / "g.sqlite3")
    with pytest.raises(StoreClosed):
        await db.call(load_offers)
    await db.open()
    assert await db.call(Store.bump_counter, "x") == 1
    await db.close()
    with pytest.raises(StoreClosed):
        await db.call(load_offers)


def test_a_consent_update_without_the_app_key_keeps_it(tmp_path: Path) -> None:
    from gateway.store import Consent

    store = Store(tmp_path / "g.sqlite3")
    ref = "c_" + "b" * 32
    store.upsert_consents([Consent(ref, True, "x", eid_key=b"k" * 16, eid_k=8)], 1.0)
    store.upsert_consents([Consent(ref, True, "y")], 2.0)  # a segment change only
    assert store.eid_keys() == {ref: (b"k" * 16, 8)}
    assert store.consent(ref) == Consent(ref, True, "y")
    store.upsert_consents([Consent(ref, False, "y")], 3.0)  # consent withdrawn
    assert store.eid_keys() == {}


def test_coupon_redemptions_commit_with_an_fsync_and_the_connection_goes_back_to_normal(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "g.sqlite3")
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    assert redeem(store, "CPN-NONE", "pos-1", 1.0, "e-1")[0] == "unknown"
    store._conn.set_trace_callback(None)
    full = statements.index("PRAGMA synchronous = FULL")
    assert full < statements.index("BEGIN IMMEDIATE") < statements.index("COMMIT")
    assert statements[-1] == "PRAGMA synchronous = NORMAL"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_a_redemption_repeats_only_from_the_same_lane_with_the_same_event(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.sqlite3")
    with store._conn:
        store._conn.execute(
            "INSERT INTO coupons (code, decision_id, offer_id, lane, issued_at)"
            " VALUES ('CPN-AAAA-BBBB-CCCC', 'd-1', 'OFF-1', 'pos-1', 1.0)"
        )
    code = "CPN-AAAA-BBBB-CCCC"
    assert redeem(store, code, "pos-1", 2.0, "e-1") == ("redeemed", "d-1", True)
    assert redeem(store, code, "pos-1", 3.0, "e-1") == ("redeemed", "d-1", False)
    # Another till reusing that event id is not a re-send: the coupon is spent.
    assert redeem(store, code, "pos-2", 3.0, "e-1")[0] == "already_redeemed"
    assert redeem(store, code, "pos-1", 4.0, "e-2")[0] == "already_redeemed"


def _write_blob(store: Store, size: int) -> None:
    store.conn.execute("CREATE TABLE IF NOT EXISTS scratch (b BLOB)")
    store.conn.execute("INSERT INTO scratch VALUES (zeroblob(?))", (size,))


async def test_checkpoints_run_apart_from_the_store_thread_and_keep_the_wal_small(
    tmp_path: Path,
) -> None:
    """A commit never runs a checkpoint (its two fsyncs would hold up every write queued on
    the store thread); the checkpoint thread keeps the WAL from growing with what is written,
    also when steady writes never let a passive checkpoint catch up (past 2 MB it restarts)."""
    path = tmp_path / "g.sqlite3"
    db = AsyncStore(path, checkpoint_every_s=0.05, wal_restart_bytes=2 * 1024 * 1024)
    await db.open()
    try:
        autocheckpoint = await db.call(
            lambda store: store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        written = 0
        for _ in range(60):  # 15 MB over about 1.5 s
            await db.call(_write_blob, 256 * 1024)
            written += 256 * 1024
            await asyncio.sleep(0.025)
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < written / 3, (wal, written)
    finally:
        await db.close()


async def test_a_restarted_wal_is_checkpointed_passively_again(tmp_path: Path) -> None:
    """A restarted WAL keeps the size of its file; what is in it decides the next restart.
    A restart holds every write for its fsyncs: judged by the file's size, every checkpoint
    after the first restart was one."""
    path = tmp_path / "g.sqlite3"
    db = AsyncStore(path, checkpoint_every_s=0.05, wal_restart_bytes=1024 * 1024)
    await db.open()
    wal = path.with_name(path.name + "-wal")
    try:
        await db.call(_write_blob, 1536 * 1024)  # the WAL restarts once checkpointed...
        await asyncio.sleep(0.5)
        await db.call(_write_blob, 1024)
        assert db.wal_restarts >= 1
        assert wal.stat().st_size >= 1024 * 1024  # ...and its file keeps the size of a restart
        restarts = db.wal_restarts
        for _ in range(8):  # small writes over several checkpoint periods
            await db.call(_write_blob, 1024)
            await asyncio.sleep(0.1)
        assert db.wal_restarts == restarts
    finally:
        await db.close()


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence: one more at every restart."""
    with open(wal, "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_a_long_reader_holds_writes_briefly_and_the_wal_restarts_once_it_lets_go(
    tmp_path: Path,
) -> None:
    """A WAL due for a restart while a reader keeps an older snapshot (a long report): the
    restart gives up after a moment and tries again, instead of holding every write for the
    busy timeout; once the reader lets go, the WAL starts over, its file cut back to twice
    the restart's size (not kept at its largest on the card)."""
    path = tmp_path / "g.sqlite3"
    db = AsyncStore(path, checkpoint_every_s=0.05, wal_restart_bytes=1024 * 1024)
    await db.open()
    wal = path.with_name(path.name + "-wal")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await db.call(_write_blob, 1024)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM scratch").fetchone()  # a snapshot held
        await db.call(_write_blob, 3 * 1024 * 1024)  # past the restart's size, and pinned
        assert wal.stat().st_size > 3 * 1024 * 1024
        restarts = _wal_restarts(wal)
        longest = 0.0
        for _ in range(8):
            started = time.monotonic()
            await db.call(_write_blob, 1024)
            longest = max(longest, time.monotonic() - started)
            await asyncio.sleep(0.1)
        assert longest < 2.5, longest  # a restart waiting out the reader: 5 s
        assert _wal_restarts(wal) == restarts
        reader.execute("ROLLBACK")
        for _ in range(50):
            await db.call(_write_blob, 1024)
            if _wal_restarts(wal) > restarts:
                break
            await asyncio.sleep(0.1)
        assert _wal_restarts(wal) > restarts
        assert wal.stat().st_size <= 2 * 1024 * 1024, wal.stat().st_size  # twice the restart's
    finally:
        reader.close()
        await db.close()
