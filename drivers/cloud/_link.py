"""The link to the chain's cloud broker: the outbox drains up, signed bundles come down.

- A persistent session (clean_session false, a stable client id), QoS 1 both ways; reconnects
  with jittered exponential backoff so a chain's stores never come back in lockstep.
- A clustered broker (`cloud.brokers`): the first node is picked at random (a chain's stores
  spread over the nodes), and every failure, to connect or of a live connection, moves to the
  next node, so a dead node costs one short backoff, not the whole outage. The session lives in
  the cluster and resumes on whichever node takes it.
- Uplink: batches in (priority, arrival) order, each one MQTT message under
  `cloud.batch_max_bytes` (gzip), up to `cloud.inflight` awaiting their PUBACK at once; rows leave
  the outbox only after the PUBACK. A crash between the two re-sends a batch: the cloud
  de-duplicates by event id, so the effect is exactly once.
- Downlink: every message on the bundles topics goes to the bundle applier, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

import aiomqtt
import structlog

from drivers.mqtt import NO_DELAY, credentials, reconnecting
from gateway.config import CloudConfig
from gateway.metrics import Metrics
from gateway.store import AsyncStore, Store
from gateway.supervisor import Backoff, Handle
from gateway.sync.wire import (
    BUNDLE_KINDS,
    PRIORITY_RANK,
    bundle_topic,
    encode_batch,
    events_topic,
)

__all__ = ["CloudLink"]

log = structlog.get_logger("drivers.cloud")
# aiomqtt and paho log under "mqtt" unless given a logger: the cloud's socket errors then read as
# the store broker's (gateway/logs.py names the component after the logger).
_MQTT_LOG = logging.getLogger("drivers.cloud")
_RANKS = sorted(set(PRIORITY_RANK.values()))
_MAX_ROWS = 5000
_IDLE_RECHECK_S = 1.0
# CONNECT and SUBSCRIBE answered within this, or the next node is tried. A nats-server node
# taking over a session whose JetStream leader just died left a CONNECT unanswered (2.9.10,
# tests/test_cloud_cluster.py); 30 s held the failover that long.
_ANSWER_TIMEOUT_S = 10


class CloudLink:
    name = "cloud"
    requires = ("store", "outbox")

    def __init__(
        self,
        config: CloudConfig,
        store_id: str,
        *,
        db: AsyncStore,
        appended: asyncio.Event,
        on_bundle: Callable[[str, bytes], Awaitable[str]],
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._store_id = store_id
        self._db = db
        self._appended = appended
        self._on_bundle = on_bundle
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._topic = events_topic(store_id)
        self._send_at = 0.0  # bandwidth cap: when the next batch may go

    def _client(self, host: str, port: int) -> aiomqtt.Client:
        cfg = self._config
        tls, password = credentials(cfg)
        return aiomqtt.Client(
            host,
            port,
            logger=_MQTT_LOG,
            identifier=cfg.effective_client_id(self._store_id),
            clean_session=False,
            username=cfg.username or None,
            password=password,
            tls_params=tls,
            keepalive=cfg.keepalive_s,
            timeout=_ANSWER_TIMEOUT_S,
            max_inflight_messages=cfg.inflight + 4,
            socket_options=[NO_DELAY],
        )

    async def run(self, handle: Handle) -> None:
        cfg = self._config
        backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
        endpoints = cfg.endpoints()
        await reconnecting(
            handle,
            what="cloud",
            endpoints=endpoints,
            backoff=backoff,
            session=lambda host, port: self._session(handle, backoff, host, port),
            lost=(aiomqtt.MqttError,),
            log=log,
            start=self._rng.randrange(len(endpoints)),  # a chain's stores spread over the nodes
        )

    async def _session(self, handle: Handle, backoff: Backoff, host: str, port: int) -> None:
        """One connection: the uplink pump and the bundles, until it is lost."""
        where = f"{host}:{port}"
        try:
            async with self._client(host, port) as client:
                # One exact topic per kind, not a wildcard: RabbitMQ's MQTT plugin does not
                # deliver retained messages to wildcard subscriptions.
                for kind in BUNDLE_KINDS:
                    await client.subscribe(bundle_topic(self._store_id, kind), qos=1)
                self._metrics.cloud_connected.set(1)
                backoff.reset()
                log.info("cloud connected", broker=where)
                handle.ready(f"connected to {where}")
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._pump(client))
                    group.create_task(self._receive(client))
        finally:
            self._metrics.cloud_connected.set(0)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            kind = message.topic.value.rsplit("/", 1)[-1]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            outcome = await self._on_bundle(kind, payload)
            log.debug("bundle handled", kind=kind, outcome=outcome)

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Send batches in priority order, `inflight` at a time, until the connection drops."""
        cfg = self._config
        # Rows above these seqs (per rank) are not yet on their way; reset with each connection,
        # since whatever was unacknowledged on the old one must go again.
        cursors = dict.fromkeys(_RANKS, -1)
        window = asyncio.Semaphore(cfg.inflight)
        raw_cap = cfg.batch_max_bytes * (6 if cfg.compress else 1) - 256
        async with asyncio.TaskGroup() as sends:
            while True:
                await window.acquire()
                self._appended.clear()
                # What waited past its expiry (an in-app message) is dropped, never sent late.
                for kind, count in (await self._db.call(Store.outbox_expire, time.time())).items():
                    self._metrics.events_expired.labels(kind).inc(count)
                    log.info("events expired before they could leave", type=kind, events=count)
                rows = await self._db.call(Store.outbox_batch, cursors, _MAX_ROWS, raw_cap)
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
                    sends.create_task(self._send(client, payload, seqs, window))

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
        self, client: aiomqtt.Client, payload: bytes, seqs: list[int], window: asyncio.Semaphore
    ) -> None:
        try:
            await self._throttle(len(payload))
            # No publish timeout: on a slow uplink a full window takes longer than any fixed
            # bound to acknowledge; a dead link is found by the keepalive, which ends the
            # connection's task group and with it this wait.
            await client.publish(self._topic, payload, qos=1, timeout=math.inf)
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
