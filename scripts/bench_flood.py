"""`scripts/bench.py flood`: durable ingest through MQTT, its CPU, and a victim kiosk in a flood.

Phases, one daemon (the demo store) against one Mosquitto with the shipped flow control:

1. The floor: a bare paho subscriber (MQTT 5 as the gateway, QoS 1, a separate process) counts
   the same burst of events the gateway will take; its CPU per message is the floor.
2. Ingest: one lane publishes the burst as fast as paho can (its budget lifted: the figure is the
   intake, not the budget); the gateway commits each event durably (transaction priority,
   fsync) before it acknowledges it. Events per second from the first publish to the last ack,
   the gateway's CPU per event, and events the broker acknowledged that were never committed.
3. The victim: kiosk-2 identifies twice a second, alone, then while kiosk-1 floods (valid,
   garbage and oversized messages, QoS 0 and 1, at `FLOOD_RATE`), then until its answers are
   back to normal after the flood (the recovery). The gateway's log lines about trouble (warning
   and above) during the flood.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.codecs.topics import Topics  # noqa: E402
from simulators.broker import Mosquitto  # noqa: E402
from simulators.daemon import GatewayProcess, cpu_s, rss_mib, settings  # noqa: E402
from simulators.flood import Flood, Message, event_burst, kiosk_flood  # noqa: E402
from simulators.population import CUSTOMERS  # noqa: E402
from simulators.store import SimulatedStore  # noqa: E402

__all__ = ["bench_flood"]

STORE = "demo-store"
FLOOD_RATE = 5000.0  # messages per second from the flooding kiosk
VICTIM_RATE = 2.0  # identifications per second from kiosk-2 (its budget: 2/s)
_FLOOR = textwrap.dedent(
    """
    import resource, sys
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    port, topic, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    seen = 0
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    def on_subscribe(client, *_):
        global start
        start = cpu()
        print("ready", flush=True)
    def on_message(client, userdata, message):
        global seen
        seen += 1
        if seen == count:
            client.disconnect()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="floor", protocol=mqtt.MQTTv5)
    client.on_subscribe, client.on_message = on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_forever()
    print(cpu() - start, flush=True)
    """
)


def _trouble_lines(log: Path) -> list[str]:
    """The daemon's log lines about trouble (warning and above): the victim's own decisions,
    logged at info one per decision, are its normal service, not the flood's."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if '"level": "info"' not in line]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _floor_cpu_us(port: int, count: int) -> float:
    """CPU per message of a bare paho subscriber that counts `count` events."""
    topics = Topics(STORE)
    floor = subprocess.Popen(
        [sys.executable, "-c", _FLOOR, str(port), topics.device_events("pos", "pos-9"), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert floor.stdout is not None
    floor.stdout.readline()  # ready
    with Flood("127.0.0.1", port, "floor-publisher") as flood:
        flood.publish_all(event_burst(topics, "pos", "pos-9", count))
        out, _ = floor.communicate(timeout=300)
    return float(out.strip()) / count * 1e6


def _ingest(port: int, process: GatewayProcess, state: Path, count: int) -> dict[str, float]:
    topics = Topics(STORE)
    with Flood("127.0.0.1", port, "pos-1-backlog") as flood:
        flood.subscribe(topics.device_events_ack("pos", "pos-1"))
        time.sleep(0.3)
        cpu_before, start = cpu_s(process.pid), time.monotonic()
        flood.publish_all(event_burst(topics, "pos", "pos-1", count))
        acked: set[str] = set()
        read = 0
        deadline = time.monotonic() + 600
        while len(acked) < count and time.monotonic() < deadline:
            batch = flood.received[read:]
            read += len(batch)
            for _, payload in batch:
                acked.update(json.loads(payload)["ids"])
            time.sleep(0.01)
        took = time.monotonic() - start
        cpu = cpu_s(process.pid) - cpu_before
        flood.wait_acknowledged(count, timeout=30)
        broker_acked = set(flood.acknowledged)
    with sqlite3.connect(f"file:{state / 'gateway.sqlite3'}?mode=ro", uri=True) as db:
        committed = {i for (i,) in db.execute("SELECT id FROM outbox WHERE type = 'pos.scan'")}
    return {
        "flood_ingest_events_per_s": len(acked) / took,
        "flood_cpu_us_per_event": cpu / max(1, len(acked)) * 1e6,
        "flood_dropped_after_ack": float(len(broker_acked - committed - acked)),
    }


def _paced(messages: Iterator[tuple[str, Message]], rate: float, stop: threading.Event) -> Any:
    """The flood at `rate` messages per second, in 10 ms slices, until `stop` is set."""
    start = time.monotonic()
    for sent, item in enumerate(messages, 1):
        if stop.is_set():
            return
        if sent % max(1, int(rate / 100)) == 0:
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield item


async def _victim(port: int, seconds: float, sink: list[tuple[float, float]]) -> None:
    """kiosk-2 identifies at VICTIM_RATE for `seconds`: (sent at, latency ms) into `sink`."""
    async with SimulatedStore("127.0.0.1", port, STORE, "victim") as store:
        topic = store.topics.kiosk_content("kiosk-2")
        kiosk = store.kiosk("kiosk-2")
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            sent = time.monotonic()
            rid = await kiosk.identify("loyalty", CUSTOMERS[n % len(CUSTOMERS)].loyalty)
            try:
                async with asyncio.timeout(30):
                    answer = (await store.answers(rid, [topic]))[topic]
                sink.append((sent, (answer.at - sent) * 1000))
            except TimeoutError:
                sink.append((sent, math.inf))
            n += 1
            await asyncio.sleep(max(0.0, start + n / VICTIM_RATE - time.monotonic()))


def _victim_in_flood(
    port: int, process: GatewayProcess, seconds: float, baseline_p99: float
) -> dict[str, float]:
    topics = Topics(STORE)
    stop = threading.Event()
    lines_before = len(_trouble_lines(process.output))
    rss_before = rss_mib(process.pid)
    samples: list[tuple[float, float]] = []
    after: list[tuple[float, float]] = []
    with Flood("127.0.0.1", port, "kiosk-1-flood") as flood:
        endless = kiosk_flood(topics, "kiosk-1", 10**9)
        publisher = threading.Thread(
            target=flood.publish_all, args=(_paced(endless, FLOOD_RATE, stop),), daemon=True
        )
        flood_start = time.monotonic()
        publisher.start()
        asyncio.run(_victim(port, seconds, samples))
        stop.set()
        publisher.join()
        flood_end = time.monotonic()
        rate = flood.published / (flood_end - flood_start)
    log_lines = len(_trouble_lines(process.output)) - lines_before
    # Recovery: from the flood's end until an answer is as fast as before the flood.
    asyncio.run(_victim(port, 10.0, after))
    back = next((at for at, ms in after if ms <= baseline_p99 + 1.0), math.inf)
    return {
        "flood_victim_p99_ms": _p99([ms for _, ms in samples]),
        "flood_victim_answered": float(sum(math.isfinite(ms) for _, ms in samples)),
        "flood_victim_sent": float(len(samples)),
        "flood_rate_msgs_per_s": rate,
        "flood_recovery_s": max(0.0, back - flood_end),
        "flood_log_lines": float(log_lines),
        "flood_rss_growth_mib": rss_mib(process.pid) - rss_before,
    }


def bench_flood(quick: bool) -> dict[str, float]:
    count = 20_000 if quick else 100_000
    victim_s = 15.0 if quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            floor = _floor_cpu_us(broker.port, count)
            overrides = settings(
                store_port=broker.port,
                state_dir=work / "state",
                logging__level="info",
                decision__model_file="",
                budgets__pos_per_s="1000000",
                budgets__pos_burst="10000000",
            )
            process = GatewayProcess(REPO / "examples" / "demo.toml", work, overrides=overrides)
            process.start()
            try:
                process.wait_ready()
                figures = _ingest(broker.port, process, work / "state", count)
                figures["paho_floor_cpu_us_per_msg"] = floor
                figures["flood_cpu_ratio_to_floor"] = figures["flood_cpu_us_per_event"] / floor
                alone: list[tuple[float, float]] = []
                asyncio.run(_victim(broker.port, victim_s, alone))
                figures["victim_p99_ms"] = _p99([ms for _, ms in alone])
                figures["victim_p50_ms"] = statistics.median(ms for _, ms in alone)
                figures |= _victim_in_flood(
                    broker.port, process, victim_s, figures["victim_p99_ms"]
                )
            finally:
                process.stop()
    return figures


if __name__ == "__main__":
    for key, value in bench_flood("--quick" in sys.argv).items():
        print(f"{key:40s} {value:10.3f}")
