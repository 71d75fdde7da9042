"""What every BLE source yields: one advertisement heard by one scanner."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ble.frames import Frame

__all__ = ["Sighting"]


@dataclass(frozen=True, slots=True)
class Sighting:
    scanner: str  # the local adapter ("hci0") or a scanner node's id
    device: str  # keyed, daily-rotated hash of the address (DeviceKeys); never the address
    frame: Frame | None  # the beacon frame, or None for a device without one
    rssi: float  # dBm
    at: float  # wall-clock seconds (the gateway's Clock.now())
