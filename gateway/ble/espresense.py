"""Scanner nodes over MQTT, in the ESPresense convention (see docs/ble.md for the mapping).

A node in room R publishes each device it hears on `{prefix}/devices/{id}/{R}` as JSON
(`id`, `rssi`, `rssi@1m`, `distance`, optional `mac`), its status on `{prefix}/rooms/{R}/status`
("online" / "offline", retained, the MQTT will) and telemetry on `{prefix}/rooms/{R}/telemetry`.
The room is the scanner id. Ids name the frame: `iBeacon:{uuid}-{major}-{minor}`,
`altBeacon:{uuid}-{major}-{minor}`, `eddy:{namespace}-{instance}`, and our extension
`eid:{16 hex}` for rotating identifiers; anything else is a device without a beacon frame.

`NodeSource` turns those messages into `Sighting`s. The node's `mac` (or, without one, the id) is
hashed into the device key here and goes no further; errors never echo a topic or a value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeGuard
from uuid import UUID

from gateway.ble.frames import (
    EDDYSTONE_0M_TO_1M_DB,
    AltBeacon,
    EddystoneEID,
    EddystoneUID,
    Frame,
    IBeacon,
)
from gateway.ble.keys import DeviceKeys
from gateway.ble.scanners import ScannerStats
from gateway.ble.sighting import Sighting
from gateway.codecs.payloads import PayloadError, parse_json
from gateway.runtime.clock import Clock

__all__ = ["NodeReport", "NodeSource", "decode_device_message", "frame_from_id"]

_MAX_PAYLOAD = 2048
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_IBEACON = re.compile(rf"(iBeacon|altBeacon):({_UUID})-(\d{{1,5}})-(\d{{1,5}})")
_EDDY = re.compile(r"eddy:([0-9a-fA-F]{20})-([0-9a-fA-F]{12})")
_EID = re.compile(r"eid:([0-9a-fA-F]{16})")


@dataclass(frozen=True, slots=True)
class NodeReport:
    room: str
    device: str  # what identifies the radio: the node's `mac`, else the id (hashed by the caller)
    frame: Frame | None
    rssi: float


def frame_from_id(device_id: str, rssi_1m: int) -> Frame | None:
    """The beacon frame an ESPresense id stands for; None for ids that carry no frame."""
    if m := _IBEACON.fullmatch(device_id):
        kind, uuid, major, minor = m.group(1), UUID(m.group(2)), int(m.group(3)), int(m.group(4))
        if major > 0xFFFF or minor > 0xFFFF:
            return None
        if kind == "iBeacon":
            return IBeacon(uuid, major, minor, rssi_1m)
        beacon_id = uuid.bytes + major.to_bytes(2, "big") + minor.to_bytes(2, "big")
        return AltBeacon(0xFFFF, beacon_id, rssi_1m, 0)  # nodes do not report the company
    if m := _EDDY.fullmatch(device_id):
        # Eddystone calibrates at 0 m, above the 1 m figure nodes report.
        return EddystoneUID(
            bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2)), rssi_1m + EDDYSTONE_0M_TO_1M_DB
        )
    if m := _EID.fullmatch(device_id):
        return EddystoneEID(bytes.fromhex(m.group(1)), rssi_1m + EDDYSTONE_0M_TO_1M_DB)
    return None


def decode_device_message(prefix: str, topic: str, payload: bytes) -> NodeReport:
    """One `{prefix}/devices/{id}/{room}` message; PayloadError says what is wrong."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != "devices" or not parts[3]:
        raise PayloadError(f"expected a topic {prefix}/devices/<id>/<room>")
    if len(payload) > _MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes, at most {_MAX_PAYLOAD} expected")
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError("expected a JSON object")
    device_id, rssi, rssi_1m = data.get("id"), data.get("rssi"), data.get("rssi@1m", -59)
    if not isinstance(device_id, str) or not device_id:
        raise PayloadError("id: expected a non-empty string")
    if not _dbm(rssi):
        raise PayloadError("rssi: expected a number of dBm in [-127, 20]")
    if not _dbm(rssi_1m):
        raise PayloadError("rssi@1m: expected a number of dBm in [-127, 20]")
    mac = data.get("mac")
    if mac is not None and not isinstance(mac, str):
        raise PayloadError("mac: expected a string")
    frame = frame_from_id(device_id, round(rssi_1m))
    return NodeReport(parts[3], mac or device_id, frame, float(rssi))


def _dbm(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and -127 <= value <= 20


class NodeSource:
    """Scanner nodes' messages in, sightings out; node status and counts into ScannerStats."""

    def __init__(
        self,
        prefix: str,
        keys: DeviceKeys,
        stats: ScannerStats,
        on_sighting: Callable[[Sighting], None],
        clock: Clock,
        *,
        rooms: Collection[str],
    ) -> None:
        self.prefix = prefix
        # Only the configured rooms: any device user may publish under its own name (the ACL
        # keys on the user), and an unknown room must not grow the stats or the metrics. Each
        # room's name is kept once: presence holds a reading per (device, room), tens of
        # thousands in a hypermarket, and each decoded topic's copy would cost ~3 MB there.
        self._rooms = {room: room for room in rooms}
        self.ignored = 0
        self._keys = keys
        self._stats = stats
        self._on_sighting = on_sighting
        self._clock = clock

    @property
    def device_filter(self) -> str:
        return f"{self.prefix}/devices/+/+"

    @property
    def status_filter(self) -> str:
        return f"{self.prefix}/rooms/+/status"

    def node_of(self, topic: str) -> tuple[str, str] | None:
        """("node", room) of a node's message: whose budget it spends."""
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) == 3 and parts[0] == "devices":
            return "node", parts[2]
        if len(parts) == 3 and parts[0] == "rooms":
            return "node", parts[1]
        return None

    def on_device(self, topic: str, payload: bytes) -> None:
        report = decode_device_message(self.prefix, topic, payload)
        room = self._rooms.get(report.room)
        if room is None:
            self.ignored += 1
            return
        now = self._clock.now()
        self._stats.advert(room, self._clock.monotonic())
        device = self._keys.key(report.device, now)
        self._on_sighting(Sighting(room, device, report.frame, report.rssi, now))

    def on_status(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or not parts[2]:
            raise PayloadError(f"expected a topic {self.prefix}/rooms/<room>/status")
        state = payload.strip().lower()
        if state not in (b"online", b"offline"):
            raise PayloadError("expected 'online' or 'offline'")
        room = parts[2]
        if room not in self._rooms:
            self.ignored += 1
            return
        if room not in self._stats.scanners:  # a node that reports, even with nothing heard yet
            self._stats.started(room, self._clock.monotonic())
