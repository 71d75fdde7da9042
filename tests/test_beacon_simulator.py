"""The beacon simulator: a seeded store of beacons and phones, and ESPresense nodes over MQTT."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from uuid import UUID

import aiomqtt
import pytest

from drivers.mqtt import NO_DELAY
from gateway.ble.eid import eid
from gateway.ble.espresense import decode_device_message
from gateway.ble.frames import (
    AltBeacon,
    EddystoneEID,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    IBeacon,
    decode_advert,
    encode_advert,
)
from simulators.beacons import (
    APPLE,
    MICROSOFT,
    PATH_LOSS_EXPONENT,
    TX_1M_DBM,
    Heard,
    ScannerNodes,
    World,
    espresense_id,
    espresense_message,
    forwarded,
    main,
    realtime,
)
from simulators.broker import Mosquitto
from simulators.population import CUSTOMERS, eid_identity_key

T0 = 1_767_600_000.0  # 2026-01-05 08:00 UTC
CONSENTING = [c for c in CUSTOMERS if c.consented]


def _heard_by_address(world: World, now: float) -> dict[str, list[Heard]]:
    out: dict[str, list[Heard]] = defaultdict(list)
    for h in world.heard(now):
        out[h.address].append(h)
    return out


def test_a_seed_gives_the_same_world_and_another_seed_another() -> None:
    a, b, c = (World(start=T0, seed=s, devices=30) for s in (7, 7, 8))
    for t in (T0, T0 + 1, T0 + 61.5, T0 + 900):
        assert a.heard(t) == b.heard(t)
        assert a.present(t) == b.present(t)
        assert a.heard(t) != c.heard(t)
    with pytest.raises(ValueError, match="backwards"):
        a.heard(T0)


def test_shoppers_walk_through_zones_and_their_zones_node_hears_them_loudest() -> None:
    world = World(start=T0, seed=3, devices=40)
    zones_of: dict[str, set[str]] = defaultdict(set)
    runs: dict[tuple[str, str], list[float]] = {}  # (device, zone) -> times, per contiguous stay
    dwell_s: list[tuple[str, float]] = []
    last: dict[str, str | None] = {}
    loudest_right = loudest_total = 0
    step = 5.0
    for i in range(int(3600 / step)):
        t = T0 + i * step
        heard = _heard_by_address(world, t)
        present = world.present(t)
        for p in present:
            if p.zone is not None and not p.passer_by:
                zones_of[p.device].add(p.zone)
                samples = heard[p.address]
                if samples:
                    loudest_total += 1
                    loudest = max(samples, key=lambda h: h.rssi).scanner
                    loudest_right += loudest == f"espresense-{p.zone}"
            if last.get(p.device) != p.zone:  # a stay ends when the zone changes
                ended = last.get(p.device)
                if ended is not None and (p.device, ended) in runs:
                    times = runs.pop((p.device, ended))
                    if times[0] > T0:  # seen from its start
                        dwell_s.append((ended, times[-1] - times[0] + step))
            if p.zone is not None:
                runs.setdefault((p.device, p.zone), []).append(t)
            last[p.device] = p.zone
    assert loudest_right / loudest_total > 0.9, (loudest_right, loudest_total)
    assert {z for zs in zones_of.values() for z in zs} == {z.name for z in world.layout.zones}
    assert max(len(zs) for zs in zones_of.values()) >= 4
    for customer in CONSENTING:  # the demo's opted-in customers shop too
        label = next(p.device for p in world.present(T0 + 3600) if p.customer == customer)
        assert len(zones_of[label]) >= 2
    aisles = [d for zone, d in dwell_s if zone not in ("entrance", "checkout")]
    assert len(aisles) > 20
    assert all(60 - step <= d <= 600 + step for d in aisles), sorted(aisles)
    assert all(d <= 40 + step for zone, d in dwell_s if zone == "entrance")


def test_passers_by_stay_outside_the_entrance_for_less_than_30_s() -> None:
    world = World(start=T0, seed=4, devices=40, passer_by_share=0.5)
    seen: dict[str, list[float]] = defaultdict(list)
    for i in range(1200):
        for p in world.present(T0 + i):
            if p.passer_by:
                assert p.zone == "entrance"
                assert p.y < 0  # on the pavement
                seen[p.device].append(T0 + i)
    assert len(seen) > 10
    assert all(times[-1] - times[0] < 30 for times in seen.values())


def test_eids_rotate_at_2k_boundaries_and_differ_per_customer() -> None:
    k = 10

    def eids_at(world: World, t: float) -> dict[str, bytes]:
        """The EID each consenting customer's phone is heard advertising at `t`."""
        heard = _heard_by_address(world, t)
        out = {}
        for p in world.present(t):
            if p.customer is not None:
                frames = {h.frame for h in heard[p.address]}
                assert len(frames) == 1
                frame = frames.pop()
                assert isinstance(frame, EddystoneEID)
                out[p.customer.loyalty] = frame.eid
        return out

    world = World(start=T0, seed=5, devices=10, eid_k=k)
    boundary = float(((int(T0) >> k) + 4) << k)
    before = eids_at(world, boundary - 2**k + 1)
    just_before = eids_at(world, boundary - 1)
    after = eids_at(world, boundary)
    assert len(before) == len(just_before) == len(after) == len(CONSENTING)
    assert before == just_before  # one window, one id
    assert all(after[c] != just_before[c] for c in after)
    assert len(set(after.values())) == len(after)  # each customer's own
    for customer in CONSENTING:
        assert after[customer.loyalty] == eid(eid_identity_key(customer), k, int(boundary))
    faster = World(start=T0, seed=5, devices=10, eid_k=4)
    assert eids_at(faster, T0 + 15) != eids_at(faster, T0 + 16)


def test_phone_addresses_churn_and_beacons_keep_theirs() -> None:
    world = World(start=T0, seed=6, devices=20, address_rotation_s=900)
    customer_addresses: dict[str, list[float]] = defaultdict(list)
    beacon_addresses = {b.address for b in world.beacons}
    for i in range(0, 7200, 30):
        t = T0 + i
        for p in world.present(t):
            assert int(p.address[:2], 16) >> 6 == 0b01  # resolvable private address
            if p.device == "phone-0":
                customer_addresses[p.address].append(t)
        heard_beacons = {h.address for h in world.heard(t) if h.address in beacon_addresses}
        assert heard_beacons == beacon_addresses
    assert 7 <= len(customer_addresses) <= 10  # about one every 15 minutes for 2 hours
    assert all(times[-1] - times[0] <= 900 for times in customer_addresses.values())
    assert all(int(a[:2], 16) >> 6 == 0b11 for a in beacon_addresses)  # static random
    quick = World(start=T0, seed=6, devices=20, address_rotation_s=60)
    label_addresses = {
        (p.device, p.address) for i in range(0, 600, 30) for p in quick.present(T0 + i)
    }
    per_device = Counter(device for device, _ in label_addresses)
    assert per_device["phone-0"] >= 9


def test_beacon_telemetry_counters_advance() -> None:
    world = World(start=T0, seed=1, devices=0)

    def tlm(t: float) -> EddystoneTLM:
        heard = [h for h in world.heard(t) if h.scanner == "espresense-entrance"]
        entrance = next(b for b in world.beacons if b.zone == "entrance")
        frames = [h for h in heard if h.address == entrance.address]
        found = next(h for h in frames if isinstance(h.frame, EddystoneTLM))
        assert (
            decode_advert(found.manufacturer_data, found.service_data, found.service_uuids)
            == found.frame
        )
        assert isinstance(found.frame, EddystoneTLM)
        return found.frame

    first, later = tlm(T0), tlm(T0 + 3600)
    assert later.adv_count > first.adv_count
    assert later.uptime_s == pytest.approx(first.uptime_s + 3600)
    assert later.battery_mv <= first.battery_mv
    assert first.temperature_c is not None
    assert later.temperature_c is not None
    assert later.temperature_c != first.temperature_c


def test_every_frame_decodes_and_anonymous_phones_carry_no_beacon_frame() -> None:
    world = World(start=T0, seed=2, devices=200)
    heard = world.heard(T0)
    kinds = Counter(type(h.frame).__name__ for h in heard)
    assert {"IBeacon", "AltBeacon", "EddystoneUID", "EddystoneURL", "EddystoneTLM"} <= set(kinds)
    assert kinds["EddystoneEID"] > 0
    assert kinds["NoneType"] > 0
    companies: Counter[int] = Counter()
    for h in heard:
        assert decode_advert(h.manufacturer_data, h.service_data, h.service_uuids) == h.frame
        if h.frame is None:
            companies.update(h.manufacturer_data.keys())
    assert companies[APPLE] > 0
    assert companies[MICROSOFT] > 0
    assert all(
        h.manufacturer_data[APPLE][0] != 0x02  # continuity, never an iBeacon
        for h in heard
        if h.frame is None and APPLE in h.manufacturer_data
    )
    assert any(not h.manufacturer_data and not h.service_data for h in heard)


def test_a_misbehaving_device_sends_many_ids_from_one_address() -> None:
    world = World(start=T0, seed=1, devices=5, misbehaving=True, misbehaving_ids=16)
    ids: list[set[str]] = []
    for t in (T0, T0 + 1):
        mine = [h for h in world.heard(t) if h.address == world.misbehaving_address]
        ids.append({espresense_id(h) for h in mine})
    assert len(ids[0]) == len(ids[1]) == 16
    assert not ids[0] & ids[1]  # and new ones every second


def _heard(frame: object, rssi: int = -70) -> Heard:
    assert frame is None or isinstance(
        frame, IBeacon | AltBeacon | EddystoneUID | EddystoneURL | EddystoneTLM | EddystoneEID
    )
    mfr, svc, uuids = (
        encode_advert(frame) if frame is not None else ({APPLE: b"\x10\x05\x01"}, {}, [])
    )
    return Heard("espresense-coffee", "C4:11:22:33:44:5A", mfr, svc, rssi, frame, 100, tuple(uuids))


UUID_A = UUID("e2c56db5-dffb-48d2-b060-d0f5a71096e0")


@pytest.mark.parametrize(
    ("frame", "device_id", "rssi_1m", "raw"),
    [
        (IBeacon(UUID_A, 1, 2, -59), "iBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-1-2", -59, 3.16),
        (
            AltBeacon(0x0118, UUID_A.bytes + bytes((0, 7, 0, 1)), -61, 0),
            "altBeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0-7-1",
            -61,
            2.57,
        ),
        (
            EddystoneUID(bytes.fromhex("edd1ebeac04e5defa017"), bytes.fromhex("0000000000a1"), -18),
            "eddy:edd1ebeac04e5defa017-0000000000a1",
            -59,
            3.16,
        ),
        (EddystoneEID(bytes.fromhex("0123456789abcdef"), -20), "eid:0123456789abcdef", -61, 2.57),
        (None, "c4112233445a", -59, 3.16),
    ],
)
def test_espresense_messages_golden(
    frame: object, device_id: str, rssi_1m: int, raw: float
) -> None:
    topic, payload = espresense_message("espresense-coffee", _heard(frame))
    assert topic == f"espresense/devices/{device_id}/espresense-coffee"
    assert (
        payload
        == (
            f'{{"id":"{device_id}","rssi@1m":{rssi_1m},"rssi":-70,"raw":{raw},"distance":{raw},'
            '"mac":"c4112233445a","interval":100}'
        ).encode()
    )
    # The gateway's decoder reads it back to the same device and beacon id.
    report = decode_device_message("espresense", topic, payload)
    assert (report.room, report.device, report.rssi) == ("espresense-coffee", "c4112233445a", -70)
    decoded = _heard(report.frame) if report.frame is not None else _heard(None)
    assert espresense_id(decoded) == device_id


def test_espresense_message_smoothed_distance_and_frames_nodes_do_not_forward() -> None:
    _, payload = espresense_message("r", _heard(IBeacon(UUID_A, 1, 2, -59)), distance=2.3456)
    assert json.loads(payload)["distance"] == 2.35
    for frame in (EddystoneTLM(3000, 21.5, 10, 20.0), EddystoneURL("https://example.com", -18)):
        assert not forwarded(_heard(frame))
        with pytest.raises(ValueError, match="do not publish"):
            espresense_message("r", _heard(frame))


def test_five_thousand_devices_can_be_generated() -> None:
    world = World(start=T0, seed=9, devices=5000, misbehaving=True)
    present = world.present(T0)
    heard = world.heard(T0)
    assert len(present) > 4000
    assert len({p.address for p in present}) == len(present)
    assert len({h.address for h in heard}) > 4000


class _Inbox:
    """Every message a subscriber gets, and a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Condition()

    async def collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.messages.append(message)
            async with self._changed:
                self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(predicate)


async def test_scanner_nodes_publish_through_mosquitto_with_status_telemetry_and_will(
    broker: Mosquitto,
) -> None:
    world = World(start=T0, seed=1, devices=20)
    rooms = [s.id for s in world.scanners]
    inbox = _Inbox()
    got = inbox.messages
    async with (
        ScannerNodes("127.0.0.1", broker.port, world) as nodes,
        aiomqtt.Client("127.0.0.1", broker.port, socket_options=[NO_DELAY]) as listener,
    ):
        await listener.subscribe("espresense/#")
        reader = asyncio.create_task(inbox.collect(listener))

        def statuses() -> dict[str, tuple[bytes, bool]]:
            return {
                m.topic.value.split("/")[2]: (bytes(m.payload), bool(m.retain))
                for m in got
                if m.topic.matches("espresense/rooms/+/status")
            }

        await inbox.until(lambda: len(statuses()) == len(rooms))
        assert statuses() == dict.fromkeys(rooms, (b"online", True))

        sent = await nodes.step(T0) + await nodes.step(T0 + 1)
        assert sent == nodes.published.total() > 0

        def devices() -> list[aiomqtt.Message]:
            return [m for m in got if m.topic.matches("espresense/devices/+/+")]

        await inbox.until(lambda: len(devices()) == nodes.published.total())
        assert Counter(m.topic.value.rsplit("/", 1)[1] for m in devices()) == nodes.published
        for message in devices():
            body = json.loads(bytes(message.payload))
            assert set(body) == {"id", "rssi@1m", "rssi", "raw", "distance", "mac", "interval"}
            assert message.topic.value.split("/")[2] == body["id"]
            assert not message.retain
        ids = {json.loads(bytes(m.payload))["id"].split(":")[0] for m in devices()}
        assert {"iBeacon", "altBeacon", "eddy", "eid"} <= ids
        telemetry = [m for m in got if m.topic.matches("espresense/rooms/+/telemetry")]
        assert {m.topic.value.split("/")[2] for m in telemetry} == set(rooms)  # once, at boot
        body = json.loads(bytes(telemetry[0].payload))
        assert set(body) == {"uptime", "adverts", "seen", "reported"}
        assert body["adverts"] >= body["seen"] > 0

        # Power cut: the broker publishes the node's will; the others carry on.
        await nodes.kill("espresense-coffee")
        await inbox.until(lambda: statuses()["espresense-coffee"][0] == b"offline")
        before = nodes.published["espresense-coffee"]
        await nodes.step(T0 + 2)
        assert nodes.published["espresense-coffee"] == before
        assert not nodes.online("espresense-coffee")
        nodes.mute("espresense-deli")
        deli = nodes.published["espresense-deli"]
        await nodes.step(T0 + 3)
        assert nodes.published["espresense-deli"] == deli

        # A late subscriber reads the retained truth.
        async with aiomqtt.Client("127.0.0.1", broker.port) as late:
            await late.subscribe("espresense/rooms/+/status")
            retained: dict[str, bytes] = {}
            async with asyncio.timeout(5):
                async for message in late.messages:
                    retained[message.topic.value.split("/")[2]] = bytes(message.payload)
                    if len(retained) == len(rooms):
                        break
        assert retained == {r: b"offline" if r == "espresense-coffee" else b"online" for r in rooms}

        await nodes.restart("espresense-coffee")
        await inbox.until(lambda: statuses()["espresense-coffee"][0] == b"online")
        await nodes.step(T0 + 4)
        assert nodes.published["espresense-coffee"] > before
        reader.cancel()
    # A clean exit says "offline" itself (a DISCONNECT does not fire the will).
    async with aiomqtt.Client("127.0.0.1", broker.port) as after:
        await after.subscribe("espresense/rooms/+/status")
        final: dict[str, bytes] = {}
        async with asyncio.timeout(5):
            async for message in after.messages:
                final[message.topic.value.split("/")[2]] = bytes(message.payload)
                if len(final) == len(rooms):
                    break
    assert set(final.values()) == {b"offline"}


async def test_realtime_yields_a_sample_per_interval() -> None:
    world = World(start=T0, seed=1, devices=3)
    clock = [T0]

    def now() -> float:
        return clock[0]

    samples = []
    async for t, heard in realtime(world, interval_s=0.25, until=T0 + 1, clock=now):
        samples.append((t, len(heard)))
        clock[0] += 0.25  # the consumer takes exactly one interval: no sleeping
    assert [t - T0 for t, _ in samples] == [0.0, 0.25, 0.5, 0.75]
    assert all(n > 0 for _, n in samples)


def test_cli_runs_nodes_against_a_broker(
    broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--port", str(broker.port), "--duration", "1.2", "--devices", "5", "--seed", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert all(line.startswith("espresense-") and "device messages" in line for line in lines)


def test_a_max_distance_keeps_only_what_a_node_would_place_that_close() -> None:
    """ESPresense's max distance, cut before any Heard is made (5,000 phones in a hypermarket
    are otherwise 90,000 reports a second)."""
    world = World(start=T0, seed=3, devices=200)
    everything = world.heard(T0 + 1)
    near = World(start=T0, seed=3, devices=200).heard(T0 + 1, max_distance_m=6.0)
    floor = TX_1M_DBM - 10 * PATH_LOSS_EXPONENT * math.log10(6.0)
    assert 0 < len(near) < len(everything)
    assert all(h.rssi >= floor for h in near)
    assert {(h.scanner, h.address, h.rssi) for h in near} == {
        (h.scanner, h.address, h.rssi) for h in everything if h.rssi >= floor
    }


async def test_nodes_skip_a_device_that_neither_moved_nor_went_unreported_long(
    broker: Mosquitto,
) -> None:
    """ESPresense's skip rule: reported again once its distance moved skip_distance_m, or
    skip_s after its last report."""
    world = World(start=T0, seed=4, devices=30)
    async with ScannerNodes(
        "127.0.0.1", broker.port, world, skip_distance_m=1000.0, skip_s=5.0
    ) as nodes:
        first = await nodes.step(T0)
        again = await nodes.step(T0 + 1)  # nothing moved 1 km, 1 s later: all skipped
        later = await nodes.step(T0 + 6)  # 6 s after: reported again
    assert first > 0
    assert again < first / 5  # only devices heard for the first time
    assert later > first / 2


async def test_nodes_spread_a_samples_reports_over_spread_s(broker: Mosquitto) -> None:
    """Independent nodes do not all report in the same instant: with spread_s, node after node
    (the first at once, the last (n-1)/n of spread_s later)."""
    world = World(start=T0, seed=5, devices=30)
    async with ScannerNodes("127.0.0.1", broker.port, world, spread_s=0.4) as nodes:
        rooms = len(world.scanners)
        started = time.monotonic()
        sent = await nodes.step(T0)
        took = time.monotonic() - started
    assert sent > 0
    assert rooms > 2
    assert took >= 0.4 * (rooms - 1) / rooms
