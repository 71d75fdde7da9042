"""Storage faults a store box lives through, with the daemon as a subprocess and real files.

A damaged or truncated database at start is moved aside, named in the log, its outbox salvaged
into a new one and uplinked; a deleted one is a logged "new empty database" and the MQTT session
number still grows; a read-only state directory or database file is exit 78 with one line; a
full file system (a real tmpfs) gets devices a "storage full, retry later" answer, and every
event acknowledged before, during and after is in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import STORAGE_FULL, encode_kiosk_identify
from gateway.codecs.topics import Topics
from gateway.runtime.app import DATABASE_NAME
from gateway.runtime.cli import EX_CONFIG
from gateway.store import OutboxRow, Store
from simulators.broker import Mosquitto
from simulators.cloud import CloudReceiver
from simulators.daemon import GatewayProcess, settings
from simulators.events import EventSource
from tests.conftest import DEMO_CONFIG, GatewayFactory

pytestmark = pytest.mark.e2e
STORE = "demo-store"
PAGE = 4096


def _seed(database: Path, n: int) -> list[str]:
    """A real gateway database whose outbox holds n events the cloud has not received."""
    database.parent.mkdir(parents=True, exist_ok=True)
    store = Store(database)
    ids = [uuid7() for _ in range(n)]
    rows = []
    for i, eid in enumerate(ids):
        rank = 0 if i % 2 else 2
        body = {"id": eid, "store": STORE, "ts": 1.8e9 + i, "type": "pos.transaction"}
        body |= {"schema": 1, "priority": "transaction" if rank == 0 else "telemetry"}
        body["data"] = {"n": i, "basket": "sku-123 " * 20}
        rows.append(OutboxRow(eid, rank, "pos.transaction", 1.8e9 + i, json.dumps(body).encode()))
    store.append_outbox(rows, durable=True)
    store.close()  # the last connection checkpoints: everything is in the main file
    return ids


def _outbox_ids(database: Path) -> list[str]:
    conn = sqlite3.connect(database)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM outbox ORDER BY seq")]
    finally:
        conn.close()


def _log_events(process: GatewayProcess) -> list[dict[str, object]]:
    events = []
    for line in process.log(tail=None).splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def _start(tmp_path: Path, broker: Mosquitto, cloud: Mosquitto, name: str) -> GatewayProcess:
    overrides = settings(
        store_port=broker.port,
        state_dir=tmp_path / "state",
        cloud_port=cloud.port,
        decision__model_file="",
    )
    process = GatewayProcess(
        DEMO_CONFIG, tmp_path, overrides=overrides, output=tmp_path / f"{name}.log"
    )
    process.start()
    return process


async def _damaged_start(
    tmp_path: Path, broker: Mosquitto, ids: list[str], name: str
) -> tuple[list[str], dict[str, object]]:
    """Start on the damaged file with a cloud: moved aside, salvaged, serving, uplinked."""
    database = tmp_path / "state" / DATABASE_NAME
    with Mosquitto(tmp_path / "cloud-broker") as cloud:
        async with CloudReceiver("127.0.0.1", cloud.port) as receiver:
            process = _start(tmp_path, broker, cloud, name)
            try:
                await asyncio.to_thread(process.wait_ready)
                (damaged,) = [e for e in _log_events(process) if "damaged" in str(e["event"])]
                # The salvage asked systemd for more time to start (TimeoutStartSec=).
                told = [line for m in process.messages() for line in m.split("\n")]
                assert "EXTEND_TIMEOUT_USEC=60000000" in told
                count = damaged["salvaged_events"]
                assert isinstance(count, int), damaged
                assert count > 0, damaged

                def uplinked() -> list[str]:
                    return [i for i in ids if i in receiver.first_seen]

                async with asyncio.timeout(30):  # the salvaged events reach the cloud
                    await receiver.wait_until(lambda: len(uplinked()) >= count)
                await asyncio.sleep(0.5)  # and nothing more than them
                salvaged = uplinked()
            finally:
                assert process.stop() == 0
    moved = sorted(database.parent.glob(f"{DATABASE_NAME}.corrupt-*"))
    assert [m.name for m in moved if not m.name.endswith(("-wal", "-shm"))] == [
        Path(str(damaged["moved_to"])).name
    ]
    assert damaged["path"] == str(database)
    assert damaged["salvaged_events"] == len(salvaged)
    assert "remedy" in damaged
    return salvaged, damaged


async def test_damaged_database_is_moved_aside_and_its_outbox_uplinked(
    tmp_path: Path, broker: Mosquitto
) -> None:
    database = tmp_path / "state" / DATABASE_NAME
    ids = _seed(database, 3000)
    pages = database.stat().st_size // PAGE
    rng = random.Random(13)
    with database.open("r+b") as f:  # 8 pages in the middle of the table overwritten
        f.seek(pages // 2 * PAGE)
        f.write(rng.randbytes(8 * PAGE))
    salvaged, damaged = await _damaged_start(tmp_path, broker, ids, "damaged")
    # ~12 events a page: what the 8 garbage pages held is lost, the rest comes back.
    assert len(ids) - 8 * 13 <= len(salvaged) < len(ids), damaged
    assert "malformed" in str(damaged["problem"])


async def test_truncated_database_keeps_what_its_first_pages_held(
    tmp_path: Path, broker: Mosquitto
) -> None:
    database = tmp_path / "state" / DATABASE_NAME
    ids = _seed(database, 3000)
    os.truncate(database, database.stat().st_size * 6 // 10)
    salvaged, damaged = await _damaged_start(tmp_path, broker, ids, "truncated")
    # The table's interior pages were written last and are gone: SQLite itself reads nothing,
    # the page scan finds the leaves that were kept (about 60 % of the rows).
    assert len(ids) * 0.5 <= len(salvaged) <= len(ids) * 0.65, damaged


def _session(database: Path) -> int:
    conn = sqlite3.connect(database)
    try:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'mqtt_session'").fetchone()
        return int(value)
    finally:
        conn.close()


async def test_deleted_database_is_logged_and_the_session_still_grows(
    tmp_path: Path, gateway: GatewayFactory
) -> None:
    database = tmp_path / "state" / DATABASE_NAME
    first = gateway()
    await asyncio.to_thread(first.wait_ready)
    assert first.stop() == 0
    before = _session(database)
    await asyncio.to_thread(_delete, database)  # the card was wiped, or the file deleted
    await asyncio.sleep(1.1)  # a restart takes longer than this on any box
    second = gateway()
    await asyncio.to_thread(second.wait_ready)
    assert second.stop() == 0
    warnings = [e for e in _log_events(second) if e["event"] == "new empty database"]
    assert [(w["level"], w["path"]) for w in warnings] == [("warning", str(database))]
    assert _session(database) > before  # devices ignoring lower-numbered wills still hear ours


def _delete(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    (database.parent.parent / "gateway.log").write_bytes(b"")  # the second run's log only


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to undo after the test (a real tmpfs or bind mount needs root)."""
    mounted: list[Path] = []
    yield mounted
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _mount(mounted: list[Path], *args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not allowed here: {result.stderr.strip()}")
    mounted.append(Path(args[-1]))


def _exit_78(process: GatewayProcess, path: Path) -> str:
    assert process.wait(timeout=30) == EX_CONFIG, process.log()
    lines = process.log(tail=None).strip().splitlines()
    assert "Traceback" not in process.log(tail=None)
    (line,) = [line for line in lines if str(path) in line]
    assert line == lines[-1]
    return line


@pytest.mark.parametrize("where", ["state_dir", "missing_state_dir"])
def test_read_only_state_directory_is_a_configuration_error(
    tmp_path: Path, gateway: GatewayFactory, mounts: list[Path], where: str
) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    _mount(mounts, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only))
    state_dir = read_only if where == "state_dir" else read_only / "state"
    process = gateway(overrides={"store.state_dir": str(state_dir)})
    line = _exit_78(process, state_dir)
    assert "Read-only file system" in line
    assert "store.state_dir" in line


def test_unwritable_database_file_is_a_configuration_error(
    tmp_path: Path, gateway: GatewayFactory, mounts: list[Path]
) -> None:
    database = tmp_path / "state" / DATABASE_NAME
    _seed(database, 10)
    _mount(mounts, "--bind", str(database), str(database))
    _mount(mounts, "-o", "remount,ro,bind", str(database))
    process = gateway()
    line = _exit_78(process, database)
    assert "not writable" in line
    assert "chown" in line


def _fill(filler: Path) -> None:
    """Write until the file system has no block left (ENOSPC)."""
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@pytest.mark.timeout(120)
async def test_full_disk_refuses_with_an_answer_and_loses_nothing_accepted(
    tmp_path: Path, broker: Mosquitto, gateway: GatewayFactory, mounts: list[Path]
) -> None:
    state_dir = tmp_path / "small"
    state_dir.mkdir()
    _mount(mounts, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state_dir))
    process = gateway(overrides={"store.state_dir": str(state_dir), "outbox.min_free_mb": "0"})
    await asyncio.to_thread(process.wait_ready)
    topics = Topics(STORE)
    refusals: list[dict[str, object]] = []
    refused_for_space = asyncio.Event()
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, identifier="errors-reader") as reader,
        EventSource("127.0.0.1", broker.port, STORE, resend_after_s=0.5) as lane,
    ):
        await reader.subscribe(topics.gateway_errors, qos=1)

        async def read_errors() -> None:
            async for message in reader.messages:
                refusals.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
                if refusals[-1].get("error") == STORAGE_FULL:
                    refused_for_space.set()

        errors = asyncio.create_task(read_errors())
        note = "sku-123 " * 100  # ~800 bytes an event
        for n in range(20):  # accepted while there is room
            await lane.send("pos.transaction", "transaction", {"n": n, "note": note})
        async with asyncio.timeout(20):
            await lane.settled()
        filler = state_dir / "filler"
        await asyncio.to_thread(_fill, filler)
        for n in range(20, 320):
            await lane.send("pos.transaction", "transaction", {"n": n, "note": note})
        async with asyncio.timeout(20):
            await refused_for_space.wait()
        # A customer at a kiosk: the decision cannot be recorded, the kiosk is told why.
        request = encode_kiosk_identify("loyalty", "4000000000001", "req-full", time.time())
        await reader.publish(topics.kiosk_identify("kiosk-1"), request, qos=1)
        async with asyncio.timeout(20):
            while not any(r.get("request_id") == "req-full" for r in refusals):
                refused_for_space.clear()
                await refused_for_space.wait()
        assert process.alive
        await asyncio.to_thread(filler.unlink)  # room again: the lane's re-sends are accepted
        async with asyncio.timeout(30):
            await lane.settled()
        errors.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await errors
    assert process.stop() == 0
    assert lane.acked <= set(_outbox_ids(state_dir / DATABASE_NAME))  # nothing accepted lost
    assert len(lane.acked) == 320
    full = [r for r in refusals if r.get("error") == STORAGE_FULL]
    kiosk = topics.kiosk_identify("kiosk-1")
    assert {r["topic"] for r in full} == {topics.device_events("pos", "pos-1"), kiosk}
    assert [r["request_id"] for r in full if r["topic"] == kiosk] == ["req-full"]
    events = _log_events(process)
    assert any(e["event"] == "storage full: events refused until there is room" for e in events)
