"""The presence engine, time driven by the test: smoothing, hysteresis, dwell, timeout, noise."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from uuid import UUID

import structlog

from gateway.ble.eid import EidResolver, eid
from gateway.ble.frames import EddystoneEID, EddystoneTLM, EddystoneUID, IBeacon
from gateway.ble.keys import DeviceKeys
from gateway.ble.presence import PresenceEngine, ZoneEvent
from gateway.ble.scanners import ScannerStats
from gateway.ble.service import Presence
from gateway.ble.sighting import Sighting
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import BleConfig, BleScannerConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore

SCANNERS = {"node-a": "entrance", "node-b": "coffee", "node-c": "bakery"}
CONFIG = BleConfig(
    enabled=True,
    scanners=types.MappingProxyType({k: BleScannerConfig(zone=v) for k, v in SCANNERS.items()}),
)
T0 = 1_790_000_000.0


def _engine(**changes: object) -> PresenceEngine:
    return PresenceEngine(dataclasses.replace(CONFIG, **changes))  # type: ignore[arg-type]


def _walk(
    engine: PresenceEngine,
    device: str,
    start: float,
    seconds: int,
    rssi: dict[str, float],
    *,
    frame: EddystoneEID | None = None,
) -> list[ZoneEvent]:
    """One sighting per scanner per second for `seconds` seconds."""
    events: list[ZoneEvent] = []
    for t in range(seconds):
        for scanner, value in rssi.items():
            events += engine.observe(Sighting(scanner, device, frame, value, start + t))
    return events


def _kinds(events: list[ZoneEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.zone) for e in events]


def test_a_visitor_enters_after_the_minimum_dwell_then_dwells_and_times_out() -> None:
    engine = _engine()
    events = _walk(engine, "d_1", T0, 19, {"node-a": -60, "node-b": -80})
    assert events == []  # under min_dwell_s (20 s): maybe a passer-by
    events = _walk(engine, "d_1", T0 + 19, 100, {"node-a": -60, "node-b": -80})
    assert _kinds(events) == [("enter", "entrance"), ("dwell", "entrance")]
    assert events[0].at == T0 + 20
    assert events[1].at == T0 + 80
    assert engine.occupancy()["entrance"] == (0, 1)
    assert engine.tick(T0 + 118 + 179) == []  # not yet 180 s of absence
    (exit_,) = engine.tick(T0 + 118 + 181)
    assert (exit_.kind, exit_.zone, exit_.dwell_s) == ("exit", "entrance", 118)
    assert len(engine) == 0
    assert engine.occupancy()["entrance"] == (0, 0)


def test_passers_by_never_enter_and_are_counted() -> None:
    engine = _engine()
    assert _walk(engine, "d_2", T0, 10, {"node-a": -55}) == []
    assert engine.tick(T0 + 200) == []
    assert engine.counters.passers_by == 1


def test_hysteresis_ignores_the_deadband_and_needs_a_held_margin_to_switch() -> None:
    engine = _engine()
    _walk(engine, "d_3", T0, 30, {"node-a": -60, "node-b": -70})
    assert engine.zone_of("d_3") == "entrance"
    # coffee is now 4 dB stronger: inside the 6 dB deadband, no switch however long it lasts
    events = _walk(engine, "d_3", T0 + 30, 70, {"node-a": -66, "node-b": -62})
    assert _kinds(events) == [("dwell", "entrance")]
    assert engine.zone_of("d_3") == "entrance"
    # 10 dB stronger: a switch only after switch_hold_s (5 s) of it, then min dwell for enter
    events = _walk(engine, "d_3", T0 + 100, 40, {"node-a": -72, "node-b": -62})
    assert _kinds(events) == [("exit", "entrance"), ("enter", "coffee")]
    switch_at = events[0].at
    assert T0 + 100 + 4 <= switch_at <= T0 + 100 + 12  # the EWMA needs a few readings to cross
    assert events[1].at - switch_at == 20


def test_a_much_stronger_zone_wins_at_once() -> None:
    engine = _engine(smoothing=1.0)  # no smoothing: the margin is the reading itself
    _walk(engine, "d_4", T0, 30, {"node-a": -60, "node-c": -90})
    events = _walk(engine, "d_4", T0 + 30, 1, {"node-a": -80, "node-c": -60})
    assert _kinds(events) == [("exit", "entrance")]  # 20 dB >= switch_now_db: no hold
    assert engine.zone_of("d_4") is None  # not entered in bakery until min dwell there


def test_smoothing_rides_out_a_single_noisy_reading() -> None:
    engine = _engine()
    _walk(engine, "d_5", T0, 30, {"node-a": -60, "node-b": -75})
    # one spike of coffee at -40 among steady readings: the EWMA moves by 30 % of it only
    events = engine.observe(Sighting("node-b", "d_5", None, -40, T0 + 30))
    events += _walk(engine, "d_5", T0 + 31, 10, {"node-a": -60, "node-b": -75})
    assert events == []
    assert engine.zone_of("d_5") == "entrance"


def test_stale_readings_stop_counting() -> None:
    engine = _engine(smoothing=1.0)
    _walk(engine, "d_6", T0, 30, {"node-a": -60})
    # node-a goes quiet (the visitor walked away from it); node-b hears them weakly
    events = _walk(engine, "d_6", T0 + 30, 40, {"node-b": -85})
    assert _kinds(events) == [("exit", "entrance"), ("enter", "coffee")]


def test_a_visitor_keeps_readings_only_of_the_scanners_that_heard_them_lately() -> None:
    """Memory per visitor is bounded by the scanners around them, not by the store they walked:
    a reading older than reading_ttl_s is forgotten when the visitor is next heard."""
    engine = _engine(smoothing=1.0)
    _walk(engine, "d_6", T0, 5, {"node-a": -60, "node-c": -80})
    _walk(engine, "d_6", T0 + 5 + CONFIG.reading_ttl_s, 5, {"node-b": -70})
    (subject,) = engine._subjects.values()
    assert set(subject.readings) == {"node-b"}


def test_unknown_scanners_are_counted_and_ignored() -> None:
    engine = _engine()
    assert engine.observe(Sighting("node-z", "d_7", None, -50, T0)) == []
    assert engine.counters.unknown_scanner == 1
    assert len(engine) == 0


def test_store_beacons_are_infrastructure_not_visitors() -> None:
    engine = _engine()
    ibeacon = IBeacon(UUID("e2c56db5-dffb-48d2-b060-d0f5a71096e0"), 1, 2, -59)
    tlm = EddystoneTLM(3000, 21.5, 100, 3600.0)
    uid = EddystoneUID(b"\x01" * 10, b"\x02" * 6, -20)
    for t, frame in enumerate([ibeacon, uid, tlm] * 20):
        assert engine.observe(Sighting("node-a", f"d_b{t % 2}", frame, -50, T0 + t)) == []
    assert len(engine) == 0
    assert engine.beacons["d_b0"].tlm == tlm or engine.beacons["d_b1"].tlm == tlm
    assert engine.counters.beacon_frames == 60


def test_an_address_broadcasting_many_identifiers_is_ignored() -> None:
    engine = _engine()
    for i in range(10):
        frame = EddystoneEID(i.to_bytes(8, "big"), -20)
        engine.observe(Sighting("node-a", "d_spammer", frame, -50, T0 + i))
    assert engine.counters.noisy_address == 10 - CONFIG.max_ids_per_address


def test_a_noisy_address_costs_a_bounded_record_however_long_it_goes_on() -> None:
    engine = _engine()
    for i in range(5000):  # a new identifier in every advert, all within the noise window
        frame = EddystoneEID(i.to_bytes(8, "big"), -20)
        engine.observe(Sighting("node-a", "d_spammer", frame, -50, T0 + i * 0.01))
    assert engine.counters.noisy_address == 5000 - CONFIG.max_ids_per_address
    assert len(engine._ids_of_device["d_spammer"]) == CONFIG.max_ids_per_address + 1
    # Quiet for a window, then an ordinary visitor again: the old identifiers have expired.
    later = T0 + 50 + CONFIG.noise_window_s + 1
    engine.observe(Sighting("node-a", "d_spammer", EddystoneEID(b"\x01" * 8, -20), -50, later))
    assert engine.counters.noisy_address == 5000 - CONFIG.max_ids_per_address
    assert len(engine._ids_of_device["d_spammer"]) == 1


def test_an_identifier_moving_between_many_addresses_is_ignored() -> None:
    engine = _engine()
    frame = EddystoneEID(b"\x42" * 8, -20)
    for i in range(8):
        engine.observe(Sighting("node-a", f"d_clone{i}", frame, -50, T0 + i))
    assert engine.counters.cloned_identifier == 8 - CONFIG.max_addresses_per_id


def test_memory_is_bounded_by_max_devices() -> None:
    engine = _engine(max_devices=100)
    for i in range(1000):
        engine.observe(Sighting("node-a", f"d_{i}", None, -60, T0 + i * 0.01))
    assert len(engine) == 100
    assert engine.counters.evicted == 900


def test_a_customers_rotating_identifier_resolves_to_one_visitor_across_addresses() -> None:
    key, k = bytes(range(16)), 4  # rotation every 16 s, so the walk crosses several
    resolver = EidResolver(drift_windows=1)
    ref = "c_" + "a" * 32
    resolver.load({ref: (key, k)}, T0)
    engine = PresenceEngine(CONFIG, resolver.resolve)
    events: list[ZoneEvent] = []
    for t in range(90):
        now = T0 + t
        frame = EddystoneEID(eid(key, k, int(now)), -20)
        address = f"d_addr{t // 30}"  # the phone changes its address every 30 s
        events += engine.observe(Sighting("node-b", address, frame, -58, now))
    assert _kinds(events) == [("enter", "coffee"), ("dwell", "coffee")]
    assert {e.customer_ref for e in events} == {ref}
    assert {e.subject for e in events} == {ref}
    assert engine.occupancy()["coffee"] == (1, 0)
    assert engine.counters.eid_unresolved == 0


def test_unresolved_identifiers_count_as_anonymous_visitors() -> None:
    engine = PresenceEngine(CONFIG, EidResolver().resolve)
    events = _walk(engine, "d_anon", T0, 30, {"node-c": -60}, frame=EddystoneEID(b"\x07" * 8, -20))
    assert _kinds(events) == [("enter", "bakery")]
    assert events[0].customer_ref is None
    assert events[0].subject == "d_anon"
    assert engine.occupancy()["bakery"] == (0, 1)
    assert engine.counters.eid_unresolved == 30


def test_device_keys_hide_the_address_and_rotate_daily() -> None:
    keys = DeviceKeys(b"k" * 32)
    day = 86_400 * 20_000
    a = keys.key("AA:BB:CC:DD:EE:01", day + 10)
    assert a == keys.key("aa:bb:cc:dd:ee:01", day + 80_000)  # same day, any spelling
    assert a != keys.key("AA:BB:CC:DD:EE:01", day + 86_400)  # the next day: unlinkable
    assert a != DeviceKeys(b"j" * 32).key("AA:BB:CC:DD:EE:01", day + 10)  # another store
    assert "aabbccddee01" not in a.lower()
    assert a.startswith("d_")


def test_rotating_identifiers_that_all_go_unmatched_are_reported_once_with_the_clock() -> None:
    """A clock days off turns every opted-in phone anonymous: it was silent."""
    key, k = bytes(range(16)), 4
    mono = [0.0]
    clock = TimeKeeper(
        wall=lambda: T0 + mono[0], mono=lambda: mono[0], synchronized=lambda: None, floor=0.0
    )
    presence = Presence(
        CONFIG,
        db=AsyncStore(Path("/nonexistent/unused.sqlite3")),
        clock=clock,
        metrics=Metrics(),
        stats=ScannerStats(),
        on_event=lambda _event: None,
    )
    presence.resolver = EidResolver(drift_windows=1)
    presence.resolver.load({"c_" + "a" * 32: (key, k)}, T0)
    handle = Handle("presence", lambda *_: None)

    def heard(offset_s: float) -> list[dict[str, object]]:
        """Phones whose time is `offset_s` from the gateway's, for 5 minutes and a bit."""
        with structlog.testing.capture_logs() as logs:
            presence._report(handle)
            for t in range(0, 301, 10):
                mono[0] += 10
                now = clock.now()
                frame = EddystoneEID(eid(key, k, int(now + offset_s)), -20)
                presence.on_sighting(Sighting("node-b", f"d_{t}", frame, -58, now))
            presence._report(handle)
        return [e for e in logs if "check the clock" in str(e["event"])]

    heard(0)  # the first look
    assert heard(0) == []  # matched: nothing to say
    warnings = heard(3 * 86400)  # the gateway's clock is 3 days behind the phones'
    assert len(warnings) == 1
    assert warnings[0]["unresolved"] == 31
