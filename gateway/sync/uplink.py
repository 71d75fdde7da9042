"""The uplink pump: the outbox drains to the cloud, in priority order, a window of batches at a
time, and a row leaves the outbox only once the cloud acknowledged its batch.

Core code: it knows the outbox and the batch format, not MQTT. The cloud driver connects and
hands it a `Transport` for each connection; a lost connection ends `pump` (with the transport's
error) and whatever was unacknowledged goes again on the next one: the cloud de-duplicates by
event id, so the effect is exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from gateway.runtime.config import CloudConfig
from gateway.runtime.metrics import Metrics
from gateway.store import AsyncStore, Store
from gateway.sync.wire import PRIORITY_RANK, encode_batch

__all__ = ["Transport", "Uplink"]

log = structlog.get_logger("gateway.uplink")
_RANKS = sorted(set(PRIORITY_RANK.values()))
_MAX_ROWS = 5000
_IDLE_RECHECK_S = 1.0
# A batch this small means events trickle in: wait this long before the next one, so a busy
# store sends a batch every 50 ms, not one per commit (each batch is three trips to the store
# and encoding threads, each a GIL hand-off that stalls the event loop: issue 14).
_SMALL_BATCH, _LINGER_S = 200, 0.05


class Transport(Protocol):
    async def send(self, payload: bytes) -> None:
        """Deliver one batch; return once the cloud acknowledged it (raise if the connection
        is lost: the pump ends with it)."""
        ...


class Uplink:
    def __init__(
        self,
        config: CloudConfig,
        store_id: str,
        *,
        db: AsyncStore,
        appended: asyncio.Event,
        metrics: Metrics,
    ) -> None:
        """appended: set by the outbox after each commit (the pump waits on it, not a timer)."""
        self._config = config
        self._store_id = store_id
        self._db = db
        self._appended = appended
        self._metrics = metrics
        self._send_at = 0.0  # bandwidth cap: when the next batch may go

    async def pump(self, transport: Transport) -> None:
        """Send batches in priority order, `inflight` at a time, until the transport fails."""
        cfg = self._config
        # Rows above these seqs (per rank) are not yet on their way; reset with each connection,
        # since whatever was unacknowledged on the old one must go again.
        cursors = dict.fromkeys(_RANKS, -1)
        window = asyncio.Semaphore(cfg.inflight)
        raw_cap = cfg.batch_max_bytes * (6 if cfg.compress else 1) - 256
        small = False
        async with asyncio.TaskGroup() as sends:
            while True:
                if small:
                    await asyncio.sleep(_LINGER_S)
                await window.acquire()
                self._appended.clear()
                # What waited past its expiry (an in-app message) is dropped, never sent late.
                for kind, count in (await self._db.call(Store.outbox_expire, time.time())).items():
                    self._metrics.events_expired.labels(kind).inc(count)
                    log.info("events expired before they could leave", type=kind, events=count)
                rows = await self._db.call(Store.outbox_batch, cursors, _MAX_ROWS, raw_cap)
                small = len(rows) < _SMALL_BATCH
                if not rows:
                    window.release()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_IDLE_RECHECK_S):
                            await self._appended.wait()
                    continue
                for seq, rank, _ in rows:
                    cursors[rank] = max(cursors[rank], seq)
                # gzip of up to ~0.8 MB of JSON: tens of ms, off the loop.
                messages = await asyncio.to_thread(self._encode, rows)
                for i, (payload, seqs) in enumerate(messages):
                    if i:  # a batch split in several messages takes a window slot each
                        await window.acquire()
                    sends.create_task(self._send(transport, payload, seqs, window))

    def _encode(self, rows: list[tuple[int, int, bytes]]) -> list[tuple[bytes, list[int]]]:
        """One message, or several if compression did not bring it under the cap."""
        payload = encode_batch(
            self._store_id, [body for _, _, body in rows], compress=self._config.compress
        )
        if len(payload) <= self._config.batch_max_bytes or len(rows) == 1:
            return [(payload, [seq for seq, _, _ in rows])]
        half = len(rows) // 2
        return self._encode(rows[:half]) + self._encode(rows[half:])

    async def _send(
        self, transport: Transport, payload: bytes, seqs: list[int], window: asyncio.Semaphore
    ) -> None:
        try:
            await self._throttle(len(payload))
            await transport.send(payload)
            _, waiting, size = await self._db.call(Store.outbox_ack, seqs)
            self._metrics.outbox_events.set(waiting)
            self._metrics.outbox_bytes.set(size)
            self._metrics.uplink_events.inc(len(seqs))
            self._metrics.uplink_bytes.inc(len(payload))
        finally:
            window.release()

    async def _throttle(self, size: int) -> None:
        rate = self._config.bandwidth_bytes_per_s
        if not rate:
            return
        now = time.monotonic()
        start = max(now, self._send_at)
        self._send_at = start + size / rate
        if start > now:
            await asyncio.sleep(start - now)
