"""The link to the store's MQTT broker (aiomqtt): birth and will, routing, retained state.

- Reconnects forever with jittered exponential backoff; the component reports `degraded` while
  the broker is away, and `ready` again once connected.
- Each connection has a session number from a durable counter; the birth and the will carry it.
  The link subscribes to its own status topic and re-asserts the birth whenever an `offline`
  appears while it is connected, so a stale will never leaves a live gateway marked offline.
- Retained publications are the gateway's desired state: the link remembers the last payload per
  topic and publishes them again after every reconnect (a broker restarted without persistence
  has forgotten them). Other messages wait in a bounded queue while the broker is away.
- Inbound messages are routed by topic filter to synchronous handlers; a handler that raises
  `PayloadError` gets the message answered on the errors topic, and nothing stops the loop.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aiomqtt
import structlog

from gateway import __version__
from gateway.clock import Clock
from gateway.config import CloudConfig, MqttConfig
from gateway.metrics import Metrics
from gateway.payloads import (
    MAX_PAYLOAD_BYTES,
    GatewayStatus,
    PayloadError,
    decode_status,
    encode_error,
    encode_status,
    parse_json,
)
from gateway.supervisor import Backoff, Handle
from gateway.topics import Topics

__all__ = ["NO_DELAY", "MqttLink", "credentials"]

log = structlog.get_logger("drivers.mqtt")
_STOP_PUBLISH_TIMEOUT_S = 2.0
# Nagle's algorithm with delayed ACKs holds small publishes ~40 ms; content must not wait.
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True, slots=True)
class _Route:
    topic_filter: str
    name: str
    handler: Callable[[str, bytes], None]
    private_topics: bool  # topics may carry identifiers (a device's address): never shown


def credentials(
    cfg: MqttConfig | CloudConfig,
) -> tuple[aiomqtt.TLSParameters | None, str | None]:
    """TLS parameters and the password (read now, so a rotated file is picked up on the next
    connection) of a broker section of the configuration."""
    tls = None
    if cfg.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None,
        )
    password = None
    if cfg.password_file is not None:
        password = cfg.password_file.read_text(encoding="utf-8").strip()
    return tls, password


class MqttLink:
    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        *,
        session_source: Callable[[], Awaitable[int]],
        metrics: Metrics,
        clock: Clock,
        rng: random.Random | None = None,
        requires: tuple[str, ...] = (),
    ) -> None:
        self.requires = requires  # components whose readiness `session_source` needs
        self._config = config
        self._topics = topics
        self._session_source = session_source
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._routes: list[_Route] = []
        self._retained: dict[str, bytes] = {}
        self._pending: deque[tuple[str, bytes]] = deque()
        self._client: aiomqtt.Client | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.session = 0

    def route(
        self,
        topic_filter: str,
        name: str,
        handler: Callable[[str, bytes], None],
        *,
        private_topics: bool = False,
    ) -> None:
        """Deliver messages matching `topic_filter` to `handler` (call before `run`).

        private_topics: logs and error replies name the filter, never the topic itself.
        """
        self._routes.append(_Route(topic_filter, name, handler, private_topics))

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1; kept for the next connection if the broker is away."""
        if retain:
            self._retained[topic] = payload
        while (client := self._client) is not None:
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
                return
            except aiomqtt.MqttError as exc:
                log.warning("publish failed, kept for reconnect", topic=topic, error=str(exc))
            if self._client is client:
                break
            # The broker dropped us during the publish and a new connection is up already:
            # send on it (the queue is drained only when a connection starts).
        if not retain:
            self._queue_offline(topic, payload)

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 without waiting for the broker's acknowledgement.

        Messages go on the wire in the order they are posted (aiomqtt hands each to paho before
        its first await), so a device sees the last retained content last. A failed delivery is
        kept for the next connection, exactly as with `publish`.
        """
        task = asyncio.create_task(self.publish(topic, payload, retain=retain))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _queue_offline(self, topic: str, payload: bytes) -> None:
        if self._config.offline_queue == 0:
            self._metrics.mqtt_dropped.inc()
            return
        if len(self._pending) >= self._config.offline_queue:
            self._pending.popleft()
            self._metrics.mqtt_dropped.inc()
        self._pending.append((topic, payload))

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return encode_status(
            GatewayStatus(
                state=state, session=self.session, ts=self._clock.now(), version=__version__
            )
        )

    def _client_for(self, session: int) -> aiomqtt.Client:
        cfg = self._config
        tls, password = credentials(cfg)
        self.session = session
        will = aiomqtt.Will(
            self._topics.gateway_status, self._status("offline"), qos=1, retain=True
        )
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username or None,
            password=password,
            identifier=cfg.effective_client_id(self._topics.store_id),
            will=will,
            keepalive=cfg.keepalive_s,
            tls_params=tls,
            timeout=10,
            max_queued_incoming_messages=10_000,
            socket_options=[NO_DELAY],
        )

    async def run(self, handle: Handle) -> None:
        backoff = Backoff(self._config.reconnect_min_s, self._config.reconnect_max_s, self._rng)
        where = f"{self._config.host}:{self._config.port}"
        while True:
            session = await self._session_source()
            error = "connection closed"
            try:
                async with self._client_for(session) as client:
                    await self._on_connect(client)
                    self._metrics.mqtt_connected.set(1)
                    self._metrics.mqtt_connects.inc()
                    backoff.reset()
                    log.info("connected", broker=where, session=session)
                    handle.ready(f"connected to {where}, session {session}")
                    try:
                        await self._receive(client)
                    except asyncio.CancelledError:
                        await self._say_goodbye(client)
                        raise
            except aiomqtt.MqttError as exc:
                error = str(exc)
            finally:
                self._client = None
                self._metrics.mqtt_connected.set(0)
            delay = backoff.next()
            handle.degraded(f"broker {where} unreachable ({error}); retry in {delay:.1f}s")
            log.warning("broker unreachable", broker=where, error=error, retry_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # Birth last: a device that sees 'online' can count on the state being restored.
        for route in self._routes:
            await client.subscribe(route.topic_filter, qos=1)
        # Posts made while this runs are stored, not sent (no client yet): pass again until a
        # pass finds nothing new, then go live with no await in between.
        sent: dict[str, bytes] = {}
        while True:
            changed = [(t, p) for t, p in self._retained.items() if sent.get(t) is not p]
            if not changed and not self._pending:
                break
            for topic, payload in changed:
                await client.publish(topic, payload, qos=1, retain=True)
                sent[topic] = payload
            while self._pending:
                topic, payload = self._pending[0]
                await client.publish(topic, payload, qos=1)
                self._pending.popleft()
        self._client = client
        await client.publish(
            self._topics.gateway_status, self._status("online"), qos=1, retain=True
        )
        await client.subscribe(self._topics.gateway_status, qos=1)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if topic == self._topics.gateway_status:
                await self._check_status(client, payload)
                continue
            route = next((r for r in self._routes if message.topic.matches(r.topic_filter)), None)
            if route is None:
                continue
            self._metrics.mqtt_received.labels(route.name).inc()
            try:
                route.handler(topic, payload)
            except PayloadError as exc:
                self._reject(route, topic, payload, str(exc))
            except Exception as exc:
                shown = route.topic_filter if route.private_topics else topic
                log.exception("handler failed", route=route.name, topic=shown)
                self._reject(route, topic, payload, f"internal error ({type(exc).__name__})")

    def _reject(self, route: _Route, topic: str, payload: bytes, error: str) -> None:
        self._metrics.mqtt_rejected.labels(route.name).inc()
        private = route.private_topics
        topic = route.topic_filter if private else topic
        log.warning("message rejected", route=route.name, topic=topic, error=error)
        # On private routes the payload's id may itself be a device's address: not echoed.
        request_id = None if private else _peek_request_id(payload)
        body = encode_error(topic, error, self._clock.now(), request_id)
        self.post(self._topics.gateway_errors, body)

    async def _check_status(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            status = decode_status(payload)
        except ValueError:  # PayloadError among them
            status = None  # someone else's garbage on our topic: restore the truth
        if status is None or status.state == "offline":
            stale = status.session if status else None
            log.info("stale offline status seen, re-asserting birth", stale_session=stale)
            await client.publish(
                self._topics.gateway_status, self._status("online"), qos=1, retain=True
            )

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop: deliver what was posted, then mark the gateway offline ourselves (the
        broker sends no will after a clean disconnect)."""
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=_STOP_PUBLISH_TIMEOUT_S)
        self._client = None
        try:
            async with asyncio.timeout(_STOP_PUBLISH_TIMEOUT_S):
                await client.publish(
                    self._topics.gateway_status, self._status("offline"), qos=1, retain=True
                )
        except (TimeoutError, aiomqtt.MqttError) as exc:
            log.warning("could not publish offline status", error=str(exc))


def _peek_request_id(payload: bytes) -> str | None:
    """The `id` of a refused request, when it can be read, so the device can correlate."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None  # refused for its size: parsing megabytes would stall the loop
    try:
        data = parse_json(payload)
    except PayloadError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
