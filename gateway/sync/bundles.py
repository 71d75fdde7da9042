"""Downlink bundles: verify, check the version, apply all or nothing, or refuse and say why.

A refused bundle changes nothing: the store keeps serving what it had, and the refusal goes to
the cloud as a `bundle.rejected` event. The same version arriving again (a retained message
re-delivered on reconnect) is a no-op, not an error.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.codecs.payloads import PayloadError, validate
from gateway.decision.experiments import ExperimentTest, parse_tests
from gateway.decision.model import ModelError, Scorer
from gateway.decision.offers import upsert_offers
from gateway.decision.outcomes import (
    DEFAULT_WINDOWS,
    ClaimLookup,
    JoinTally,
    ReportedOutcome,
    Windows,
    join_outcomes,
    no_claim_codes,
    parse_outcomes,
)
from gateway.runtime.clock import Clock
from gateway.runtime.metrics import Metrics
from gateway.store import (
    AsyncStore,
    Consent,
    Offer,
    Store,
    consent_from_json,
    offer_from_json,
    transaction,
)
from gateway.sync.outbox import Outbox
from gateway.sync.wire import Bundle, BundleError, open_bundle, sha256_hex

__all__ = ["Applier", "BundleApplier", "Fetch", "Reaction", "applied_body", "applied_version"]

log = structlog.get_logger("gateway.bundles")

# Downloads an artifact: (url, max_bytes) -> bytes. The driver does HTTPS; tests may serve files.
Fetch = Callable[[str, int], Awaitable[bytes]]
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
_OFF_LOOP_BYTES = 256 * 1024  # a bundle this large is opened on a worker thread
Reaction = Callable[[Mapping[str, Any]], Awaitable[object]]
# Applies a bundle's body on the store thread, inside the transaction that records its version:
# (store, body, now) -> a short tally kept instead of the body (which may name customers).
Applier = Callable[[Store, Mapping[str, Any], float], Mapping[str, Any]]
# Deltas: each version must follow the applied one (a skipped one would be lost unnoticed).
_DELTA_KINDS = ("consents", "claims")


class BundleApplier:
    def __init__(
        self,
        *,
        db: AsyncStore,
        store_id: str,
        public_key: Ed25519PublicKey | None,
        models_dir: Path,
        fetch: Fetch,
        outbox: Outbox,
        clock: Clock,
        metrics: Metrics,
        reactions: Mapping[str, Reaction],
        appliers: Mapping[str, Applier] | None = None,
        on_signed_time: Callable[[float], None] = lambda _created_at: None,
        outcome_windows: Windows = DEFAULT_WINDOWS,
        claim_lookup: ClaimLookup = no_claim_codes,
    ) -> None:
        """reactions: kind -> what acts on a bundle of that kind once applied (reload the
        catalog, the keys, the model...), given its body.
        appliers: kind -> what applies the body of a feature's own kind (receipt claims), in
        the transaction that records its version; its body is checked by `bundle-{kind}`.
        on_signed_time(created_at): a bundle's signature checked out (a floor for the clock).
        outcome_windows, claim_lookup: how an outcomes bundle joins its decisions."""
        self._db = db
        self._store_id = store_id
        self._key = public_key
        self._models_dir = models_dir
        self._fetch = fetch
        self._outbox = outbox
        self._clock = clock
        self._metrics = metrics
        self._reactions = reactions
        self._appliers = appliers or {}
        self._on_signed_time = on_signed_time
        self._outcome_windows = outcome_windows
        self._claim_lookup = claim_lookup

    async def handle(self, kind: str, message: bytes) -> str:
        """Apply one bundle message from the `kind` topic; returns the outcome, for logs/tests."""
        if not message:
            return "empty"  # a retained bundle cleared by the cloud
        version: int | None = None
        try:
            if self._key is None:
                raise BundleError("no cloud.bundle_public_key configured: bundles are refused")
            if len(message) > _OFF_LOOP_BYTES:  # verifying and parsing megabytes: a thread
                bundle = await asyncio.to_thread(
                    open_bundle, message, self._key, store_id=self._store_id, kind=kind
                )
            else:
                bundle = open_bundle(message, self._key, store_id=self._store_id, kind=kind)
            self._on_signed_time(bundle.created_at)  # the cloud signed it: time is past this
            version = bundle.version
            applied = await self._db.call(applied_version, kind)
            if bundle.version == applied:
                return "duplicate"
            if bundle.version < applied:
                raise BundleError(
                    f"version {bundle.version} is older than the applied {applied} (replayed?)"
                )
            if _missed_delta(bundle, applied):
                raise BundleError(
                    f"{kind} delta v{bundle.version} does not follow the applied v{applied}:"
                    f" v{applied + 1}..v{bundle.version - 1} missing; send them"
                    + (", or a snapshot" if kind == "consents" else "")
                )
            summary = await self._apply(bundle)
        except (BundleError, PayloadError) as exc:
            await self._refuse(kind, version, str(exc))
            return f"rejected: {exc}"
        except RecursionError:
            await self._refuse(kind, version, "malformed: nested too deeply")
            return "rejected: malformed"
        except Exception as exc:  # a retained bundle that crashed us would crash us again
            log.exception("bundle could not be applied", kind=kind, version=version)
            reason = f"could not be applied ({type(exc).__name__})"
            await self._refuse(kind, version, reason)
            return f"rejected: {reason}"
        self._metrics.bundles.labels(kind, "applied").inc()
        log.info("bundle applied", kind=kind, version=bundle.version)
        try:
            reaction = self._reactions.get(kind)
            if reaction is not None:
                await reaction(bundle.body)
        except Exception:  # applied and committed; what reacts to it reports its own trouble
            log.exception("acting on an applied bundle failed", kind=kind, version=version)
        await self._outbox.accept(
            "bundle.applied", "decision", {"kind": kind, "version": bundle.version, **summary}
        )
        return "applied"

    async def _refuse(self, kind: str, version: int | None, reason: str) -> None:
        self._metrics.bundles.labels(kind, "rejected").inc()
        log.warning("bundle rejected", kind=kind, version=version, reason=reason)
        await self._outbox.accept(
            "bundle.rejected", "decision", {"kind": kind, "version": version, "reason": reason}
        )

    async def _apply(self, bundle: Bundle) -> dict[str, Any]:
        """Apply; returns what the `bundle.applied` event reports beside kind and version."""
        now = self._clock.now()
        # An outcomes bundle's body (up to 100,000 outcomes) is not kept: its tally is.
        body = "" if bundle.kind == "outcomes" else json.dumps(bundle.body, separators=(",", ":"))
        change = _Change(bundle.kind, bundle.version, bundle.created_at, body, now)
        if bundle.kind == "offers":
            validate("seed", bundle.body)
            if "offers" not in bundle.body or "consents" in bundle.body:
                raise BundleError("an offers bundle holds 'offers' (the whole catalog) only")
            offers = [offer_from_json(o) for o in bundle.body["offers"]]
            await self._db.call(_apply, replace(change, offers=offers))
        elif bundle.kind == "consents":
            validate("bundle-consents", bundle.body)
            upsert = [
                consent_from_json(c, c["customer_ref"]) for c in bundle.body.get("upsert", [])
            ]
            forget = list(bundle.body.get("forget", []))
            snapshot = bool(bundle.body.get("snapshot", False))
            # The consents table holds what was applied; a copy of the delta (refs, EID keys)
            # would outlive a later `forget`.
            tally = json.dumps({"upsert": len(upsert), "forget": len(forget), "snapshot": snapshot})
            change = replace(
                change, body=tally, consents=upsert, forget=forget, consents_snapshot=snapshot
            )
            await self._db.call(_apply, change)
        elif bundle.kind in self._appliers:
            validate(f"bundle-{bundle.kind}", bundle.body)
            applier, content = self._appliers[bundle.kind], bundle.body
            await self._db.call(_apply, replace(change, also=lambda s: applier(s, content, now)))
        elif bundle.kind == "outcomes":
            outcomes = await asyncio.to_thread(_outcomes, bundle.body)
            windows, lookup, row = self._outcome_windows, self._claim_lookup, self._outbox.row

            def join(store: Store) -> JoinTally:
                return join_outcomes(
                    store, outcomes, windows=windows, now=now, event=row, lookup=lookup
                )

            # The many outcomes join on the store thread, in the bundle's own transaction; the
            # applied body keeps the tally, not the outcomes (they have their own table).
            joined = await self._db.call(_apply, replace(change, also=join))
            assert isinstance(joined, JoinTally)
            if joined.rewards:
                self._outbox.appended.set()
            log.info("outcomes joined", version=bundle.version, **joined.as_dict())
            return {"outcomes": joined.as_dict()}
        elif bundle.kind == "experiments":
            validate("bundle-experiments", bundle.body)
            _check_tests(parse_tests(bundle.body))
            await self._db.call(_apply, change)
        elif bundle.kind == "model":
            validate("bundle-model", bundle.body)
            sha = await self._install_model(bundle)
            await self._db.call(_apply, replace(change, artifact_sha256=sha))
        else:
            validate("bundle-config", bundle.body)
            await self._db.call(_apply, change)
        return {}

    async def _install_model(self, bundle: Bundle) -> str:
        """Download, verify, write aside, fsync, rename: the old file serves until the swap."""
        artifact = bundle.artifact
        if artifact is None:
            raise BundleError("a model bundle needs an artifact (url and sha256)")
        size = artifact.get("size")
        limit = size if isinstance(size, int) and 0 < size <= MAX_ARTIFACT_BYTES else None
        try:
            data = await self._fetch(str(artifact["url"]), limit or MAX_ARTIFACT_BYTES)
        except OSError as exc:
            raise BundleError(f"artifact download failed: {exc}") from exc
        if limit is not None and len(data) != limit:
            raise BundleError(f"artifact is {len(data)} bytes, the bundle says {limit}")
        digest = sha256_hex(data)
        if digest != artifact["sha256"]:
            raise BundleError(f"artifact sha256 {digest[:12]}... does not match the bundle's")
        name = str(bundle.body["name"])
        final = self._models_dir / f"{name}.onnx"
        # The right bytes may still be the wrong model (spec, outputs): the file that serves
        # now is replaced only by one that would serve.
        try:
            await asyncio.to_thread(Scorer.from_bytes, data, final)
        except ModelError as exc:
            raise BundleError(f"artifact refused: {exc}") from None
        await asyncio.to_thread(_write_durably, final, data)  # an SD card's fsync: off the loop
        return digest


def _write_durably(final: Path, data: bytes) -> None:
    """Write aside, fsync, rename, fsync the directory: a crash leaves the old file or the new."""
    final.parent.mkdir(parents=True, exist_ok=True)
    aside = final.with_suffix(".onnx.incoming")
    with aside.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    aside.replace(final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True, slots=True)
class _Change:
    kind: str
    version: int
    created_at: float
    body: str
    now: float
    offers: Sequence[Offer] | None = None
    consents: Sequence[Consent] = ()
    consents_snapshot: bool = False
    forget: Sequence[str] = ()
    artifact_sha256: str | None = None
    # Runs in the transaction, before the version is recorded (an outcomes bundle's join, a
    # feature's applier); a tally it returns is kept instead of the body.
    also: Callable[[Store], object] | None = None


def _outcomes(body: Mapping[str, Any]) -> list[ReportedOutcome]:
    """Validate and parse an outcomes bundle's body (up to 100,000 of them: on a thread)."""
    validate("bundle-outcomes", body)
    return parse_outcomes(body)


def _check_tests(tests: Sequence[ExperimentTest]) -> None:
    """What the schema cannot say: each test's shares sum to 1, it ends after it starts, and
    its id and arm names are unique."""
    if len({t.id for t in tests}) != len(tests):
        raise BundleError("two tests share an id")
    for test in tests:
        shares = sum(a.share for a in test.arms)
        if abs(shares - 1.0) > 1e-6:
            raise BundleError(f"test {test.id}: the arms' shares sum to {shares:g}, not 1")
        if test.end <= test.start:
            raise BundleError(f"test {test.id}: it ends before it starts")
        if len({a.name for a in test.arms}) != len(test.arms):
            raise BundleError(f"test {test.id}: two arms share a name")


def _missed_delta(bundle: Bundle, applied: int) -> bool:
    """Consents are deltas: one skipped (a `forget` among them, say) must not go unnoticed."""
    if bundle.kind not in _DELTA_KINDS or bundle.body.get("snapshot") is True:
        return False
    return bundle.version != applied + 1


def _apply(store: Store, change: _Change, /) -> object:
    """On the store thread: a verified bundle all or nothing, its data and its version in one
    transaction. Offers: the whole new catalog; consents / forget: a delta, or with
    consents_snapshot every consent on record (everyone else is forgotten)."""
    conn = store.conn
    with transaction(conn, durable=False):
        applied = applied_version(store, change.kind)
        if applied >= change.version:  # lost a race with another copy of the same bundle
            raise BundleError(f"{change.kind} version {change.version} is not newer than {applied}")
        if change.offers is not None:
            conn.execute("DELETE FROM offers")
            upsert_offers(store, change.offers, change.now, commit=False)
        if change.consents_snapshot:
            conn.execute("DELETE FROM consents")
        if change.consents:
            store.upsert_consents(change.consents, change.now, commit=False)
        conn.execute(
            "DELETE FROM consents WHERE customer_ref IN (SELECT value FROM json_each(?))",
            (json.dumps(list(change.forget)),),
        )
        result = change.also(store) if change.also is not None else None
        tally = result.as_dict() if isinstance(result, JoinTally) else result
        if isinstance(tally, Mapping):  # what the store keeps instead of the body
            change = replace(change, body=json.dumps(tally, separators=(",", ":")))
        conn.execute(
            "INSERT INTO applied_bundles (kind, version, created_at, applied_at, body,"
            " artifact_sha256) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(kind) DO UPDATE SET"
            " version = excluded.version, created_at = excluded.created_at,"
            " applied_at = excluded.applied_at, body = excluded.body,"
            " artifact_sha256 = excluded.artifact_sha256",
            (
                change.kind,
                change.version,
                change.created_at,
                change.now,
                change.body,
                change.artifact_sha256,
            ),
        )
    return result


def applied_version(store: Store, kind: str) -> int:
    """The version of the last `kind` bundle applied; 0 for none (on the store thread)."""
    row = store.conn.execute(
        "SELECT version FROM applied_bundles WHERE kind = ?", (kind,)
    ).fetchone()
    return int(row[0]) if row else 0


def applied_body(store: Store, kind: str) -> str | None:
    """The body of the last `kind` bundle applied, as it was kept (on the store thread)."""
    row = store.conn.execute("SELECT body FROM applied_bundles WHERE kind = ?", (kind,)).fetchone()
    return str(row[0]) if row else None
