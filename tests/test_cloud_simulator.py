"""The cloud simulator against real brokers: Mosquitto by default, nats-server (MQTT + JetStream)
in the integration tier (`-m integration`)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.mqtt import NO_DELAY
from gateway.codecs.identity import parse_public_key
from gateway.sync.wire import (
    BundleError,
    bundle_topic,
    bundles_filter,
    encode_batch,
    events_topic,
    open_bundle,
)
from simulators.broker import find_mosquitto
from simulators.cloud import (
    ArtifactServer,
    BundleSigner,
    CertificateAuthority,
    Cloud,
    CloudReceiver,
    Engine,
)
from simulators.nats import NatsMqtt, find_nats_server

ENGINES = [
    pytest.param("mosquitto", id="mosquitto"),
    pytest.param("nats", id="nats", marks=pytest.mark.integration),
]


def _require(engine: str) -> None:
    if engine == "nats" and find_nats_server() is None:
        pytest.fail("nats-server is not installed; install it with: apt-get install -y nats-server")
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; scripts/test installs it (apt-get install mosquitto)"
        )


@pytest.fixture(params=ENGINES)
async def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cloud]:
    _require(request.param)
    async with Cloud(tmp_path / "cloud", engine=request.param) as running:
        yield running


def _event(n: int, priority: str = "telemetry", event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"0190a000-0000-7000-8000-{n:012d}",
            "store": "s1",
            "ts": 1795430000.0 + n,
            "type": "pos.transaction" if priority == "transaction" else "sensor.telemetry",
            "schema": 1,
            "priority": priority,
            "data": {"n": n},
        },
        separators=(",", ":"),
    ).encode()


def _client(port: int, identifier: str, **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, socket_options=[NO_DELAY], **kwargs
    )


async def _first(client: aiomqtt.Client) -> aiomqtt.Message:
    async for message in client.messages:
        return message
    raise AssertionError("no message")


@pytest.mark.timeout(60)
async def test_receiver_counts_events_duplicates_batches_and_rejects_garbage(cloud: Cloud) -> None:
    receiver = cloud.receiver
    first = encode_batch(
        "s1", [_event(1, "telemetry"), _event(2, "transaction"), _event(3, "decision")]
    )
    second = encode_batch("s1", [_event(3, "decision"), _event(4, "reward")], compress=False)
    other_store = encode_batch("s2", [_event(5)])
    messages = [
        (events_topic("s1"), first),
        (events_topic("s1"), b"not a batch"),
        (events_topic("s1"), gzip.compress(b"{}")),
        (events_topic("s1"), b"\x1f\x8b truncated gzip"),
        (events_topic("s1"), other_store),  # s2's batch on s1's topic
        (events_topic("s1"), encode_batch("s1", [b'{"no":"id"}'])),
        (events_topic("s1"), second),
        (events_topic("s2"), other_store),
    ]
    async with cloud.client("test-store") as store:
        for topic, payload in messages:
            await store.publish(topic, payload, qos=1)
    async with asyncio.timeout(10):
        await receiver.wait_for_count(5)
        await receiver.wait_until(lambda: receiver.batches == 4)

    assert list(receiver.events) == [f"0190a000-0000-7000-8000-{n:012d}" for n in (1, 2, 3, 4, 5)]
    assert receiver.count == 5
    assert receiver.duplicates == 1
    assert receiver.duplicate_ids == {"0190a000-0000-7000-8000-000000000003": 1}
    assert receiver.received == 7  # 3 + 1 (no id) + 2 + 1
    assert receiver.batches_by_store == {"s1": 3, "s2": 1}
    assert receiver.bytes_received == sum(len(p) for _, p in messages)
    assert receiver.largest_message == max(len(p) for _, p in messages)
    assert receiver.priorities == [
        "telemetry",
        "transaction",
        "decision",
        "reward",
        "telemetry",
    ]
    assert receiver.by_priority()["telemetry"] == 2
    assert receiver.priority_inversions() == 2  # transaction after telemetry, reward after decision
    assert receiver.priority_inversions(start=1, stop=3) == 0
    assert receiver.events["0190a000-0000-7000-8000-000000000002"]["data"] == {"n": 2}
    assert set(receiver.first_seen) == set(receiver.events)
    assert len(receiver.rejected) == 5, receiver.rejected
    assert any("another store's topic" in r for r in receiver.rejected)
    assert any("without a string id" in r for r in receiver.rejected)

    receiver.clear()
    assert receiver.count == receiver.duplicates == receiver.batches == 0


@pytest.mark.timeout(60)
async def test_receiver_throughput_is_far_above_50k_events_per_second() -> None:
    """Decoding is the cost: recorded straight through `handle()`, no broker in the way."""
    receiver = CloudReceiver("127.0.0.1", 1)
    batches = [
        encode_batch("s1", [_event(b * 1000 + i, "decision") for i in range(1000)])
        for b in range(20)
    ]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for batch in batches:
        receiver.handle(events_topic("s1"), batch)
    elapsed = loop.time() - start
    assert receiver.count == 20_000
    assert receiver.rejected == []
    # A generous floor (measured ~250-550k/s); only catches an accidental O(n^2).
    assert 20_000 / elapsed > 50_000


@pytest.mark.timeout(60)
async def test_retained_bundles_open_with_the_signers_key_only(cloud: Cloud) -> None:
    signer = cloud.signer
    body = {"offers": [{"id": "OFF-1", "title": "Double points"}]}
    artifact = cloud.add_artifact("nba-v3.onnx", b"model bytes")
    payload = await cloud.publish_bundle("s1", "offers", 3, body, artifact=artifact)
    chain_wide = await cloud.publish_bundle("s1", "consents", 1, {"consents": []}, store="*")

    async with _client(cloud.port, "late-gateway") as gateway:
        await gateway.subscribe(bundles_filter("s1"), qos=1)
        got: dict[str, bytes] = {}
        async with asyncio.timeout(10):
            async for message in gateway.messages:
                assert message.retain, "bundles are retained"
                assert isinstance(message.payload, bytes)
                got[message.topic.value] = message.payload
                if len(got) == 2:
                    break
    assert got == {
        bundle_topic("s1", "offers"): payload,
        bundle_topic("s1", "consents"): chain_wide,
    }

    public = parse_public_key(signer.public_key_text)
    bundle = open_bundle(payload, public, store_id="s1", kind="offers")
    assert (bundle.kind, bundle.store, bundle.version) == ("offers", "s1", 3)
    assert bundle.body == body
    assert bundle.artifact == artifact
    assert open_bundle(chain_wide, public, store_id="s7", kind="consents").store == "*"

    other = BundleSigner()
    with pytest.raises(BundleError, match="signature"):
        open_bundle(payload, other.public_key, store_id="s1", kind="offers")
    with pytest.raises(BundleError, match="store"):
        open_bundle(payload, public, store_id="s2", kind="offers")
    with pytest.raises(BundleError, match="kind"):
        open_bundle(signer.make("weather", 1, {}), public, store_id="s1", kind="weather")
    with pytest.raises(BundleError, match="envelope"):
        open_bundle(signer.sign_envelope(b'{"schema":"nope"}'), public, store_id="s1", kind="x")

    # An empty retained message removes the bundle.
    await cloud.publish_raw("s1", "offers", b"")
    async with _client(cloud.port, "later-gateway") as gateway:
        await gateway.subscribe(bundles_filter("s1"), qos=1)
        async with asyncio.timeout(10):
            message = await _first(gateway)
    assert message.topic.value == bundle_topic("s1", "consents")


@pytest.mark.timeout(60)
def test_signer_from_seed_is_reproducible() -> None:
    a, b = BundleSigner.from_seed(b"demo chain key"), BundleSigner.from_seed(b"demo chain key")
    assert a.public_key_text == b.public_key_text
    assert (
        BundleSigner.from_seed(b"x" * 32).public_key_text
        == BundleSigner(Ed25519PrivateKey.from_private_bytes(b"x" * 32)).public_key_text
    )
    assert BundleSigner().public_key_text != BundleSigner().public_key_text
    message = a.make("config", 2, {"k": 1}, store="s1", created_at=5.0)
    assert message == b.make("config", 2, {"k": 1}, store="s1", created_at=5.0)
    assert open_bundle(message, b.public_key, store_id="s1", kind="config").created_at == 5.0


def _get(url: str, context: ssl.SSLContext | None) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310
        data: bytes = response.read()
        return data


@pytest.mark.timeout(60)
def test_artifact_server_serves_over_verifiable_https(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    with ArtifactServer(tmp_path / "artifacts") as server:
        url, digest, size = server.add("model-v2.onnx", data)
        assert url == f"https://127.0.0.1:{server.port}/model-v2.onnx"
        assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
        context = ssl.create_default_context(cafile=str(server.ca_file))

        got = _get(url, context)
        assert hashlib.sha256(got).hexdigest() == digest
        assert server.requests_served == 1

        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(url, ssl.create_default_context())  # the system CAs do not know it

        server.corrupt("model-v2.onnx")
        bad = _get(url, context)
        assert len(bad) == size
        assert hashlib.sha256(bad).hexdigest() != digest
        server.corrupt("model-v2.onnx", on=False)
        assert _get(url, context) == data

        server.fault("model-v2.onnx", "truncate")
        with pytest.raises(http.client.IncompleteRead):
            _get(url, context)
        server.fault("model-v2.onnx", 503)
        with pytest.raises(urllib.error.HTTPError, match="503"):
            _get(url, context)
        server.fault("model-v2.onnx", None)

        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(server.url("missing.onnx"), context)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"{server.base_url}/.pki/artifact-server.key", context)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"{server.base_url}/../escape", context)
        with pytest.raises(ValueError, match="plain file name"):
            server.add("../escape", b"x")
        (tmp_path / "artifacts" / "dropped-in.bin").write_bytes(b"placed by hand")
        assert _get(server.url("dropped-in.bin"), context) == b"placed by hand"
        assert server.requests_served == 9  # the untrusted handshake never made a request
        assert server.requests.count("model-v2.onnx") == 5


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(60)
async def test_cloud_down_refuses_connections_and_up_brings_everything_back(cloud: Cloud) -> None:
    bundle = await cloud.publish_bundle("s1", "config", 1, {"uplink": {"batch_kib": 64}})
    async with cloud.client("store-s1", clean_session=False) as store:
        await store.publish(events_topic("s1"), encode_batch("s1", [_event(1)]), qos=1)
    async with asyncio.timeout(10):
        await cloud.receiver.wait_for_count(1)

    await cloud.down()
    assert not cloud.is_up
    assert _refused(cloud.port)
    with pytest.raises(aiomqtt.MqttError):
        async with cloud.client("store-s1", timeout=2):
            pass
    async with asyncio.timeout(5):
        await cloud.receiver.wait_until(lambda: not cloud.receiver.connected)

    await cloud.up()
    assert (cloud.is_up, cloud.receiver.connected, cloud.receiver.connects) == (True, True, 2)
    async with cloud.client("store-s1", clean_session=False) as store:
        await store.publish(events_topic("s1"), encode_batch("s1", [_event(2)]), qos=1)
        await store.subscribe(bundles_filter("s1"), qos=1)
        async with asyncio.timeout(10):
            message = await _first(store)
        assert message.payload == bundle, "retained bundles survive the outage"
    async with asyncio.timeout(10):
        await cloud.receiver.wait_for_count(2)
    # At least once: if the broker stopped before it processed the receiver's PUBACK for event 1,
    # it delivers event 1 again after the restart; the id makes that a counted duplicate.
    assert cloud.receiver.duplicates <= 1


@pytest.mark.timeout(60)
async def test_receivers_persistent_session_keeps_batches_published_while_it_was_away(
    cloud: Cloud, request: pytest.FixtureRequest
) -> None:
    """The race a gateway that reconnects before the receiver would lose: nothing is lost."""
    if cloud.engine == "nats":
        request.applymarker(
            pytest.mark.xfail(
                reason="nats-server 2.9.10 drops QoS 1 messages queued for an offline session "
                "across a restart once another session on the same topic acked them "
                "(docs/cloud.md)",
                strict=False,
            )
        )
    # A second receiver, persistent, subscribed once and then gone.
    late = CloudReceiver("127.0.0.1", cloud.port, client_id="late-receiver")
    async with late:
        pass
    async with cloud.client("store-s1") as store:
        for n in range(5):
            await store.publish(events_topic("s1"), encode_batch("s1", [_event(n)]), qos=1)
    await cloud.down()
    await cloud.up()  # the queue survives a broker restart too
    async with late, asyncio.timeout(10):
        await late.wait_for_count(5)
    assert late.duplicates == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_persistent_session_gets_qos1_messages_queued_while_away(
    tmp_path: Path, engine: Engine
) -> None:
    _require(engine)
    async with Cloud(tmp_path / "cloud", engine=engine) as cloud:
        async with cloud.client("gateway-s1", clean_session=False) as gateway:
            await gateway.subscribe(bundles_filter("s1"), qos=1)
        for version in (1, 2, 3):
            await cloud.publish_bundle("s1", "offers", version, {"v": version}, store="s1")
        await cloud.down()
        await cloud.up()
        versions = []
        async with cloud.client("gateway-s1", clean_session=False) as gateway:
            async with asyncio.timeout(10):
                async for message in gateway.messages:
                    assert isinstance(message.payload, bytes)
                    bundle = open_bundle(
                        message.payload, cloud.signer.public_key, store_id="s1", kind="offers"
                    )
                    versions.append(bundle.version)
                    if bundle.version == 3:
                        break
        assert versions == [1, 2, 3]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_tls_cloud_demands_client_certificates(tmp_path: Path, engine: Engine) -> None:
    _require(engine)
    async with Cloud(tmp_path / "cloud", engine=engine, tls=True) as cloud:
        store_cert = cloud.client_cert("s1")
        context = cloud.tls_context(store_cert)
        assert context is not None
        async with aiomqtt.Client(
            "127.0.0.1", cloud.port, identifier="s1", tls_context=context
        ) as store:
            if engine == "mosquitto":  # the per-store ACL: s1 may not write as s2
                await store.publish(events_topic("s2"), encode_batch("s2", [_event(9)]), qos=1)
            await store.publish(events_topic("s1"), encode_batch("s1", [_event(1)]), qos=1)
        async with asyncio.timeout(10):
            await cloud.receiver.wait_for_count(1)
        assert cloud.receiver.batches_by_store == {"s1": 1}

        # Without a certificate, or with one from another CA, the broker ends the handshake.
        # (aiomqtt only reports such a refusal as a CONNACK timeout; a raw socket sees the alert.)
        no_cert = ssl.create_default_context(cafile=str(cloud.ca_file))
        assert await asyncio.to_thread(_mqtt_over_tls, cloud.port, no_cert) == "refused"
        foreign = CertificateAuthority(tmp_path / "foreign-ca").issue("s1")
        forged = ssl.create_default_context(cafile=str(cloud.ca_file))
        forged.load_cert_chain(foreign[0], foreign[1])
        assert await asyncio.to_thread(_mqtt_over_tls, cloud.port, forged) == "refused"
        assert await asyncio.to_thread(_mqtt_over_tls, cloud.port, context) == "accepted"


def _mqtt_over_tls(port: int, context: ssl.SSLContext) -> str:
    """Send an MQTT CONNECT over TLS: "accepted" (CONNACK 0) or "refused" (alert, or closed)."""
    body = _mqtt_string(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    body += _mqtt_string(b"tls-probe")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        try:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(4)
        except (ssl.SSLError, ConnectionError):
            return "refused"
    return "accepted" if answer == b"\x20\x02\x00\x00" else "refused"


# --------------------------------------------------------------------------- NATS specifics


@pytest.fixture
def nats(tmp_path: Path) -> NatsMqtt:
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed; install it with: apt-get install -y nats-server")
    return NatsMqtt(tmp_path / "nats")


def _mqtt_string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _connect_and_vanish(port: int, client_id: str, will_topic: str, will: bytes) -> None:
    """An MQTT 3.1.1 CONNECT with a QoS 1 will, then the TCP connection just closes."""
    body = (
        _mqtt_string(b"MQTT")
        + bytes([4, 0x02 | 0x04 | 0x08])  # level 4; clean session, will flag, will QoS 1
        + (60).to_bytes(2, "big")
        + _mqtt_string(client_id.encode())
        + _mqtt_string(will_topic.encode())
        + _mqtt_string(will)
    )
    assert len(body) < 128  # one-byte remaining length
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_nats_mqtt_features(nats: NatsMqtt) -> None:
    """What the NATS MQTT listener gives an MQTT 3.1.1 client (docs/cloud.md records it)."""
    with nats:
        assert nats.running
        port = nats.port
        async with _client(port, "watcher") as watcher, _client(port, "pub") as pub:
            # QoS 2 is not offered: a QoS 2 subscription is granted QoS 1.
            granted = await watcher.subscribe("probe/#", qos=2)
            assert [code if isinstance(code, int) else code.value for code in granted] == [1]
            # 128 KiB (the uplink's batch cap) and 4 MiB (a bundle) pass.
            for size in (128 * 1024, 4 * 1024 * 1024):
                await pub.publish(f"probe/big/{size}", b"x" * size, qos=1)
                async with asyncio.timeout(10):
                    message = await _first(watcher)
                assert isinstance(message.payload, bytes)
                assert len(message.payload) == size
            # The will of a client that vanishes (no DISCONNECT) is published.
            await asyncio.to_thread(_connect_and_vanish, port, "dying", "probe/will", b"gone")
            async with asyncio.timeout(15):
                message = await _first(watcher)
            assert (message.topic.value, message.payload) == ("probe/will", b"gone")

        # Retained messages and persistent sessions survive a restart of the server (JetStream).
        async with _client(port, "pub") as pub, _client(port, "ps", clean_session=False) as ps:
            await ps.subscribe("queued/#", qos=1)
            await pub.publish("retained/x", b"kept", qos=1, retain=True)
        async with _client(port, "pub") as pub:
            for n in range(3):
                await pub.publish(f"queued/{n}", str(n).encode(), qos=1)
    with nats:
        async with _client(port, "ps", clean_session=False) as ps:
            got = []
            async with asyncio.timeout(10):
                async for message in ps.messages:
                    got.append(message.payload)
                    if len(got) == 3:
                        break
            assert got == [b"0", b"1", b"2"]
        async with _client(port, "reader") as reader:
            await reader.subscribe("retained/+", qos=1)
            async with asyncio.timeout(10):
                message = await _first(reader)
            assert (message.payload, message.retain) == (b"kept", True)
    assert not nats.running
