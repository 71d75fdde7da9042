#!/usr/bin/env python3
"""Benchmarks: print figures and write them as JSON. Not tests: nothing here passes or fails.

    scripts/bench.py e2e [--quick] [--json bench.json]

Figures are measured against a baseline in the same run where one makes sense (these machines are
noisy): `e2e_p99_ms` should be read next to `broker_rtt_p99_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo.toml"
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
from bench_console import bench_console  # noqa: E402 - scripts/bench_console.py
from bench_figures import percentile as _percentile  # noqa: E402 - scripts/bench_figures.py
from bench_fleet import bench_fleet  # noqa: E402 - scripts/bench_fleet.py, beside this file
from bench_flood import bench_flood  # noqa: E402 - scripts/bench_flood.py, beside this file
from bench_learn import bench_learn  # noqa: E402 - scripts/bench_learn.py
from bench_lift import bench_lift  # noqa: E402 - scripts/bench_lift.py
from bench_qr import bench_qr  # noqa: E402 - scripts/bench_qr.py
from bench_soak import bench_soak  # noqa: E402 - scripts/bench_soak.py
from bench_store import bench_store  # noqa: E402 - scripts/bench_store.py
from bench_touchpoints import bench_app, bench_tablet  # noqa: E402 - bench_touchpoints.py

from drivers.mqtt import NO_DELAY  # noqa: E402
from gateway.decision.offers import upsert_offers  # noqa: E402
from gateway.runtime.clock import SystemClock  # noqa: E402
from gateway.runtime.metrics import Metrics  # noqa: E402
from gateway.runtime.supervisor import Handle  # noqa: E402
from gateway.store import AsyncStore, OutboxRow, Store  # noqa: E402
from gateway.sync.outbox import Outbox  # noqa: E402
from simulators.broker import Mosquitto  # noqa: E402
from simulators.cloud import Cloud  # noqa: E402
from simulators.daemon import GatewayProcess, rss_mib, settings  # noqa: E402
from simulators.population import CUSTOMERS  # noqa: E402
from simulators.slowdisk import slow_fsync_env  # noqa: E402
from simulators.store import SimulatedStore  # noqa: E402

Figures = dict[str, float]


# The latency benchmarks send 200 identifications/s from one kiosk: its budget (2/s) lifted,
# the figure is the path's latency, not the budget's refusal (bench_flood measures that).
_NO_KIOSK_BUDGET = {"budgets.kiosk_per_s": "1000000", "budgets.kiosk_burst": "1000000"}


def _gateway(
    work: Path, broker_port: int, overrides: Mapping[str, str] | None = None
) -> GatewayProcess:
    """The demo store's daemon on `broker_port`, its state under `work`, logging warnings only."""
    base = settings(store_port=broker_port, state_dir=work / "state", logging__level="warning")
    base |= _NO_KIOSK_BUDGET
    return GatewayProcess(DEMO, work, overrides=base | dict(overrides or {}))


async def _paced(rate: float, count: int, send: Callable[[int], Any]) -> None:
    """Open loop: request i goes at start + i/rate, however slow the answers are."""
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)


def _broker_rtt(port: int, rate: float, count: int) -> list[float]:
    """ping -> broker -> echo process -> broker -> back: the broker's own round trip."""
    args = ["--port", str(port), "--listen", "bench/ping", "--answer", "bench/pong"]
    echo = subprocess.Popen(
        [sys.executable, "-m", "simulators.echo", *args], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert echo.stdout is not None
        echo.stdout.readline()  # "echo ready"
        return asyncio.run(_ping(port, rate, count))
    finally:
        echo.terminate()
        echo.wait()


async def _ping(port: int, rate: float, count: int) -> list[float]:
    sent: dict[str, float] = {}
    rtts: list[float] = []
    done = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", port, identifier="rtt", socket_options=[NO_DELAY]) as c:
        await c.subscribe("bench/pong", qos=1)

        async def receive() -> None:
            async for message in c.messages:
                key = bytes(message.payload).decode()  # type: ignore[arg-type]
                rtts.append((time.monotonic() - sent[key]) * 1000)
                if len(rtts) == count:
                    done.set()
                    return

        reader = asyncio.create_task(receive())

        async def send(i: int) -> None:
            sent[str(i)] = time.monotonic()
            await c.publish("bench/ping", str(i).encode(), qos=1)

        await _paced(rate, count, send)
        async with asyncio.timeout(30):
            await done.wait()
        reader.cancel()
    return rtts


async def _identify_latency(
    port: int, rate: float, count: int, *, overload_ok: bool = False
) -> list[float]:
    """kiosk identify -> broker -> gateway (decide, commit) -> broker -> kiosk and its screen.

    overload_ok: a gateway that cannot keep up refuses identifications (its queue is full) or
    answers late; those unanswered a minute after the last one was sent count as infinitely
    late instead of failing the benchmark."""
    latencies: list[float] = []
    async with SimulatedStore("127.0.0.1", port, "demo-store", "bench-floor") as store:
        t = store.topics
        wanted = [t.kiosk_content("kiosk-1"), t.screen_content("entrance-1")]
        kiosk = store.kiosk("kiosk-1")
        sent: dict[str, float] = {}

        async def send(i: int) -> None:
            rid = f"bench-{i}"
            sent[rid] = time.monotonic()
            await kiosk.identify("loyalty", CUSTOMERS[i % len(CUSTOMERS)].loyalty, rid)

        def answered(rid: str) -> bool:
            return len(store.seen.by_request.get(rid, {})) == len(wanted)

        await _paced(rate, count, send)
        try:
            async with asyncio.timeout(60):
                await store.wait_for(lambda: all(answered(r) for r in sent))
        except TimeoutError:
            if not overload_ok:
                raise
        for rid, at in sent.items():
            if not answered(rid):
                latencies.append(math.inf)
                continue
            arrivals = store.seen.by_request[rid]
            latencies.append((max(a.at for a in arrivals.values()) - at) * 1000)
    return latencies


def bench_e2e(quick: bool) -> Figures:
    rate = 200.0
    count = 600 if quick else 3000
    figures: Figures = {"e2e_rate_per_s": rate, "e2e_requests": count}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        startups = []
        for run in range(3):
            with Mosquitto(work / f"startup-broker-{run}") as broker:
                gw = _gateway(work / f"startup-{run}", broker.port)
                gw.start()
                startups.append(gw.wait_ready())
                gw.stop()
        figures["startup_ready_s"] = statistics.median(startups)
        # Issue 3's idle figure: no model (and no camera), so the rules decide.
        with Mosquitto(work / "idle-broker") as broker:
            gw = _gateway(
                work / "idle", broker.port, {"health.enabled": "true", "decision.model_file": ""}
            )
            gw.start()
            try:  # a failed run must not leave its daemon behind
                gw.wait_ready()
                time.sleep(1.0)
                figures["idle_rss_mib"] = rss_mib(gw.pid)
            finally:
                gw.stop()
        with Mosquitto(work / "broker") as broker:
            gw = _gateway(work, broker.port, {"health.enabled": "true"})
            gw.start()
            try:
                gw.wait_ready()
                time.sleep(1.0)
                figures["idle_rss_with_model_mib"] = rss_mib(gw.pid)
                rtts = _broker_rtt(broker.port, rate, count)
                latencies = asyncio.run(_identify_latency(broker.port, rate, count))
                figures["loaded_rss_mib"] = rss_mib(gw.pid)
            finally:
                gw.stop()
        loaded, load_rate = _e2e_loaded(work / "loaded", rate, count)
    figures["broker_rtt_p50_ms"] = _percentile(rtts, 50)
    figures["broker_rtt_p99_ms"] = _percentile(rtts, 99)
    figures["e2e_p50_ms"] = _percentile(latencies, 50)
    figures["e2e_p99_ms"] = _percentile(latencies, 99)
    figures["e2e_p99_minus_broker_rtt_p99_ms"] = (
        figures["e2e_p99_ms"] - figures["broker_rtt_p99_ms"]
    )
    figures["e2e_loaded_p50_ms"] = _percentile(loaded, 50)
    figures["e2e_loaded_p99_ms"] = _percentile(loaded, 99)
    figures["e2e_loaded_unanswered"] = sum(1 for v in loaded if v == math.inf)
    figures["e2e_load_events_per_s"] = load_rate
    return figures


def _e2e_loaded(work: Path, rate: float, count: int) -> tuple[list[float], float]:
    """The e2e latency again, with every fsync of the daemon FSYNC_DELAY_MS slower and its
    Outbox committing DURABLE_LOAD_PER_S durable events per second (`_loaded_daemon`).

    Returns the latencies and the rate the load was committed at while they were measured."""
    work.mkdir(parents=True)
    base = settings(store_port=0, state_dir=work / "state", logging__level="warning")
    with Mosquitto(work / "broker") as broker:
        gw = GatewayProcess(
            DEMO,
            work,
            overrides=base | _NO_KIOSK_BUDGET | {"mqtt.port": str(broker.port)},
            env=_slow_fsync_env(work),
            command=[__file__, "_daemon"],
        )
        gw.start()
        try:
            gw.wait_ready()
            time.sleep(2.0)  # the load is steady
            started = time.time()
            latencies = asyncio.run(_identify_latency(broker.port, rate, count, overload_ok=True))
            ended = time.time()
        finally:
            gw.stop()
    conn = sqlite3.connect(work / "state" / "gateway.sqlite3")
    (committed,) = conn.execute(
        "SELECT count(*) FROM outbox WHERE type = 'bench.load' AND ts BETWEEN ? AND ?",
        (started, ended),
    ).fetchone()
    conn.close()
    return latencies, committed / (ended - started)


def _loaded_daemon(argv: list[str]) -> int:
    """`gateway run` whose Outbox also commits DURABLE_LOAD_PER_S durable events per second.

    The load is made inside the daemon, through its own Outbox and store thread: two simulated
    POS lanes publishing transaction events over MQTT got about 1,000 per second acknowledged
    on a 2-core box (the daemon then used ~75 % of a core), short of 2,000. Only `bench_e2e`
    runs this."""
    from gateway.runtime.cli import main as gateway_main

    serve = Outbox.run

    async def run(self: Outbox, handle: Handle) -> None:
        load = asyncio.create_task(_durable_load(self, DURABLE_LOAD_PER_S, _Tally(0)))
        try:
            await serve(self, handle)
        finally:
            load.cancel()

    Outbox.run = run  # type: ignore[method-assign]
    return gateway_main(argv)


def _raw_sqlite_rate(path: Path, rows: list[OutboxRow]) -> float:
    """The baseline: plain sqlite3 executemany, synchronous=FULL, batches of 100."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " rank INTEGER NOT NULL, type TEXT NOT NULL, ts REAL NOT NULL, body BLOB NOT NULL)"
    )
    started = time.perf_counter()
    for i in range(0, len(rows), 100):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO outbox (id, rank, type, ts, body) VALUES (?, ?, ?, ?, ?)",
            [(r.id, r.rank, r.type, r.ts, r.body) for r in rows[i : i + 100]],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


async def _accept_rate(path: Path, count: int, producers: int) -> float:
    """Durable acceptance through the gateway's Outbox: `producers` callers awaiting accept()."""
    db = AsyncStore(path)
    await db.open()
    outbox = Outbox(db, "bench", SystemClock(), Metrics())
    writer = asyncio.create_task(outbox.run(Handle("outbox", lambda *_: None)))
    per = count // producers

    async def produce(p: int) -> None:
        for i in range(per):
            await outbox.accept("pos.transaction", "transaction", {"lane": p, "n": i, "total": 9.5})

    started = time.perf_counter()
    await asyncio.gather(*(produce(p) for p in range(producers)))
    elapsed = time.perf_counter() - started
    writer.cancel()
    await db.close()
    return per * producers / elapsed


def bench_accept(quick: bool) -> Figures:
    count = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-accept-") as tmp:
        work = Path(tmp)
        accept = asyncio.run(_accept_rate(work / "gateway.sqlite3", count, producers=500))
        factory = Outbox.__new__(Outbox)  # only its row() serialiser, for identical rows
        factory._store_id, factory._clock = "bench", SystemClock()
        rows = [
            factory.row("pos.transaction", "transaction", {"lane": 1, "n": i, "total": 9.5})
            for i in range(count)
        ]
        raw = _raw_sqlite_rate(work / "raw.sqlite3", rows)
    return {
        "accept_events": count,
        "accept_events_per_s": accept,
        "sqlite_raw_events_per_s": raw,
        "accept_vs_raw_ratio": accept / raw,
    }


def _prefill(database: Path, count: int) -> None:
    """A backlog as an outage leaves it: mixed priorities, committed in the gateway's own format."""
    store = Store(database, outbox_budget_bytes=1 << 40)
    factory = Outbox.__new__(Outbox)
    factory._store_id, factory._clock = "demo-store", SystemClock()
    classes = ("transaction", "decision", "telemetry", "telemetry")
    for start in range(0, count, 10_000):
        rows = [
            factory.row("bench.event", classes[i % 4], {"n": i, "sku": f"SKU-{i % 997:04d}"})
            for i in range(start, min(count, start + 10_000))
        ]
        store.append_outbox(rows, durable=False)
    store.close()


async def _drain(work: Path, count: int) -> Figures:
    async with Cloud(work / "cloud", keep_events=False) as cloud:
        gateway = GatewayProcess(
            DEMO,
            work,
            overrides=settings(
                store_port=cloud.port,  # any broker will do for the store side here
                state_dir=work / "state",
                cloud_port=cloud.port,
                logging__level="warning",
                outbox__max_mb="100000",
            ),
        )
        gateway.start()
        await asyncio.to_thread(gateway.wait_ready)
        started = time.monotonic()
        async with asyncio.timeout(600):
            await cloud.receiver.wait_for_count(count)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # late duplicates, if any, would arrive now
        gateway.stop()
        receiver = cloud.receiver
        return {
            "drain_events": count,
            "drain_events_per_s": count / elapsed,
            "drain_lost": count - receiver.count,
            "drain_duplicates": receiver.duplicates,
            "drain_priority_inversions": receiver.priority_inversions(),
            "uplink_bytes_per_event": receiver.bytes_received / receiver.received,
            "uplink_messages": receiver.batches,
        }


def bench_drain(quick: bool) -> Figures:
    count = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        work = Path(tmp)
        _prefill(work / "state" / "gateway.sqlite3", count)
        return asyncio.run(_drain(work, count))


def _decision_rig() -> tuple[Any, Any, Any, Any, Any]:
    """The shipped model, 100 candidate offers, and a context, for the decision benchmarks."""
    from datetime import datetime

    from gateway.decision import Context
    from gateway.decision.engine import DecisionEngine
    from gateway.decision.features import CATEGORIES, CustomerFacts, FeatureContext, Weather
    from gateway.decision.model import Scorer
    from gateway.runtime.config import DecisionConfig
    from gateway.store import Offer

    scorer = Scorer.load(REPO / "models" / "nba.onnx")
    offers = [
        Offer(
            f"OFF-{i:03d}",
            f"Offer {i}",
            category=CATEGORIES[i % len(CATEGORIES)],
            discount_pct=float(i % 40),
            price_band=("low", "mid", "high")[i % 3],
            margin=(i % 10) / 10,
        )
        for i in range(100)
    ]
    local = datetime(2026, 11, 23, 12, 15)
    rule_ctx = Context(now=local.timestamp(), local_time=local, channel="kiosk", segment=None)
    features = FeatureContext(
        local_time=local,
        touchpoint="kiosk",
        zone="deli",
        weather=Weather(24.0, False),
        basket=("pasta", "drinks"),
        customer=CustomerFacts(segment="families", recency_days=12, frequency=6, monetary=180),
    )
    engine = DecisionEngine(DecisionConfig(holdout_share=0.0, exploration=0.05))
    engine.install(scorer, replay=[])
    return engine, scorer, offers, rule_ctx, features


FSYNC_DELAY_MS = 10
DURABLE_LOAD_PER_S = 2000


def _slow_fsync_env(work: Path) -> dict[str, str]:
    """Environment for a child process whose every fsync/fdatasync takes FSYNC_DELAY_MS longer."""
    return slow_fsync_env(work, FSYNC_DELAY_MS)


def _check_slow_fsync(work: Path) -> None:
    """Refuse to report loaded figures if the shim is not in effect."""
    with open(work / "fsync-probe", "wb") as probe:
        probe.write(b"x")
        started = time.perf_counter()
        os.fsync(probe.fileno())
        took_ms = (time.perf_counter() - started) * 1000
    if took_ms < FSYNC_DELAY_MS * 0.9:
        raise RuntimeError(f"the fsync delay shim is not in effect (fsync took {took_ms:.2f} ms)")


class _Tally:
    """Durable events committed by the load, and the content posts the bench waits for."""

    def __init__(self, expected: int) -> None:
        self.committed = 0
        self.posted: dict[str, float] = {}  # request id -> when its screen got content
        self.expected = expected
        self.all_posted = asyncio.Event()

    def commit(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is None:  # stopped: not committed
            self.committed += 1

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if topic.endswith("/screen/entrance-1/content"):
            self.posted[json.loads(payload)["request_id"]] = time.perf_counter()
            if len(self.posted) == self.expected:
                self.all_posted.set()


async def _durable_load(outbox: Outbox, rate: float, tally: _Tally) -> None:
    """Transaction-class events (durable: synchronous=FULL), `rate` per second, forever."""
    started, n = time.monotonic(), 0
    while True:
        for _ in range(n, int((time.monotonic() - started) * rate)):
            row = outbox.row("bench.load", "transaction", {"lane": "pos-1", "n": n})
            outbox.submit(row).add_done_callback(tally.commit)
            n += 1
        await asyncio.sleep(0.002)


async def _journey_rig(
    db: AsyncStore, tally: _Tally, decided: list[float]
) -> tuple[Any, Any, Outbox]:
    """The daemon's own kiosk intake, Journey and Outbox over `db`: the shipped model, 100
    offers, 100 consenting customers (loyalty 4000000000000..99), one kiosk with one screen."""
    from gateway.codecs.identity import IdentityResolver, customer_ref
    from gateway.codecs.topics import Topics
    from gateway.decision.engine import DecisionEngine, Outcome
    from gateway.moments import Journey, Kiosks, ScreenHold
    from gateway.runtime.config import DecisionConfig, KioskConfig
    from gateway.store import Consent

    class StampedEngine(DecisionEngine):
        def decide(self, *args: Any, **kwargs: Any) -> Outcome:
            outcome = super().decide(*args, **kwargs)
            decided.append(time.perf_counter())  # the journey decides one moment at a time
            return outcome

    _, scorer, offers, _, _ = _decision_rig()
    hash_key = b"bench-key" * 4
    now = time.time()
    await db.call(upsert_offers, offers, now)
    refs = [customer_ref(hash_key, "loyalty", f"40000000{i:05d}") for i in range(100)]
    consents = [Consent(ref, True, "families" if i % 2 else None) for i, ref in enumerate(refs)]
    await db.call(Store.upsert_consents, consents, now)
    clock, metrics = SystemClock(), Metrics()
    outbox = Outbox(db, "bench", clock, metrics)
    engine = StampedEngine(
        DecisionConfig(exploration=0.05, cap_customer_per_day=1000, cap_touchpoint_per_hour=10**5)
    )
    engine.install(scorer, replay=[])
    topics = Topics("bench")
    journey = Journey(
        topics=topics,
        store=db,
        publisher=tally,
        engine=engine,
        clock=clock,
        metrics=metrics,
        hold=ScreenHold(30.0),
        uplink=outbox.row,
        appended=outbox.appended,
    )
    kiosks = Kiosks(
        topics=topics,
        kiosks={"kiosk-1": KioskConfig(zone="entrance", screens=("entrance-1",))},
        identity=IdentityResolver(hash_key, None, 0, clock.now),
        publisher=tally,
        submit=journey.submit,
        clock=clock,
    )
    return kiosks, journey, outbox


async def _journey_latency(
    work: Path, rate: float, count: int, load_per_s: float
) -> tuple[list[float], list[float], float]:
    """Kiosk identifications into the Journey (`_journey_rig`) while its Outbox commits
    `load_per_s` durable events per second.

    Returns (moment -> decision made, moment -> decision committed and its content posted) in
    milliseconds, and the durable events committed per second during the run."""
    from gateway.codecs.payloads import encode_kiosk_identify
    from gateway.codecs.topics import Topics

    warm = 200
    tally, decided = _Tally(warm + count), []
    db = AsyncStore(work / "gateway.sqlite3")
    await db.open()
    kiosks, journey, outbox = await _journey_rig(db, tally, decided)
    handle = Handle("bench", lambda *_: None)
    tasks = [asyncio.create_task(outbox.run(handle)), asyncio.create_task(journey.run(handle))]
    if load_per_s:
        tasks.append(asyncio.create_task(_durable_load(outbox, load_per_s, tally)))
    await asyncio.sleep(1.0)  # the load is steady, the journey has read the catalog
    gc.freeze()  # as the daemon does once ready (gateway/runtime/daemon.py)
    sent: list[tuple[str, float]] = []
    topic = Topics("bench").kiosk_identify("kiosk-1")

    async def send(i: int) -> None:
        rid = f"bench-{i}"
        payload = encode_kiosk_identify("loyalty", f"40000000{i % 100:05d}", rid, time.time())
        sent.append((rid, time.perf_counter()))
        kiosks.on_identify(topic, payload)

    committed, started = tally.committed, time.monotonic()
    await _paced(rate, warm + count, send)
    async with asyncio.timeout(60):
        await tally.all_posted.wait()
    load_rate = (tally.committed - committed) / (time.monotonic() - started)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await db.close()
    if len(decided) != len(sent):
        raise RuntimeError(f"{len(decided)} decisions for {len(sent)} moments")
    made = [(at - t0) * 1000 for (_, t0), at in zip(sent, decided, strict=True)][warm:]
    done = [(tally.posted[rid] - t0) * 1000 for rid, t0 in sent][warm:]
    return made, done, load_rate


def _journey_worker(load_per_s: float, count: int, out: Path) -> None:
    """Child process (under the fsync shim): one journey run, its samples as JSON in `out`."""
    from gateway.runtime.logs import configure_logging
    from gateway.runtime.metrics import Metrics
    from gateway.runtime.pauses import GIL_SWITCH_INTERVAL_S, timing_gc

    configure_logging("json", "warning")  # as the benchmarked daemons log
    # As the daemon runs (gateway/runtime/daemon.py): its GIL switch interval, and what a full
    # collection leaves alive frozen (`timing_gc`).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    with tempfile.TemporaryDirectory(prefix="bench-journey-") as tmp, timing_gc(Metrics()):
        _check_slow_fsync(Path(tmp))
        made, done, load_rate = asyncio.run(_journey_latency(Path(tmp), 50.0, count, load_per_s))
    out.write_text(json.dumps({"made": made, "done": done, "load_rate": load_rate}))


def _journey_run(work: Path, env: Mapping[str, str], load_per_s: float, count: int) -> Any:
    out = work / f"journey-{load_per_s:g}.json"
    worker = [sys.executable, __file__, "_journey", str(load_per_s), str(count), str(out)]
    subprocess.run(worker, env=os.environ | dict(env), cwd=REPO, check=True)
    return json.loads(out.read_text())


def bench_decide(quick: bool) -> Figures:
    from gateway.decision.features import featurize

    engine, scorer, offers, rule_ctx, features = _decision_rig()
    n = 2000 if quick else 10_000
    matrix = featurize(features, offers)

    def decide() -> None:
        engine.decide(
            offers,
            rule_ctx,
            features,
            customer_ref="c_bench",
            touchpoint_id="kiosk-1",
            customer_counts={},
            touchpoint_counts={},
        )

    def timed(fn: Callable[[], object]) -> list[float]:
        for _ in range(200):
            fn()  # warm up
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    decide_ms = timed(decide)
    ort_ms = timed(lambda: scorer.score(matrix))
    figures = {
        "decide_candidates": len(offers),
        "decide_p50_ms": _percentile(decide_ms, 50),
        "decide_p99_ms": _percentile(decide_ms, 99),
        "ort_only_p50_ms": _percentile(ort_ms, 50),
        "ort_only_p99_ms": _percentile(ort_ms, 99),
        "decisions_per_s": 1000 / statistics.mean(decide_ms),
    }
    # The same decisions through the journey (consent and caps read, scored, committed with
    # their event), with every fsync FSYNC_DELAY_MS slower: alone, then while the outbox
    # commits DURABLE_LOAD_PER_S durable events per second.
    with tempfile.TemporaryDirectory(prefix="bench-decide-") as tmp:
        env = _slow_fsync_env(Path(tmp))
        journey_n = 500 if quick else 2000
        idle = _journey_run(Path(tmp), env, 0, journey_n)
        loaded = _journey_run(Path(tmp), env, DURABLE_LOAD_PER_S, journey_n)
    figures |= {
        "decide_journey_p99_ms": _percentile(idle["made"], 99),
        "decide_loaded_p50_ms": _percentile(loaded["made"], 50),
        "decide_loaded_p99_ms": _percentile(loaded["made"], 99),
        "decide_committed_p99_ms": _percentile(idle["done"], 99),
        "decide_loaded_committed_p99_ms": _percentile(loaded["done"], 99),
        "decide_load_events_per_s": loaded["load_rate"],
    }
    return figures


def bench_swap(quick: bool) -> Figures:
    """Longest gap between decisions while models are loaded, validated and swapped in."""
    import threading

    from gateway.decision.model import Scorer

    engine, _, offers, rule_ctx, features = _decision_rig()
    stamps: list[float] = []
    stop = threading.Event()

    def decide_forever() -> None:
        while not stop.is_set():
            engine.decide(
                offers,
                rule_ctx,
                features,
                customer_ref="c_bench",
                touchpoint_id="kiosk-1",
                customer_counts={},
                touchpoint_counts={},
            )
            stamps.append(time.perf_counter())

    worker = threading.Thread(target=decide_forever)
    worker.start()
    time.sleep(0.3)
    swaps = 5 if quick else 20
    windows = []
    for _ in range(swaps):
        start = time.perf_counter()
        scorer = Scorer.load(REPO / "models" / "nba.onnx")
        engine.install(scorer, replay=[(features, offers)] * 20)
        windows.append((start, time.perf_counter()))
        time.sleep(0.1)
    stop.set()
    worker.join()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    during = [
        b - a
        for a, b in itertools.pairwise(stamps)
        if any(w0 <= b and a <= w1 for w0, w1 in windows)
    ]
    return {
        "model_swaps": swaps,
        "model_swap_pause_ms": max(during) * 1000,
        "decision_gap_p50_ms": statistics.median(gaps) * 1000,
    }


def bench_policy(quick: bool) -> Figures:
    """The shipped model's lift over random, as a share of the oracle's, on synthetic shoppers.

    Needs the `train` extra (numpy is enough at present) only for the simulator; the figure is
    measured against the random and oracle policies on the same moments of the same run.
    """
    from simulators.evaluation import policy_lift

    result = policy_lift(REPO / "models" / "nba.onnx", n=4000 if quick else 20_000)
    conversion = result["conversion"]
    return {
        "policy_lift": result["policy_lift"],
        "policy_lift_ci95_lo": result["policy_lift_ci95"][0],
        "policy_lift_ci95_hi": result["policy_lift_ci95"][1],
        "conversion_model": conversion["model"]["value"],
        "conversion_popularity": conversion["popularity"]["value"],
        "conversion_random": conversion["random"]["value"],
        "conversion_oracle": conversion["oracle"]["value"],
        "policy_moments": result["moments"],
    }


_BLE_ZONES = ("entrance", "produce", "bakery", "coffee", "checkout")  # one scanner each


def _ble_world(
    devices: int, seconds: int, seed: int = 7, t0: int = 1_790_000_000
) -> list[tuple[str, str, Any, float, float]]:
    """(scanner, address, advert, rssi, t): `devices` phones, each heard once a second by the
    three nearest of five scanners, a third of them opted-in customers sending EIDs, the rest
    foreign manufacturer data; addresses churn every 15 minutes."""
    import random

    from gateway.ble.eid import eid
    from gateway.ble.frames import EddystoneEID, encode_advert

    rng = random.Random(seed)
    scanners = _BLE_ZONES
    heard = []
    for second in range(seconds):
        t = t0 + second
        for d in range(devices):
            home = (d + second // 120) % 5  # walks to the next zone every two minutes
            address = f"02:00:{d >> 8 & 0xFF:02x}:{d & 0xFF:02x}:{(second // 900) & 0xFF:02x}:01"
            if d % 3 == 0:
                key = d.to_bytes(16, "big")
                advert = encode_advert(EddystoneEID(eid(key, 10, t), -20))
            else:
                advert = ({0x004C: bytes([0x10, 0x05, d & 0xFF, 0x1C, 0, 0, 0])}, {}, [])
            for offset in (0, 1, -1):
                scanner = scanners[(home + offset) % 5]
                rssi = -55 - 12 * abs(offset) + rng.gauss(0, 4)
                heard.append((scanner, address, advert, rssi, float(t)))
    return heard


def _presence_rig(devices: int) -> tuple[Any, Any]:
    import types

    from gateway.ble.eid import EidResolver
    from gateway.ble.keys import DeviceKeys
    from gateway.ble.presence import PresenceEngine
    from gateway.runtime.config import BleConfig, BleScannerConfig

    config = BleConfig(
        enabled=True,
        scanners=types.MappingProxyType({z: BleScannerConfig(zone=z) for z in _BLE_ZONES}),
    )
    resolver = EidResolver()
    keys = {f"c_{d:032x}": (d.to_bytes(16, "big"), 10) for d in range(0, devices, 3)}
    resolver.load(keys, 1_790_000_000.0)
    return PresenceEngine(config, resolver.resolve), DeviceKeys(b"bench-key" * 4)


def bench_ble(quick: bool) -> Figures:
    """Sightings parsed, keyed, smoothed and zoned per second on one core (the same adverts
    only decoded is the baseline), memory per tracked device, and EID resolution time."""
    import timeit
    import tracemalloc

    from gateway.ble.eid import EidResolver, eid
    from gateway.ble.frames import decode_advert
    from gateway.ble.sighting import Sighting

    devices = 5000
    seconds = 6 if quick else 30
    heard = _ble_world(devices, seconds)
    engine, keys = _presence_rig(devices)

    start = time.perf_counter()
    for _scanner, _address, (manufacturer, service, uuids), _rssi, _t in heard:
        decode_advert(manufacturer, service, uuids)
    decode_only = len(heard) / (time.perf_counter() - start)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    last = heard[0][4]
    for scanner, address, (manufacturer, service, uuids), rssi, t in heard:
        if t != last:
            engine.tick(t)
            last = t
        frame = decode_advert(manufacturer, service, uuids)
        engine.observe(Sighting(scanner, keys.key(address, t), frame, rssi, t))
    elapsed = time.perf_counter() - start
    tracked_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    tracked = len(engine)

    # RSS over a long churning run: every simulated hour 5,000 new phones (new addresses)
    # arrive and the last hour's leave; evictions and timeouts must keep memory flat.
    rss, live = [], []
    tracemalloc.start()
    for hour in range(1, 5 if quick else 13):
        t_hour = 1_790_000_000 + hour * 3600
        for scanner, address, (manufacturer, service, uuids), rssi, t in _ble_world(
            devices, 2, seed=hour, t0=t_hour
        ):
            frame = decode_advert(manufacturer, service, uuids)
            device = keys.key(f"{address}/{hour}", t)
            engine.observe(Sighting(scanner, device, frame, rssi, t))
        engine.tick(t_hour + 1800.0)  # everyone from this hour has timed out
        gc.collect()
        rss.append(rss_mib(os.getpid()))
        live.append(tracemalloc.get_traced_memory()[0] / 2**20)  # Python objects alive
    tracemalloc.stop()

    big = EidResolver()
    key = os.urandom(16)
    big.load(
        {**{f"c_{i:032x}": (os.urandom(16), 10) for i in range(9_999)}, "c_me": (key, 10)},
        1_790_000_000.0,
    )
    hit = eid(key, 10, 1_790_000_000)
    calls = 200_000
    per_call = (
        min(timeit.repeat(lambda: big.resolve(hit, 1_790_000_000.0), number=calls, repeat=5))
        / calls
    )
    assert big.resolve(hit, 1_790_000_000.0) == "c_me"
    return {
        "ble_adverts_per_s": len(heard) / elapsed,
        "ble_decode_only_per_s": decode_only,
        "ble_sightings": len(heard),
        "ble_devices_tracked": tracked,
        "ble_bytes_per_device": tracked_bytes / max(tracked, 1),
        "ble_churn_hours": len(rss),
        "ble_rss_first_hour_mib": rss[0],
        "ble_rss_last_hour_mib": rss[-1],
        "ble_live_first_hour_mib": live[0],
        "ble_live_last_hour_mib": live[-1],
        "eid_resolve_us": per_call * 1e6,
        "eid_keys": len(big),
    }


async def _coupons(port: int, printer: Any, count: int, gap_s: float) -> list[float]:
    """Total event published -> last byte of its coupon at the printer, one at a time."""
    from simulators.pos import PosLane

    latencies = []
    async with PosLane("127.0.0.1", port, "demo-store") as lane:
        await lane.basket(["coffee"], 4.2)
        for i in range(count):
            start = time.monotonic()
            await lane.total(4.2)
            (receipt,) = (await printer.wait_for_receipts(i + 1))[i:]
            latencies.append((receipt.finished_at - start) * 1000)
            await asyncio.sleep(gap_s)
    return latencies


async def _line_efficiency(printer: Any, port: int, figures: Figures) -> None:
    baud = 115_200
    printer.set_baud(baud)
    done = len(printer.receipts)
    await _coupons(port, printer, 20, 0.2)
    slow = printer.receipts[done:]
    ratios = [(r.size * 10 / baud) / (r.finished_at - r.started_at) for r in slow]
    figures["print_job_bytes"] = statistics.median(r.size for r in slow)
    figures["print_line_efficiency"] = statistics.median(ratios)
    figures["print_line_efficiency_min"] = min(ratios)


async def _silent_detect(printer: Any, gw: GatewayProcess, figures: Figures) -> float:
    """Median of 5: silent() -> the daemon's STATUS= names the printer silent."""
    detected = []
    for _ in range(5):
        seen = len(gw.notifications)
        hushed = time.monotonic()
        printer.silent()
        while not any("silent" in m for _, m in gw.notifications[seen:]):  # noqa: ASYNC110 - a thread fills it
            await asyncio.sleep(0.005)
        at = next(t for t, m in gw.notifications[seen:] if "silent" in m)
        detected.append(at - hushed)
        printer.silent(False)
        while "silent" in gw.notifications[-1][1]:  # noqa: ASYNC110 - until it answers
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # a random phase against the driver's 0.5 s poll
    figures["silent_detect_s_tcp_max"] = max(detected)
    return statistics.median(detected)


def bench_printer(quick: bool) -> Figures:
    """coupon_latency: POS total -> last coupon byte at the printer (Mosquitto + the printer
    simulator, no line limit), on each link: serial (a pty, also the unsuffixed figures), usb
    (the pty opened raw, as usblp's /dev/usb/lp0) and tcp (loopback, as port 9100).
    print_line_efficiency (serial): the job's bytes x 10 / baud (the physical minimum) over the
    time it took on an emulated 115200 baud line, first byte to cut. silent_detect_s_tcp: a TCP
    printer stops answering (the connection stays open) -> the daemon reports it (STATUS=)."""
    from simulators.printer import PrinterSimulator

    count = 100 if quick else 500
    figures: Figures = {"coupons": count}

    async def run(work: Path, broker: Mosquitto, kind: str) -> None:
        where = "tcp:127.0.0.1:0" if kind == "tcp" else work / f"printer-{kind}"
        async with PrinterSimulator(where) as printer:
            link = printer.address if kind == "tcp" else f"{kind}:{printer.link}"
            gw = _gateway(
                work / kind,
                broker.port,
                {
                    "printers.receipt-1.link": link,
                    "lanes.pos-1.printer": "receipt-1",
                    "decision.cap_touchpoint_per_hour": "100000",
                    "decision.cap_customer_per_day": "1000",
                },
            )
            gw.start()
            await asyncio.to_thread(gw.wait_ready)
            try:
                await asyncio.sleep(1.0)  # the driver has found the printer
                latencies = await _coupons(broker.port, printer, count, 0.02)
                figures[f"coupon_latency_p50_ms_{kind}"] = _percentile(latencies, 50)
                figures[f"coupon_latency_p99_ms_{kind}"] = _percentile(latencies, 99)
                if kind == "serial":
                    figures["coupon_latency_p50_ms"] = _percentile(latencies, 50)
                    figures["coupon_latency_p99_ms"] = _percentile(latencies, 99)
                    await _line_efficiency(printer, broker.port, figures)
                if kind == "tcp":
                    figures["silent_detect_s_tcp"] = await _silent_detect(printer, gw, figures)
            finally:
                await asyncio.to_thread(gw.stop)

    for kind in ("serial", "usb", "tcp"):
        with (
            tempfile.TemporaryDirectory(prefix="bench-printer-") as tmp,
            Mosquitto(Path(tmp) / "broker") as broker,
        ):
            asyncio.run(run(Path(tmp), broker, kind))
    return figures


def _camera_fps(purpose: str, seconds: float) -> float:
    """Frames analysed per second at 640x480 on one core, by the driver's own FrameAnalyzer."""
    from drivers.camera import FrameAnalyzer
    from simulators.camera import audience_frame, qr_frame

    if purpose == "qr":
        frames = [qr_frame(f"gw1.bench-{i:04d}.0123456789abcdef01234", seed=i) for i in range(5)]
    else:
        frames = [audience_frame(n, seed=n) for n in range(5)]  # 0..4 faces
    analyzer = FrameAnalyzer(qr=purpose == "qr", audience=purpose == "audience")
    analyzer.analyze(frames[0])  # warm-up
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        analyzer.analyze(frames[count % len(frames)])
        count += 1
    return count / elapsed


def bench_camera(quick: bool) -> Figures:
    """Analysis rate per purpose at 640x480 on one core; the RSS the camera adds to the daemon
    (both purposes on a 30 fps video, against the same daemon with the camera off)."""
    from simulators.camera import audience_frame, qr_frame, write_video

    seconds = 2.0 if quick else 10.0
    figures: Figures = {
        "camera_qr_fps": _camera_fps("qr", seconds),
        "camera_audience_fps": _camera_fps("audience", seconds),
        **bench_qr(quick),  # read rate on the hardened set; the OpenCV pair and zxing-cpp
    }
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp:
        work = Path(tmp)
        frames = [qr_frame("gw1.bench", seed=1)] * 30 + [
            audience_frame(3, seed=i) for i in range(30)
        ]
        video = write_video(work / "camera.avi", frames, fps=30)
        rss = {}
        with Mosquitto(work / "broker") as broker:
            for enabled in (False, True):
                run = work / f"camera-{enabled}"
                gw = _gateway(
                    run,
                    broker.port,
                    {
                        "camera.enabled": str(enabled).lower(),
                        "camera.notice_posted": "true",
                        "camera.purposes": '["qr_identify", "audience_count"]',
                        "camera.source": str(video),
                        "camera.kiosk": "kiosk-1",
                        "camera.screen": "entrance-1",
                    },
                )
                gw.start()
                gw.wait_ready()
                time.sleep(3.0 if quick else 8.0)
                rss[enabled] = rss_mib(gw.pid)
                gw.stop()
    figures["camera_off_rss_mib"] = rss[False]
    figures["camera_rss_mib"] = rss[True] - rss[False]
    return figures


BENCHMARKS: dict[str, Callable[[bool], Figures]] = {
    "camera": bench_camera,
    "printer": bench_printer,
    "ble": bench_ble,
    "decide": bench_decide,
    "policy": bench_policy,
    "swap": bench_swap,
    "e2e": bench_e2e,
    "accept": bench_accept,
    "drain": bench_drain,
    "flood": bench_flood,
    "soak": bench_soak,
    "tablet": lambda quick: bench_tablet(quick, _broker_rtt),
    "fleet": bench_fleet,
    "app": bench_app,
    "store": lambda quick: bench_store(quick, _ping),
    "lift": bench_lift,
    "console": lambda quick: bench_console(quick, _identify_latency),
    "learn": bench_learn,
}


def _calibration_s() -> float:
    """A fixed pure-Python loop, best of 3: how fast this machine runs Python today, so that
    figures from different days (these machines change speed) can be compared."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i % 7
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    # The load generator's own collector pauses would show up as gateway latency.
    gc.freeze()
    if sys.argv[1:2] == ["_journey"]:  # bench_decide's child process
        _journey_worker(float(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    if sys.argv[1:2] == ["_daemon"]:  # bench_e2e's loaded daemon
        return _loaded_daemon(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {sorted(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--json", type=Path, help="write {'figures': {...}} to this file")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {sorted(BENCHMARKS)}")
    figures: Figures = {}
    for name in args.names or sorted(BENCHMARKS):
        print(f"== {name}", flush=True)
        result = BENCHMARKS[name](args.quick)
        for key, value in result.items():
            print(f"{key:40s} {value:10.3f}", flush=True)
        figures.update(result)
    if args.json:
        meta = {
            "quick": args.quick,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "calib_loop_s": _calibration_s(),
        }
        print(f"{'calib_loop_s (meta)':40s} {meta['calib_loop_s']:10.3f}", flush=True)
        args.json.write_text(json.dumps({"figures": figures, "meta": meta}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
