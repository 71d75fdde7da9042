"""The cloud link in process against a real broker: batch caps and the bandwidth cap."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from drivers.cloud import CloudLink
from gateway.clock import SystemClock
from gateway.config import CloudConfig
from gateway.metrics import Metrics
from gateway.store import AsyncStore, Store
from gateway.supervisor import Handle
from gateway.sync.outbox import Outbox
from simulators.cloud import Cloud

STORE = "s1"


async def _drain(tmp_path: Path, config: CloudConfig, events: int, pad: int) -> tuple[float, Cloud]:
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, STORE, SystemClock(), Metrics())
    rows = [outbox.row("t", "telemetry", {"n": i, "pad": "x" * pad}) for i in range(events)]
    await db.call(Store.append_outbox, rows, False)

    async def no_bundles(kind: str, payload: bytes) -> str:
        return "ignored"

    async with Cloud(tmp_path / "cloud") as cloud:
        link = CloudLink(
            dataclasses.replace(config, port=cloud.port),
            STORE,
            db=db,
            appended=outbox.appended,
            on_bundle=no_bundles,
            metrics=Metrics(),
        )
        started = time.monotonic()
        task = asyncio.create_task(link.run(Handle("cloud", lambda *_: None)))
        async with asyncio.timeout(60):
            await cloud.receiver.wait_for_count(events)
            elapsed = time.monotonic() - started
            # Rows leave once their PUBACK is in, a moment after the receiver has them.
            while await db.call(Store.outbox_size) != (0, 0):  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
        task.cancel()
    await db.close()
    return elapsed, cloud


async def test_every_message_respects_the_size_cap(tmp_path: Path) -> None:
    config = CloudConfig(
        enabled=True, host="127.0.0.1", tls=False, batch_max_bytes=4096, compress=False
    )
    _, cloud = await _drain(tmp_path, config, events=300, pad=200)
    assert cloud.receiver.largest_message <= 4096
    assert cloud.receiver.batches >= 300 * 250 // 4096
    assert cloud.receiver.duplicates == 0


async def test_the_bandwidth_cap_paces_the_drain(tmp_path: Path) -> None:
    rate = 40_000
    config = CloudConfig(
        enabled=True,
        host="127.0.0.1",
        tls=False,
        batch_max_bytes=8192,
        compress=False,
        bandwidth_bytes_per_s=rate,
    )
    elapsed, cloud = await _drain(tmp_path, config, events=400, pad=300)
    sent = cloud.receiver.bytes_received
    # The first message goes at once; the rest wait their turn: a lower bound only (a slow
    # machine is slower still, never faster).
    assert elapsed >= (sent - cloud.receiver.largest_message) / rate * 0.95
    assert sent > 100_000
