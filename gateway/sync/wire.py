"""What travels between the gateway and the cloud: event batches up, signed bundles down.

Pure codec, shared by the gateway's sync component and `simulators/cloud.py` (docs/cloud.md).

Up: `stores/{store_id}/v1/events`, QoS 1, one message = one batch: gzip of the JSON
`{"schema": "event-batch/1", "store": ..., "events": [event, ...]}`, at most `max_bytes` on the
wire. Each event carries its UUIDv7 `id`, the receiver's de-duplication key.

Down: `stores/{store_id}/v1/bundles/{kind}`, QoS 1, retained: the JSON
`{"schema": "signed-bundle/1", "payload": base64(envelope bytes), "signature": base64(Ed25519)}`.
The signature covers the envelope's exact bytes, so no canonical JSON is needed.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "BUNDLE_KINDS",
    "PRIORITY_RANK",
    "Bundle",
    "BundleError",
    "WireError",
    "bundle_topic",
    "bundles_filter",
    "decode_batch",
    "encode_batch",
    "events_topic",
    "open_bundle",
    "sha256_hex",
    "sign_bundle",
]

BundleKind = Literal["offers", "consents", "model", "config", "claims", "outcomes", "experiments"]
BUNDLE_KINDS: tuple[BundleKind, ...] = (
    "offers",
    "consents",
    "model",
    "config",
    "claims",
    "outcomes",
    "experiments",
)
# Drain order (lower first). Classes ranked 0 are never shed when the disk budget is reached.
PRIORITY_RANK: Mapping[str, int] = {
    "transaction": 0,
    "reward": 0,
    "consent": 0,
    "decision": 1,
    "telemetry": 2,
}
MAX_BUNDLE_BYTES = 16 * 1024 * 1024


class WireError(ValueError):
    """A cloud message that cannot be decoded."""


class BundleError(ValueError):
    """A bundle refused; the message says why (bad signature, old version, ...)."""


def events_topic(store_id: str) -> str:
    return f"stores/{store_id}/v1/events"


def bundle_topic(store_id: str, kind: str) -> str:
    return f"stores/{store_id}/v1/bundles/{kind}"


def bundles_filter(store_id: str) -> str:
    return f"stores/{store_id}/v1/bundles/+"


def encode_batch(store_id: str, events: Sequence[bytes], *, compress: bool = True) -> bytes:
    """One message from events already serialised as JSON objects (as the outbox keeps them)."""
    body = b'{"schema":"event-batch/1","store":%s,"events":[%s]}' % (
        json.dumps(store_id).encode(),
        b",".join(events),
    )
    # mtime=0: the same batch always makes the same bytes.
    return gzip.compress(body, compresslevel=6, mtime=0) if compress else body


def decode_batch(message: bytes) -> tuple[str, list[dict[str, Any]]]:
    """(store id, events) of a batch, compressed or not."""
    try:
        raw = gzip.decompress(message) if message[:2] == b"\x1f\x8b" else message
        data = json.loads(raw)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise WireError(f"not an event batch: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != "event-batch/1":
        raise WireError("not an event-batch/1 message")
    events = data.get("events")
    store = data.get("store")
    if not isinstance(events, list) or not isinstance(store, str):
        raise WireError("event batch without store or events")
    return store, events


@dataclass(frozen=True, slots=True)
class Bundle:
    kind: BundleKind
    store: str  # a store id, or "*" for every store of the chain
    version: int
    created_at: float
    body: Mapping[str, Any]
    artifact: Mapping[str, Any] | None  # {"url", "sha256", "size"} for large files


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign_bundle(private: Ed25519PrivateKey, bundle: Bundle) -> bytes:
    """What the cloud does; here for the cloud simulator and tests."""
    envelope = json.dumps(
        {
            "schema": "bundle/1",
            "kind": bundle.kind,
            "store": bundle.store,
            "version": bundle.version,
            "created_at": bundle.created_at,
            "body": bundle.body,
            "artifact": bundle.artifact,
        },
        separators=(",", ":"),
    ).encode()
    return json.dumps(
        {
            "schema": "signed-bundle/1",
            "payload": base64.b64encode(envelope).decode(),
            "signature": base64.b64encode(private.sign(envelope)).decode(),
        }
    ).encode()


def open_bundle(message: bytes, public: Ed25519PublicKey, *, store_id: str, kind: str) -> Bundle:
    """Verify and parse a signed bundle for this store and topic kind, or raise `BundleError`.

    Checks, in order: size, wrapper form, signature, envelope form, kind and store. The caller
    checks the version against what it applied.
    """
    if len(message) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle of {len(message)} bytes exceeds {MAX_BUNDLE_BYTES}")
    try:
        wrapper = json.loads(message)
        envelope = base64.b64decode(wrapper["payload"], validate=True)
        signature = base64.b64decode(wrapper["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BundleError(
            "not a signed-bundle/1 message (unsigned, truncated or garbled)"
        ) from None
    if not isinstance(wrapper, dict) or wrapper.get("schema") != "signed-bundle/1":
        raise BundleError("not a signed-bundle/1 message")
    try:
        public.verify(signature, envelope)
    except InvalidSignature:
        raise BundleError(
            "signature does not verify with cloud.bundle_public_key (tampered?)"
        ) from None
    try:
        data = json.loads(envelope)
    except ValueError:
        raise BundleError("signed envelope is not JSON") from None
    bundle = _envelope(data)
    if bundle.kind != kind:
        raise BundleError(f"bundle of kind {bundle.kind!r} published on the {kind!r} topic")
    if bundle.store not in (store_id, "*"):
        raise BundleError(f"bundle is for store {bundle.store!r}, not this one ({store_id!r})")
    return bundle


def _envelope(data: object) -> Bundle:
    if not isinstance(data, dict) or data.get("schema") != "bundle/1":
        raise BundleError("envelope is not bundle/1")
    kind, store, version = data.get("kind"), data.get("store"), data.get("version")
    created, body, artifact = data.get("created_at"), data.get("body"), data.get("artifact")
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"unknown bundle kind {kind!r}")
    if not isinstance(store, str) or not isinstance(body, dict):
        raise BundleError("envelope without store or body")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError("envelope version must be a positive integer")
    if not isinstance(created, int | float):
        raise BundleError("envelope without created_at")
    if artifact is not None and not (
        isinstance(artifact, dict)
        and isinstance(artifact.get("url"), str)
        and isinstance(artifact.get("sha256"), str)
        and len(artifact["sha256"]) == 64
    ):
        raise BundleError("artifact must give url and sha256")
    return Bundle(kind, store, version, float(created), body, artifact)


def iter_chunks(items: Iterable[bytes], max_bytes: int) -> Iterable[list[bytes]]:
    """Group serialised events so each group's JSON stays under `max_bytes` uncompressed."""
    chunk: list[bytes] = []
    size = 64
    for item in items:
        if chunk and size + len(item) + 1 > max_bytes:
            yield chunk
            chunk, size = [], 64
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        yield chunk
