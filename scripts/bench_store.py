"""`scripts/bench.py store`: a whole hypermarket against one daemon on store hardware, for 10
minutes (`--quick`: 2), and what customers and the box see.

The store (simulators/hypermarket.py): 5,000 phones and beacons (500 opted-in apps with rotating
identifiers, addresses churning) heard by 40 ESPresense nodes over MQTT and by the box's own
radio (bleak on the fake BlueZ), 200 screens subscribed, 20 kiosks (an identification each per
10 s), 40 POS lanes (a checkout each per minute; 10 print coupons on pty printers at 115200
baud), 20 associate tablets (a serve each per 20 s), the camera on a 640x480 video at 5 frames/s
with both purposes, the cloud behind a 2 Mbit/s uplink cap (the daemon's `cloud.bandwidth_
bytes_per_s`), away for 2 minutes in the middle (`--quick`: 30 s).

The box: the daemon pinned to one core (`STORE_CORES`, default 1) with every fsync 10 ms slower
(`STORE_FSYNC_MS`, the LD_PRELOAD shim of simulators/slowdisk.py), as an SD card makes it; the
broker and the simulators on the machine's other cores (`STORE_SHARE_CORES=1`: on all). The
camera's threads run 10 nicer than the loop, as shipped (`STORE_CAMERA_NICENESS`, 0: not).
Each second, every node's reports go out at once and then the radio's adverts; with
`STORE_SPREAD_S` (seconds), node after node over that long and the adverts over half of it, as
independent nodes and a controller would. 0.4 s changed none of the figures beyond a run's
noise (2026-12-07) and skipped a tenth of the radio's samples, so 0 stays the default.

Figures, per touchpoint p50/p99/max: kiosk -> its screens (the last of its three contents),
zone entry -> screen (an opted-in app's presence.zone event -> the screen content decided for
it), POS total -> last coupon byte at the printer (and -> its first byte, the gateway's share:
`store_coupon_first_byte_*`), tablet serve -> card; the broker's own round
trip in the same run; event-loop lag and GC pauses from the daemon's /metrics; the daemon's CPU
as a share of its core(s), RSS at start, peak, end and its slope over the second half; the
outbox backlog and its drain after the outage; what the cloud lost or got twice; anything shed.
A PNG of latency, CPU, loop lag, RSS and backlog over time goes to `STORE_PLOT`
(default bench-store.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402
from bench_figures import percentile  # noqa: E402 - beside this file
from bench_soak import _slope  # noqa: E402 - beside this file

from drivers.mqtt import NO_DELAY  # noqa: E402
from gateway.codecs.ids import uuid7  # noqa: E402
from gateway.codecs.payloads import decode_content  # noqa: E402
from gateway.codecs.topics import Topics  # noqa: E402
from simulators import hypermarket  # noqa: E402
from simulators.broker import Mosquitto, free_port  # noqa: E402
from simulators.cloud import Cloud  # noqa: E402
from simulators.daemon import GatewayProcess, cpu_s, rss_mib, settings  # noqa: E402
from simulators.population import Customer, demo_token  # noqa: E402
from simulators.pos import PosLane  # noqa: E402
from simulators.printer import PrinterSimulator  # noqa: E402
from simulators.slowdisk import slow_fsync_env  # noqa: E402
from simulators.store import SimulatedStore  # noqa: E402
from simulators.tablet import Tablet  # noqa: E402

__all__ = ["bench_store"]

Figures = dict[str, float]
Ping = Callable[[int, float, int], Awaitable[list[float]]]

MEMBERS = 500  # 10 % of the 5,000 devices: opted-in apps
UPLINK_BYTES_PER_S = 250_000  # 2 Mbit/s
SAMPLE_S = 5.0  # a scrape of /metrics costs the daemon ~1 ms of its loop
KIOSK_EVERY_S, LANE_EVERY_S, TABLET_EVERY_S = 10.0, 60.0, 20.0
PING_PER_S = 5.0
TOUCHPOINTS = ("kiosk", "zone", "coupon", "tablet")
# gateway_decision_seconds' moments -> their names in the figures
_DECIDED = {
    "kiosk_identify": "kiosk",
    "zone_enter": "zone",
    "zone_dwell": "dwell",
    "checkout": "checkout",
    "tablet_serve": "tablet",
    "app_message": "app",
}


@dataclass
class _Run:
    """What the drivers saw: (wall time sent, latency ms) per touchpoint, and the rest."""

    t0: float  # wall time the measured run began
    latencies: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {t: [] for t in TOUCHPOINTS}
    )
    unanswered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOUCHPOINTS, 0))
    pings: list[tuple[float, float]] = field(default_factory=list)
    # POS total -> the coupon's first byte at the printer: the gateway's share of "coupon",
    # whose last byte comes after the receipt's time on a 115200-baud line.
    coupon_first_byte: list[float] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)  # decision and event ids devices saw
    arrivals: dict[str, tuple[str, float]] = field(default_factory=dict)  # decision -> topic, t
    samples: list[dict[str, float]] = field(default_factory=list)
    down_at: float = math.nan
    up_at: float = math.nan


# ---------------------------------------------------------------------------------- the box


def _fsync_probe_ms(env: dict[str, str]) -> float:
    """One fsync's time in a child with `env` (the daemon's): proof the shim is in effect."""
    code = (
        "import os,tempfile,time\n"
        "f=tempfile.NamedTemporaryFile()\nf.write(b'x');f.flush()\n"
        "t=time.perf_counter();os.fsync(f.fileno());print((time.perf_counter()-t)*1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def _scrape(port: int) -> dict[str, float]:
    """/metrics as {name{labels}: value}, plus {name: sum over labels}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
        name = key.split("{", 1)[0]
        if "{" in key and not name.endswith("_bucket"):
            values[name] = values.get(name, 0.0) + float(value)
    return values


_BUCKET = re.compile(r'^(\w+)_bucket\{(?:[^}]*,)?le="([^"]+)"')


def _buckets(sample: dict[str, float], metric: str, label: str = "") -> dict[float, float]:
    """A histogram's cumulative counts by upper bound, summed over its other labels (over
    those whose labels hold `label`, e.g. 'moment="checkout"', if given)."""
    counts: dict[float, float] = {}
    for key, value in sample.items():
        m = _BUCKET.match(key)
        if m and m.group(1) == metric and label in key:
            bound = math.inf if m.group(2) == "+Inf" else float(m.group(2))
            counts[bound] = counts.get(bound, 0.0) + value
    return counts


def _quantile(
    first: dict[str, float], last: dict[str, float], metric: str, q: float, label: str = ""
) -> float:
    """The q-quantile (0..1) of what a histogram recorded between two scrapes, interpolated
    within its bucket as Prometheus' histogram_quantile does; the bucket's bound past 1 s."""
    a, b = _buckets(first, metric, label), _buckets(last, metric, label)
    bounds = sorted(b)
    counts = [b[x] - a.get(x, 0.0) for x in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            share = (rank - previous_count) / max(count - previous_count, 1e-9)
            return previous_bound + share * (bound - previous_bound)
        previous_bound, previous_count = bound, count
    return bounds[-2] if len(bounds) > 1 else 0.0


def _top_bucket(first: dict[str, float], last: dict[str, float], metric: str) -> float:
    """The upper bound of the highest bucket that got a sample between two scrapes."""
    a, b = _buckets(first, metric), _buckets(last, metric)
    bounds = sorted(b)
    top, below = 0.0, 0.0
    for bound in bounds:
        count = b[bound] - a.get(bound, 0.0)
        if count > below:
            top = bound
        below = count
    return top


# ------------------------------------------------------------------------------ the drivers


async def _paced(
    every_s: float, phase: float, until: float, act: Callable[[int], Coroutine[Any, Any, None]]
) -> None:
    """act(i) at phase + i * every_s (wall time) until `until`; each in its own task."""
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while (at := phase + i * every_s) < until:
        await asyncio.sleep(max(0.0, at - time.time()))
        task = asyncio.create_task(act(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=15)


async def _kiosks(
    store: SimulatedStore, run: _Run, members: tuple[Customer, ...], until: float
) -> None:
    rng = random.Random(1)
    kiosks = hypermarket.kiosks()

    async def one(n: int, kiosk_id: str, screens: tuple[str, ...]) -> None:
        topics = [store.topics.kiosk_content(kiosk_id)] + [
            store.topics.screen_content(s) for s in screens
        ]
        kiosk = store.kiosk(kiosk_id)

        async def act(_i: int) -> None:
            # Seven in ten are members; the others hold a card the store does not know.
            card = (
                rng.choice(members).loyalty
                if rng.random() < 0.7
                else f"49{rng.randrange(10**11):011d}"
            )
            sent_wall, sent = time.time(), time.monotonic()
            rid = await kiosk.identify("loyalty", card, uuid7())
            try:
                async with asyncio.timeout(10):
                    answers = await store.answers(rid, topics)
            except TimeoutError:
                run.unanswered["kiosk"] += 1
                return
            run.latencies["kiosk"].append(
                (sent_wall, (max(a.at for a in answers.values()) - sent) * 1000)
            )
            run.accepted.update(a.content.decision_id for a in answers.values())

        await _paced(KIOSK_EVERY_S, run.t0 + n * KIOSK_EVERY_S / len(kiosks), until, act)

    await asyncio.gather(*(one(n, k, s) for n, (k, (_, s)) in enumerate(kiosks.items())))


async def _lanes(
    port: int,
    printers: dict[str, PrinterSimulator],
    run: _Run,
    members: tuple[Customer, ...],
    until: float,
) -> None:
    rng = random.Random(2)
    baskets = (["pasta", "sauce"], ["coffee", "bakery"], ["produce", "deli"], ["drinks", "snacks"])
    lanes = hypermarket.lanes()
    async with contextlib.AsyncExitStack() as stack:
        opened = {
            lane: await stack.enter_async_context(
                PosLane("127.0.0.1", port, hypermarket.STORE_ID, lane)
            )
            for lane in lanes
        }

        async def one(n: int, lane_id: str) -> None:
            lane, printer = opened[lane_id], printers.get(lanes[lane_id])

            async def act(i: int) -> None:
                total = round(5 + rng.random() * 120, 2)
                await lane.basket(rng.choice(baskets), total)
                if rng.random() < 0.5:
                    await lane.loyalty(rng.choice(members).loyalty)
                printed = len(printer.receipts) if printer else 0
                sent_wall, sent = time.time(), time.monotonic()
                await lane.total(total)
                if printer is None:
                    return
                try:
                    async with asyncio.timeout(10):
                        receipt = (await printer.wait_for_receipts(printed + 1))[printed]
                except TimeoutError:
                    run.unanswered["coupon"] += 1  # no offer for the receipt, or late
                    return
                run.latencies["coupon"].append((sent_wall, (receipt.finished_at - sent) * 1000))
                run.coupon_first_byte.append((receipt.started_at - sent) * 1000)

            await _paced(LANE_EVERY_S, run.t0 + n * LANE_EVERY_S / len(lanes), until, act)

        await asyncio.gather(*(one(n, lane) for n, lane in enumerate(lanes)))
        with contextlib.suppress(TimeoutError):  # the lanes' last events are acknowledged
            async with asyncio.timeout(30):
                for lane in opened.values():
                    await lane.events.settled()
        run.accepted.update(*(lane.events.acked for lane in opened.values()))  # event ids too


async def _tablets(port: int, run: _Run, members: tuple[Customer, ...], until: float) -> None:
    rng = random.Random(3)
    tablets = hypermarket.tablets()
    async with contextlib.AsyncExitStack() as stack:
        opened = {
            t: await stack.enter_async_context(Tablet("127.0.0.1", port, hypermarket.STORE_ID, t))
            for t in tablets
        }

        async def one(n: int, tablet_id: str) -> None:
            tablet = opened[tablet_id]

            async def act(i: int) -> None:
                session = uuid7()
                fields: dict[str, Any] = {"basket": ["coffee"]}
                if i % 2 == 0:
                    fields = {"method": "loyalty", "value": rng.choice(members).loyalty}
                sent_wall, sent = time.time(), time.monotonic()
                try:
                    async with asyncio.timeout(10):
                        card = await tablet.serve(session, "A-1", **fields)
                except TimeoutError:
                    run.unanswered["tablet"] += 1
                    return
                run.latencies["tablet"].append((sent_wall, (time.monotonic() - sent) * 1000))
                run.accepted.update(s.decision_id for s in card.suggestions)
                await tablet.close(session)

            await _paced(TABLET_EVERY_S, run.t0 + n * TABLET_EVERY_S / len(tablets), until, act)

        await asyncio.gather(*(one(n, t) for n, t in enumerate(tablets)))


async def _observe(port: int, run: _Run) -> None:
    """Every screen content's decision and arrival (wall time), for zone entry -> screen."""
    root = Topics(hypermarket.STORE_ID).root
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-observer", socket_options=[NO_DELAY]
    ) as client:
        await client.subscribe(f"{root}/screen/+/content", qos=1)
        async for message in client.messages:
            now = time.time()
            if isinstance(message.payload, bytes) and not message.retain:
                content = decode_content(message.payload)
                run.arrivals.setdefault(content.decision_id, (content.touchpoint, now))


async def _pings(port: int, ping: Ping, run: _Run, until: float) -> None:
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.echo", "--port", str(port), "--listen", "bench/ping",
        "--answer", "bench/pong", stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        assert echo.stdout is not None
        await echo.stdout.readline()  # "echo ready"
        while time.time() < until:  # in slices of 10 s, each stamped with its start
            started = time.time()
            rtts = await ping(port, PING_PER_S, int(10 * PING_PER_S))
            run.pings += [(started, r) for r in rtts]
    finally:
        echo.terminate()
        await echo.wait()


async def _outage(cloud: Cloud, run: _Run, down_at: float, outage_s: float) -> None:
    await asyncio.sleep(max(0.0, down_at - time.time()))
    run.down_at = time.time()
    await cloud.down()
    await asyncio.sleep(outage_s)
    await cloud.up()
    run.up_at = time.time()


async def _sample(gateway: GatewayProcess, health_port: int, run: _Run) -> None:
    while True:
        started = time.time()
        try:
            sample = await asyncio.to_thread(_scrape, health_port)
            sample |= {"t": started, "cpu_s": cpu_s(gateway.pid), "rss_mib": rss_mib(gateway.pid)}
            run.samples.append(sample)
        except OSError:
            pass  # a scrape that timed out under load: the next one counts
        await asyncio.sleep(max(0.0, started + SAMPLE_S - time.time()))


def _zone_latencies(cloud: Cloud, run: _Run) -> list[tuple[float, float]]:
    """An opted-in app's zone entry (presence.zone, its ts) -> the first content decided for
    that customer on one of the zone's screens (the decision event names both)."""
    screens_in: dict[str, set[str]] = {}
    for screen, zone in hypermarket.screens().items():
        screens_in.setdefault(zone, set()).add(screen)
    entries: list[tuple[str, str, float]] = []
    decided: dict[str, list[tuple[float, str, str]]] = {}  # customer -> (ts, screen, id)
    for event in cloud.receiver.events.values():
        data = event.get("data", {})
        if (
            event.get("type") == "presence.zone"
            and data.get("kind") == "enter"
            and data.get("identified")
        ):
            entries.append((data["subject"], data["zone"], event["ts"]))
        elif (
            event.get("type") == "decision"
            and data.get("moment") == "zone_enter"
            and data.get("customer")
        ):
            decided.setdefault(data["customer"], []).append(
                (event["ts"], data["touchpoint"], data["decision_id"])
            )
    out = []
    for customer, zone, at in entries:
        later = sorted(
            d
            for d in decided.get(customer, ())
            if d[0] >= at - 0.001 and d[1] in screens_in.get(zone, ())
        )
        if not later or later[0][0] - at > 30:
            continue
        arrival = run.arrivals.get(later[0][2])
        if arrival is not None:
            out.append((at, (arrival[1] - at) * 1000))
            run.accepted.add(later[0][2])
    return out


# -------------------------------------------------------------------------------------- run


def _camera_settings(work: Path, members: tuple[Customer, ...]) -> dict[str, str]:
    """A 640x480 video at 5 frames/s: a member shows the app's QR code for 3 s, then 7 s of
    three people looking at the screen; both purposes on."""
    from simulators.camera import audience_frame, qr_frame, write_video

    frames = []
    for i, member in enumerate(members[:6]):
        token = demo_token(member, time.time(), ttl_s=7200)
        frames += [qr_frame(token, seed=i)] * 15 + [audience_frame(3, seed=i)] * 35
    video = write_video(work / "camera.avi", frames, fps=5)
    return {
        "enabled": "true",
        "notice_posted": "true",
        "purposes": '["qr_identify", "audience_count"]',
        "source": json.dumps(str(video)),
        "kiosk": '"kiosk-01"',
        "screen": '"entrance-s1"',
        "process_fps": "5",
        # STORE_CAMERA_NICENESS: the camera's threads below the loop (the default, 10) or not (0)
        "niceness": os.environ.get("STORE_CAMERA_NICENESS", "10"),
    }


async def _crowd(
    port: int, duration: float, work: Path, spread_s: float
) -> tuple[asyncio.subprocess.Process, str]:
    crowd = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.hypermarket", "--port", str(port),
        "--duration", str(duration), "--customers", str(MEMBERS), "--bluez",
        "--spread", str(spread_s),
        stdout=subprocess.PIPE, stderr=(work / "crowd.log").open("wb"), cwd=REPO,
    )  # fmt: skip
    assert crowd.stdout is not None
    bus = ""
    async with asyncio.timeout(120):
        while (line := (await crowd.stdout.readline()).decode()) != "ready\n":
            if not line:
                raise RuntimeError(f"the crowd did not start: see {work / 'crowd.log'}")
            if line.startswith("bluez "):
                bus = line.split(" ", 1)[1].strip()
    return crowd, bus


async def _store(
    work: Path, broker: Mosquitto, quick: bool, ping: Ping, *, box: list[int], load: list[int]
) -> tuple[_Run, dict[str, Any]]:
    minutes = 2.0 if quick else 10.0
    outage_s = 30.0 if quick else 120.0
    fsync_ms = float(os.environ.get("STORE_FSYNC_MS", "10"))
    members = hypermarket.customers(MEMBERS)
    info: dict[str, Any] = {
        "minutes": minutes,
        "outage_s": outage_s,
        "cores": len(box),
        "load_shares_cores": bool(set(box) & set(load)),
        "spread_s": float(os.environ.get("STORE_SPREAD_S", "0")),
    }
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(Cloud(work / "cloud", keep_events=True))
        printers = {}
        for lane_printer in sorted(p for p in hypermarket.lanes().values() if p):
            printers[lane_printer] = await stack.enter_async_context(
                PrinterSimulator(work / lane_printer, baud=115_200)
            )
        config = hypermarket.write_config(
            work,
            members=members,
            printer_links={p: f"serial:{s.link}" for p, s in printers.items()},
            local_radio=True,
            camera=_camera_settings(work, members),
        )
        crowd, bus = await _crowd(broker.port, minutes * 60 + 120, work, info["spread_s"])
        stack.push_async_callback(_stop_process, crowd)
        env = slow_fsync_env(work, fsync_ms) if fsync_ms > 0 else {}
        info["fsync_ms"] = await asyncio.to_thread(_fsync_probe_ms, env)
        health_port = free_port()
        overrides = settings(
            store_port=broker.port,
            state_dir=work / "state",
            cloud_port=cloud.port,
            bundle_key=cloud.signer.public_key_text,
            logging__level="warning",
            health__enabled="true",
            health__port=str(health_port),
            cloud__bandwidth_bytes_per_s=str(UPLINK_BYTES_PER_S),
        )
        gateway = GatewayProcess(
            config,
            work,
            overrides=overrides,
            env=env | {"DBUS_SYSTEM_BUS_ADDRESS": bus},
            cpus=box,
        )
        gateway.start()
        stack.push_async_callback(asyncio.to_thread, gateway.stop, 30)
        info["ready_s"] = await asyncio.to_thread(gateway.wait_ready, 120.0)
        info["pid"] = gateway.pid
        store = await stack.enter_async_context(
            SimulatedStore("127.0.0.1", broker.port, hypermarket.STORE_ID, "bench-floor")
        )
        run = _Run(t0=time.time() + 5.0)
        until = run.t0 + minutes * 60
        sampler = asyncio.create_task(_sample(gateway, health_port, run))
        observer = asyncio.create_task(_observe(broker.port, run))
        mid = run.t0 + minutes * 30
        work_tasks = [
            _kiosks(store, run, members, until),
            _lanes(broker.port, printers, run, members, until),
            _tablets(broker.port, run, members, until),
            _pings(broker.port, ping, run, until),
            _outage(cloud, run, mid - outage_s / 2, outage_s),
        ]
        await asyncio.gather(*work_tasks)
        # The load stops; the outbox empties (or not) while the sampler watches.
        await _stop_process(crowd)
        assert crowd.stdout is not None
        for line in (await crowd.stdout.read()).decode().splitlines():
            if line.startswith("summary "):
                info["crowd"] = json.loads(line.split(" ", 1)[1])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(90):
                while not run.samples or run.samples[-1]["gateway_outbox_events"] > 0:  # noqa: ASYNC110 - the sampler task fills it
                    await asyncio.sleep(1.0)
        await asyncio.sleep(3.0)  # late duplicates, if any, arrive now
        sampler.cancel()
        observer.cancel()
        await asyncio.gather(sampler, observer, return_exceptions=True)
        run.latencies["zone"] = _zone_latencies(cloud, run)
        received = cloud.receiver.first_seen
        info["lost"] = sum(1 for d in run.accepted if d not in received)
        info["checked"] = len(run.accepted)
        info["duplicates"] = cloud.receiver.duplicates
        info["received"] = cloud.receiver.count
        info["log"] = gateway.log(tail=None)
    return run, info


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------------------- figures


def _figures(run: _Run, info: dict[str, Any]) -> Figures:
    samples = [s for s in run.samples if s["t"] >= run.t0 - SAMPLE_S]
    figures: Figures = {
        "store_minutes": info["minutes"],
        "store_cores": info["cores"],
        "store_load_shares_cores": float(info["load_shares_cores"]),
        "store_fsync_ms": info["fsync_ms"],
        "store_spread_s": info["spread_s"],
        "store_ready_s": info["ready_s"],
        "store_outage_s": info["outage_s"],
    }
    rtts = [r for _, r in run.pings]
    figures["store_broker_rtt_p50_ms"] = percentile(rtts, 50)
    figures["store_broker_rtt_p99_ms"] = percentile(rtts, 99)
    worst = 0.0
    for name in TOUCHPOINTS:
        values = [v for _, v in run.latencies[name]]
        figures[f"store_{name}_count"] = len(values)
        figures[f"store_{name}_unanswered"] = run.unanswered[name]
        if values:
            figures[f"store_{name}_p50_ms"] = statistics.median(values)
            figures[f"store_{name}_p99_ms"] = percentile(values, 99)
            figures[f"store_{name}_max_ms"] = max(values)
            worst = max(worst, figures[f"store_{name}_p99_ms"])
    figures["store_e2e_over_broker_p99_ms"] = worst - figures["store_broker_rtt_p99_ms"]
    if run.coupon_first_byte:
        figures["store_coupon_first_byte_p50_ms"] = statistics.median(run.coupon_first_byte)
        figures["store_coupon_first_byte_p99_ms"] = percentile(run.coupon_first_byte, 99)
    return figures | _daemon_figures(run, info, samples)


def _stalls_and_decisions(first: dict[str, float], last: dict[str, float]) -> Figures:
    """Loop lag, the moments' time in the daemon and GC pauses, from /metrics' histograms."""
    figures: Figures = {}
    lag = "gateway_loop_lag_seconds"
    figures["store_loop_lag_p99_ms"] = _quantile(first, last, lag, 0.99) * 1000
    figures["store_loop_lag_max_ms"] = last["gateway_loop_lag_max_seconds"] * 1000
    # A moment's arrival -> its plan carried out (content posted), inside the daemon: which part
    # of a touchpoint's time is the decision (queue, reads, commit) and which the links and the
    # broker (interpolated in the histogram's buckets: 10, 20, 50, 100, 250 ms).
    for moment, name in _DECIDED.items():
        label = f'moment="{moment}"'
        for q in (50, 99):
            figures[f"store_decision_{name}_p{q}_ms"] = (
                _quantile(first, last, "gateway_decision_seconds", q / 100, label) * 1000
            )
    gc_pause = "gateway_gc_pause_seconds"
    figures["store_gc_pauses"] = last[f"{gc_pause}_count"] - first[f"{gc_pause}_count"]
    figures["store_gc_pause_total_ms"] = (last[f"{gc_pause}_sum"] - first[f"{gc_pause}_sum"]) * 1000
    figures["store_gc_pause_p99_ms"] = _quantile(first, last, gc_pause, 0.99) * 1000
    figures["store_gc_pause_max_bucket_ms"] = _top_bucket(first, last, gc_pause) * 1000
    for g in range(3):
        count, total = (f'{gc_pause}_{k}{{generation="{g}"}}' for k in ("count", "sum"))
        figures[f"store_gc_gen{g}_count"] = last.get(count, 0.0) - first.get(count, 0.0)
        figures[f"store_gc_gen{g}_ms"] = (last.get(total, 0.0) - first.get(total, 0.0)) * 1000
    return figures


def _daemon_figures(run: _Run, info: dict[str, Any], samples: list[dict[str, float]]) -> Figures:
    """What the daemon's /metrics and /proc said over the run."""
    figures: Figures = {}
    first, last = samples[0], samples[-1]
    until = run.t0 + info["minutes"] * 60
    during = [s for s in samples if s["t"] <= until + SAMPLE_S] or samples
    loaded_last = during[-1]
    figures |= _stalls_and_decisions(first, loaded_last)
    wall = loaded_last["t"] - first["t"]
    figures["store_cpu_share"] = (loaded_last["cpu_s"] - first["cpu_s"]) / wall / info["cores"]
    rss = [(s["t"], s["rss_mib"]) for s in during]
    figures["store_rss_start_mib"] = rss[0][1]
    figures["store_rss_peak_mib"] = max(r for _, r in rss)
    figures["store_rss_end_mib"] = rss[-1][1]
    half = [((t - run.t0) / 60, r * 1024) for t, r in rss if t >= run.t0 + info["minutes"] * 30]
    figures["store_rss_slope_kib_per_min"] = _slope(half) if len(half) > 2 else 0.0
    # The last half holds the cloud's return, whose drain leaves its high-water mark in the RSS:
    # the slope from 30 s after the return on says whether anything keeps growing.
    after = [((t - run.t0) / 60, r * 1024) for t, r in rss if t >= run.up_at + 30]
    figures["store_rss_slope_after_drain_kib_per_min"] = _slope(after) if len(after) > 2 else 0.0
    backlog = [(s["t"], s["gateway_outbox_events"]) for s in samples]
    before = [b for t, b in backlog if run.down_at - 30 <= t < run.down_at] or [0.0]
    baseline = statistics.median(before)
    figures["store_outbox_before_outage"] = baseline
    figures["store_outbox_peak"] = max(b for _, b in backlog)
    drained = next((t for t, b in backlog if t > run.up_at and b <= baseline + 50), None)
    figures["store_drained"] = float(drained is not None)
    figures["store_drain_s"] = (drained if drained else backlog[-1][0]) - run.up_at
    figures["store_lost"] = info["lost"]
    figures["store_lost_checked"] = info["checked"]
    figures["store_duplicates"] = info["duplicates"]
    figures["store_cloud_events"] = info["received"]
    for metric, name in (
        ("gateway_events_shed_total", "store_shed_telemetry"),
        ("gateway_events_expired_total", "store_expired"),
        ("gateway_mqtt_dropped_total", "store_mqtt_dropped"),
        ("gateway_mqtt_busy_total", "store_busy_refused"),
        ("gateway_mqtt_received_total", "store_mqtt_received"),
    ):
        figures[name] = last.get(metric, 0.0) - first.get(metric, 0.0)
    figures["store_mqtt_received_per_s"] = figures["store_mqtt_received"] / max(
        last["t"] - first["t"], 1.0
    )
    crowd = info.get("crowd", {})
    seconds = max(crowd.get("seconds", 0.0), 1.0)
    figures["store_node_messages_per_s"] = crowd.get("node_messages", 0.0) / seconds
    figures["store_radio_adverts_per_s"] = crowd.get("radio_adverts", 0.0) / seconds
    figures["store_radio_failed"] = float(bool(crowd.get("radio_failure")))
    skipped = re.findall(r'"skipped": (\d+)', info["log"])
    figures["store_moments_skipped"] = float(skipped[-1]) if skipped else 0.0
    return figures


def _plot(run: _Run, info: dict[str, Any], figures: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = run.t0
    fig, (lat, cpu, mem) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    for name, marker in zip(TOUCHPOINTS, "o^sd", strict=True):
        points = run.latencies[name]
        if points:
            lat.scatter(
                [t - t0 for t, _ in points], [v for _, v in points], s=8, marker=marker, label=name
            )
    lat.scatter(
        [t - t0 for t, _ in run.pings], [v for _, v in run.pings], s=3, c="grey", label="broker rtt"
    )
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.legend(loc="upper right", fontsize=8)
    samples = run.samples
    ts = [(b["t"] + a["t"]) / 2 - t0 for a, b in itertools.pairwise(samples)]
    shares = [
        (b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"]) / info["cores"] * 100
        for a, b in itertools.pairwise(samples)
    ]
    lags = [
        _quantile(a, b, "gateway_loop_lag_seconds", 0.99) * 1000
        for a, b in itertools.pairwise(samples)
    ]
    cpu.plot(ts, shares, label="daemon CPU (% of its core)")
    cpu.set_ylabel("CPU %")
    twin = cpu.twinx()
    twin.plot(ts, lags, color="tab:red", label="loop lag p99 (ms)")
    twin.set_ylabel("loop lag p99 (ms)")
    cpu.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    mem.plot([s["t"] - t0 for s in samples], [s["rss_mib"] for s in samples], label="RSS (MiB)")
    mem.set_ylabel("RSS (MiB)")
    mem.set_xlabel("seconds")
    backlog = mem.twinx()
    backlog.plot(
        [s["t"] - t0 for s in samples],
        [s["gateway_outbox_events"] for s in samples],
        color="tab:green",
        label="outbox backlog (events)",
    )
    backlog.set_ylabel("outbox events")
    mem.legend(loc="upper left", fontsize=8)
    backlog.legend(loc="upper right", fontsize=8)
    for axis in (lat, cpu, mem):
        axis.axvspan(run.down_at - t0, run.up_at - t0, color="grey", alpha=0.15)
    fig.suptitle(
        f"scripts/bench.py store: {info['cores']} core, {figures['store_fsync_ms']:.0f} ms fsync,"
        f" cpu {figures['store_cpu_share']:.0%}, e2e-broker p99"
        f" {figures['store_e2e_over_broker_p99_ms']:.1f} ms (shaded: cloud away)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cores(cores: int) -> tuple[list[int], list[int]]:
    """(the daemon's cores, the load's): the last `cores` of this process's are the box's; the
    broker and the simulators run on the others. The simulators stand for devices a store's
    box does not run, and the broker has cores of its own on a store's box (a Pi has four):
    on the daemon's core they took its time in slices, which showed in every tail as loop lag
    and stretched GC pauses (2026-12-08: the loop's thread had only 45 % of the core's CPU).
    STORE_SHARE_CORES=1 lets the load run on the daemon's core too, as before that day."""
    allowed = sorted(os.sched_getaffinity(0))
    box, rest = allowed[-cores:], allowed[:-cores]
    if not rest or os.environ.get("STORE_SHARE_CORES") == "1":
        return box, allowed
    return box, rest


def bench_store(quick: bool, ping: Ping) -> Figures:
    """ping(port, rate, count): scripts/bench.py's broker round trip (async), in ms."""
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    print(f"  work directory {work}", flush=True)
    box, load = _cores(int(os.environ.get("STORE_CORES", "1")))
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, load)  # the broker and every simulator started from here on
    try:
        with Mosquitto(work / "broker") as broker:
            run, info = asyncio.run(_store(work, broker, quick, ping, box=box, load=load))
    finally:
        os.sched_setaffinity(0, allowed)
    figures = _figures(run, info)
    plot = Path(os.environ.get("STORE_PLOT", "bench-store.png"))
    _plot(run, info, figures, plot)
    raw = {
        "latencies": run.latencies,
        "pings": run.pings,
        "samples": [
            {k: v for k, v in s.items() if k in ("t", "cpu_s", "rss_mib", "gateway_outbox_events")}
            for s in run.samples
        ],
        "down_at": run.down_at,
        "up_at": run.up_at,
        "t0": run.t0,
    }
    (work / "store-run.json").write_text(json.dumps(raw))
    print(f"  plot {plot}; raw samples {work / 'store-run.json'}", flush=True)
    return figures
