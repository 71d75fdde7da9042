"""The whole store on a laptop: a private broker, the gateway, kiosks and screens, narrated.

    scripts/demo [--duration SECONDS] [--rate VISITS_PER_S] [--seed N]

Customers walk up to the kiosks and identify (loyalty card, app QR code, or a card the store
does not know); shoppers walk the floor with their phones, heard by BLE scanner nodes
(ESPresense over MQTT); a POS lane totals baskets and its receipt printer (a simulator on a
pseudo-terminal) prints coupons, which are later redeemed once; an associate serves customers on
a tablet and answers its suggestions; opted-in customers' apps get in-app messages through the
cloud; the demo prints what the gateway
decided, what each screen shows, and every receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gateway.codecs.ids import uuid7
from gateway.console.accounts import Accounts
from gateway.runtime.config import load_config
from simulators.beacons import ScannerNodes, World
from simulators.broker import Mosquitto, MosquittoMissing, free_port
from simulators.cloud import Cloud
from simulators.daemon import GatewayProcess
from simulators.events import EventSource
from simulators.population import CUSTOMERS, Customer, demo_token
from simulators.pos import PosLane
from simulators.printer import PrinterSimulator
from simulators.signage import render
from simulators.store import SimulatedStore
from simulators.tablet import Tablet

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "examples" / "demo.toml"
DEMO_SEED = REPO / "examples" / "demo-seed.json"


@dataclass
class _Tally:
    visits: int = 0
    personal: int = 0
    latencies_ms: list[float] | None = None


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)


async def _visit(
    store: SimulatedStore,
    kiosk_id: str,
    screens: tuple[str, ...],
    customer: Customer,
    *,
    how: str,
    tally: _Tally,
) -> None:
    kiosk = store.kiosk(kiosk_id)
    sent = time.monotonic()
    if how == "qr":
        rid = await kiosk.identify("qr_token", demo_token(customer, time.time()))
        action = f"{customer.name} shows the app's QR code"
    else:
        rid = await kiosk.identify("loyalty", customer.loyalty)
        action = f"{customer.name} scans loyalty {customer.masked}"
    topics = [store.topics.kiosk_content(kiosk_id)] + [
        store.topics.screen_content(s) for s in screens
    ]
    try:
        async with asyncio.timeout(5):
            answers = await store.answers(rid, topics)
    except TimeoutError:
        _say(f"{kiosk_id}: {action} -> no answer from the gateway within 5 s")
        return
    content = answers[topics[0]].content
    latency_ms = (max(a.at for a in answers.values()) - sent) * 1000
    tally.visits += 1
    assert tally.latencies_ms is not None
    tally.latencies_ms.append(latency_ms)
    where = ", ".join([kiosk_id] + [f"screen {s}" for s in screens])
    offer = f"offer {content.offer.id}" if content.offer else "house content"
    if content.audience == "personal":
        tally.personal += 1
        outcome = f"customer identified -> {offer} on {where}"
    else:
        outcome = f"no personalisation consent on record -> anonymous {offer} on {where}"
    _say(f"{kiosk_id}: {action} -> {outcome} ({latency_ms:.1f} ms)")
    for screen in screens:
        _say(f"    {render(screen, answers[store.topics.screen_content(screen)].content)}")


@dataclass
class _Till:
    lane: PosLane
    printer: PrinterSimulator
    rng: random.Random
    coupons: list[str]
    cloud: Cloud
    store_id: str
    claims: list[tuple[str, Customer]] = field(default_factory=list)  # printed, not claimed
    claims_sent: int = 0  # the claims bundle's version


_BASKETS = (["pasta", "sauce"], ["coffee", "bakery"], ["produce", "dairy"], ["drinks", "snacks"])
_PRICE = 2.5


async def _till_step(step: int, till: _Till) -> None:
    """Every third step a basket is totalled (a coupon prints) and its receipt sent: an
    e-receipt for a customer who scanned a card, a claim QR for one who did not, claimed in the
    app a little later; every ninth, a customer comes back with an earlier coupon, and tries it
    a second time."""
    if step % 3 != 0:
        await _claim_step(till)
        return
    basket = till.rng.choice(_BASKETS)
    total = round(_PRICE * len(basket), 2)
    await till.lane.basket(basket, total)
    customer = till.rng.choice(CUSTOMERS)
    identified = till.rng.random() < 0.6
    if identified:
        await till.lane.loyalty(customer.loyalty)
    printed = len(till.printer.receipts)
    transaction = await till.lane.total(total)
    who = customer.name if identified else f"a customer ({customer.name}, no card)"
    _say(
        f"pos-1: {who} pays {total:.2f} for {' + '.join(basket)}"
        " -> transaction accepted (acknowledged after commit)"
    )
    await _coupon(till, printed)
    lines = [(f"SKU-{item.upper()}", item, item, 1.0, _PRICE) for item in basket]
    printed = len(till.printer.receipts)
    await till.lane.receipt(transaction, lines)
    if identified:
        _say(f"pos-1: e-receipt for {customer.name}'s loyalty account (no contact detail sent)")
    else:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                slip = (await till.printer.wait_for_receipts(printed + 1))[-1]
                found = re.search(r"RCP-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}", slip.text)
                if found:
                    till.claims.append((found.group(0), customer))
                    _say(f"pos-1: receipt QR {found.group(0)} printed for an anonymous customer")
    if step % 9 == 0 and till.coupons:
        code = till.coupons.pop(0)
        for attempt in ("brings back", "tries again with"):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    reply = await till.lane.redeem(code)
                    _say(f"pos-1: a customer {attempt} {code} -> {reply['message']}")


async def _claim_step(till: _Till) -> None:
    """A customer who took a receipt QR scans it in the app: the cloud sends a claims bundle."""
    if not till.claims or not till.cloud.is_up:
        return
    code, customer = till.claims.pop(0)
    till.claims_sent += 1
    body = {"claims": [{"code": code, "customer_ref": customer.ref}]}
    await till.cloud.publish_bundle(till.store_id, "claims", till.claims_sent, body)
    version = till.claims_sent
    _say(f"app: {customer.name} scans receipt QR {code} in the app -> claims bundle v{version}")


async def _coupon(till: _Till, printed: int) -> None:
    try:
        async with asyncio.timeout(5):
            receipt = (await till.printer.wait_for_receipts(printed + 1))[-1]
    except TimeoutError:
        _say("receipt-1: no coupon printed (no offer for the receipt channel?)")
    else:
        lines = [line.strip() for line in receipt.text.splitlines() if line.strip()]
        found = re.search(r"CPN-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}", receipt.text)
        code = found.group(0) if found else "?"
        if found:
            till.coupons.append(code)
        where = f" ({receipt.path})" if receipt.path else ""
        _say(f"receipt-1: printed coupon {code}{where}")
        for line in lines[:4]:
            _say(f"    | {line}")


async def _tablet_step(
    step: int, tablet: Tablet, answers: EventSource, rng: random.Random, declared: bool
) -> None:
    """Every fourth step an associate serves a customer on tablet-1: the card's suggestions,
    the first accepted, the others declined; then the session is closed."""
    if step % 4 != 2 or not declared:
        return
    customer = rng.choice(CUSTOMERS)
    asks = rng.choice((["produce"], ["coffee"], []))
    session = uuid7()
    try:
        async with asyncio.timeout(3):
            card = await tablet.serve(
                session, "A-1042", method="loyalty", value=customer.loyalty, asks=asks
            )
    except TimeoutError:
        _say(f"tablet-1: serving {customer.name} -> no card within 3 s")
        return
    picks = [
        f"{s.offer.title} ({'accepted' if s.rank == 1 else 'declined'})" for s in card.suggestions
    ]
    for s in card.suggestions:
        answer = "tablet.accepted" if s.rank == 1 else "tablet.declined"
        await answers.send(answer, "reward", {"decision_id": s.decision_id})
    await tablet.close(session)
    known = f", profile {card.segment or 'no segment'}" if card.audience == "personal" else ""
    _say(
        f"tablet-1: serving {customer.name} ({card.audience}{known}) -> suggests "
        + ("; ".join(picks) or "nothing eligible")
    )


async def _cloud_step(step: int, cloud: Cloud, store_id: str) -> None:
    """The cloud's part of the story, at fixed steps: an outage, a backlog, a signed bundle."""
    receiver = cloud.receiver
    if step == 6:
        await cloud.down()
        _say(f"cloud: link lost (simulated outage); {receiver.count} events received so far")
    elif step == 10:
        before = receiver.count
        await cloud.up()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await receiver.wait_until(lambda: receiver.count > before)
        _say(f"cloud: back; the outbox drained {receiver.count - before} events kept meanwhile")
    elif step == 12:
        offer = {
            "id": "OFF-CLOUD-1",
            "title": "Cloud special: 2 for 1 pastries",
            "category": "bakery",
            "discount_pct": 50,
            "priority": 50,
        }
        catalog = json.loads(DEMO_SEED.read_text())["offers"]
        payload = cloud.signer.make("offers", 1, {"offers": [offer, *catalog]}, store=store_id)
        async with cloud.client("demo-cloud-publisher") as client:
            await cloud.signer.publish(client, store_id, "offers", payload)
        _say("cloud: pushes a signed offers bundle v1 (the catalog plus OFF-CLOUD-1)")


async def _narrate_presence(
    store: SimulatedStore, screens: dict[str, str], kiosks: set[str]
) -> None:
    """Content no kiosk request asked for: BLE presence on a zone's screens, or the kiosk
    camera reading an app QR code. One line each."""
    told: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        for arrival in list(store.seen.content.values()):
            content = arrival.content
            if content.request_id is not None or content.decision_id in told:
                continue
            told.add(content.decision_id)
            if content.touchpoint in kiosks:
                _say(
                    f"{content.touchpoint} camera: reads an app QR code ->"
                    f" {content.audience} content on {content.touchpoint} and its screens"
                )
                _say(f"    {render(content.touchpoint, content)}")
                continue
            zone = screens.get(content.touchpoint, "?")
            _say(f"ble: {content.audience} presence in zone {zone} -> screen {content.touchpoint}")
            _say(f"    {render(content.touchpoint, content)}")


async def _narrate_app(cloud: Cloud) -> None:
    """In-app messages as the cloud receives them, for the app it pushes to."""
    names = {c.ref: c.name for c in CUSTOMERS}
    told: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        receiver = cloud.receiver
        for event_id, event in list(receiver.events.items()):
            if event_id in told or event.get("type") not in ("app.message", "receipt.claimed"):
                continue
            told.add(event_id)
            data = event["data"]
            if event["type"] == "receipt.claimed":
                linked = len(data["decision_ids"])
                claimant = names.get(data.get("customer_ref", ""), "?")
                _say(
                    f"gateway: receipt {data['claim_code']} {data['status']}: the visit's"
                    f" {linked} decision(s) now count for {claimant}"
                )
                continue
            who = names.get(data["customer"], "a customer")
            late_ms = (receiver.first_seen.get(event_id, event["ts"]) - event["ts"]) * 1000
            _say(
                f"app: {data['kind']} offer {data['offer']['title']!r} pushed to {who}'s app"
                f" ({late_ms:.0f} ms after the decision)"
            )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    # Bounded: a publish stuck in the MQTT client must not hold up the demo's exit.
    await asyncio.wait(tasks, timeout=2)


async def _walk(
    port: int,
    config_path: Path,
    duration: float | None,
    rate: float,
    rng: random.Random,
    *,
    cloud: Cloud,
    printer: PrinterSimulator,
) -> _Tally:
    config = load_config(config_path)
    kiosks = {k: v.screens for k, v in config.kiosks.items()} or {"kiosk-1": ()}
    tally = _Tally(latencies_ms=[])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration is None else time.monotonic() + duration
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            SimulatedStore("127.0.0.1", port, config.store.id, "demo-floor")
        )
        lane = await stack.enter_async_context(PosLane("127.0.0.1", port, config.store.id))
        tablet, answers = (
            await stack.enter_async_context(Tablet("127.0.0.1", port, config.store.id)),
            await stack.enter_async_context(
                EventSource("127.0.0.1", port, config.store.id, kind="tablet", device_id="tablet-1")
            ),
        )
        till = _Till(lane, printer, rng, [], cloud, config.store.id)
        background = [asyncio.create_task(_narrate_app(cloud))]
        if config.ble.enabled:
            world = World(start=time.time(), seed=rng.randrange(1 << 30), devices=12)
            nodes = await stack.enter_async_context(ScannerNodes("127.0.0.1", port, world))
            _say(f"ble: {len(world.scanners)} scanner nodes hear 12 phones walking the floor")
            background.append(asyncio.create_task(nodes.run()))
        if config.ble.enabled or config.camera.enabled:
            screens = {k: v.zone for k, v in config.screens.items()}
            background.append(
                asyncio.create_task(_narrate_presence(store, screens, set(config.kiosks)))
            )
        stack.push_async_callback(_cancel, background)
        step = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            kiosk_id = rng.choice(sorted(kiosks))
            step += 1
            await _till_step(step, till)
            await _tablet_step(step, tablet, answers, rng, "tablet-1" in config.tablets)
            await _cloud_step(step, cloud, config.store.id)
            if step % 7 == 0:
                await store.kiosk(kiosk_id).send_raw(b'{"method": "fax", "value": 42}')
                n = len(store.seen.errors)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await store.wait_for(lambda n=n: len(store.seen.errors) > n)  # type: ignore[misc]
                error = store.seen.errors[-1]["error"] if len(store.seen.errors) > n else "?"
                _say(f"{kiosk_id}: sends a malformed message -> gateway/errors: {error}")
            else:
                customer = rng.choice(CUSTOMERS)
                how = "qr" if customer.consented and rng.random() < 0.4 else "card"
                await _visit(store, kiosk_id, kiosks[kiosk_id], customer, how=how, tally=tally)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, 1 / rate)):
                    await stop.wait()
        if not cloud.broker.running:
            await cloud.up()
        with contextlib.suppress(TimeoutError):  # let the outbox drain before the summary
            async with asyncio.timeout(5):
                await lane.events.settled()
                await cloud.receiver.wait_until(
                    lambda: lane.events.acked <= cloud.receiver.first_seen.keys()
                )
    return tally


def _camera_settings(workdir: Path) -> dict[str, str]:
    """The kiosk-2 camera, on a looping video: consenting customers show their app's QR code
    for three seconds each, with an empty counter in between."""
    from simulators.camera import blank_frame, qr_frame, write_video

    frames = []
    for i, customer in enumerate(c for c in CUSTOMERS if c.consented):
        token = demo_token(customer, time.time(), ttl_s=3600)
        frames += [qr_frame(token, seed=i)] * 30 + [blank_frame(seed=i)] * 20
    video = write_video(workdir / "kiosk-2-camera.avi", frames, fps=10)
    _say(f"camera: kiosk-2's camera enabled (qr_identify) on a simulated video, {video}")
    return {
        "camera.enabled": "true",
        "camera.notice_posted": "true",
        "camera.purposes": '["qr_identify"]',
        "camera.source": str(video),
        "camera.kiosk": "kiosk-2",
    }


async def _store_day(args: argparse.Namespace, workdir: Path, broker: Mosquitto) -> int:
    """Cloud up, gateway up, the walk, the summary, everything down in order."""
    async with (
        Cloud(workdir / "cloud", keep_events=True) as cloud,
        PrinterSimulator(workdir / "printer-1", out_dir=workdir / "receipts") as printer,
    ):
        _say(f"cloud: private cloud broker on 127.0.0.1:{cloud.port}, bundle key generated")
        _say(f"receipt-1: printer simulator on {printer.link} (receipts in {workdir}/receipts)")
        health_port, console_port = free_port(), free_port()
        console_password = secrets.token_urlsafe(12)
        Accounts(workdir / "console-users.json").add("demo", "operator", console_password)
        gateway = GatewayProcess(
            args.config,
            workdir,
            overrides={
                "mqtt.port": str(broker.port),
                "store.state_dir": str(workdir / "state"),
                "health.port": str(health_port),
                "console.port": str(console_port),
                "console.users_file": str(workdir / "console-users.json"),
                "cloud.enabled": "true",
                "cloud.host": "127.0.0.1",
                "cloud.port": str(cloud.port),
                "cloud.tls": "false",
                "cloud.reconnect_min_s": "0.2",
                "cloud.reconnect_max_s": "1",
                "cloud.bundle_public_key": cloud.signer.public_key_text,
                "printers.receipt-1.device": str(printer.link),
                "lanes.pos-1.printer": "receipt-1",
                **(_camera_settings(workdir) if args.camera else {}),
            },
        )
        try:
            gateway.start()
            ready_s = await asyncio.to_thread(gateway.wait_ready)
            _say(
                f"gateway: ready in {ready_s:.2f} s; health http://127.0.0.1:{health_port}/healthz"
            )
            _say(
                f"console: http://127.0.0.1:{console_port}/ (user demo,"
                f" password {console_password}, made for this run)"
            )
            _say(f"gateway: its log is {gateway.output}")
            tally = await _walk(
                broker.port,
                args.config,
                args.duration,
                args.rate,
                random.Random(args.seed),
                cloud=cloud,
                printer=printer,
            )
            lat = tally.latencies_ms or [0.0]
            _say(
                f"demo: {tally.visits} visits, {tally.personal} personalised;"
                f" kiosk -> screens latency median {statistics.median(lat):.1f} ms,"
                f" max {max(lat):.1f} ms"
            )
            kinds = Counter(str(e.get("type")) for e in cloud.receiver.events.values())
            shown = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            _say(
                f"cloud: received {cloud.receiver.count} events ({shown or 'none'});"
                f" {cloud.receiver.duplicates} duplicates removed by id"
            )
        finally:
            code = await asyncio.to_thread(gateway.stop)
            _say(f"gateway: stopped with exit code {code}")
    await _lift_readout(workdir, args.seed or 0)
    return code


async def _lift_readout(workdir: Path, seed: int) -> None:
    """The readout (`store-gateway report`) of a simulated month whose true lift is known: a
    demo's minutes are too few to measure one (docs/decision.md, "The readout")."""
    from gateway.decision.report_text import render
    from simulators.lift import World, beside_the_truth, measure

    measured = await measure(World(), seed, workdir)
    _say(f"readout: a simulated month with a known answer (python -m simulators.lift {seed}):")
    for line in render(measured.readout).splitlines():
        if line.startswith("personalised overall"):
            _say(f"    {line}")
    _say(f"    {beside_the_truth(measured)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=1.0, help="visits per second (default 1)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seed", type=int, default=None, help="random seed for the visitors")
    parser.add_argument(
        "--camera",
        action="store_true",
        help="enable the opt-in kiosk camera (qr_identify) on a simulated video of app QR codes",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    # The simulated devices' own MQTT library chatter (a reset when the cloud goes away) is noise.
    logging.getLogger("mqtt").disabled = True
    workdir = Path(tempfile.mkdtemp(prefix="store-gateway-demo-"))
    try:
        broker = Mosquitto(workdir / "broker")
    except MosquittoMissing as exc:
        print(f"scripts/demo: {exc}", file=sys.stderr)
        return 1
    broker.start()
    _say(f"broker: private Mosquitto on 127.0.0.1:{broker.port}")
    try:
        return asyncio.run(_store_day(args, workdir, broker))
    except (RuntimeError, TimeoutError) as exc:
        print(f"scripts/demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the walk began; the gateway was stopped in order
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
