"""The link to the store's MQTT broker (aiomqtt, MQTT 5): birth and will, intake, retained state.

- Reconnects forever with jittered exponential backoff; the component reports `degraded` while
  the broker is away, or while what it publishes is not acknowledged (a link that says it is
  connected while nothing leaves is broken: it is dropped and made again), and `ready` once
  connected.
- Each connection has a session number from a durable counter; the birth and the will carry it.
  The link subscribes to its own status topic and re-asserts the birth whenever an `offline` or
  garbage appears there while it is connected (at most once a second).
- Retained publications are the gateway's desired state: the link remembers the last payload per
  topic and publishes them again after every reconnect (a broker restarted without persistence
  has forgotten them). Other messages wait in a bounded queue while the broker is away.
- Intake: a message is acknowledged to the broker (PUBACK, manual acknowledgements) only once the
  gateway has taken it: its handler returned (it was queued, or refused with an answer) or the
  future it returned completed (the event was committed). What is not acknowledged yet waits at
  the broker, which sends at most `mqtt.receive_maximum` unacknowledged messages: memory stays
  bounded whatever devices send, and nothing the broker acknowledged to a device is dropped.
  The session outlives the connection (`session_expiry_s`), so a restart loses nothing either.
- Fair share: each device has a message budget (`[budgets]`); a message over it is refused with a
  `busy, retry after` answer before it is parsed. Answers on the shared errors topic are limited
  per device, and repeated trouble is logged as one line per device and reason per interval.
- Requests are for now: a retained message on a request topic is never acted on, and the link
  clears it from the broker (it may hold a customer identifier): the link subscribes with
  retain-as-published, so a request published retained is seen as such as it arrives.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import Counter

from drivers.mqtt._frames import Frames, Publish
from drivers.mqtt._reconnect import reconnecting
from gateway import __version__
from gateway.codecs.payloads import (
    MAX_PAYLOAD_BYTES,
    STORAGE_FULL,
    GatewayStatus,
    PayloadError,
    decode_status,
    encode_error,
    encode_status,
    parse_json,
)
from gateway.codecs.topics import Topics, undeclared
from gateway.runtime.admission import Answers, Budgets, Trouble, TroubleLog, budgets_of
from gateway.runtime.clock import Clock
from gateway.runtime.config import BudgetsConfig, CloudConfig, MqttConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Backoff, Handle
from gateway.store import StorageFull

__all__ = ["NO_DELAY", "Handler", "MqttLink", "credentials"]

log = structlog.get_logger("drivers.mqtt")
_STOP_PUBLISH_TIMEOUT_S = 2.0
# How long one pass over what was read may run before the loop gets a turn: 64 KiB of scanner
# nodes' reports (~300 messages) once held the loop ~90 ms (scripts/bench.py store, issue 14).
# Loop lag p99 there: 27-29 ms with 4 ms passes, 19.4 with 2 ms, 14.7 with 1 ms, at the same
# CPU share (0.70-0.72); a kiosk's p50 fell from 37 to 31 ms.
_PASS_S = 0.001
_ROUTE_CACHE = 4096  # topics -> route, remembered (devices use a few topics each)
_PUBACK = bytes((paho.PUBACK, 2))  # fixed header of a success PUBACK: the packet id follows
# CONNACK refusals for a user the broker does not know or let in (MQTT 5 and 3.1.1 codes).
_NOT_AUTHORIZED = (135, 134, 5, 4)
_BIRTH_INTERVAL_S = 1.0  # garbage on the status topic re-asserts the birth at most this often
# Nagle's algorithm with delayed ACKs holds small publishes ~40 ms; content must not wait.
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

# A route handler gets (topic, payload) and returns None once it has taken the message (queued
# or done), or a future that completes when it has (an event's commit); it raises
# `PayloadError` to refuse the message (answered on the errors topic).
Handler = Callable[[str, bytes], "asyncio.Future[Any] | None"]
Device = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Route:
    topic_filter: str
    name: str
    handler: Handler
    device_of: Callable[[str], Device | None]  # whose budget a message spends
    private_topics: bool  # topics may carry identifiers (a device's address): never shown
    retained: bool  # retained messages are meant for it (a node's status); else cleared
    received: Counter  # gateway_mqtt_received{route}, looked up once
    matches: Callable[[str], object]  # topic -> truthy if the filter matches it


def filter_matcher(topic_filter: str) -> Callable[[str], object]:
    """`topic_filter` compiled once: a topic -> truthy when it matches, as MQTT defines it
    (`+` one level, `#` the rest, no wildcard at the first level takes a `$` topic).

    paho's topic_matches_sub builds a matcher per call (~10 us): scanner nodes' topics name
    each device they hear, too many to remember, so each message paid it once per route."""
    levels = topic_filter.split("/")
    rest = levels[-1] == "#"
    if rest:
        levels = levels[:-1]
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels]
    pattern = "/".join(parts)
    if rest:
        pattern = f"{pattern}(?:/.*)?" if parts else ".*"
    if not levels or levels[0] == "+":
        pattern = rf"(?!\$){pattern}"
    return re.compile(pattern, re.DOTALL).fullmatch


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


class _Acks:
    """PUBACKs gathered over one pass of the loop and written as one packet.

    paho writes each acknowledgement with its own send(): under a burst that was one syscall per
    message. Acknowledgements of the same pass (a read's refusals, a group commit's messages) go
    out together, after what the pass took.
    """

    def __init__(self, inner: paho.Client) -> None:
        self._inner = inner
        self._mids: list[int] = []

    def add(self, mid: int, qos: int) -> None:
        if qos != 1:
            self._inner.ack(mid, qos)  # QoS 0 needs none; QoS 2 has its own handshake
            return
        if not self._mids:
            asyncio.get_running_loop().call_soon(self._flush)
        self._mids.append(mid)

    def _flush(self) -> None:
        mids, self._mids = self._mids, []
        packet = b"".join(_PUBACK + mid.to_bytes(2, "big") for mid in mids)
        # One queued packet: paho writes it like any other (partial writes resumed). A client
        # whose connection is gone discards it; the broker sends those messages again.
        self._inner._packet_queue(paho.PUBACK, packet, 0, 0)


class _Broken(Exception):
    """The link is connected but does not work (publishes are not acknowledged)."""


class MqttLink:
    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        *,
        session_source: Callable[[], Awaitable[int]] | None,
        metrics: Metrics,
        clock: Clock,
        client_secret: bytes = b"",
        budgets: BudgetsConfig | None = None,
        declared: Mapping[str, Collection[str]] | None = None,
        rng: random.Random | None = None,
        requires: tuple[str, ...] = (),
        suffix: str = "",
    ) -> None:
        """client_secret: makes the default client id unguessable (config.effective_client_id).
        declared: kind -> the device ids config.toml declares; others are refused unparsed.

        session_source None and a `suffix` make a second connection for bulk intake (scanner
        nodes): its client id and username end in `-{suffix}`, it is component `mqtt_{suffix}`,
        and it has no session number, birth or will (the gateway's status is the first's)."""
        self.requires = requires  # components whose readiness `session_source` needs
        self._config = config
        self._topics = topics
        self._session_source = session_source
        self._metrics = metrics
        self._clock = clock
        if (session_source is None) != bool(suffix):
            # One without the other would take over the first connection's client id.
            raise ValueError("a second connection has a suffix and no session numbers")
        self._announces = session_source is not None  # birth, will, session: the first's
        self._client_id = config.effective_client_id(topics.store_id, client_secret)
        self._username = config.username
        self._log = log
        if suffix:
            self.name = f"mqtt_{suffix}"
            self._log = log.bind(link=self.name)  # its reconnect lines say which connection
            self._client_id = f"{self._client_id}-{suffix}"
            self._username = f"{config.username}-{suffix}" if config.username else ""
        self._rng = rng or random.Random()
        self._routes: list[_Route] = []
        self._retained: dict[str, bytes] = {}
        self._pending: deque[tuple[str, bytes]] = deque()
        self._client: aiomqtt.Client | None = None  # connected, state restored: publish on it
        self._intake: aiomqtt.Client | None = None  # whose messages are being acknowledged
        self._route_cache: dict[str, tuple[_Route, Device | None] | None] = {}
        self._clearing: set[str] = set()  # topics whose retained request is being cleared
        self._failures: set[tuple[str, str]] = set()  # (route, exception) already logged
        self._declared = declared
        self._inflight: set[asyncio.Task[None]] = set()
        self._budgets = Budgets(budgets_of(budgets or BudgetsConfig()), clock)
        self._answers = Answers(clock)
        self._trouble = TroubleLog(clock, _log_trouble)
        self._broken: asyncio.Future[str] | None = None
        self._last_birth = float("-inf")
        self._birth_due: asyncio.TimerHandle | None = None
        self.session = 0
        # Told of each message from a declared device, and whether it was refused (the console).
        self.on_device: Callable[[Device, bool], None] = lambda _device, _refused: None
        self._session_used = True  # a session number is spent by a connection, not an attempt

    def route(
        self,
        topic_filter: str,
        name: str,
        handler: Handler,
        *,
        device_of: Callable[[str], Device | None] | None = None,
        private_topics: bool = False,
        retained: bool = False,
    ) -> None:
        """Deliver messages matching `topic_filter` to `handler` (call before `run`).

        device_of: the (kind, id) whose budget a message spends; default: the store tree's
        `{kind}/{device}` levels. private_topics: logs and error replies name the filter, never
        the topic itself. retained: retained messages are state for this route (a node's
        status); otherwise they are ignored and cleared.
        """
        self._metrics.mqtt_rejected.labels(name)  # at 0 from the start
        self._routes.append(
            _Route(
                topic_filter,
                name,
                handler,
                device_of or self._topics.device_of,
                private_topics,
                retained,
                self._metrics.mqtt_received.labels(name),
                filter_matcher(topic_filter),
            )
        )

    @property
    def connected(self) -> bool:
        return self._client is not None

    def retained(self, topic: str) -> bytes | None:
        """The retained state the gateway keeps on `topic` (a screen's content), if any."""
        return self._retained.get(topic)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1; kept for the next connection if the broker is away."""
        if retain:
            self._retained[topic] = payload
        while (client := self._client) is not None:
            try:
                await client.publish(
                    topic, payload, qos=1, retain=retain, timeout=self._config.publish_timeout_s
                )
                return
            except aiomqtt.MqttError as exc:
                self._trouble.note(("publish", "broker"), f"publish failed: {exc}")
                if self._client is client and "timed out" in str(exc):
                    limit = self._config.publish_timeout_s
                    self._break(f"a publish was not acknowledged within {limit:g}s")
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
        self._spawn(self.publish(topic, payload, retain=retain))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the loop, kept until done (a clean stop waits for it)."""
        task = asyncio.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _break(self, reason: str) -> None:
        if self._broken is not None and not self._broken.done():
            self._broken.set_result(reason)

    def _queue_offline(self, topic: str, payload: bytes) -> None:
        if self._config.offline_queue == 0:
            self._metrics.mqtt_dropped.inc()
            return
        if len(self._pending) >= self._config.offline_queue:
            self._pending.popleft()
            self._metrics.mqtt_dropped.inc()
        self._pending.append((topic, payload))

    def _status(self, state: Literal["online", "offline"], *, will: bool = False) -> bytes:
        # A will is sent by the broker whenever it notices the loss: no time is known now.
        return encode_status(
            GatewayStatus(
                state=state,
                session=self.session,
                ts=None if will else self._clock.now(),
                version=__version__,
            )
        )

    def _client_for(self, session: int) -> aiomqtt.Client:
        cfg = self._config
        tls, password = credentials(cfg)
        self.session = session
        will = None
        if self._announces:
            will = aiomqtt.Will(
                self._topics.gateway_status, self._status("offline", will=True), qos=1, retain=True
            )
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = cfg.session_expiry_s
        connect.ReceiveMaximum = cfg.receive_maximum
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=self._username or None,
            password=password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # resume the session: what arrived meanwhile is waiting
            properties=connect,
            will=will,
            keepalive=cfg.keepalive_s,
            tls_params=tls,
            timeout=10,
            socket_options=[NO_DELAY],
        )
        # aiomqtt warns once per publish beyond 10 awaiting their PUBACK: under load that is a
        # line per message. Publishes that are not acknowledged are watched here instead.
        client.pending_calls_threshold = 1_000_000
        self._take_intake(client)  # before connecting: a resumed session delivers at once
        return client

    async def run(self, handle: Handle) -> None:
        backoff = Backoff(self._config.reconnect_min_s, self._config.reconnect_max_s, self._rng)
        ticker = asyncio.create_task(self._flush_trouble())
        try:
            await reconnecting(
                handle,
                what="broker",
                endpoints=[(self._config.host, self._config.port)],
                backoff=backoff,
                session=lambda host, port: self._session(handle, backoff, f"{host}:{port}"),
                lost=(aiomqtt.MqttError, _Broken),
                log=self._log,
            )
        finally:
            ticker.cancel()

    async def _session(self, handle: Handle, backoff: Backoff, where: str) -> None:
        """One connection, until it is lost (MqttError) or found broken (_Broken)."""
        if self._session_used and self._session_source is not None:
            # Failed attempts reuse their number: it only counts sessions.
            self.session = await self._session_source()
            self._session_used = False
        try:
            async with self._client_for(self.session) as client:
                self._session_used = True
                self._broken = asyncio.get_running_loop().create_future()
                await self._on_connect(client)
                if self._announces:
                    self._metrics.mqtt_connected.set(1)
                    self._metrics.mqtt_connects.inc()
                    log.info("connected", broker=where, session=self.session)
                    handle.ready(f"connected to {where}, session {self.session}")
                else:
                    self._log.info("connected", broker=where)
                    handle.ready(f"connected to {where}")
                backoff.reset()
                try:
                    await self._until_lost(client, self._broken)
                except asyncio.CancelledError:
                    await self._say_goodbye(client)
                    raise
        except aiomqtt.MqttCodeError as exc:
            if not self._announces and exc.rc in _NOT_AUTHORIZED:
                # A broker set up before this connection existed has no user for it.
                user = self._username or self._client_id
                raise aiomqtt.MqttError(
                    f"{exc}: this connection logs in as {user!r} with the gateway's password;"
                    " add that user to the broker (scripts/setup-host does) or set"
                    " mqtt.nodes_connection = false"
                ) from exc
            raise
        finally:
            self._client = self._intake = None
            self._broken = None
            if self._announces:
                self._metrics.mqtt_connected.set(0)

    async def _until_lost(self, client: aiomqtt.Client, broken: asyncio.Future[str]) -> None:
        """Until the broker goes away (MqttError) or the link is found broken (_Broken)."""

        async def disconnected() -> None:
            async for _ in client.messages:  # never yields: intake is `_on_message`
                pass

        watch = asyncio.create_task(disconnected())
        try:
            await asyncio.wait((watch, broken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if broken.done():
            raise _Broken(broken.result())
        await watch  # raises the MqttError of the lost connection

    def _take_intake(self, client: aiomqtt.Client) -> None:
        """Messages come to `_on_message` straight from the reading, acknowledged by hand.

        aiomqtt has no manual acknowledgements yet (empicano/aiomqtt#345): its paho client is
        configured directly, here only. Its message queue is bypassed too (a task per message).
        """
        inner: paho.Client = client._client
        inner.manual_ack_set(True)
        self._intake = client
        acks = _Acks(inner)

        def lost(exc: Exception) -> None:  # as aiomqtt's read callback
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)

        on_publish = functools.partial(self._on_message, client, acks)
        Frames(inner, on_publish, pass_s=_PASS_S, lost=lost)

        def from_paho(message: paho.MQTTMessage) -> None:
            """What `Frames` leaves to paho and paho delivers (none with QoS 1 subscriptions)."""
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = ""
            payload = bytes(message.payload)
            publish = Publish(topic, payload, message.mid, message.qos, message.retain)
            self._on_message(client, acks, publish)

        # Straight to `_on_message`: paho's own dispatch matches every topic against its (here
        # empty) per-filter callbacks first, a tenth of the loop's time under a burst.
        inner._handle_on_message = from_paho  # type: ignore[method-assign]

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # Birth last: a device that sees 'online' can count on the state being restored.
        for route in self._routes:
            # Retain-as-published: a request published retained is seen as such, and cleared.
            await client.subscribe(
                route.topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=True)
            )
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
        if not self._announces:
            return  # the gateway's status is the first connection's
        await client.publish(
            self._topics.gateway_status, self._status("online"), qos=1, retain=True
        )
        self._last_birth = float("-inf")  # the first re-assertion goes at once
        await client.subscribe(self._topics.gateway_status, qos=1)

    def _on_message(self, client: aiomqtt.Client, acks: _Acks, message: Publish) -> None:
        """One inbound message, on the loop (the read callback): take it, then acknowledge."""
        topic, payload, mid, qos, retained = message
        found = self._route_for(topic)
        if found is None:
            if topic == self._topics.gateway_status:
                self._check_status(client, payload)
            acks.add(mid, qos)
            return
        route, device = found
        route.received.inc()
        if device is not None:
            self.on_device(device, False)
        if not self._admit(client, route, topic, device, payload, retained=retained):
            acks.add(mid, qos)
            return
        try:
            taken = route.handler(topic, payload)
        except PayloadError as exc:
            acks.add(mid, qos)
            self._reject(route, topic, device, payload, str(exc), reason="invalid")
            return
        except Exception as exc:
            acks.add(mid, qos)
            failure = (route.name, type(exc).__name__)
            if failure not in self._failures:  # a traceback once; repeats are counted below
                self._failures.add(failure)
                shown = route.topic_filter if route.private_topics else topic
                log.exception("handler failed", route=route.name, topic=shown)
            error = f"internal error ({type(exc).__name__})"
            self._reject(route, topic, device, payload, error, reason="internal")
            return
        if taken is None:
            acks.add(mid, qos)
            return

        def acknowledge(future: asyncio.Future[Any]) -> None:
            if self._intake is not client:
                return  # that connection is gone: the broker sends the message again
            acks.add(mid, qos)
            failure = None if future.cancelled() else future.exception()
            if future.cancelled() or failure is not None:
                # Not committed: refused with an answer, and the device sends it again.
                full = isinstance(failure, StorageFull)
                error = STORAGE_FULL if full else "not accepted now (store error)"
                reason = "storage_full" if full else "not_accepted"
                self._reject(route, topic, device, payload, error, reason=reason)

        taken.add_done_callback(acknowledge)

    def _admit(
        self,
        client: aiomqtt.Client,
        route: _Route,
        topic: str,
        device: Device | None,
        payload: bytes,
        *,
        retained: bool,
    ) -> bool:
        """Whether the handler gets the message; if not, it was dealt with (cleared, refused).

        In this order, cheapest first: a device config.toml does not declare under this kind
        (the broker's ACL lets a user write under its own id in every kind's tree), its budget
        (retained messages spend it too), a retained request.
        """
        if device is not None and self._declared is not None:
            known = self._declared.get(device[0])
            if known is not None and device[1] not in known:
                if device[0] != "node":  # scanner nodes read no answers: ignored, as always
                    error = undeclared(*device)
                    self._reject(route, topic, device, payload, error, reason="undeclared")
                return False
        if device is not None and (wait := self._budgets.retry_after(device)):
            self._metrics.mqtt_busy.labels(*device).inc()
            self._reject(
                route, topic, device, payload, f"busy: retry after {wait:.1f}s", reason="busy"
            )
            return False
        if retained and not route.retained:
            if payload:  # an empty one is the clearing itself, coming back
                self._clear_retained(client, route, topic)
            return False
        return True

    def _route_for(self, topic: str) -> tuple[_Route, Device | None] | None:
        """The route of a topic and the device whose budget it spends (remembered, but for
        topics that name what a device heard: a scanner node's topic names each device, tens of
        thousands in a hypermarket, which only churned the memo and the collector)."""
        try:
            return self._route_cache[topic]
        except KeyError:
            pass
        route = next((r for r in self._routes if r.matches(topic)), None)
        found = None if route is None else (route, route.device_of(topic))
        if route is not None and route.private_topics:
            return found
        if len(self._route_cache) >= _ROUTE_CACHE:
            self._route_cache.clear()
        self._route_cache[topic] = found
        return found

    def _clear_retained(self, client: aiomqtt.Client, route: _Route, topic: str) -> None:
        """Requests are for now: a retained one is never acted on, and not left on the broker.

        Sent on the connection it came from, also while that one is still restoring the state
        (retained messages arrive right after each subscription); one clearing per topic at a
        time, however many copies arrive.
        """
        shown = route.topic_filter if route.private_topics else topic
        self._trouble.note(
            (route.name, "retained"), f"retained message ignored and cleared: {shown}"
        )
        if topic in self._clearing:
            return
        self._clearing.add(topic)

        async def clear() -> None:
            try:
                await client.publish(
                    topic, b"", qos=1, retain=True, timeout=self._config.publish_timeout_s
                )
            except aiomqtt.MqttError as exc:  # cleared when it comes back on a new connection
                self._trouble.note(("publish", "broker"), f"clearing failed: {exc}")
            finally:
                self._clearing.discard(topic)

        self._spawn(clear())

    def _reject(
        self,
        route: _Route,
        topic: str,
        device: Device | None,
        payload: bytes,
        error: str,
        *,
        reason: str,
    ) -> None:
        """Refuse a message: counted by route and by (device kind, reason), answered."""
        self._metrics.mqtt_rejected.labels(route.name).inc()
        self._metrics.refusals.labels(device[0] if device is not None else "other", reason).inc()
        if device is not None:
            self.on_device(device, True)
        private = route.private_topics
        topic = route.topic_filter if private else topic
        who = "/".join(device) if device is not None else topic
        self._trouble.note((route.name, who), error)
        if device is not None and not self._answers.allow(device, reason):
            self._metrics.mqtt_answers_suppressed.inc()
            return
        # On private routes the payload's id may itself be a device's address: not echoed.
        request_id = None if private else _peek_request_id(payload)
        body = encode_error(topic, error, self._clock.now(), request_id)
        self.post(self._topics.gateway_errors, body)

    def _check_status(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            status = decode_status(payload)
        except ValueError:  # PayloadError among them
            status = None  # someone else's garbage on our topic: restore the truth
        if status is not None and status.state == "online":
            return
        if self._birth_due is not None:
            return  # one re-assertion is already due
        wait = max(0.0, self._last_birth + _BIRTH_INTERVAL_S - self._clock.monotonic())
        stale = status.session if status else None
        self._birth_due = asyncio.get_running_loop().call_later(
            wait, self._reassert_birth, client, stale
        )

    def _reassert_birth(self, client: aiomqtt.Client, stale: int | None) -> None:
        self._birth_due = None
        if self._client is not client:
            return
        log.info("stale offline status seen, re-asserting birth", stale_session=stale)
        self._last_birth = self._clock.monotonic()
        self.post(self._topics.gateway_status, self._status("online"), retain=True)

    async def _flush_trouble(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._trouble.flush()

    async def _say_goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop: deliver what was posted, then mark the gateway offline ourselves (the
        broker sends no will after a clean disconnect)."""
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=_STOP_PUBLISH_TIMEOUT_S)
        self._client = None
        if not self._announces:
            self._trouble.flush(float("inf"))
            return
        try:
            async with asyncio.timeout(_STOP_PUBLISH_TIMEOUT_S):
                await client.publish(
                    self._topics.gateway_status, self._status("offline"), qos=1, retain=True
                )
        except (TimeoutError, aiomqtt.MqttError) as exc:
            log.warning("could not publish offline status", error=str(exc))
        self._trouble.flush(float("inf"))


def _log_trouble(trouble: Trouble) -> None:
    """One line for the first refusal of a kind, then one per interval with the count."""
    what, who = trouble.key
    if trouble.first:
        log.warning("message refused", route=what, source=who, error=trouble.last_error)
    else:
        log.warning(
            "messages refused",
            route=what,
            source=who,
            count=trouble.count,
            last_error=trouble.last_error,
        )


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
