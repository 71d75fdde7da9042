"""`scripts/bench.py tablet`: serve request -> card on the tablet, 20 tablets at 1 request/s each,
beside the broker's own round trip measured in the same run. `scripts/bench.py app`: an opted-in
app's BLE zone entry -> its in-app message at the cloud receiver.

Each tablet is its own MQTT client (as in a store), serves a consenting customer or an anonymous
one in turn, and the figure is the time from its publish to its card's arrival. The broker's
round trip (`broker_rtt_p99_ms`) is an echo client making the same two hops with no work in
between: `tablet_p99_ms` minus it is what the gateway adds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_figures import percentile as _percentile  # noqa: E402 - beside this file

from gateway.codecs.ids import uuid7  # noqa: E402
from simulators.beacons import ScannerNodes, World  # noqa: E402
from simulators.broker import Mosquitto  # noqa: E402
from simulators.cloud import Cloud  # noqa: E402
from simulators.daemon import GatewayProcess, settings  # noqa: E402
from simulators.population import CUSTOMERS  # noqa: E402
from simulators.tablet import Tablet  # noqa: E402

__all__ = ["bench_app", "bench_tablet"]

TABLETS = 20
RATE_PER_TABLET = 1.0
DEMO = REPO / "examples" / "demo.toml"


async def _measure(port: int, seconds: float) -> list[float]:
    """All tablets at once; the latency of every request, in ms."""
    arrivals: list[float] = []
    start = time.monotonic() + 1.0

    async def one(n: int) -> None:
        # Tablets are not in step: each starts at its own phase of the second.
        phase = start + n / (TABLETS * RATE_PER_TABLET)
        async with Tablet("127.0.0.1", port, "demo-store", f"tablet-{n + 1}") as tablet:
            count = int(seconds * RATE_PER_TABLET)
            session = uuid7()
            for i in range(count):
                delay = phase + i / RATE_PER_TABLET - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.monotonic()
                if i % 5 == 0:  # a new customer every fifth request
                    session = uuid7()
                    customer = CUSTOMERS[i // 5 % len(CUSTOMERS)]
                    card = tablet.serve(session, "A-1", method="loyalty", value=customer.loyalty)
                else:
                    card = tablet.serve(session, "A-1", basket=["coffee"])
                async with asyncio.timeout(10):
                    await card
                arrivals.append((time.monotonic() - sent) * 1000)

    await asyncio.gather(*(one(n) for n in range(TABLETS)))
    return arrivals


def bench_tablet(
    quick: bool, broker_rtt: Callable[[int, float, int], list[float]]
) -> dict[str, float]:
    """broker_rtt(port, rate, count): scripts/bench.py's echo round trip, in ms."""
    seconds = 20.0 if quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-tablet-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            tablets = {f"tablets.tablet-{n}.zone": '"coffee"' for n in range(1, TABLETS + 1)}
            base = settings(
                store_port=broker.port, state_dir=work / "state", logging__level="warning"
            )
            gateway = GatewayProcess(DEMO, work, overrides=base | tablets)
            gateway.start()
            try:
                gateway.wait_ready()
                asyncio.run(_measure(broker.port, 3.0))  # warm up: model loaded, caches filled
                latencies = asyncio.run(_measure(broker.port, seconds))
                rtts = broker_rtt(broker.port, TABLETS * RATE_PER_TABLET, len(latencies))
            finally:
                gateway.stop()
    return {
        "tablet_requests": float(len(latencies)),
        "tablet_p50_ms": statistics.median(latencies),
        "tablet_p99_ms": _percentile(latencies, 99),
        "tablet_max_ms": max(latencies),
        "broker_rtt_p99_ms": _percentile(rtts, 99),
        "tablet_added_p99_ms": _percentile(latencies, 99) - _percentile(rtts, 99),
    }


async def _app_run(port: int, cloud: Cloud, seconds: float) -> list[float]:
    """The demo's shoppers (the consenting ones advertise their app's rotating identifier)
    heard by ESPresense nodes; for each in-app message, the time from the zone entry that
    caused it (its presence.zone event's ts) to its arrival at the cloud, in ms."""
    world = World(start=time.time(), seed=11, devices=12)
    async with ScannerNodes("127.0.0.1", port, world) as nodes:
        await nodes.run(until=time.time() + seconds)
    await asyncio.sleep(3.0)  # the last messages reach the cloud
    receiver = cloud.receiver
    entries: dict[str, list[float]] = {}
    for event in receiver.events.values():
        data = event["data"]
        if event["type"] == "presence.zone" and data["kind"] == "enter" and data["identified"]:
            entries.setdefault(data["subject"], []).append(event["ts"])
    latencies = []
    for event_id, event in receiver.events.items():
        if event["type"] != "app.message":
            continue
        before = [t for t in entries.get(event["data"]["customer"], ()) if t <= event["ts"]]
        if before:
            latencies.append((receiver.first_seen[event_id] - max(before)) * 1000)
    return latencies


def bench_app(quick: bool) -> dict[str, float]:
    seconds = 60.0 if quick else 240.0
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:

            async def run() -> list[float]:
                async with Cloud(work / "cloud", keep_events=True) as cloud:
                    base = settings(
                        store_port=broker.port,
                        state_dir=work / "state",
                        cloud_port=cloud.port,
                        bundle_key=cloud.signer.public_key_text,
                        logging__level="warning",
                    )
                    # Every entry may message (the caps are the feature, not the figure).
                    caps = {"app.per_visit": "20", "app.per_day": "50", "app.visit_gap_s": "60"}
                    gateway = GatewayProcess(DEMO, work, overrides=base | caps)
                    gateway.start()
                    try:
                        await asyncio.to_thread(gateway.wait_ready)
                        return await _app_run(broker.port, cloud, seconds)
                    finally:
                        await asyncio.to_thread(gateway.stop)

            latencies = asyncio.run(run())
    if not latencies:
        raise RuntimeError("no in-app message reached the cloud")
    return {
        "app_messages": float(len(latencies)),
        "app_p50_ms": statistics.median(latencies),
        "app_p99_ms": _percentile(latencies, 99),
        "app_max_ms": max(latencies),
    }
