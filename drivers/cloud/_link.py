"""The link to the chain's cloud broker: the outbox drains up, signed bundles come down.

- A persistent session (clean_session false, a stable client id), QoS 1 both ways; reconnects
  with jittered exponential backoff so a chain's stores never come back in lockstep.
- A clustered broker (`cloud.brokers`): the first node is picked at random (a chain's stores
  spread over the nodes), and every failure, to connect or of a live connection, moves to the
  next node, so a dead node costs one short backoff, not the whole outage. The session lives in
  the cluster and resumes on whichever node takes it.
- Uplink: the core's pump (gateway/sync/uplink.py) over this connection; a batch is one QoS 1
  message under `cloud.batch_max_bytes` (gzip), and its PUBACK is the cloud's acknowledgement.
- Downlink: every message on the bundles topics goes to the bundle applier, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable

import aiomqtt
import structlog

from drivers.mqtt import NO_DELAY, credentials, reconnecting
from gateway.runtime.config import CloudConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Backoff, Handle
from gateway.store import AsyncStore
from gateway.sync.uplink import Uplink
from gateway.sync.wire import (
    BUNDLE_KINDS,
    bundle_topic,
    events_topic,
)

__all__ = ["CloudLink"]

log = structlog.get_logger("drivers.cloud")
# aiomqtt and paho log under "mqtt" unless given a logger: the cloud's socket errors then read as
# the store broker's (gateway/runtime/logs.py names the component after the logger).
_MQTT_LOG = logging.getLogger("drivers.cloud")
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
        self._uplink = Uplink(config, store_id, db=db, appended=appended, metrics=metrics)

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
                    group.create_task(self._uplink.pump(_Batches(client, self._topic)))
                    group.create_task(self._receive(client))
        finally:
            self._metrics.cloud_connected.set(0)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            kind = message.topic.value.rsplit("/", 1)[-1]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            outcome = await self._on_bundle(kind, payload)
            log.debug("bundle handled", kind=kind, outcome=outcome)


class _Batches:
    """The uplink's transport over one MQTT connection: a batch is a QoS 1 publish."""

    def __init__(self, client: aiomqtt.Client, topic: str) -> None:
        self._client = client
        self._topic = topic

    async def send(self, payload: bytes) -> None:
        # No publish timeout: on a slow uplink a full window takes longer than any fixed bound
        # to acknowledge; a dead link is found by the keepalive, which ends the connection's
        # task group and with it this wait.
        await self._client.publish(self._topic, payload, qos=1, timeout=math.inf)
