"""A hypermarket for `scripts/bench.py store`: its floor, its devices, its config, its crowd.

- `LAYOUT`: 40 zones on a 120 m x 80 m floor (one ESPresense node each), the demo's named
  zones among them (the model knows those) and 34 aisles;
- `screens()`, `kiosks()`, `lanes()`, `tablets()`: 200 screens (5 a zone), 20 kiosks, 40 POS
  lanes (the first 10 with a receipt printer), 20 associate tablets;
- `customers(n)`: n opted-in members whose apps advertise rotating identifiers (EID);
- `write_config(...)`: the store's config.toml and seed file (catalog, consents, EID keys);
- `python -m simulators.hypermarket --port P ...`: the crowd, in a process of its own so it
  does not slow the benchmark's own clients: phones and beacons heard by the 40 nodes over MQTT
  (and, with `--bluez`, by the box's own radio through the fake BlueZ), and 200 screens
  subscribed to their content. It prints `bluez <bus address>` (with `--bluez`), then `ready`,
  and a summary line when it ends (at `--duration`, or on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiomqtt

from drivers.mqtt import NO_DELAY
from gateway.codecs.topics import Topics
from gateway.decision.features import CATEGORIES
from simulators.beacons import Heard, Layout, ScannerNodes, World, Zone
from simulators.population import Customer, eid_identity_key

__all__ = [
    "LAYOUT",
    "LOCAL_RADIO_ZONE",
    "STORE_ID",
    "customers",
    "kiosks",
    "lanes",
    "main",
    "screens",
    "tablets",
    "write_config",
]

REPO = Path(__file__).resolve().parent.parent
STORE_ID = "hypermarket"
PRINTERS = 10
LOCAL_RADIO_ZONE = "checkout"  # the box sits in the back office behind the tills

_NAMED = ("entrance", "checkout", "coffee", "bakery", "produce", "deli")
_ZONE_NAMES = _NAMED + tuple(f"aisle-{i:02d}" for i in range(1, 41 - len(_NAMED)))


def _layout() -> Layout:
    """8 x 5 zones, 15 m x 16 m apart; the entrance by the door, the tills beside it."""
    zones = []
    for i, name in enumerate(_ZONE_NAMES):
        row, col = divmod(i, 8)
        zones.append(Zone(name, 7.5 + 15 * col, 8.0 + 16 * row, radius=4.0))
    return Layout(zones=tuple(zones), door=(7.5, 0.0))


LAYOUT = _layout()


def screens() -> dict[str, str]:
    """Screen id -> its zone: five a zone."""
    return {f"{z}-s{j}": z for z in _ZONE_NAMES for j in range(1, 6)}


def kiosks() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Kiosk id -> (zone, the two screens beside it)."""
    return {
        f"kiosk-{n:02d}": (zone, (f"{zone}-s1", f"{zone}-s2"))
        for n, zone in enumerate(z for z in _ZONE_NAMES if z != "checkout")
        if n < 20
    }


def lanes() -> dict[str, str]:
    """Lane id -> its printer ("" for none): the first PRINTERS lanes print coupons."""
    return {f"pos-{n:02d}": f"receipt-{n:02d}" if n <= PRINTERS else "" for n in range(1, 41)}


def tablets() -> dict[str, str]:
    """Tablet id -> the zone it serves in."""
    aisles = [z for z in _ZONE_NAMES if z not in ("entrance", "checkout")]
    return {f"tablet-{n:02d}": aisles[n % len(aisles)] for n in range(1, 21)}


def customers(n: int) -> tuple[Customer, ...]:
    """n opted-in members (DEMO KEYS: their EID keys derive from the loyalty number)."""
    segments = ("coffee-lovers", "bakery-fans", "families", "health", "value", None)
    return tuple(
        Customer(f"member-{i}", f"41{i:011d}", consented=True, segment=segments[i % 6])
        for i in range(n)
    )


def _seed(members: Sequence[Customer]) -> dict[str, object]:
    demo = json.loads((REPO / "examples" / "demo-seed.json").read_text())
    offers = list(demo["offers"])
    for i in range(60):  # a hypermarket's catalog: more offers, every category
        offers.append(
            {
                "id": f"OFF-H{i:03d}",
                "title": f"Hypermarket offer {i}",
                "category": CATEGORIES[i % len(CATEGORIES)],
                "discount_pct": 5 + i % 30,
                "priority": i % 10,
            }
        )
    consents = [
        {
            "loyalty": c.loyalty,
            "personalisation": True,
            **({"segment": c.segment} if c.segment else {}),
            "eid_key": eid_identity_key(c).hex(),
            "eid_k": 10,
        }
        for c in members
    ]
    return {"offers": offers, "consents": consents + demo["consents"]}


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers, booleans and lists are TOML too


def write_config(
    work: Path,
    *,
    members: Sequence[Customer],
    printer_links: Mapping[str, str],
    local_radio: bool,
    camera: Mapping[str, str] | None,
) -> Path:
    """The hypermarket's config.toml (and its seed file) in `work`; brokers, state, health and
    cloud come as `--set` overrides (simulators.daemon.settings)."""
    work.mkdir(parents=True, exist_ok=True)
    seed = work / "hypermarket-seed.json"
    seed.write_text(json.dumps(_seed(members)))
    demo_toml = (REPO / "examples" / "demo.toml").read_text()
    token_key = next(
        line.split("=", 1)[1].strip()
        for line in demo_toml.splitlines()
        if line.startswith("token_public_key")
    )
    lines = [
        f"[store]\nid = {_toml(STORE_ID)}\n",
        "[identity]",
        f"hash_key_file = {_toml(str(REPO / 'examples' / 'demo-identity.key'))}",
        f"token_public_key = {token_key}\n",
        f"[catalog]\nseed_file = {_toml(str(seed))}\n",
        f"[decision]\nmodel_file = {_toml(str(REPO / 'models' / 'nba.onnx'))}\n",
        "[ble]\nenabled = true",
        f"adapter = {_toml('hci0' if local_radio else '')}",
        "passive = false\n",
    ]
    for zone in _ZONE_NAMES:
        lines.append(f"[ble.scanners.espresense-{zone}]\nzone = {_toml(zone)}\n")
    if local_radio:
        lines.append(f"[ble.scanners.hci0]\nzone = {_toml(LOCAL_RADIO_ZONE)}\n")
    for screen, zone in screens().items():
        lines.append(f"[screens.{screen}]\nzone = {_toml(zone)}\n")
    for kiosk, (zone, beside) in kiosks().items():
        lines.append(f"[kiosks.{kiosk}]\nzone = {_toml(zone)}\nscreens = {_toml(list(beside))}\n")
    for lane, printer in lanes().items():
        lines.append(f"[lanes.{lane}]\nprinter = {_toml(printer)}\n")
    for printer, link in printer_links.items():
        lines.append(f"[printers.{printer}]\nlink = {_toml(link)}\nbaud = 115200\n")
    for tablet, zone in tablets().items():
        lines.append(f"[tablets.{tablet}]\nzone = {_toml(zone)}\n")
    if camera:
        lines.append("[camera]")
        lines += [f"{key} = {value}" for key, value in camera.items()]
    path = work / "hypermarket.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# The crowd, in its own process


class _Screens:
    """One MQTT client per screen, subscribed to its content (what the broker fans out to)."""

    def __init__(self, host: str, port: int) -> None:
        topics = Topics(STORE_ID)
        self._clients = {
            s: aiomqtt.Client(host, port, identifier=f"screen-{s}", socket_options=[NO_DELAY])
            for s in screens()
        }
        self._topics = {s: topics.screen_content(s) for s in self._clients}
        self.received: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> _Screens:
        for screen, client in self._clients.items():
            await client.__aenter__()
            await client.subscribe(self._topics[screen], qos=1)
            self._tasks.append(asyncio.create_task(self._read(screen, client)))
        return self

    async def _read(self, screen: str, client: aiomqtt.Client) -> None:
        async for _message in client.messages:
            self.received[screen] += 1

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients.values():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)


async def _radio_feed(bluez: object, heard: list[Heard], spread_s: float) -> int:
    """The adverts the checkout's node hears, heard by the box's own radio too, over
    `spread_s` (a controller passes adverts on as it hears them, not a second's at once)."""
    from simulators.bluez import FakeBluez

    assert isinstance(bluez, FakeBluez)
    passed = 0
    room = f"espresense-{LOCAL_RADIO_ZONE}"
    adverts = [h for h in heard if h.scanner == room and h.rssi < 0]
    began, gap = time.monotonic(), spread_s / max(1, len(adverts))
    for n, h in enumerate(adverts):
        if gap and n % 10 == 0 and (wait := began + n * gap - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        uuids = list(h.service_uuids) or None
        passed += await bluez.advertise(
            h.address, h.rssi, h.manufacturer_data, h.service_data, uuids=uuids
        )
    return passed


class _Radio:
    """The box's radio, fed while its bus takes it: a full D-Bus socket (a daemon too busy to
    read) costs the radio, never the scanner nodes."""

    def __init__(self, bluez: object | None, spread_s: float) -> None:
        self.bluez = bluez
        self.spread_s = spread_s
        self.adverts = 0
        self.failure = ""

    async def feed(self, _now: float, heard: list[Heard]) -> None:
        if self.bluez is None or self.failure:
            return
        try:
            async with asyncio.timeout(2.0 + self.spread_s):  # a bus that stopped taking writes
                self.adverts += await _radio_feed(self.bluez, heard, self.spread_s)
        except Exception as exc:  # noqa: BLE001 - reported in the summary, the crowd goes on
            self.failure = repr(exc)
            print(f"radio feed stopped: {exc!r}", file=sys.stderr, flush=True)


async def _crowd(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    world = World(
        start=time.time(),
        seed=args.seed,
        devices=args.devices,
        layout=LAYOUT,
        customers=customers(args.customers),
    )
    async with contextlib.AsyncExitStack() as stack:
        bluez = None
        if args.bluez:
            from simulators.bluez import FakeBluez

            bluez = await stack.enter_async_context(FakeBluez(passive_supported=False))
            print(f"bluez {bluez.address}", flush=True)
        shown = await stack.enter_async_context(_Screens(args.host, args.port))
        nodes = await stack.enter_async_context(
            ScannerNodes(
                args.host,
                args.port,
                world,
                max_distance_m=args.max_distance,
                skip_distance_m=args.skip_distance,
                skip_s=args.skip_s,
                spread_s=args.spread,
            )
        )
        print("ready", flush=True)
        radio = _Radio(bluez, args.spread / 2)
        started = time.monotonic()
        walk = asyncio.create_task(
            nodes.run(until=time.time() + args.duration, on_sample=radio.feed)
        )
        halt = asyncio.create_task(stop.wait())
        await asyncio.wait([walk, halt], return_when=asyncio.FIRST_COMPLETED)
        ended = walk.done() and not walk.cancelled() and walk.exception()
        if ended:
            print(f"the crowd stopped early: {ended!r}", file=sys.stderr, flush=True)
        for task in (walk, halt):
            task.cancel()
        await asyncio.gather(walk, halt, return_exceptions=True)
        summary = {
            "seconds": time.monotonic() - started,
            "node_messages": sum(nodes.published.values()),
            "radio_adverts": radio.adverts,
            "radio_failure": radio.failure,
            "screen_messages": sum(shown.received.values()),
        }
    print(f"summary {json.dumps(summary)}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The hypermarket's crowd and screens.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--devices", type=int, default=5000, help="phones and watches at once")
    parser.add_argument("--customers", type=int, default=500, help="of them, opted-in members")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--bluez", action="store_true", help="feed the fake BlueZ too")
    parser.add_argument("--max-distance", type=float, default=10.0, help="nodes' max distance")
    parser.add_argument("--skip-distance", type=float, default=0.5, help="nodes' skip distance")
    parser.add_argument("--skip-s", type=float, default=5.0, help="nodes' skip time")
    parser.add_argument(
        "--spread", type=float, default=0.0, help="seconds each sample's reports take, node by node"
    )
    asyncio.run(_crowd(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
