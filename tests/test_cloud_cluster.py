"""The cloud link against a clustered cloud: a 3-node nats-server cluster (JetStream, 3 replicas,
MQTT on each node), the daemon given all three addresses, the node it drains to killed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.runtime.app import DATABASE_NAME
from gateway.runtime.clock import SystemClock
from gateway.runtime.metrics import Metrics
from gateway.store import AsyncStore, Store
from gateway.sync.outbox import Outbox
from simulators.broker import Mosquitto
from simulators.cloud import BundleSigner, CloudReceiver
from simulators.daemon import GatewayProcess, settings
from simulators.nats import NatsCluster, find_nats_server
from tests.conftest import DEMO_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
STORE = "demo-store"
BACKLOG = 50_000


async def _backlog(state_dir: Path) -> set[str]:
    """An outage's backlog in the gateway's own database, as its outbox writes it."""
    db = AsyncStore(state_dir / DATABASE_NAME)
    await db.open()
    outbox = Outbox(db, STORE, SystemClock(), Metrics())
    classes = ("transaction", "decision", "telemetry", "telemetry")
    rows = [
        outbox.row("pos.scan", classes[n % 4], {"n": n, "sku": f"SKU-{n % 997:04d}"})
        for n in range(BACKLOG)
    ]
    await db.call(Store.append_outbox, rows, False)
    await db.close()
    return {row.id for row in rows}


def _log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.log(tail=None).splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def _publish_bundle(signer: BundleSigner, ports: list[int]) -> None:
    """An offers bundle, not retained: it reaches the gateway only through its persistent
    session (queued while the link moves, or live once it is back)."""
    catalog = {"offers": [{"id": "OFF-CLUSTER", "title": "After the failover"}]}
    payload = signer.make("offers", 1, catalog)
    error: Exception | None = None
    for attempt in range(6):  # a node may stall while the cluster elects new leaders
        port = ports[attempt % len(ports)]
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="publisher", timeout=10) as c:
                await BundleSigner.publish(c, STORE, "offers", payload, retain=False)
        except aiomqtt.MqttError as exc:
            error = exc
            await asyncio.sleep(0.5)
        else:
            return
    raise RuntimeError(f"could not publish the bundle: {error}")


def _connected_to(gateway: GatewayProcess) -> list[str]:
    """The cloud nodes the link connected to, in order."""
    return [e["broker"] for e in _log_lines(gateway) if e.get("event") == "cloud connected"]


@pytest.mark.timeout(120)
async def test_a_drain_moves_to_another_node_when_its_node_is_killed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed; install it with: apt-get install -y nats-server")
    (tmp_path / "state").mkdir()
    ids = await _backlog(tmp_path / "state")
    cluster = NatsCluster(tmp_path / "cloud", size=3)
    signer = BundleSigner()
    await asyncio.to_thread(cluster.start)
    try:
        # The cloud's consumer fails over too, should its node be the one killed.
        receiver = CloudReceiver("127.0.0.1", cluster.ports[0], other_ports=cluster.ports[1:])
        async with receiver:
            overrides = settings(
                store_port=broker.port,
                state_dir=tmp_path / "state",
                cloud_port=cluster.ports,
                bundle_key=signer.public_key_text,
                # The shipped reconnect policy, not the tests' quick one.
                cloud__reconnect_min_s="1",
                cloud__reconnect_max_s="32",
                # Small batches: the kill lands with several in flight.
                cloud__batch_max_bytes="8000",
            )
            gateway = GatewayProcess(DEMO_CONFIG, tmp_path, overrides=overrides)
            gateway.start()
            try:
                await asyncio.to_thread(gateway.wait_ready)
                async with asyncio.timeout(30):
                    await receiver.wait_for_count(BACKLOG // 3)
                (first,) = _connected_to(gateway)
                victim = cluster.node_on(int(first.rsplit(":", 1)[1]))
                at_kill = receiver.count
                killed = time.monotonic()
                await asyncio.to_thread(victim.kill)
                survivors = [p for p in cluster.ports if p != victim.port]
                publish = asyncio.create_task(_publish_bundle(signer, survivors))
                async with asyncio.timeout(30):
                    while len(_connected_to(gateway)) < 2:  # noqa: ASYNC110 - the log is a file
                        await asyncio.sleep(0.05)
                moved_s = time.monotonic() - killed
                async with asyncio.timeout(45):
                    await publish
                    await receiver.wait_until(lambda: ids <= receiver.first_seen.keys())
                    await receiver.wait_until(lambda: bool(_bundle_outcomes(receiver)))
                await asyncio.sleep(1.0)  # late duplicates, if any, arrive now
            finally:
                assert gateway.stop() == 0
    finally:
        await asyncio.to_thread(cluster.stop)
    nodes = _connected_to(gateway)
    outcomes = _bundle_outcomes(receiver)
    received = set(receiver.first_seen) - {e["id"] for e in outcomes}
    counts = (
        f"backlog {BACKLOG}, received {len(received)} distinct ({receiver.received} with"
        f" {receiver.duplicates} duplicates), lost {len(ids - received)}, unknown"
        f" {len(received - ids)}; bundle {[(e['type'], e['data']) for e in outcomes]};"
        f" killed {first} at {at_kill} received, link on {nodes[1]}"
        f" {moved_s:.1f} s later; receiver connects {receiver.connects}; link errors"
        f" {[e['error'] for e in _log_lines(gateway) if e.get('event') == 'cloud unreachable']}"
    )
    assert received == ids, counts
    assert [(e["type"], e["data"]) for e in outcomes] == [
        ("bundle.applied", {"kind": "offers", "version": 1})
    ], counts
    assert nodes[0] != nodes[1], counts
    # A short backoff (reconnect_min_s), or the answer timeout if the first node tried hangs
    # while the cluster elects new leaders; not the node's whole outage.
    assert moved_s < 15, counts
    assert receiver.rejected == [], counts
    # The cloud link's socket errors are its own, not the store broker's (which never failed).
    lines = _log_lines(gateway)
    assert all(e["component"] == "cloud" for e in lines if e.get("logger") == "drivers.cloud")
    troubles = [e for e in lines if e.get("level") in ("warning", "error")]
    assert troubles, "the kill was not noticed"
    assert all(e["component"] == "cloud" for e in troubles), troubles
    print(counts)


def _bundle_outcomes(receiver: CloudReceiver) -> list[dict[str, Any]]:
    return [e for e in receiver.events.values() if e["type"].startswith("bundle.")]
