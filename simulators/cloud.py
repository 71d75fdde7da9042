"""The cloud in a box: a cloud broker, a receiver of uplinked events, a bundle signer, artifacts.

Used by the tests, `scripts/demo` and `scripts/bench.py` (docs/cloud.md, "Running the cloud
simulator"). The wire format is `gateway.sync.wire`; this module is its other end.

    async with Cloud(tmp_path / "cloud") as cloud:
        ...  # point the gateway's cloud link at 127.0.0.1:cloud.port
        await cloud.receiver.wait_for_count(1000)
        await cloud.down()  # the cloud goes away (connections refused) ...
        await cloud.up()  # ... and comes back, with its sessions and retained bundles

- `CloudReceiver` records every event uplinked on `stores/+/v1/events` by id, and counts
  duplicates, batches, bytes and rejected messages.
- `BundleSigner` signs bundles with an Ed25519 key (generated, or from a seed for the demo).
- `ArtifactServer` serves large artifacts (model files) over HTTPS, with its own CA.
- `Cloud` puts them together around a private Mosquitto (or `nats-server` with MQTT), with an
  optional TLS listener that demands client certificates and applies a per-store ACL.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import http.server
import ipaddress
import itertools
import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, cast

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers.mqtt import NO_DELAY
from gateway.codecs.identity import public_key_text
from gateway.sync.wire import (
    PRIORITY_RANK,
    Bundle,
    BundleKind,
    WireError,
    bundle_topic,
    decode_batch,
    sha256_hex,
    sign_bundle,
)
from simulators.broker import Mosquitto
from simulators.nats import NatsMqtt

__all__ = [
    "EVENTS_FILTER",
    "ArtifactServer",
    "BrokerProcess",
    "BundleSigner",
    "CertificateAuthority",
    "Cloud",
    "CloudReceiver",
    "Engine",
]

EVENTS_FILTER = "stores/+/v1/events"
CLOUD_SERVICE = "cloud-service"  # the certificate name of the cloud's own clients (TLS mode)
LOCALHOST = "127.0.0.1"
Engine = Literal["mosquitto", "nats"]


class BrokerProcess(Protocol):
    """What `Mosquitto` and `NatsMqtt` have in common."""

    port: int

    @property
    def running(self) -> bool: ...

    def start(self, timeout: float = ...) -> None: ...

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- receiver


class CloudReceiver:
    """Subscribes to every store's events (QoS 1) and records them by id.

    Runs a background task that reconnects (every 0.1 s) when the broker goes away; its session
    is persistent by default, so QoS 1 batches published while it was disconnected are delivered
    when it comes back (if the broker kept the session: `Cloud` makes sure it does).

    Records, all readable at any time:
    - `events`: id -> event dict, in order of first arrival (empty if `keep_events=False`);
      `first_seen`: id -> `time.time()` of its first arrival;
    - `priorities`: the priority of each new event, in arrival order (duplicates excluded);
    - `duplicates` (events whose id was already seen), `duplicate_ids`, `received` (all events,
      duplicates included), `batches`, `bytes_received` (payload bytes on the wire),
      `largest_message`, `rejected` (one reason per refused message or event);
    - `inbox(customer_ref)`: the in-app messages pushed to that customer's app.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "cloud-receiver",
        tls_context: ssl.SSLContext | None = None,
        persistent: bool = True,
        keep_events: bool = True,
        topic_filter: str = EVENTS_FILTER,
        connect_timeout: float = 10.0,
        other_ports: Sequence[int] = (),
    ) -> None:
        """`other_ports`: the other nodes of a clustered broker, tried in turn when the
        current one fails (the persistent session lives in the cluster)."""
        self.host = host
        self.port = port
        self._ports = [port, *other_ports]
        self.client_id = client_id
        self.tls_context = tls_context
        self.persistent = persistent
        self.keep_events = keep_events
        self.topic_filter = topic_filter
        self.connect_timeout = connect_timeout
        self.events: dict[str, dict[str, Any]] = {}
        self.first_seen: dict[str, float] = {}
        self.priorities: list[str] = []
        self.duplicates = 0
        self.duplicate_ids: Counter[str] = Counter()
        self.received = 0
        self.batches = 0
        self.batches_by_store: Counter[str] = Counter()
        self.bytes_received = 0
        self.largest_message = 0
        self.rejected: list[str] = []
        self.connects = 0
        self.last_error: str | None = None
        self._connected = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # -- counts

    @property
    def count(self) -> int:
        """Distinct events received."""
        return len(self.first_seen)

    @property
    def connected(self) -> bool:
        return self._connected

    def by_priority(self) -> Counter[str]:
        return Counter(self.priorities)

    def priority_inversions(self, start: int = 0, stop: int | None = None) -> int:
        """How often, in arrival order, an event ranked after a lower-ranked (more urgent) one.

        0 for `priorities[start:stop]` means that stretch arrived in drain order
        (`PRIORITY_RANK`: transactions, rewards and consents, then decisions, then telemetry).
        Unknown priorities rank last.
        """
        worst = len(PRIORITY_RANK) + 1
        ranks = [PRIORITY_RANK.get(p, worst) for p in self.priorities[start:stop]]
        return sum(1 for a, b in itertools.pairwise(ranks) if b < a)

    def clear(self) -> None:
        """Forget what was received (between the phases of a benchmark)."""
        self.events.clear()
        self.first_seen.clear()
        self.priorities.clear()
        self.duplicate_ids.clear()
        self.batches_by_store.clear()
        self.rejected.clear()
        self.duplicates = self.received = self.batches = 0
        self.bytes_received = self.largest_message = 0

    # -- waiting

    def inbox(self, customer_ref: str) -> list[dict[str, Any]]:
        """The app's inbox: the `app.message` events for this customer, as the cloud pushes
        them (in arrival order; the cloud maps the keyed ref to the app it belongs to)."""
        return [
            e
            for e in self.events.values()
            if e.get("type") == "app.message" and e["data"].get("customer") == customer_ref
        ]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; checked after each batch and connection.

        Unbounded: put it under the caller's `asyncio.timeout`.
        """
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for_count(self, n: int) -> int:
        """Wait until at least `n` distinct events have arrived; returns the count."""
        await self.wait_until(lambda: len(self.first_seen) >= n)
        return len(self.first_seen)

    async def wait_connected(self, min_connects: int = 1) -> None:
        """Wait until subscribed, for at least the `min_connects`-th time since the start."""
        await self.wait_until(lambda: self._connected and self.connects >= min_connects)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the message path

    def handle(self, topic: str, payload: bytes) -> None:
        """Record one message as if it had arrived on `topic` (the receive loop calls this)."""
        size = len(payload)
        self.bytes_received += size
        self.largest_message = max(self.largest_message, size)
        try:
            store, events = decode_batch(payload)
        except (WireError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            self.rejected.append(f"{topic}: {exc}")
            return
        parts = topic.split("/")
        if len(parts) != 4 or parts[1] != store:
            self.rejected.append(f"{topic}: batch of store {store!r} on another store's topic")
            return
        self.batches += 1
        self.batches_by_store[store] += 1
        self.received += len(events)
        now = time.time()
        first_seen = self.first_seen
        keep = self.keep_events
        for event in events:
            event_id = event.get("id") if isinstance(event, dict) else None
            if not isinstance(event_id, str):
                self.rejected.append(f"{topic}: event without a string id")
                continue
            if event_id in first_seen:
                self.duplicates += 1
                self.duplicate_ids[event_id] += 1
                continue
            first_seen[event_id] = now
            if keep:
                self.events[event_id] = event
            priority = event.get("priority")
            self.priorities.append(priority if isinstance(priority, str) else "?")

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            clean_session=not self.persistent,
            tls_context=self.tls_context,
            socket_options=[NO_DELAY],
        )

    async def _run(self) -> None:
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self._connected = True
                    self.connects += 1
                    self.last_error = None
                    await self._notify()
                    async for message in client.messages:
                        try:
                            self.handle(message.topic.value, message.payload)
                        except Exception as exc:  # noqa: BLE001 - a simulator records, never dies
                            self.rejected.append(f"{message.topic.value}: {exc!r}")
                        await self._notify()
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                self.port = self._ports[(self._ports.index(self.port) + 1) % len(self._ports)]
            finally:
                self._connected = False
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> CloudReceiver:
        connect_timeout = self.connect_timeout
        self._task = asyncio.create_task(self._run(), name=f"cloud-receiver:{self.client_id}")
        try:
            async with asyncio.timeout(connect_timeout):
                await self.wait_connected()
        except TimeoutError:
            await self._stop()
            raise RuntimeError(
                f"cloud receiver could not subscribe on {self.host}:{self.port} "
                f"in {connect_timeout}s: {self.last_error}"
            ) from None
        return self

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()


# --------------------------------------------------------------------------- bundles


class BundleSigner:
    """The cloud's bundle signing key (Ed25519) and what it signs."""

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self.private_key = private or Ed25519PrivateKey.generate()

    @classmethod
    def from_seed(cls, seed: bytes) -> BundleSigner:
        """A reproducible key: a 32-byte seed is the key; any other length is hashed (SHA-256)."""
        raw = seed if len(seed) == 32 else hashlib.sha256(seed).digest()
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_key_text(self) -> str:
        """Base64 of the raw public key: the value of `cloud.bundle_public_key`."""
        return public_key_text(self.private_key)

    def make(
        self,
        kind: str,
        version: int,
        body: Mapping[str, Any],
        *,
        store: str = "*",
        artifact: Mapping[str, Any] | None = None,
        created_at: float | None = None,
    ) -> bytes:
        """A signed bundle (the message to publish). `kind` is not checked, so tests can sign
        a bundle of an unknown kind and see it refused."""
        bundle = Bundle(
            kind=cast(BundleKind, kind),
            store=store,
            version=version,
            created_at=time.time() if created_at is None else created_at,
            body=body,
            artifact=artifact,
        )
        return sign_bundle(self.private_key, bundle)

    def sign_envelope(self, envelope: bytes) -> bytes:
        """Sign arbitrary envelope bytes (to make validly signed but malformed bundles)."""
        return json.dumps(
            {
                "schema": "signed-bundle/1",
                "payload": base64.b64encode(envelope).decode(),
                "signature": base64.b64encode(self.private_key.sign(envelope)).decode(),
            }
        ).encode()

    @staticmethod
    async def publish(
        client: aiomqtt.Client, store_id: str, kind: str, payload: bytes, retain: bool = True
    ) -> None:
        """Publish on `stores/{store_id}/v1/bundles/{kind}`, QoS 1, retained by default.

        An empty payload with `retain=True` removes the retained bundle."""
        await client.publish(bundle_topic(store_id, kind), payload, qos=1, retain=retain)


# --------------------------------------------------------------------------- certificates


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


class CertificateAuthority:
    """A private CA in `directory` that issues server and client certificates (EC P-256).

    Certificates are world-readable (0644) so a broker started as another user can read them;
    keys are 0600 (Mosquitto, run by the harness as the same user, can read them).
    """

    def __init__(self, directory: Path, name: str = "store-gateway test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = _write(
            directory / "ca.crt", self._cert.public_bytes(serialization.Encoding.PEM), 0o644
        )

    def issue(self, name: str, *, server: bool = False) -> tuple[Path, Path]:
        """(certificate, key) files for `name`: a server for 127.0.0.1 and localhost, or a
        client whose common name is `name` (Mosquitto's `use_identity_as_username`)."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOCALHOST)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        cert_path = _write(self.directory / f"{name}.crt", cert.public_bytes(pem), 0o644)
        key_path = _write(
            self.directory / f"{name}.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            0o600,
        )
        return cert_path, key_path

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client TLS context trusting this CA, presenting `cert` (cert, key) if given."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context


# --------------------------------------------------------------------------- artifacts

Fault = Literal["flip", "truncate"] | int  # a flipped byte, a cut-short body, or an HTTP status


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpsServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.handshake_ok = False
        try:
            self.request.do_handshake()
            self.handshake_ok = True
        except (ssl.SSLError, OSError):
            pass  # a client that does not trust the CA, or a port scan
        super().setup()

    def handle(self) -> None:
        if not self.handshake_ok:
            return
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `requests` instead."""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        owner = self.server.owner
        name = self.path.split("?", 1)[0].lstrip("/")
        data, fault = owner.lookup(name)
        owner.count_request(name)
        if data is None or isinstance(fault, int):
            status = fault if isinstance(fault, int) else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault == "flip":
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\x00"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        if fault == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        if fault == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)


class _HttpsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: ArtifactServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.context = context
        super().__init__((LOCALHOST, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(10)
        # The handshake happens in the connection's own thread (the handler's setup()).
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address


class ArtifactServer:
    """Large bundle artifacts (model files) over HTTPS on 127.0.0.1: the files in `directory`.

    Makes its own CA in `directory/.pki` (or uses `ca`) and a certificate for 127.0.0.1; clients
    verify with `ca_file`. Only plain file names are served (no subdirectories, no dot files).
    `add(name, data)` stores a file and returns (url, sha256, size); `fault(name, ...)` makes it
    serve a flipped byte (hash mismatch), half the body (truncated download) or an HTTP error
    status. Runs in a background thread: `with ArtifactServer(dir) as artifacts:`.
    """

    def __init__(self, directory: Path, *, ca: CertificateAuthority | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or CertificateAuthority(directory / ".pki")
        self.ca_file = self.ca.ca_file
        self._cert = self.ca.issue("artifact-server", server=True)
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self.requests_served = 0
        self.requests: list[str] = []
        self._server: _HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add(self, name: str, data: bytes) -> tuple[str, str, int]:
        """Serve `data` as `name`; returns (url, sha256 hex, size)."""
        self._check_name(name)
        (self.directory / name).write_bytes(data)
        return self.url(name), sha256_hex(data), len(data)

    def artifact(self, name: str, data: bytes) -> dict[str, Any]:
        """`add`, shaped as a bundle's `artifact` field."""
        url, digest, size = self.add(name, data)
        return {"url": url, "sha256": digest, "size": size}

    def fault(self, name: str, how: Fault | None) -> None:
        """Serve `name` wrong: "flip" (first byte inverted), "truncate" (half the body, then
        the connection closes), an HTTP status (e.g. 503); None serves it right again."""
        with self._lock:
            if how is None:
                self._faults.pop(name, None)
            else:
                self._faults[name] = how

    def corrupt(self, name: str, on: bool = True) -> None:
        """Serve `name` with its first byte flipped (its SHA-256 no longer matches)."""
        self.fault(name, "flip" if on else None)

    def client_context(self) -> ssl.SSLContext:
        return self.ca.client_context()

    # called from the server's threads
    def lookup(self, name: str) -> tuple[bytes | None, Fault | None]:
        with self._lock:
            fault = self._faults.get(name)
        try:
            self._check_name(name)
            return (self.directory / name).read_bytes(), fault
        except (ValueError, OSError):
            return None, fault

    def count_request(self, name: str) -> None:
        with self._lock:
            self.requests_served += 1
            self.requests.append(name)

    @staticmethod
    def _check_name(name: str) -> None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"artifact name {name!r}: a plain file name is expected")

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self._cert[0]), str(self._cert[1]))
        self._server = _HttpsServer(self, context)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="artifact-server",
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ArtifactServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- the cloud


def _acl() -> str:
    """Per-store topics: a store (certificate CN = store id) writes its events, reads its
    bundles; the cloud's own clients read every store's events and write bundles."""
    return (
        f"user {CLOUD_SERVICE}\n"
        "topic read stores/+/v1/events\n"
        "topic readwrite stores/+/v1/bundles/#\n"
        "\n"
        "pattern write stores/%u/v1/events\n"
        "pattern read stores/%u/v1/bundles/#\n"
    )


class Cloud:
    """The cloud broker, a receiver, a bundle signer and an artifact server, with an off switch.

    `engine="mosquitto"` (default) runs a private Mosquitto with persistence on, so sessions,
    queued QoS 1 messages and retained bundles survive `down()` / `up()`; `engine="nats"` runs
    `nats-server` with MQTT and JetStream (the integration tier). `tls=True` makes the broker
    demand TLS with a client certificate from `ca` (`client_cert(store_id)` issues one, and a
    per-store ACL applies on Mosquitto). Use as `async with Cloud(workdir) as cloud:`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        engine: Engine = "mosquitto",
        tls: bool = False,
        signer: BundleSigner | None = None,
        keep_events: bool = True,
        extra_conf: str = "",
    ) -> None:
        self.workdir = workdir
        self.host = LOCALHOST
        self.engine = engine
        self.tls = tls
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(workdir / "pki", name="cloud simulator CA")
        self.ca_file = self.ca.ca_file
        self.signer = signer or BundleSigner()
        self.artifacts = ArtifactServer(workdir / "artifacts", ca=self.ca)
        self._service_cert = self.ca.issue(CLOUD_SERVICE) if tls else None
        self.broker: BrokerProcess
        if engine == "nats":
            if extra_conf:
                raise ValueError("extra_conf is for Mosquitto only")
            server = self.ca.issue("cloud-broker", server=True) if tls else None
            tls_files = (self.ca_file, *server) if server else None
            self.broker = NatsMqtt(workdir / "broker", port=port, tls=tls_files)
        else:
            self.broker = Mosquitto(
                workdir / "broker", port=port, extra_conf=self._mosquitto_conf(extra_conf)
            )
        self.receiver = CloudReceiver(
            self.host,
            self.broker.port,
            client_id="cloud-receiver",
            tls_context=self.tls_context(),
            keep_events=keep_events,
        )

    def _mosquitto_conf(self, extra: str) -> str:
        data = self.workdir / "broker" / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = (
            # Sessions, queued QoS 1 messages and retained bundles survive down() / up().
            "persistence true\n"
            f"persistence_location {data}/\n"
            # A receiver that falls behind must not lose batches (the default queue is 1000).
            "max_queued_messages 1000000\n"
        )
        if self.tls:
            cert, key = self.ca.issue("cloud-broker", server=True)
            acl = self.workdir / "broker" / "acl"
            _write(acl, _acl().encode(), 0o644)
            conf += (
                f"cafile {self.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
                "require_certificate true\nuse_identity_as_username true\n"
                f"acl_file {acl}\n"
            )
        return conf + extra

    # -- what a gateway needs to connect

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def is_up(self) -> bool:
        return self.broker.running

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) for a store (its id as common name) or any other client."""
        return self.ca.issue(name)

    def tls_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext | None:
        """None without TLS; else a context trusting the CA, presenting `cert` (default: the
        cloud's own service certificate)."""
        if not self.tls:
            return None
        return self.ca.client_context(cert or self._service_cert)

    def client(self, identifier: str, **kwargs: Any) -> aiomqtt.Client:
        """An aiomqtt client of the cloud side (the service certificate in TLS mode)."""
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=identifier,
            tls_context=self.tls_context(),
            socket_options=[NO_DELAY],
            **kwargs,
        )

    # -- bundles and artifacts

    async def publish_bundle(
        self,
        store_id: str,
        kind: str,
        version: int,
        body: Mapping[str, Any],
        *,
        store: str | None = None,
        artifact: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Sign and publish (retained, QoS 1) a bundle on `store_id`'s topic; returns it.

        `store` is the envelope's store (default `store_id`; "*" for the whole chain)."""
        payload = self.signer.make(
            kind, version, body, store=store_id if store is None else store, artifact=artifact
        )
        await self.publish_raw(store_id, kind, payload)
        return payload

    async def publish_raw(
        self, store_id: str, kind: str, payload: bytes, *, retain: bool = True
    ) -> None:
        """Publish any bytes on a bundle topic (tampered, truncated, unsigned ... bundles)."""
        async with self.client(f"cloud-publisher-{time.monotonic_ns()}") as client:
            await self.signer.publish(client, store_id, kind, payload, retain=retain)

    def add_artifact(self, name: str, data: bytes) -> dict[str, Any]:
        """Serve `data` over HTTPS; returns the bundle's `artifact` field (url, sha256, size)."""
        return self.artifacts.artifact(name, data)

    # -- the switch

    async def down(self) -> None:
        """Take the cloud broker away: connections are refused until `up()`."""
        await asyncio.to_thread(self.broker.stop)

    async def up(self) -> None:
        """Bring the broker back on the same port; returns once the receiver is subscribed
        again (at most 15 s, else TimeoutError)."""
        connects = self.receiver.connects
        await asyncio.to_thread(self.broker.start)
        async with asyncio.timeout(15):
            await self.receiver.wait_connected(connects + 1)

    async def __aenter__(self) -> Cloud:
        self.artifacts.start()
        try:
            await asyncio.to_thread(self.broker.start)
            await self.receiver.__aenter__()
        except BaseException:
            await asyncio.to_thread(self.broker.stop)
            self.artifacts.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.receiver.__aexit__(exc_type, exc, tb)
        finally:
            await asyncio.to_thread(self.broker.stop)
            self.artifacts.stop()
