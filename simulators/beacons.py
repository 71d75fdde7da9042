"""BLE in a simulated store: fixed beacons, shoppers' phones, and ESPresense scanner nodes.

`World` is the radio truth, driven by the time the caller passes in, so tests and benchmarks run
faster than real time: `world.heard(now)` is one scan sample, every advert every scanner node
hears at `now` (log-distance path loss plus Gaussian noise, cut at the sensitivity floor), and
`world.present(now)` is where everyone really is. Deterministic for a seed: the schedules come
from per-shopper random streams and the noise of a sample from (seed, now).

`espresense_message` turns one `Heard` into the MQTT message an ESPresense node would publish
(the mapping is in docs/ble.md); `ScannerNodes` publishes them from one MQTT client per node, at
real time (`run`) or one sample at a time (`step`).

python -m simulators.beacons --host 127.0.0.1 --port 1883 --duration 30 --devices 50 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from uuid import UUID, uuid5

import aiomqtt
import numpy as np
import paho.mqtt.client as paho

from drivers.mqtt import NO_DELAY, encode_publish
from gateway.ble.eid import eid as eddystone_eid
from gateway.ble.frames import (
    EDDYSTONE_0M_TO_1M_DB,
    AltBeacon,
    EddystoneEID,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    Frame,
    IBeacon,
    encode_advert,
)
from simulators.population import CUSTOMERS, Customer, eid_identity_key

__all__ = [
    "DEFAULT_LAYOUT",
    "FixedBeacon",
    "Heard",
    "Layout",
    "Presence",
    "Scanner",
    "ScannerNodes",
    "World",
    "Zone",
    "espresense_id",
    "espresense_message",
    "forwarded",
    "main",
    "realtime",
]

TX_1M_DBM = -59  # a phone or beacon heard 1 m away
PATH_LOSS_EXPONENT = 2.2  # open retail floor, people and shelves in between
NOISE_DB = 4.0
SENSITIVITY_DBM = -95  # a node hears nothing weaker
HEIGHT_M = 1.5  # nodes sit on the ceiling, phones at hand height: never closer than this
EID_K = 10
ADDRESS_ROTATION_S = 900.0  # phones change their resolvable private address about every 15 min
APPLE, MICROSOFT, SAMSUNG = 0x004C, 0x0006, 0x0075
RADIUS_NETWORKS = 0x0118  # AltBeacon's company id
FAST_PAIR = "0000fe2c-0000-1000-8000-00805f9b34fb"  # Google Fast Pair service data

# Fixed identities of the demo store's beacons.
STORE_UUID = uuid5(UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), "beacons.demo-store.example")
STORE_MAJOR = 1
_NAMESPACE_SEED = b"store-gateway demo namespace"
EDDYSTONE_NAMESPACE = hashlib.sha1(_NAMESPACE_SEED, usedforsecurity=False).digest()[:10]
ALTBEACON_UUID = uuid5(STORE_UUID, "brand-display")

_PhoneKind = Literal["eid", "apple", "microsoft", "samsung", "fastpair", "silent"]
# What an anonymous phone advertises, and how often (an app-less crowd of phones and watches).
_ANONYMOUS: dict[_PhoneKind, float] = {
    "apple": 0.45,
    "samsung": 0.15,
    "microsoft": 0.1,
    "fastpair": 0.1,
    "silent": 0.2,
}
_INTERVAL_MS: dict[_PhoneKind, int] = {
    "eid": 1000,
    "apple": 300,
    "microsoft": 1000,
    "samsung": 500,
    "fastpair": 200,
    "silent": 500,
}


# --------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    x: float  # centre, metres from the front-left corner
    y: float
    radius: float = 3.0  # where shoppers stand while they dwell here


@dataclass(frozen=True, slots=True)
class Scanner:
    id: str  # the node's id, which is its ESPresense room
    zone: str
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Layout:
    """A floor plan: zones (which must include `entrance` and `checkout`) and the door."""

    zones: tuple[Zone, ...]
    door: tuple[float, float]

    @property
    def scanners(self) -> tuple[Scanner, ...]:
        """One node per zone, above its centre; ids as docs/install.md names nodes."""
        return tuple(Scanner(f"espresense-{z.name}", z.name, z.x, z.y) for z in self.zones)

    def zone(self, name: str) -> Zone:
        return next(z for z in self.zones if z.name == name)


# A 50 m x 30 m supermarket; zone centres at least 14 m apart, so a dwelling shopper's own node
# is nearly always the loudest.
DEFAULT_LAYOUT = Layout(
    zones=(
        Zone("entrance", 6.0, 3.0),
        Zone("produce", 8.0, 18.0),
        Zone("bakery", 24.0, 25.0),
        Zone("deli", 40.0, 24.0),
        Zone("coffee", 40.0, 10.0),
        Zone("checkout", 22.0, 5.0),
    ),
    door=(6.0, 0.0),
)


@dataclass(frozen=True, slots=True)
class FixedBeacon:
    """A battery beacon on a shelf, interleaving its frames (and TLM, if it sends telemetry)."""

    name: str
    zone: str
    address: str  # static random address: fixed beacons do not churn
    x: float
    y: float
    frames: tuple[Frame, ...]
    boot: float  # when its uptime counter started
    battery_mv: int  # at boot
    temperature_c: float  # mean shelf temperature
    interval_ms: int = 100  # per frame type, as multi-frame beacons are usually set up
    tlm: bool = True

    def telemetry(self, now: float) -> EddystoneTLM:
        """TLM at `now`: uptime and advert count advance, the battery drains, temperature swings
        a little over the day (quantised as the frame carries them, so decode(encode) is exact)."""
        up = max(0.0, now - self.boot)
        swing = 1.5 * math.sin(2 * math.pi * (now % 86_400) / 86_400)
        return EddystoneTLM(
            battery_mv=max(2000, self.battery_mv - int(up * 2 / 86_400)),  # about 2 mV a day
            temperature_c=round((self.temperature_c + swing) * 256) / 256,
            adv_count=int(up * 1000 / self.interval_ms) * (len(self.frames) + 1),
            uptime_s=round(up, 1),
        )

    def frames_at(self, now: float) -> list[Frame]:
        return [*self.frames, self.telemetry(now)] if self.tlm else list(self.frames)


# --------------------------------------------------------------------------------------------
# What the radio carries


@dataclass(frozen=True, slots=True)
class Heard:
    """One advert heard by one scanner node. `frame` is what `decode_advert` makes of the data
    (None for a device without a beacon frame), kept so a benchmark can skip decoding. The data
    dicts are shared between samples: read them, do not change them."""

    scanner: str
    address: str  # "AA:BB:CC:DD:EE:FF", as BlueZ and bleak write it
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    rssi: int
    frame: Frame | None
    interval_ms: int = 1000  # how often the device advertises
    service_uuids: tuple[str, ...] = ()  # the advertised service UUID list (0xFEAA: Eddystone)


@dataclass(frozen=True, slots=True)
class Presence:
    """The ground truth about one phone at one moment, for tests and benchmarks."""

    device: str  # stable label: "phone-17", or "phone-17.3" for the 3rd anonymous visitor
    address: str
    zone: str | None  # None while walking between zones
    x: float
    y: float
    customer: Customer | None
    passer_by: bool


@dataclass(frozen=True, slots=True)
class _Stop:
    zone: str
    x: float
    y: float
    arrive: float
    leave: float


@dataclass(frozen=True, slots=True)
class _Visit:
    number: int
    kind: _PhoneKind
    passer_by: bool
    stops: tuple[_Stop, ...]
    door: tuple[float, float]
    start: float
    end: float
    sway: float  # phase of the small movements while dwelling
    offset_db: float  # this phone's antenna: louder or quieter than the nominal 1 m power

    def where(self, t: float) -> tuple[float, float, str | None]:
        """Position and zone at `t` (start <= t < end): walking in straight lines between stops."""
        px, py = self.door
        pt = self.start
        for stop in self.stops:
            if t < stop.arrive:
                f = (t - pt) / (stop.arrive - pt)
                return px + f * (stop.x - px), py + f * (stop.y - py), None
            if t < stop.leave:
                return (
                    stop.x + 0.4 * math.sin(t / 9 + self.sway),
                    stop.y + 0.4 * math.cos(t / 13 + self.sway),
                    stop.zone,
                )
            px, py, pt = stop.x, stop.y, stop.leave
        f = (t - pt) / (self.end - pt) if self.end > pt else 1.0
        return px + f * (self.door[0] - px), py + f * (self.door[1] - py), None


@dataclass(slots=True)
class _Slot:
    """A place in the store's population: one visit after another, with gaps outside."""

    index: int
    rng: random.Random
    customer: Customer | None
    visit: _Visit
    # (phone number, address epoch) -> address, manufacturer data, service data
    radio: tuple[tuple[int, int], str, dict[int, bytes], dict[str, bytes]] | None = None


@dataclass(frozen=True, slots=True)
class _Advert:
    address: str
    x: float
    y: float
    p1m: float  # dBm at 1 m
    frame: Frame | None
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    interval_ms: int
    service_uuids: tuple[str, ...] = ()


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=32).digest()


def _address(raw: bytes, static: bool) -> str:
    # The two top bits say the kind of random address: 0b01 resolvable private, 0b11 static.
    top = (raw[0] & 0x3F) | (0xC0 if static else 0x40)
    return ":".join(f"{b:02X}" for b in (top, *raw[1:6]))


def _consenting() -> tuple[Customer, ...]:
    return tuple(c for c in CUSTOMERS if c.consented)


class World:
    """Beacons and shoppers' phones in `layout`; `devices` is how many phones are around at
    once (each slot is one shopper visit after another; the first ones are the consenting
    `customers`, whose app advertises Eddystone-EID, the rest are anonymous phones).

    `heard(now)` and `present(now)` take non-decreasing times (ValueError otherwise).
    """

    def __init__(
        self,
        *,
        start: float,
        seed: int = 0,
        devices: int = 50,
        layout: Layout = DEFAULT_LAYOUT,
        customers: Sequence[Customer] | None = None,
        eid_k: int = EID_K,
        address_rotation_s: float = ADDRESS_ROTATION_S,
        noise_db: float = NOISE_DB,
        path_loss_exponent: float = PATH_LOSS_EXPONENT,
        sensitivity_dbm: float = SENSITIVITY_DBM,
        passer_by_share: float = 0.15,
        misbehaving: bool = False,
        misbehaving_ids: int = 16,
    ) -> None:
        names = {z.name for z in layout.zones}
        if not {"entrance", "checkout"} <= names or len(names) < 3:
            raise ValueError("a layout needs an entrance, a checkout and at least one more zone")
        if address_rotation_s <= 0:
            raise ValueError(f"address_rotation_s must be > 0, not {address_rotation_s}")
        self.start, self.seed, self.layout = start, seed, layout
        self.eid_k = eid_k
        self.address_rotation_s = address_rotation_s
        self.noise_db = noise_db
        self.path_loss_exponent = path_loss_exponent
        self.sensitivity_dbm = sensitivity_dbm
        self.passer_by_share = passer_by_share
        self.misbehaving_ids = misbehaving_ids
        self.scanners = layout.scanners
        self._aisles = [z for z in layout.zones if z.name not in ("entrance", "checkout")]
        self._sx = np.array([s.x for s in self.scanners])
        self._sy = np.array([s.y for s in self.scanners])
        self.beacons = self._fixed_beacons()
        self.misbehaving_address: str | None = None
        if misbehaving:
            self.misbehaving_address = _address(_digest(seed, "misbehaving"), static=True)
        people = tuple(_consenting() if customers is None else customers)
        self._eid_keys = {c.loyalty: eid_identity_key(c) for c in people}
        self._eids: dict[tuple[str, int], EddystoneEID] = {}
        self._encoded: dict[Frame, tuple[dict[int, bytes], dict[str, bytes], tuple[str, ...]]] = {}
        self._last = -math.inf
        self._slots: list[_Slot] = []
        for i in range(devices):
            rng = random.Random(f"{seed}/slot/{i}")
            customer = people[i] if i < len(people) else None
            slot = _Slot(i, rng, customer, self._placeholder())
            # The store is already busy at `start`: the first visit began up to 25 min before.
            slot.visit = self._new_visit(slot, 0, start - rng.uniform(0, 1500))
            self._slots.append(slot)

    # ---- the fixed beacons

    def _fixed_beacons(self) -> tuple[FixedBeacon, ...]:
        rng = random.Random(f"{self.seed}/beacons")
        beacons = []
        for n, zone in enumerate(self.layout.zones, start=1):
            frames: list[Frame] = [
                IBeacon(STORE_UUID, STORE_MAJOR, n, TX_1M_DBM),
                EddystoneUID(EDDYSTONE_NAMESPACE, n.to_bytes(6, "big"), _tx0(TX_1M_DBM)),
            ]
            if zone.name == "entrance":  # a poster pointing at the app
                frames.append(EddystoneURL("https://example.com/app", _tx0(TX_1M_DBM)))
            beacons.append(
                FixedBeacon(
                    name=f"beacon-{zone.name}",
                    zone=zone.name,
                    address=_address(_digest(self.seed, "beacon", zone.name), static=True),
                    x=zone.x + 1.0,
                    y=zone.y + 1.0,
                    frames=tuple(frames),
                    boot=self.start - rng.uniform(86_400, 30 * 86_400),
                    battery_mv=3000 - rng.randrange(200),
                    temperature_c=round(rng.uniform(18.0, 22.0), 1),
                )
            )
        checkout = self.layout.zone("checkout")
        beacons.append(  # a brand's display with its own AltBeacon, no telemetry
            FixedBeacon(
                name="beacon-brand-display",
                zone="checkout",
                address=_address(_digest(self.seed, "beacon", "brand-display"), static=True),
                x=checkout.x - 2.0,
                y=checkout.y + 1.0,
                frames=(
                    AltBeacon(RADIUS_NETWORKS, ALTBEACON_UUID.bytes + bytes((0, 7, 0, 1)), -59, 0),
                ),
                boot=self.start,
                battery_mv=3000,
                temperature_c=20.0,
                interval_ms=500,
                tlm=False,
            )
        )
        return tuple(beacons)

    # ---- shoppers

    def _placeholder(self) -> _Visit:
        return _Visit(-1, "silent", True, (), self.layout.door, -math.inf, -math.inf, 0.0, 0.0)

    def _new_visit(self, slot: _Slot, number: int, start: float) -> _Visit:
        rng = slot.rng
        sway, offset = rng.uniform(0, 2 * math.pi), rng.gauss(0.0, 2.0)
        kind: _PhoneKind = "eid"
        if slot.customer is None:
            kind = rng.choices(list(_ANONYMOUS), weights=list(_ANONYMOUS.values()))[0]
            if rng.random() < self.passer_by_share:
                # Window-shopping on the pavement outside the door, for less than 30 s.
                x, y = self.layout.door
                spot = (x + rng.uniform(-4, 4), y - rng.uniform(1, 3))
                end = start + rng.uniform(3, 25)
                stop = _Stop("entrance", *spot, start, end)
                return _Visit(number, kind, True, (stop,), spot, start, end, sway, offset)
        speed = rng.uniform(0.8, 1.3)  # m/s, with a trolley
        picks = rng.sample(self._aisles, rng.randint(1, min(4, len(self._aisles))))
        plan = [(self.layout.zone("entrance"), rng.uniform(10, 40))]  # a walk past the kiosk
        # 1-10 minutes per aisle, most around 3.
        plan += [(z, min(600.0, max(60.0, rng.lognormvariate(math.log(180), 0.5)))) for z in picks]
        plan.append((self.layout.zone("checkout"), rng.uniform(60, 360)))
        stops, t, (px, py) = [], start, self.layout.door
        for zone, dwell in plan:
            r, a = zone.radius * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            x, y = zone.x + r * math.cos(a), zone.y + r * math.sin(a)
            t += math.hypot(x - px, y - py) / speed
            stops.append(_Stop(zone.name, x, y, t, t + dwell))
            t, px, py = t + dwell, x, y
        end = t + math.hypot(self.layout.door[0] - px, self.layout.door[1] - py) / speed
        return _Visit(number, kind, False, tuple(stops), self.layout.door, start, end, sway, offset)

    def _advance(self, now: float) -> None:
        if now < self._last:
            raise ValueError(f"time went backwards: {now} after {self._last}")
        self._last = now
        for slot in self._slots:
            while now >= slot.visit.end:
                gap = slot.rng.uniform(5, 90)
                begin = slot.visit.end + gap
                if now - begin > 3600:  # a long jump ahead: don't replay hours of visits
                    begin = now - slot.rng.uniform(0, 600)
                slot.visit = self._new_visit(slot, slot.visit.number + 1, begin)

    def _radio(self, slot: _Slot, now: float) -> tuple[str, dict[int, bytes], dict[str, bytes]]:
        """The slot's current address (and foreign payload, which churns with it)."""
        phone = 0 if slot.customer is not None else slot.visit.number  # a customer keeps hers
        rotation = self.address_rotation_s
        phase = int.from_bytes(_digest(self.seed, "phase", slot.index, phone)[:4]) / 2**32
        epoch = math.floor(now / rotation + phase)
        if slot.radio is not None and slot.radio[0] == (phone, epoch):
            return slot.radio[1:]
        raw = _digest(self.seed, "phone", slot.index, phone, epoch)
        mfr, svc = _foreign(slot.visit.kind, raw[6:])
        slot.radio = ((phone, epoch), _address(raw, static=False), mfr, svc)
        return slot.radio[1:]

    def _eid_frame(self, customer: Customer, now: float) -> EddystoneEID:
        window = int(now) >> self.eid_k
        frame = self._eids.get((customer.loyalty, window))
        if frame is None:
            if len(self._eids) > 4 * len(self._eid_keys):  # old windows are done with
                self._eids.clear()
            key = self._eid_keys[customer.loyalty]
            frame = EddystoneEID(eddystone_eid(key, self.eid_k, int(now)), _tx0(TX_1M_DBM))
            self._eids[(customer.loyalty, window)] = frame
        return frame

    def _encode(self, frame: Frame) -> tuple[dict[int, bytes], dict[str, bytes], tuple[str, ...]]:
        encoded = self._encoded.get(frame)
        if encoded is None:
            if len(self._encoded) > 4096:  # TLM and EID frames keep changing
                self._encoded.clear()
            mfr, svc, uuids = encode_advert(frame)
            encoded = self._encoded[frame] = (mfr, svc, tuple(uuids))
        return encoded

    def present(self, now: float) -> list[Presence]:
        """Every phone in or just outside the store at `now`."""
        self._advance(now)
        out = []
        for slot in self._slots:
            visit = slot.visit
            if now < visit.start:
                continue
            x, y, zone = visit.where(now)
            address = self._radio(slot, now)[0]
            label = f"phone-{slot.index}" if slot.customer else f"phone-{slot.index}.{visit.number}"
            out.append(Presence(label, address, zone, x, y, slot.customer, visit.passer_by))
        return out

    def _adverts(self, now: float) -> list[_Advert]:
        self._advance(now)
        adverts = []

        def add(frame: Frame, source: tuple[str, float, float, float, int]) -> None:
            address, x, y, p1m, interval = source  # who sends it, from where, how loud, how often
            mfr, svc, uuids = self._encode(frame)
            adverts.append(_Advert(address, x, y, p1m, frame, mfr, svc, interval, uuids))

        source: tuple[str, float, float, float, int]
        for beacon in self.beacons:
            source = (beacon.address, beacon.x, beacon.y, TX_1M_DBM, beacon.interval_ms)
            for frame in beacon.frames_at(now):
                add(frame, source)
        if self.misbehaving_address is not None:
            spot = next((z for z in self._aisles if z.name == "coffee"), self._aisles[0])
            source = (self.misbehaving_address, spot.x, spot.y, TX_1M_DBM, 20)
            for j in range(self.misbehaving_ids):  # a beacon emulator cycling through ids
                uuid = UUID(bytes=_digest(self.seed, "spam", int(now), j)[:16])
                add(IBeacon(uuid, 1, j, TX_1M_DBM), source)
        for slot in self._slots:
            visit = slot.visit
            if now < visit.start:
                continue
            x, y, _ = visit.where(now)
            address, mfr, svc = self._radio(slot, now)
            source = (address, x, y, TX_1M_DBM + visit.offset_db, _INTERVAL_MS[visit.kind])
            if slot.customer is not None:
                add(self._eid_frame(slot.customer, now), source)
            else:
                adverts.append(_Advert(*source[:4], None, mfr, svc, source[4]))
        return adverts

    def heard(self, now: float, max_distance_m: float | None = None) -> list[Heard]:
        """Every advert every scanner node hears at `now`: one sample per device and frame.

        `max_distance_m`: only what a node would place this close (its distance estimate from
        the RSSI, as ESPresense's "max distance" setting filters), cut before any Heard is made.
        """
        adverts = self._adverts(now)
        if not adverts:
            return []
        ax = np.fromiter((a.x for a in adverts), np.float64, len(adverts))
        ay = np.fromiter((a.y for a in adverts), np.float64, len(adverts))
        p1m = np.fromiter((a.p1m for a in adverts), np.float64, len(adverts))
        d = np.sqrt((ax[:, None] - self._sx) ** 2 + (ay[:, None] - self._sy) ** 2 + HEIGHT_M**2)
        # The noise of a sample depends on (seed, now) only: the same call, the same answer.
        rng = np.random.default_rng([self.seed % 2**63, round(now * 1000) % 2**63])
        noise = rng.normal(0.0, self.noise_db, d.shape)
        rssi = np.rint(p1m[:, None] - 10 * self.path_loss_exponent * np.log10(d) + noise)
        floor = self.sensitivity_dbm
        if max_distance_m is not None:
            floor = max(floor, TX_1M_DBM - 10 * PATH_LOSS_EXPONENT * math.log10(max_distance_m))
        rows, cols = np.nonzero(rssi >= floor)
        ids = [s.id for s in self.scanners]
        levels = rssi.astype(np.int64)
        out = []
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            a = adverts[r]
            level = int(levels[r, c])
            out.append(
                Heard(
                    ids[c],
                    a.address,
                    a.manufacturer_data,
                    a.service_data,
                    level,
                    a.frame,
                    a.interval_ms,
                    a.service_uuids,
                )
            )
        return out


def _tx0(p1m: int) -> int:
    return p1m + EDDYSTONE_0M_TO_1M_DB


def _foreign(kind: _PhoneKind, raw: bytes) -> tuple[dict[int, bytes], dict[str, bytes]]:
    """What an app-less phone advertises: nothing a beacon decoder recognises."""
    if kind == "apple":  # Continuity "Nearby Info" (type 0x10), never an iBeacon (0x02)
        return {APPLE: bytes((0x10, 0x05)) + raw[:5]}, {}
    if kind == "microsoft":  # Connected Devices Platform beacon
        return {MICROSOFT: bytes((0x01, 0x09, 0x20, 0x02)) + raw[:23]}, {}
    if kind == "samsung":
        return {SAMSUNG: bytes((0x42, 0x04, 0x01, 0x80)) + raw[:20]}, {}
    if kind == "fastpair":  # earbuds: a 3-byte model id
        return {}, {FAST_PAIR: raw[:3]}
    return {}, {}


async def realtime(
    world: World,
    *,
    interval_s: float = 1.0,
    until: float | None = None,
    clock: Callable[[], float] = time.time,
    max_distance_m: float | None = None,
) -> AsyncIterator[tuple[float, list[Heard]]]:
    """`(now, world.heard(now))` every `interval_s` of `clock` until `until` (clock time).
    A slow consumer is not caught up with a burst: samples are skipped instead."""
    next_at = clock()
    while until is None or next_at < until:
        now = clock()
        yield now, world.heard(now, max_distance_m)
        next_at += interval_s
        if until is not None and next_at >= until:
            return
        delay = next_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = clock()


# --------------------------------------------------------------------------------------------
# ESPresense


def forwarded(heard: Heard) -> bool:
    """Whether a node publishes this advert: ESPresense does not forward TLM or URL frames."""
    return not isinstance(heard.frame, EddystoneTLM | EddystoneURL)


def espresense_id(heard: Heard) -> str:
    """The id an ESPresense node gives the advert (EID is our extension; see docs/ble.md)."""
    frame = heard.frame
    if isinstance(frame, IBeacon):
        return f"iBeacon:{frame.uuid}-{frame.major}-{frame.minor}"
    if isinstance(frame, AltBeacon):
        bid = frame.beacon_id
        major, minor = int.from_bytes(bid[16:18], "big"), int.from_bytes(bid[18:20], "big")
        return f"altBeacon:{UUID(bytes=bid[:16])}-{major}-{minor}"
    if isinstance(frame, EddystoneUID):
        return f"eddy:{frame.namespace.hex()}-{frame.instance.hex()}"
    if isinstance(frame, EddystoneEID):
        return f"eid:{frame.eid.hex()}"
    if isinstance(frame, EddystoneTLM | EddystoneURL):
        raise ValueError(f"ESPresense nodes do not publish {type(frame).__name__} frames")
    return _mac(heard.address)


def _mac(address: str) -> str:
    return address.replace(":", "").replace("-", "").lower()


def _rssi_1m(frame: Frame | None) -> int:
    if isinstance(frame, IBeacon):
        return frame.tx_power
    if isinstance(frame, AltBeacon):
        return frame.ref_rssi
    if isinstance(frame, EddystoneUID | EddystoneEID | EddystoneURL):
        return frame.tx_power - EDDYSTONE_0M_TO_1M_DB
    return TX_1M_DBM  # the node's configured reference for devices that don't say


def espresense_message(
    room: str,
    heard: Heard,
    *,
    distance: float | None = None,
    absorption: float = PATH_LOSS_EXPONENT,
    prefix: str = "espresense",
) -> tuple[str, bytes]:
    """The (topic, payload) a node in `room` publishes for `heard`. `distance` is the node's
    smoothed estimate (the raw one if None); `absorption` is the node's path-loss exponent.
    ValueError for frames nodes do not forward (see `forwarded`)."""
    device_id = espresense_id(heard)
    rssi_1m = _rssi_1m(heard.frame)
    raw = round(10 ** ((rssi_1m - heard.rssi) / (10 * absorption)), 2)
    payload = {
        "id": device_id,
        "rssi@1m": rssi_1m,
        "rssi": heard.rssi,
        "raw": raw,
        "distance": raw if distance is None else round(distance, 2),
        "mac": _mac(heard.address),
        "interval": heard.interval_ms,
    }
    topic = f"{prefix}/devices/{device_id}/{room}"
    return topic, json.dumps(payload, separators=(",", ":")).encode()


@dataclass(slots=True)
class _Node:
    room: str
    client: aiomqtt.Client | None = None
    muted: bool = False
    started: float | None = None  # world time of its first sample
    last_telemetry: float = -math.inf
    # in the current telemetry window
    adverts: int = 0
    seen: set[str] = field(default_factory=set)
    reported: int = 0
    # (id, mac) -> (smoothed distance, world time it was last updated)
    smoothed: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # (id, mac) -> (distance last published, world time it was published)
    last_report: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


def _write_together(client: aiomqtt.Client, packets: list[bytes]) -> None:
    """A node's reports of one sample (QoS 0 PUBLISH packets) in one write, as a node's TCP
    stack would coalesce them: paho sends each packet with its own send(), and 40 nodes'
    4,000 sends a second took a fifth of the crowd's core (scripts/bench.py store)."""
    if not packets:
        return
    inner = client._client
    if not inner.is_connected():
        raise aiomqtt.MqttError("the node is not connected")
    info = paho.MQTTMessageInfo(0)  # mid 0: no publish waits on it
    inner._packet_queue(paho.PUBLISH, b"".join(packets), 0, 0, info)


class ScannerNodes:
    """The world's scanner nodes as ESPresense nodes: one MQTT client per node (client id = the
    room, which is how docs/install.md names nodes: `espresense-<zone>`), each with the retained
    status "online" and the will "offline". Each device (by id) is published at most once per
    sample per node; the nodes publish telemetry every `telemetry_s`.

    ESPresense's own filters, off unless given: `max_distance_m` (devices placed farther are
    not reported) and `skip_distance_m` / `skip_s` (a device is reported again only once its
    distance moved by skip_distance_m, or skip_s after its last report).

    `published[room]` counts device messages, `telemetry[room]` telemetry messages.

    `spread_s`: each sample's reports go out node after node over that long, as independent
    nodes send them, instead of all nodes at once (a burst a real store does not make).
    """

    def __init__(
        self,
        host: str,
        port: int,
        world: World,
        *,
        rooms: Sequence[str] | None = None,
        interval_s: float = 1.0,
        telemetry_s: float = 15.0,
        smoothing: float = 0.3,
        prefix: str = "espresense",
        clock: Callable[[], float] = time.time,
        max_distance_m: float | None = None,
        skip_distance_m: float = 0.0,
        skip_s: float = 0.0,
        spread_s: float = 0.0,
    ) -> None:
        self.host, self.port, self.world, self.prefix = host, port, world, prefix
        self.spread_s = spread_s
        self.interval_s, self.telemetry_s, self.smoothing = interval_s, telemetry_s, smoothing
        self.max_distance_m, self.skip_distance_m, self.skip_s = (
            max_distance_m,
            skip_distance_m,
            skip_s,
        )
        self._clock = clock
        names = [s.id for s in world.scanners] if rooms is None else list(rooms)
        self._nodes = {room: _Node(room) for room in names}
        self.published: Counter[str] = Counter()
        self.telemetry: Counter[str] = Counter()

    def online(self, room: str) -> bool:
        return self._nodes[room].client is not None

    def status_topic(self, room: str) -> str:
        return f"{self.prefix}/rooms/{room}/status"

    async def __aenter__(self) -> Self:
        try:
            async with asyncio.TaskGroup() as group:
                for node in self._nodes.values():
                    group.create_task(self._connect(node))
        except BaseException:
            await self._close(graceful=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(graceful=True)

    async def _connect(self, node: _Node) -> None:
        will = aiomqtt.Will(self.status_topic(node.room), b"offline", qos=1, retain=True)
        client = aiomqtt.Client(
            self.host, self.port, identifier=node.room, will=will, socket_options=[NO_DELAY]
        )
        await client.__aenter__()
        node.client = client
        await client.publish(self.status_topic(node.room), b"online", qos=1, retain=True)

    async def _close(self, *, graceful: bool) -> None:
        for node in self._nodes.values():
            client, node.client = node.client, None
            if client is None:
                continue
            with contextlib.suppress(aiomqtt.MqttError):
                if graceful:  # a clean DISCONNECT does not fire the will: say it ourselves
                    await client.publish(self.status_topic(node.room), b"offline", 1, retain=True)
                await client.__aexit__(None, None, None)

    async def kill(self, room: str) -> None:
        """The node loses power: its TCP connection drops without a DISCONNECT, so the broker
        publishes its will ("offline", retained)."""
        node = self._nodes[room]
        client, node.client = node.client, None
        if client is None:
            return
        # aiomqtt has no way to vanish on purpose; shutting paho's socket is what a power cut does.
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await asyncio.sleep(0.05)  # let paho read the EOF and aiomqtt settle
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
        lost = client._disconnected
        if lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: the loss was the point

    async def restart(self, room: str) -> None:
        """A killed node boots again: it reconnects and says "online"; its uptime restarts."""
        node = self._nodes[room]
        if node.client is None:
            node.started, node.last_telemetry = None, -math.inf
            await self._connect(node)

    def mute(self, room: str, muted: bool = True) -> None:
        """The node stays connected but hears nothing (a dead radio); it still sends telemetry."""
        self._nodes[room].muted = muted

    async def step(self, now: float) -> int:
        """Publish one sample of the world at `now` (world time); returns device messages sent."""
        return await self._publish(now, self.world.heard(now, self.max_distance_m))

    async def run(
        self,
        until: float | None = None,
        on_sample: Callable[[float, list[Heard]], Awaitable[None]] | None = None,
    ) -> None:
        """Publish a sample every `interval_s` until `until` (clock time; None: until cancelled);
        `on_sample(now, heard)` sees each sample after (another radio hearing the same world)."""
        task = asyncio.current_task()
        async for now, heard in realtime(
            self.world,
            interval_s=self.interval_s,
            until=until,
            clock=self._clock,
            max_distance_m=self.max_distance_m,
        ):
            await self._publish(now, heard)
            if on_sample is not None:
                await on_sample(now, heard)
            # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a cancellation
            # that races with the publish completing: honour it here.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError

    async def _publish(self, now: float, heard: list[Heard]) -> int:
        by_room: dict[str, dict[str, Heard]] = {room: {} for room in self._nodes}
        for h in heard:
            node = self._nodes.get(h.scanner)
            if node is None or node.client is None or node.muted:
                continue
            node.adverts += 1
            node.seen.add(h.address)
            if forwarded(h):
                best = by_room[h.scanner]
                device_id = espresense_id(h)
                if device_id not in best or h.rssi > best[device_id].rssi:
                    best[device_id] = h
        sent = 0
        began, gap = time.monotonic(), self.spread_s / max(1, len(self._nodes))
        for n, (room, node) in enumerate(self._nodes.items()):
            if gap and (wait := began + n * gap - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            client = node.client
            if client is None:
                continue
            if node.started is None:
                node.started = now
            packets = []
            for device_id, h in by_room[room].items():
                distance = self._smooth(node, device_id, h, now)
                if self._skip(node, (device_id, h.address), distance, now):
                    continue
                topic, payload = espresense_message(room, h, distance=distance, prefix=self.prefix)
                packets.append(encode_publish(topic, payload, v5=False))
            _write_together(client, packets)
            published = len(packets)
            node.reported += published
            sent += published
            self.published[room] += published
            if now - node.last_telemetry >= self.telemetry_s:
                await self._telemetry(node, client, now)
        return sent

    def _skip(self, node: _Node, key: tuple[str, str], distance: float, now: float) -> bool:
        """ESPresense's skip rule: not moved enough, and reported recently enough."""
        if self.skip_distance_m <= 0 and self.skip_s <= 0:
            return False
        last = node.last_report.get(key)
        moved = last is None or abs(distance - last[0]) >= self.skip_distance_m
        if last is not None and not moved and now - last[1] < self.skip_s:
            return True
        node.last_report[key] = (distance, now)
        return False

    def _smooth(self, node: _Node, device_id: str, h: Heard, now: float) -> float:
        rssi_1m = _rssi_1m(h.frame)
        raw = 10 ** ((rssi_1m - h.rssi) / (10 * PATH_LOSS_EXPONENT))
        key = (device_id, h.address)
        previous = node.smoothed.get(key)
        value = raw if previous is None else previous[0] + self.smoothing * (raw - previous[0])
        node.smoothed[key] = (value, now)
        return value

    async def _telemetry(self, node: _Node, client: aiomqtt.Client, now: float) -> None:
        started = now if node.started is None else node.started
        body = {
            "uptime": int(now - started),
            "adverts": node.adverts,
            "seen": len(node.seen),
            "reported": node.reported,
        }
        await client.publish(
            f"{self.prefix}/rooms/{node.room}/telemetry", json.dumps(body).encode(), qos=0
        )
        self.telemetry[node.room] += 1
        node.last_telemetry = now
        node.adverts, node.reported = 0, 0
        node.seen.clear()
        # Churned addresses are forgotten: smoothing state stays bounded.
        stale = now - 2 * self.telemetry_s
        node.smoothed = {k: v for k, v in node.smoothed.items() if v[1] >= stale}
        if node.last_report:
            stale = now - max(2 * self.telemetry_s, self.skip_s)
            node.last_report = {k: v for k, v in node.last_report.items() if v[1] >= stale}


# --------------------------------------------------------------------------------------------
# CLI


async def _main(args: argparse.Namespace) -> dict[str, int]:
    now = time.time()
    world = World(
        start=now,
        seed=args.seed,
        devices=args.devices,
        eid_k=args.eid_k,
        misbehaving=args.misbehaving,
    )
    async with ScannerNodes(args.host, args.port, world, interval_s=args.interval) as nodes:
        await nodes.run(until=now + args.duration)
        return dict(nodes.published)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated beacons, phones and ESPresense nodes.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    parser.add_argument("--devices", type=int, default=50, help="phones in the store at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eid-k", type=int, default=EID_K, help="EIDs rotate every 2^k s")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--misbehaving", action="store_true", help="add a device cycling many ids from one address"
    )
    published = asyncio.run(_main(parser.parse_args(argv)))
    for room, count in sorted(published.items()):
        print(f"{room}: {count} device messages")


if __name__ == "__main__":
    main()
