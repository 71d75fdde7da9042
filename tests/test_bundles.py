"""Downlink bundles: verified, versioned, applied all or nothing, or refused with the reason.

The applier runs against a real SQLite store, a real outbox (refusals go up as events) and
real HTTPS downloads from the cloud simulator's artifact server.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.cloud import https_fetcher
from gateway.decision.offers import load_offers, upsert_offers
from gateway.runtime.clock import SystemClock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Consent, Offer, Store
from gateway.sync.bundles import BundleApplier, applied_body, applied_version
from gateway.sync.outbox import Outbox
from simulators.cloud import ArtifactServer, BundleSigner

STORE = "s42"
OFFER = {"id": "OFF-A", "title": "Apples 10% off", "discount_pct": 10}
REF = "c_" + "a" * 32


@dataclass
class Rig:
    applier: BundleApplier
    db: AsyncStore
    signer: BundleSigner
    artifacts: ArtifactServer
    models: Path
    reloads: list[int]

    async def offers(self) -> list[str]:
        return [o.id for o in await self.db.call(load_offers)]

    async def events(self) -> list[dict[str, object]]:
        rows = await self.db.call(Store.outbox_batch, {0: -1, 1: -1, 2: -1}, 1000, 10**9)
        return [json.loads(body) for _, _, body in rows]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = AsyncStore(tmp_path / "g.sqlite3")
    await db.open()
    await db.call(upsert_offers, [Offer("OFF-OLD", "Old offer")], 1.0)
    outbox = Outbox(db, STORE, SystemClock(), Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    signer = BundleSigner()
    reloads: list[int] = []

    async def reload(body: object) -> None:
        reloads.append(1)

    with ArtifactServer(tmp_path / "artifacts") as artifacts:
        applier = BundleApplier(
            db=db,
            store_id=STORE,
            public_key=signer.public_key,
            models_dir=tmp_path / "models",
            fetch=https_fetcher(artifacts.ca_file),
            outbox=outbox,
            clock=SystemClock(),
            metrics=Metrics(),
            reactions={"offers": reload},
        )
        yield Rig(applier, db, signer, artifacts, tmp_path / "models", reloads)
    writer.cancel()
    await db.close()


async def test_a_good_offers_bundle_replaces_the_catalog_at_once(rig: Rig) -> None:
    message = rig.signer.make("offers", 1, {"offers": [OFFER]}, store=STORE)
    assert await rig.applier.handle("offers", message) == "applied"
    assert await rig.offers() == ["OFF-A"]
    assert rig.reloads == [1]
    # The same retained bundle delivered again on reconnect: nothing happens, no error.
    assert await rig.applier.handle("offers", message) == "duplicate"
    assert [e["type"] for e in await rig.events()] == ["bundle.applied"]


async def test_bad_bundles_are_each_refused_and_the_old_state_keeps_serving(rig: Rig) -> None:
    assert (
        await rig.applier.handle("offers", rig.signer.make("offers", 5, {"offers": [OFFER]}))
        == "applied"
    )
    good = rig.signer.make("offers", 6, {"offers": [{"id": "OFF-NEW", "title": "New"}]})
    wrapper = json.loads(good)
    envelope = base64.b64decode(wrapper["payload"])
    tampered_env = envelope.replace(b"OFF-NEW", b"OFF-BAD")
    tampered = json.dumps({**wrapper, "payload": base64.b64encode(tampered_env).decode()}).encode()
    unsigned = json.dumps({"schema": "signed-bundle/1", "payload": wrapper["payload"]}).encode()
    cases = {
        "tampered": (tampered, "signature does not verify"),
        "forged": (BundleSigner().make("offers", 7, {"offers": []}), "signature does not verify"),
        "unsigned": (unsigned, "not a signed-bundle/1 message"),
        "truncated": (good[: len(good) // 2], "not a signed-bundle/1 message"),
        "old": (rig.signer.make("offers", 4, {"offers": []}), "older than the applied 5"),
        "other store": (rig.signer.make("offers", 8, {"offers": []}, store="s7"), "for store 's7'"),
        "wrong kind": (rig.signer.make("consents", 9, {}), "published on the 'offers' topic"),
        "malformed": (rig.signer.make("offers", 10, {"offers": [{"id": 3}]}), "must contain"),
        "garbage": (b"\x00\xff not json", "not a signed-bundle/1 message"),
        "nested": (b"[" * 100_000 + b"]" * 100_000, "malformed"),
        # Signed and well formed, but sqlite cannot hold it: refused, not a crash loop.
        "huge": (
            rig.signer.make("offers", 11, {"offers": [{**OFFER, "inventory": 2**63}]}),
            "could not be applied (OverflowError)",
        ),
    }
    for name, (message, reason) in cases.items():
        outcome = await rig.applier.handle("offers", message)
        assert outcome.startswith("rejected:"), name
        assert reason in outcome, f"{name}: {outcome}"
        assert await rig.offers() == ["OFF-A"], name  # still serving what it had
    rejected = [e for e in await rig.events() if e["type"] == "bundle.rejected"]
    assert len(rejected) == len(cases)
    assert await rig.applier.handle("offers", good) == "applied"  # a good one still applies
    assert await rig.offers() == ["OFF-NEW"]


async def test_consents_delta_upserts_and_forgets(rig: Rig) -> None:
    other = "c_" + "b" * 32
    await rig.db.call(Store.upsert_consents, [Consent(other, True, "vip")], 1.0)
    body = {
        "upsert": [{"customer_ref": REF, "personalisation": True, "segment": "coffee"}],
        "forget": [other],
    }
    assert await rig.applier.handle("consents", rig.signer.make("consents", 1, body)) == "applied"
    assert await rig.db.call(Store.consent, REF) == Consent(REF, True, "coffee")
    assert await rig.db.call(Store.consent, other) is None
    # What was applied lives in the consents table only: no copy of refs to outlive a forget.
    tally = '{"upsert": 1, "forget": 1, "snapshot": false}'
    assert await rig.db.call(applied_body, "consents") == tally
    raw = {"upsert": [{"customer_ref": "4000000000001", "personalisation": True}]}
    outcome = await rig.applier.handle("consents", rig.signer.make("consents", 2, raw))
    assert outcome.startswith("rejected:")  # raw identifiers are refused: keyed hashes only
    assert await rig.db.call(applied_version, "consents") == 1


async def test_a_missed_consents_delta_is_noticed_and_a_snapshot_recovers(rig: Rig) -> None:
    ann, bea = "c_" + "a" * 32, "c_" + "b" * 32
    v1 = {"upsert": [{"customer_ref": ann, "personalisation": True}]}
    assert await rig.applier.handle("consents", rig.signer.make("consents", 1, v1)) == "applied"
    # v2 ("forget Ann") never arrives; v3 must not be applied over the gap, or Ann stays.
    v3 = {"upsert": [{"customer_ref": bea, "personalisation": True}]}
    outcome = await rig.applier.handle("consents", rig.signer.make("consents", 3, v3))
    assert "consents delta v3 does not follow the applied v1: v2..v2 missing" in outcome
    assert await rig.db.call(Store.consent, bea) is None
    # The cloud answers the bundle.rejected with a snapshot: everyone on record, and only them.
    snapshot = {**v3, "snapshot": True}
    assert await rig.applier.handle("consents", rig.signer.make("consents", 4, snapshot)) == (
        "applied"
    )
    assert await rig.db.call(Store.consent, ann) is None
    assert await rig.db.call(Store.consent, bea) == Consent(bea, True, None)
    assert await rig.db.call(applied_version, "consents") == 4


async def test_a_model_is_downloaded_verified_and_swapped_in(rig: Rig, tmp_path: Path) -> None:
    from tests.test_decision import make_model

    model = make_model(tmp_path / "v1.onnx", version="v1").read_bytes()
    artifact = rig.artifacts.artifact("nba-1.onnx", model)
    bundle = rig.signer.make("model", 1, {"name": "nba", "model_version": "1"}, artifact=artifact)
    assert await rig.applier.handle("model", bundle) == "applied"
    assert (rig.models / "nba.onnx").read_bytes() == model
    # The right bytes of the wrong thing: refused before the file that serves is touched.
    for name, wrong, reason in (
        ("junk.onnx", b"ONNX-v2" * 1000, "not a loadable ONNX model"),
        ("spec.onnx", make_model(tmp_path / "s.onnx", spec="other").read_bytes(), "feature spec"),
    ):
        bundle2 = rig.signer.make(
            "model", 2, {"name": "nba"}, artifact=rig.artifacts.artifact(name, wrong)
        )
        outcome = await rig.applier.handle("model", bundle2)
        assert outcome.startswith("rejected: artifact refused:"), outcome
        assert reason in outcome
        assert (rig.models / "nba.onnx").read_bytes() == model
    newer = make_model(tmp_path / "v2.onnx", version="v2").read_bytes()
    artifact2 = rig.artifacts.artifact("nba-2.onnx", newer)
    for fault, reason in (("flip", "does not match"), ("truncate", "bytes"), (503, "download")):
        rig.artifacts.fault("nba-2.onnx", fault)  # type: ignore[arg-type]
        bundle2 = rig.signer.make("model", 2, {"name": "nba"}, artifact=artifact2)
        outcome = await rig.applier.handle("model", bundle2)
        assert outcome.startswith("rejected:"), fault
        assert reason in outcome, f"{fault}: {outcome}"
        assert (rig.models / "nba.onnx").read_bytes() == model  # the old model still serves
    rig.artifacts.fault("nba-2.onnx", None)
    assert await rig.applier.handle("model", bundle2) == "applied"
    assert (rig.models / "nba.onnx").read_bytes() == newer
    assert not list(rig.models.glob("*.incoming"))
    no_artifact = rig.signer.make("model", 3, {"name": "nba"})
    assert "needs an artifact" in await rig.applier.handle("model", no_artifact)
    traversal = rig.signer.make("model", 4, {"name": "../evil"}, artifact=artifact2)
    assert (await rig.applier.handle("model", traversal)).startswith("rejected:")


async def test_config_bundles_are_recorded(rig: Rig) -> None:
    message = rig.signer.make("config", 3, {"settings": {"exploration": 0.1}})
    assert await rig.applier.handle("config", message) == "applied"
    assert await rig.db.call(applied_version, "config") == 3
    # Weather is acted on (a decision feature): a value it cannot use is refused before commit.
    bad = rig.signer.make("config", 4, {"settings": {"weather": {"temp_c": None}}})
    outcome = await rig.applier.handle("config", bad)
    assert outcome.startswith("rejected:"), outcome
    assert "temp_c must be number" in outcome
    assert await rig.db.call(applied_version, "config") == 3
