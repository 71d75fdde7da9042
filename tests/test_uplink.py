"""The cloud link in process against a real broker: batch caps and the bandwidth cap."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from drivers.cloud import CloudLink
from gateway.runtime.clock import SystemClock
from gateway.runtime.config import CloudConfig
from gateway.runtime.logs import configure_logging
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Store
from gateway.sync.outbox import Outbox
from simulators.cloud import Cloud

STORE = "s1"


async def _no_bundles(kind: str, payload: bytes) -> str:
    return "ignored"


async def _drain(tmp_path: Path, config: CloudConfig, events: int, pad: int) -> tuple[float, Cloud]:
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    outbox = Outbox(db, STORE, SystemClock(), Metrics())
    rows = [outbox.row("t", "telemetry", {"n": i, "pad": "x" * pad}) for i in range(events)]
    await db.call(Store.append_outbox, rows, False)

    async with Cloud(tmp_path / "cloud") as cloud:
        link = CloudLink(
            dataclasses.replace(config, port=cloud.port),
            STORE,
            db=db,
            appended=outbox.appended,
            on_bundle=_no_bundles,
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


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.mark.usefixtures("_restore_logging")
async def test_a_cloud_socket_error_is_logged_under_the_cloud_component(tmp_path: Path) -> None:
    """A cloud broker that resets the connection after its CONNACK: paho's socket error is the
    cloud's (it was logged as the store broker's "mqtt", paho's default logger)."""

    async def accept_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        await reader.read(1024)  # a SUBSCRIBE: the client is reading now
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closed with linger 0: a TCP reset

    out = io.StringIO()
    configure_logging("json", "info", out)
    server = await asyncio.start_server(accept_then_reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    link = CloudLink(
        CloudConfig(enabled=True, host="127.0.0.1", port=port, tls=False),
        STORE,
        db=db,
        appended=asyncio.Event(),
        on_bundle=_no_bundles,
        metrics=Metrics(),
    )
    task = asyncio.create_task(link.run(Handle("cloud", lambda *_: None)))
    try:
        async with asyncio.timeout(10):
            while "failed to receive on socket" not in out.getvalue():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
        await db.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    socket_error = next(e for e in lines if "failed to receive on socket" in e["event"])
    assert socket_error["component"] == "cloud", socket_error
    assert {e["component"] for e in lines} == {"cloud"}, lines
