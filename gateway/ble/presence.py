"""Presence: sightings in, zone enter / dwell / exit events out. Core: no I/O, no clock of its own.

Time comes from the sightings (`Sighting.at`) and from `tick(now)`, so tests drive it.

Per subject (a resolved customer, else a device key) and scanner, RSSI is smoothed with an
EWMA; a subject is in the zone of its strongest fresh scanner, with hysteresis: another zone must
be stronger by `switch_db` for `switch_hold_s` (smaller differences are the deadband) or by
`switch_now_db` to win at once. A zone is *entered* only after `min_dwell_s` there (passers-by
never are), *dwell* repeats every `dwell_every_s`, and *exit* follows a switch or
`absence_timeout_s` without a sighting. Fixed beacons (iBeacon, AltBeacon, Eddystone UID / URL /
TLM) are store infrastructure: their health is kept, they are not visitors. Memory is bounded:
subjects and noise records live in LRU maps capped at `max_devices`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.ble.frames import (
    AltBeacon,
    EddystoneEID,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    Frame,
    IBeacon,
)
from gateway.ble.sighting import Sighting
from gateway.runtime.config import BleConfig

__all__ = ["BeaconHealth", "PresenceCounters", "PresenceEngine", "ZoneEvent", "identifier_of"]

EventKind = Literal["enter", "dwell", "exit"]


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    kind: EventKind
    zone: str
    subject: str  # the customer ref when resolved, else the device key (a daily hash)
    customer_ref: str | None
    at: float
    dwell_s: float  # time in this zone so far; at exit, the whole stay


@dataclass(slots=True)
class PresenceCounters:
    unknown_scanner: int = 0
    beacon_frames: int = 0
    eid_unresolved: int = 0
    eid_resolved: int = 0
    noisy_address: int = 0  # sightings dropped: the address shows too many identifiers
    cloned_identifier: int = 0  # sightings dropped: the identifier moves between addresses
    passers_by: int = 0  # left before min_dwell_s in any zone
    evicted: int = 0  # forgotten because max_devices was reached


@dataclass(slots=True)
class BeaconHealth:
    last_seen: float
    tlm: EddystoneTLM | None = None


# A scanner's smoothed reading of a subject: (rssi, at). A plain tuple of floats, replaced on
# each sighting, not a mutable object: the collector stops tracking such a tuple the first time
# it sees it. A hypermarket holds ~30,000 readings; as objects they were most of what every
# young collection walked (10-25 ms pauses, issue 14).
_Reading = tuple[float, float]


@dataclass(slots=True)
class _Subject:
    customer_ref: str | None
    readings: dict[str, _Reading] = field(default_factory=dict)
    zone: str | None = None
    zone_since: float = 0.0
    entered: bool = False
    last_dwell: float = 0.0
    last_seen: float = 0.0
    challenger: str | None = None
    challenger_since: float = 0.0


def identifier_of(frame: Frame) -> str | None:
    """A stable text identity of a frame, for the noise rules; TLM carries none."""
    match frame:
        case IBeacon(uuid=u, major=major, minor=minor):
            return f"ibeacon:{u}-{major}-{minor}"
        case AltBeacon(beacon_id=b):
            return f"altbeacon:{b.hex()}"
        case EddystoneUID(namespace=n, instance=i):
            return f"eddy:{n.hex()}-{i.hex()}"
        case EddystoneURL(url=url):
            return f"url:{url}"
        case EddystoneEID(eid=e):
            return f"eid:{e.hex()}"
    return None


class PresenceEngine:
    def __init__(
        self,
        config: BleConfig,
        resolve_eid: Callable[[bytes, float], str | None] = lambda _eid, _now: None,
    ) -> None:
        self.config = config
        self._resolve = resolve_eid
        self._zone_of: Mapping[str, str] = {k: v.zone for k, v in config.scanners.items()}
        self._subjects: OrderedDict[str, _Subject] = OrderedDict()  # LRU by last sighting
        # device key -> (customer ref, last seen): adverts without an EID from a resolved address
        self._ref_of_device: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._ids_of_device: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._devices_of_id: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._occupancy: dict[str, list[int]] = {z: [0, 0] for z in self._zone_of.values()}
        self.beacons: OrderedDict[str, BeaconHealth] = OrderedDict()
        self.counters = PresenceCounters()

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._subjects)

    def occupancy(self) -> dict[str, tuple[int, int]]:
        """zone -> (identified customers, anonymous devices) that have entered it."""
        return {zone: (known, anon) for zone, (known, anon) in self._occupancy.items()}

    def zone_of(self, subject: str) -> str | None:
        s = self._subjects.get(subject)
        return s.zone if s is not None and s.entered else None

    # -- input -----------------------------------------------------------------------------

    def observe(self, sighting: Sighting) -> list[ZoneEvent]:
        zone = self._zone_of.get(sighting.scanner)
        if zone is None:
            self.counters.unknown_scanner += 1
            return []
        frame, device, at = sighting.frame, sighting.device, sighting.at
        identifier = identifier_of(frame) if frame is not None else None
        if identifier is not None and not self._plausible(device, identifier, at):
            return []
        if frame is not None and not isinstance(frame, EddystoneEID):
            self._beacon(sighting)
            return []
        key, ref = self._subject_key(device, frame, at)
        subject = self._subjects.get(key)
        if subject is None:
            subject = self._subjects[key] = _Subject(customer_ref=ref)
            events = self._evict_over_cap()
        else:
            self._subjects.move_to_end(key)
            events = []
        subject.last_seen = at
        self._smooth(subject, sighting.scanner, sighting.rssi, at)
        events += self._zone(key, subject, at)
        return events

    def tick(self, now: float) -> list[ZoneEvent]:
        """Exits for subjects unseen for `absence_timeout_s`; stale noise records pruned."""
        events: list[ZoneEvent] = []
        horizon = now - self.config.absence_timeout_s
        while self._subjects:
            key, subject = next(iter(self._subjects.items()))
            if subject.last_seen > horizon:
                break
            del self._subjects[key]
            events += self._leave(key, subject, subject.last_seen)
        noise_horizon = now - self.config.noise_window_s
        for records in (self._ids_of_device, self._devices_of_id):
            while records:
                name, seen = next(iter(records.items()))
                if max(seen.values(), default=0.0) > noise_horizon:
                    break
                del records[name]
        while self._ref_of_device:
            device, (_, seen_at) = next(iter(self._ref_of_device.items()))
            if seen_at > horizon and len(self._ref_of_device) <= self.config.max_devices:
                break
            del self._ref_of_device[device]
        while self.beacons:
            name, beacon = next(iter(self.beacons.items()))
            if beacon.last_seen > horizon:
                break
            del self.beacons[name]
        return events

    # -- internals -------------------------------------------------------------------------

    def _plausible(self, device: str, identifier: str, at: float) -> bool:
        """The noise rules; False drops the sighting (and counts why)."""
        horizon, cap = at - self.config.noise_window_s, self.config.max_devices
        ids = _touch(self._ids_of_device, device, cap)
        if _note(ids, identifier, at, horizon, self.config.max_ids_per_address):
            self.counters.noisy_address += 1
            return False
        devices = _touch(self._devices_of_id, identifier, cap)
        if _note(devices, device, at, horizon, self.config.max_addresses_per_id):
            self.counters.cloned_identifier += 1
            return False
        return True

    def _beacon(self, sighting: Sighting) -> None:
        self.counters.beacon_frames += 1
        health = self.beacons.get(sighting.device)
        if health is None:
            health = self.beacons[sighting.device] = BeaconHealth(sighting.at)
            if len(self.beacons) > self.config.max_devices:
                self.beacons.popitem(last=False)
        else:
            self.beacons.move_to_end(sighting.device)
            health.last_seen = sighting.at
        if isinstance(sighting.frame, EddystoneTLM):
            health.tlm = sighting.frame

    def _subject_key(self, device: str, frame: Frame | None, at: float) -> tuple[str, str | None]:
        if isinstance(frame, EddystoneEID):
            ref = self._resolve(frame.eid, at)
            if ref is None:
                self.counters.eid_unresolved += 1
            else:
                self.counters.eid_resolved += 1
                # Later adverts from this address without an EID belong to the same customer.
                self._ref_of_device[device] = (ref, at)
                self._ref_of_device.move_to_end(device)
                return ref, ref
        known = self._ref_of_device.get(device)
        if known is None:
            return device, None
        self._ref_of_device[device] = (known[0], at)
        self._ref_of_device.move_to_end(device)
        return known[0], known[0]

    def _smooth(self, subject: _Subject, scanner: str, rssi: float, at: float) -> None:
        reading = subject.readings.get(scanner)
        if reading is None or at - reading[1] > self.config.reading_ttl_s:
            subject.readings[scanner] = (rssi, at)
        else:
            smoothed = reading[0]
            subject.readings[scanner] = (smoothed + self.config.smoothing * (rssi - smoothed), at)

    def _strengths(self, subject: _Subject, at: float) -> dict[str, float]:
        """Per zone, the strongest current reading; stale ones are forgotten, not only
        ignored: a phone that walks the store would otherwise keep a reading of every scanner
        it ever passed (5,000 phones x 40 scanners: ~40 MB)."""
        strength: dict[str, float] = {}
        stale = []
        for scanner, (rssi, seen) in subject.readings.items():
            if at - seen <= self.config.reading_ttl_s:
                zone = self._zone_of[scanner]
                strength[zone] = max(strength.get(zone, -200.0), rssi)
            else:
                stale.append(scanner)
        for scanner in stale:
            del subject.readings[scanner]
        return strength

    def _zone(self, key: str, subject: _Subject, at: float) -> list[ZoneEvent]:
        c = self.config
        strength = self._strengths(subject, at)
        if not strength:
            return []
        best = max(strength, key=strength.__getitem__)
        events: list[ZoneEvent] = []
        if subject.zone is None:
            subject.zone, subject.zone_since = best, at
        elif best != subject.zone:
            margin = strength[best] - strength.get(subject.zone, -200.0)
            if margin < c.switch_db:
                subject.challenger = None
            elif margin >= c.switch_now_db or (
                subject.challenger == best and at - subject.challenger_since >= c.switch_hold_s
            ):
                events += self._leave(key, subject, at)
                subject.zone, subject.zone_since, subject.challenger = best, at, None
            elif subject.challenger != best:
                subject.challenger, subject.challenger_since = best, at
        else:
            subject.challenger = None
        zone, stay = subject.zone, at - subject.zone_since
        if not subject.entered and stay >= c.min_dwell_s:
            subject.entered, subject.last_dwell = True, at
            self._count(zone, subject, +1)
            events.append(ZoneEvent("enter", zone, key, subject.customer_ref, at, stay))
        elif subject.entered and at - subject.last_dwell >= c.dwell_every_s:
            subject.last_dwell = at
            events.append(ZoneEvent("dwell", zone, key, subject.customer_ref, at, stay))
        return events

    def _leave(self, key: str, subject: _Subject, at: float) -> list[ZoneEvent]:
        if subject.zone is None:
            return []
        if not subject.entered:
            self.counters.passers_by += 1
            return []
        subject.entered = False
        self._count(subject.zone, subject, -1)
        stay = max(0.0, at - subject.zone_since)
        return [ZoneEvent("exit", subject.zone, key, subject.customer_ref, at, stay)]

    def _count(self, zone: str, subject: _Subject, delta: int) -> None:
        self._occupancy.setdefault(zone, [0, 0])[0 if subject.customer_ref else 1] += delta

    def _evict_over_cap(self) -> list[ZoneEvent]:
        events: list[ZoneEvent] = []
        while len(self._subjects) > self.config.max_devices:
            key, subject = self._subjects.popitem(last=False)
            self.counters.evicted += 1
            events += self._leave(key, subject, subject.last_seen)
        return events


def _touch(records: OrderedDict[str, dict[str, float]], name: str, cap: int) -> dict[str, float]:
    entry = records.get(name)
    if entry is None:
        entry = records[name] = {}
        if len(records) > cap:
            records.popitem(last=False)
    else:
        records.move_to_end(name)
    return entry


def _note(seen: dict[str, float], name: str, at: float, horizon: float, limit: int) -> bool:
    """Record `name` seen at `at`; True if more than `limit` names were seen since `horizon`.

    Kept newest last, expired ones dropped from the front, and never more than limit + 1 (all
    it takes to tell "over the limit"): a device sending a new identifier in every advert costs
    O(1) per sighting and a bounded record, however long it keeps at it.
    """
    seen.pop(name, None)
    seen[name] = at
    while seen:
        oldest = next(iter(seen))
        if len(seen) <= limit + 1 and seen[oldest] >= horizon:
            break
        del seen[oldest]
    return len(seen) > limit
