"""The daemon and the cloud: outages, priority drain, disk budget, bundles, end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from simulators.broker import Mosquitto
from simulators.cloud import Cloud
from simulators.daemon import GatewayProcess, settings
from simulators.events import EventSource
from simulators.population import CUSTOMERS
from simulators.store import SimulatedStore
from tests.conftest import DEMO_CONFIG

pytestmark = pytest.mark.e2e
STORE = "demo-store"


def _gateway(tmp_path: Path, store: Mosquitto, cloud: Cloud, **extra: str) -> GatewayProcess:
    overrides = settings(
        store_port=store.port,
        state_dir=tmp_path / "state",
        cloud_port=cloud.port,
        bundle_key=cloud.signer.public_key_text,
        **({"decision__exploration": "0"} | extra),  # the rules' greedy pick, as conftest's
    )
    process = GatewayProcess(DEMO_CONFIG, tmp_path, overrides=overrides)
    process.start()
    process.wait_ready()
    return process


async def test_backlog_builds_during_an_outage_then_drains_in_priority_order(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        gateway = _gateway(tmp_path, broker, cloud)
        async with EventSource("127.0.0.1", broker.port, STORE) as lane:
            await lane.stream(rate=300, duration_s=0.5)
            async with asyncio.timeout(10):
                await lane.settled()
                await cloud.receiver.wait_until(
                    lambda: lane.acked <= cloud.receiver.first_seen.keys()
                )
            await cloud.down()
            await lane.stream(rate=500, duration_s=2.0, telemetry_share=0.7)
            async with asyncio.timeout(10):
                await lane.settled()  # accepted while the cloud is away
            backlog_start = len(cloud.receiver.priorities)
            waiting = lane.acked - cloud.receiver.first_seen.keys()
            assert len(waiting) >= 900
            await cloud.up()
            async with asyncio.timeout(30):
                await cloud.receiver.wait_until(
                    lambda: lane.acked <= cloud.receiver.first_seen.keys()
                )
        assert gateway.stop() == 0
    drained = cloud.receiver.priorities[backlog_start:]
    assert set(drained) == {"transaction", "telemetry"}
    assert cloud.receiver.priority_inversions(backlog_start) == 0  # transactions first
    assert cloud.receiver.rejected == []


async def test_disk_budget_sheds_telemetry_and_keeps_every_transaction(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with Cloud(tmp_path / "cloud") as cloud:
        await cloud.down()
        gateway = _gateway(tmp_path, broker, cloud, outbox__max_mb="1")
        async with EventSource("127.0.0.1", broker.port, STORE) as lane:
            transactions, telemetry = [], []
            for n in range(300):  # ~3 MB of telemetry against a 1 MB budget
                telemetry.append(
                    await lane.send("pos.scan", "telemetry", {"n": n, "pad": "x" * 10_000})
                )
                if n % 10 == 0:
                    transactions.append(await lane.send("pos.transaction", "transaction", {"n": n}))
            async with asyncio.timeout(20):
                await lane.settled()
            await cloud.up()
            async with asyncio.timeout(30):
                await cloud.receiver.wait_until(
                    lambda: set(transactions) <= cloud.receiver.first_seen.keys()
                )
                await asyncio.sleep(1.0)  # let the last telemetry arrive too
        assert gateway.stop() == 0
    received = cloud.receiver.first_seen.keys()
    kept = [t for t in telemetry if t in received]
    assert 50 <= len(kept) <= 110  # about 1 MB of 10 kB events survived
    assert kept == telemetry[-len(kept) :]  # the oldest went first
    assert '"disk budget reached: oldest telemetry shed"' in gateway.log(tail=None)


async def test_bundles_through_the_cloud_broker_change_what_the_kiosk_shows(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        Cloud(tmp_path / "cloud") as cloud,
        SimulatedStore("127.0.0.1", broker.port, STORE) as floor,
    ):
        gateway = _gateway(tmp_path, broker, cloud)
        publisher = cloud.receiver  # the cloud side publishes with its own client below
        kiosk = floor.topics.kiosk_content("kiosk-1")

        async def shown() -> str:
            rid = await floor.kiosk("kiosk-1").identify("loyalty", CUSTOMERS[4].loyalty)
            async with asyncio.timeout(5):
                content = (await floor.answers(rid, [kiosk]))[kiosk].content
            assert content.offer is not None
            return content.offer.id

        assert await shown() != "OFF-CLOUD"
        catalog = {"offers": [{"id": "OFF-CLOUD", "title": "From the cloud", "priority": 100}]}
        async with cloud.client("bundle-publisher") as client:
            forged = Cloud(tmp_path / "forger").signer.make("offers", 9, catalog, store=STORE)
            await cloud.signer.publish(client, STORE, "offers", forged)
            async with asyncio.timeout(10):
                await publisher.wait_until(
                    lambda: any(
                        e.get("type") == "bundle.rejected" for e in publisher.events.values()
                    )
                )
            assert await shown() != "OFF-CLOUD"
            good = cloud.signer.make("offers", 1, catalog, store=STORE)
            await cloud.signer.publish(client, STORE, "offers", good)
            async with asyncio.timeout(10):
                await publisher.wait_until(
                    lambda: any(
                        e.get("type") == "bundle.applied" for e in publisher.events.values()
                    )
                )
        assert await shown() == "OFF-CLOUD"
        assert gateway.stop() == 0
    rejected = next(e for e in publisher.events.values() if e["type"] == "bundle.rejected")
    assert "signature does not verify" in json.dumps(rejected["data"])


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_uplink_and_bundles_on_a_nats_cluster_engine(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The same uplink, unchanged, against nats-server's MQTT (JetStream-backed sessions)."""
    async with Cloud(tmp_path / "cloud", engine="nats") as cloud:
        gateway = _gateway(tmp_path, broker, cloud)
        receiver = cloud.receiver
        async with EventSource("127.0.0.1", broker.port, STORE) as lane:
            await lane.stream(rate=300, duration_s=1.0)
            async with asyncio.timeout(15):
                await lane.settled()
                await receiver.wait_until(lambda: lane.acked <= receiver.first_seen.keys())
            # A clean outage: nothing in flight when it starts. (Killing nats-server 2.9.10 with
            # a QoS 1 batch just PUBACKed lost it for the subscriber once in a few runs: the
            # broker's durability, not the outbox's; docs/cloud.md says what to configure.)
            await cloud.down()
            await lane.stream(rate=300, duration_s=1.0)
            async with asyncio.timeout(10):
                await lane.settled()
            await cloud.up()
            async with asyncio.timeout(30):
                await receiver.wait_until(lambda: lane.acked <= receiver.first_seen.keys())
            catalog = {"offers": [{"id": "OFF-NATS", "title": "Via NATS"}]}
            async with cloud.client("bundle-publisher") as client:
                await cloud.signer.publish(
                    client, STORE, "offers", cloud.signer.make("offers", 1, catalog)
                )
            async with asyncio.timeout(15):
                await cloud.receiver.wait_until(
                    lambda: any(
                        e.get("type") == "bundle.applied" for e in cloud.receiver.events.values()
                    )
                )
        assert gateway.stop() == 0
    assert cloud.receiver.rejected == []


async def test_uplink_over_tls_with_a_client_certificate_and_a_per_store_acl(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """As AWS IoT Core and EMQX run it: mutual TLS, the certificate names the store."""
    async with Cloud(tmp_path / "cloud", tls=True) as cloud:
        cert, key = cloud.client_cert(STORE)
        tls = {
            "cloud__tls": "true",
            "cloud__ca_file": str(cloud.ca_file),
            "cloud__cert_file": str(cert),
            "cloud__key_file": str(key),
        }
        gateway = _gateway(tmp_path, broker, cloud, **tls)
        async with EventSource("127.0.0.1", broker.port, STORE) as lane:
            await lane.stream(rate=200, duration_s=0.5)
            async with asyncio.timeout(15):
                await lane.settled()
                await cloud.receiver.wait_until(
                    lambda: lane.acked <= cloud.receiver.first_seen.keys()
                )
        assert gateway.stop() == 0
        # A gateway whose certificate names another store may not publish as this one.
        other_cert, other_key = cloud.client_cert("another-store")
        impostor = _gateway(
            tmp_path / "impostor",
            broker,
            cloud,
            **{**tls, "cloud__cert_file": str(other_cert), "cloud__key_file": str(other_key)},
        )
        before = cloud.receiver.count
        async with EventSource("127.0.0.1", broker.port, STORE, device_id="pos-2") as lane2:
            await lane2.stream(rate=100, duration_s=0.3)
            async with asyncio.timeout(10):
                await lane2.settled()
        await asyncio.sleep(1.0)
        assert impostor.stop() == 0
        assert cloud.receiver.count == before  # denied by the broker's ACL


async def test_a_kiosk_tap_rewards_its_decision_and_the_outcome_reaches_the_cloud(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        Cloud(tmp_path / "cloud") as cloud,
        SimulatedStore("127.0.0.1", broker.port, STORE) as floor,
    ):
        gateway = _gateway(tmp_path, broker, cloud)
        topic = floor.topics.kiosk_content("kiosk-1")
        rid = await floor.kiosk("kiosk-1").identify("loyalty", CUSTOMERS[4].loyalty)
        async with asyncio.timeout(5):
            content = (await floor.answers(rid, [topic]))[topic].content
        async with EventSource(
            "127.0.0.1", broker.port, STORE, kind="kiosk", device_id="kiosk-1"
        ) as tap:
            await tap.send("kiosk.tap", "reward", {"decision_id": content.decision_id})
            receiver = cloud.receiver
            async with asyncio.timeout(10):
                await receiver.wait_until(
                    lambda: f"{content.decision_id}:outcome" in receiver.events
                )
        assert gateway.stop() == 0
    outcome = receiver.events[f"{content.decision_id}:outcome"]
    assert outcome["data"]["reward"] == 1.0
    assert outcome["data"]["why"] == "kiosk.tap"
    decision = receiver.events[content.decision_id]
    assert decision["type"] == "decision"
    assert 0 < decision["data"]["propensity"] <= 1


async def test_a_model_bundle_is_downloaded_and_then_decides(
    tmp_path: Path, broker: Mosquitto
) -> None:
    from tests.test_decision import _weights, make_model

    async with (
        Cloud(tmp_path / "cloud") as cloud,
        SimulatedStore("127.0.0.1", broker.port, STORE) as floor,
    ):
        gateway = _gateway(
            tmp_path,
            broker,
            cloud,
            cloud__artifact_ca_file=str(cloud.ca_file),
            decision__holdout_share="0",
            decision__exploration="0",  # the greedy pick shows which model decided
            decision__promotion_min_ess="0",  # no gate: test_learning.py tests it
        )
        model = make_model(tmp_path / "m.onnx", _weights(offer_produce=6.0), version="bundle-v1")
        artifact = cloud.add_artifact("nba-bundle-v1.onnx", model.read_bytes())
        async with cloud.client("bundle-publisher") as client:
            bundle = cloud.signer.make("model", 1, {"name": "nba"}, store=STORE, artifact=artifact)
            await cloud.signer.publish(client, STORE, "model", bundle)
        receiver = cloud.receiver
        async with asyncio.timeout(15):
            await receiver.wait_until(
                lambda: any(e.get("type") == "bundle.applied" for e in receiver.events.values())
            )
        topic = floor.topics.kiosk_content("kiosk-1")
        rid = await floor.kiosk("kiosk-1").identify("loyalty", CUSTOMERS[2].loyalty)
        async with asyncio.timeout(5):
            content = (await floor.answers(rid, [topic]))[topic].content
            await receiver.wait_until(lambda: content.decision_id in receiver.events)
        assert gateway.stop() == 0
    decision = receiver.events[content.decision_id]["data"]
    assert (decision["policy"], decision["model_version"]) == ("nba", "bundle-v1")
    assert content.offer is not None
    assert content.offer.category == "produce"  # what the new model prefers
    assert (tmp_path / "state" / "models" / "nba.onnx").read_bytes() == model.read_bytes()
