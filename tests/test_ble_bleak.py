"""The local radio: bleak's real BlueZ backend against a fake bluetoothd on a private dbus-daemon.

Passive scanning (an advertisement monitor) where BlueZ offers it, active where it doesn't;
sightings carry the decoded frame and the day's device key; a silent radio is restarted, then
power-cycled; and no address, in any spelling, reaches a log line, a sighting or an error.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

import pytest
import structlog
from bleak.backends.bluezdbus import manager as bluez_manager

from drivers.ble.bleak_scanner import BleakSource, BleError
from gateway.ble.frames import EddystoneEID, EddystoneUID, Frame, IBeacon
from gateway.ble.keys import DeviceKeys
from gateway.ble.scanners import ScannerStats
from gateway.ble.sighting import Sighting
from gateway.runtime.clock import SystemClock
from gateway.runtime.logs import configure_logging
from gateway.runtime.supervisor import Handle, State
from simulators.bluez import FakeBluez
from simulators.broker import Mosquitto
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(30)

IBEACON_MAC = "AA:BB:CC:DD:EE:01"
UID_MAC = "AA:BB:CC:DD:EE:02"
EID_MAC = "AA:BB:CC:DD:EE:03"
PHONE_MAC = "AA:BB:CC:DD:EE:04"
EDDYSTONE = "0000feaa-0000-1000-8000-00805f9b34fb"

# On-air bytes, written out by hand rather than by the codec's encoder.
BEACON_UUID = UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
IBEACON = {0x004C: b"\x02\x15" + BEACON_UUID.bytes + b"\x00\x07" + b"\x01\x2c" + b"\xc5"}
UID = {EDDYSTONE: b"\x00\xee" + bytes(range(10)) + b"\xa1\xa2\xa3\xa4\xa5\xa6" + b"\x00\x00"}
EID = {EDDYSTONE: b"\x30\xf0" + b"\x11\x22\x33\x44\x55\x66\x77\x88"}
PHONE = {0x0006: b"\x01\x09\x20\x02"}  # Microsoft's company id, no beacon frame
EXPECTED: dict[str, Frame] = {
    IBEACON_MAC: IBeacon(uuid=BEACON_UUID, major=7, minor=300, tx_power=-59),
    UID_MAC: EddystoneUID(
        namespace=bytes(range(10)), instance=bytes.fromhex("a1a2a3a4a5a6"), tx_power=-18
    ),
    EID_MAC: EddystoneEID(eid=bytes.fromhex("1122334455667788"), tx_power=-16),
}


def spellings(mac: str) -> list[str]:
    """AA:BB.., aa:bb.., AABB.., aabb.., AA_BB.. (BlueZ's object paths), AA-BB.. (its aliases)."""
    parts = mac.split(":")
    forms = [sep.join(parts) for sep in (":", "", "_", "-")]
    return [*forms, *(f.lower() for f in forms)]


def leaked(text: str) -> list[str]:
    macs = (IBEACON_MAC, UID_MAC, EID_MAC, PHONE_MAC)
    return [form for mac in macs for form in spellings(mac) if form in text]


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - watching state from outside, no event to await
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    """A BleakSource on the fake's hci0, with what it reports collected."""

    bluez: FakeBluez
    keys: DeviceKeys = field(default_factory=lambda: DeviceKeys(b"k" * 32))
    stats: ScannerStats = field(default_factory=ScannerStats)
    sightings: list[Sighting] = field(default_factory=list)
    states: list[tuple[State, str]] = field(default_factory=list)
    source: BleakSource | None = None
    task: asyncio.Task[None] | None = None

    def start(
        self, *, passive: bool, watchdog_s: float = 90.0, resets_after: int = 3
    ) -> BleakSource:
        self.source = BleakSource(
            "hci0",
            self.keys,
            self.stats,
            self.sightings.append,
            SystemClock(),
            passive=passive,
            watchdog_s=watchdog_s,
            resets_after=resets_after,
        )
        handle = Handle(
            self.source.name, lambda _, state, detail: self.states.append((state, detail))
        )
        self.task = asyncio.create_task(self.source.run(handle))
        return self.source

    @property
    def state(self) -> State | None:
        return self.states[-1][0] if self.states else None

    async def ready(self) -> None:
        await until(
            lambda: self.state == State.READY or (self.task is not None and self.task.done())
        )
        assert self.state == State.READY, self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


async def _drop_bleak_manager() -> None:
    """bleak keeps one BlueZ manager (and bus connection) per event loop: close this loop's, so
    the next test connects afresh to its own fake and nothing is left to the loop's teardown."""
    manager = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if manager is None or manager._bus is None:
        return
    manager._bus.disconnect()
    await manager._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    if manager._bus_watcher_task is not None:
        await manager._bus_watcher_task


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The gateway's logging pipeline, JSON at its most verbose, into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("json", "debug", out)
    yield out
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    passive_supported = getattr(request, "param", True)
    async with FakeBluez(passive_supported=passive_supported) as bluez:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
        rig = Rig(bluez)
        try:
            yield rig
        finally:
            await rig.stop()
            await _drop_bleak_manager()


async def _advertise_beacons(bluez: FakeBluez) -> list[bool]:
    """Three beacons and a phone; which of them bluetoothd passed on to a client."""
    return [
        await bluez.advertise(IBEACON_MAC, -60, IBEACON, {}),
        await bluez.advertise(UID_MAC, -70, {}, UID),
        await bluez.advertise(EID_MAC, -80, {}, EID),
        await bluez.advertise(PHONE_MAC, -65, PHONE, {}),
    ]


@pytest.mark.parametrize(
    ("rig", "passive", "mode"),
    [(True, False, "active"), (True, True, "passive"), (False, True, "active")],
    indirect=["rig"],
    ids=["active", "passive", "passive-unsupported-falls-back"],
)
async def test_beacons_arrive_as_sightings(rig: Rig, passive: bool, mode: str) -> None:
    source = rig.start(passive=passive)
    await rig.ready()
    assert source.mode == mode
    assert rig.bluez.active_monitors == (1 if mode == "passive" else 0)
    assert rig.bluez.discovering == (mode == "active")

    # The phone has no beacon frame: active scanning hears it, the monitor's patterns don't.
    passed = await _advertise_beacons(rig.bluez)
    assert passed == [True, True, True, mode == "active"]
    await until(lambda: len(rig.sightings) == sum(passed))

    by_frame = {s.frame: s for s in rig.sightings}
    for mac, rssi in ((IBEACON_MAC, -60), (UID_MAC, -70), (EID_MAC, -80)):
        sighting = by_frame[EXPECTED[mac]]
        assert sighting.scanner == "hci0"
        assert sighting.device == rig.keys.key(mac, sighting.at)
        assert sighting.rssi == rssi
    phone = [s for s in rig.sightings if s.frame is None]
    assert [s.device for s in phone] == [rig.keys.key(PHONE_MAC, s.at) for s in phone]
    assert len(phone) == (1 if mode == "active" else 0)
    assert rig.stats.scanners["hci0"].adverts == len(rig.sightings)


@pytest.mark.parametrize("rig", [True], indirect=True, ids=["monitors-supported"])
async def test_watchdog_restarts_then_power_cycles_a_silent_radio(rig: Rig) -> None:
    rig.start(passive=False, watchdog_s=0.5, resets_after=2)
    await rig.ready()
    await rig.bluez.advertise(IBEACON_MAC, -60, IBEACON, {})
    await until(lambda: len(rig.sightings) == 1)
    starts = rig.bluez.discovery_starts

    rig.bluez.go_quiet()  # discovery stays on, nothing is reported
    await until(lambda: rig.bluez.powered_cycles == 1, within=8)
    scanner = rig.stats.scanners["hci0"]
    assert scanner.restarts == 2  # resets_after quiet restarts came first
    # counted once BlueZ has answered both Powered writes, a moment after the fake saw them
    await until(lambda: scanner.adapter_resets == 1)
    assert rig.state == State.DEGRADED
    assert any("power-cycling" in detail for _, detail in rig.states)
    await until(lambda: rig.bluez.discovering)  # scanning again after the power cycle
    assert rig.bluez.discovery_starts == starts + 3

    rig.bluez.resume()
    assert await rig.bluez.advertise(IBEACON_MAC, -61, IBEACON, {})
    await until(lambda: len(rig.sightings) == 2)
    assert rig.sightings[-1].frame == EXPECTED[IBEACON_MAC]
    await until(lambda: rig.state == State.READY)
    assert scanner.adapter_resets == 1


@pytest.mark.parametrize("rig", [False], indirect=True, ids=["monitors-unsupported"])
async def test_no_address_reaches_logs_sightings_or_errors(
    rig: Rig, log_output: io.StringIO
) -> None:
    # The passive fallback, adverts, a restart and a power cycle, then the adapter unplugged.
    rig.start(passive=True, watchdog_s=0.3, resets_after=1)
    await rig.ready()
    assert all(await _advertise_beacons(rig.bluez))
    await until(lambda: len(rig.sightings) == 4)
    rig.bluez.go_quiet()
    await until(lambda: rig.bluez.powered_cycles == 1, within=8)
    rig.bluez.resume()
    # The watchdog (0.3 s) may be between a stop and a start: repeat, as a beacon does.
    async with asyncio.timeout(5):
        while len(rig.sightings) < 5:
            await rig.bluez.advertise(UID_MAC, -71, {}, UID)
            await asyncio.sleep(0.05)
    rig.bluez.remove_adapter()
    assert rig.task is not None
    with pytest.raises(BleError) as failure:
        await asyncio.wait_for(rig.task, 8)

    assert "hci0" in str(failure.value)
    text = log_output.getvalue()
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert "ble passive scanning unavailable, scanning actively" in events
    assert "ble silent, restarting the scan" in events
    assert "ble still silent, power-cycling the adapter" in events
    assert "ble scanning failed" in events
    assert leaked(text) == []
    assert leaked(repr(rig.sightings)) == []
    assert leaked(str(failure.value)) == []
    assert leaked(repr(rig.states)) == []


async def test_the_daemon_scans_the_radio_and_shows_a_known_customer_in_her_zone(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    """The whole path: bleak in the gateway process -> fake bluetoothd adverts of Ada's app
    (rotating EID) -> presence -> the screen of the zone the radio covers."""
    from gateway.ble.eid import eid
    from gateway.ble.frames import encode_advert
    from simulators.population import CUSTOMERS, eid_identity_key
    from simulators.store import SimulatedStore

    ada = CUSTOMERS[0]
    async with FakeBluez(passive_supported=False) as bluez:
        process = gateway(
            overrides={
                "ble.adapter": "hci0",
                "ble.min_dwell_s": "0",
                "ble.scanners.hci0.zone": "coffee",
            },
            env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address},
        )
        await asyncio.to_thread(process.wait_ready)
        async with SimulatedStore("127.0.0.1", broker.port, "demo-store") as store:
            topic = store.topics.screen_content("coffee-1")
            async with asyncio.timeout(20):
                while topic not in store.seen.content:
                    frame = EddystoneEID(eid(eid_identity_key(ada), 10, int(time.time())), -20)
                    manufacturer, service, _ = encode_advert(frame)
                    await bluez.advertise(PHONE_MAC, -50, manufacturer, service)
                    await asyncio.sleep(0.2)
        assert process.stop() == 0
    content = store.seen.content[topic].content
    assert content.audience == "personal"
    assert content.offer is not None
    assert content.offer.id == "OFF-BEANS-MEMBER"
    assert leaked(process.log(tail=None)) == []


@pytest.mark.parametrize("rig", [True], indirect=True, ids=["monitors-supported"])
async def test_eddystone_data_without_feaa_in_the_uuid_list_is_not_a_beacon(rig: Rig) -> None:
    """The Eddystone specification puts 0xFEAA in the advert's service UUID list; bleak gives
    the list to the driver, and a frame whose list names another service is not decoded."""
    rig.start(passive=False)
    await rig.ready()
    battery = "0000180f-0000-1000-8000-00805f9b34fb"
    assert await rig.bluez.advertise("C0:FF:EE:00:00:01", -70, {}, UID, uuids=[battery])
    assert await rig.bluez.advertise(UID_MAC, -70, {}, UID)  # FEAA listed, as beacons do
    await until(lambda: len(rig.sightings) == 2)
    assert [s.frame for s in rig.sightings] == [None, EXPECTED[UID_MAC]]


async def test_a_device_unheard_for_the_temporary_timeout_is_forgotten_and_heard_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bluetoothd removes a temporary device unheard for TemporaryTimeout, scanning or not: the
    scanner's memory of a crowd whose addresses churn stays bounded, and a device heard again
    after its removal is a new device that still arrives as a sighting."""
    async with FakeBluez(passive_supported=False, temporary_timeout_s=0.5) as bluez:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
        rig = Rig(bluez)
        try:
            rig.start(passive=False)
            await rig.ready()
            manager = bluez_manager._global_instances[asyncio.get_running_loop()]
            path = f"{bluez.adapter_path}/dev_{PHONE_MAC.replace(':', '_')}"
            assert await bluez.advertise(PHONE_MAC, -65, PHONE, {})
            await until(lambda: len(rig.sightings) == 1 and path in manager._properties)
            await until(lambda: path not in manager._properties, within=3.0)
            assert await bluez.advertise(PHONE_MAC, -66, PHONE, {})
            await until(lambda: len(rig.sightings) == 2)
            assert rig.sightings[-1].rssi == -66
        finally:
            await rig.stop()
            await _drop_bleak_manager()
