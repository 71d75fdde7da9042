"""The configuration's sections for the store's devices: BLE, printers, lanes, the camera,
screens, tablets, kiosks and the app."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.runtime.config.sections import _meta, _parse_endpoint


@dataclass(frozen=True, slots=True)
class BleScannerConfig:
    # The zone this scanner covers (a zone name used by screens and kiosks).
    zone: str = ""


@dataclass(frozen=True, slots=True)
class BleConfig:
    # Presence from BLE: the local radio and/or scanner nodes over MQTT. Off by default.
    enabled: bool = False
    # The local BlueZ adapter to scan with ("hci0"); "" for none (scanner nodes only).
    adapter: str = ""
    # Passive scanning where BlueZ allows it (needs its experimental features); active otherwise.
    passive: bool = True
    # Scanner nodes publish under this topic prefix, ESPresense style; "" ignores nodes.
    nodes_topic: str = "espresense"
    # RSSI smoothing per device and scanner: the weight of the newest reading (EWMA).
    smoothing: float = field(default=0.3, metadata=_meta(min=0.01, max=1))
    # Hysteresis: another zone must be stronger by switch_db for switch_hold_s (differences
    # under switch_db are the deadband), or by switch_now_db to switch at once.
    switch_db: float = field(default=6.0, metadata=_meta(min=0, max=60))
    switch_now_db: float = field(default=16.0, metadata=_meta(min=0, max=60))
    switch_hold_s: float = field(default=5.0, metadata=_meta(min=0, max=600))
    # A scanner's reading older than this no longer counts for zoning.
    reading_ttl_s: float = field(default=15.0, metadata=_meta(min=1, max=600))
    # Unseen this long: the visitor has left (exit event) and is forgotten.
    absence_timeout_s: float = field(default=180.0, metadata=_meta(min=5, max=86400))
    # Under this long in a zone: a passer-by, no enter event.
    min_dwell_s: float = field(default=20.0, metadata=_meta(min=0, max=3600))
    # While a visitor stays in a zone, a dwell event this often.
    dwell_every_s: float = field(default=60.0, metadata=_meta(min=5, max=86400))
    # Noise rules over noise_window_s: an address showing more identifiers than
    # max_ids_per_address, or an identifier seen at more than max_addresses_per_id addresses,
    # is ignored (a misbehaving or cloned device).
    noise_window_s: float = field(default=600.0, metadata=_meta(min=10, max=86400))
    max_ids_per_address: int = field(default=4, metadata=_meta(min=1, max=1000))
    max_addresses_per_id: int = field(default=3, metadata=_meta(min=1, max=1000))
    # Bounded memory: the least recently seen devices are evicted beyond this many.
    max_devices: int = field(default=20_000, metadata=_meta(min=10, max=10_000_000))
    # Rotating identifiers: windows accepted either side of the box's clock (phone drift).
    eid_drift_windows: int = field(default=1, metadata=_meta(min=0, max=16))
    # Scanner watchdog: restart a scanner silent this long; reset the adapter through BlueZ
    # after this many restarts in a row without an advert.
    watchdog_s: float = field(default=90.0, metadata=_meta(min=1, max=86400))
    resets_after: int = field(default=3, metadata=_meta(min=1, max=100))
    # A screen keeps what a zone event put on it at least this long (a newly identified
    # customer may replace anonymous content at once).
    screen_hold_s: float = field(default=30.0, metadata=_meta(min=0, max=86400))
    # Scanner id (the adapter, or an ESPresense node's room) -> the zone it covers.
    scanners: Mapping[str, BleScannerConfig] = field(
        default_factory=lambda: types.MappingProxyType({})
    )


PrinterLinkKind = Literal["serial", "tcp", "usb"]


_LINK_HINT = (
    '"serial:/dev/serial/by-id/...", "tcp:10.0.0.21:9100" (port 9100 if left out) or'
    ' "usb:/dev/usb/lp0"'
)


@dataclass(frozen=True, slots=True)
class PrinterLink:
    """How a printer is reached: a serial line, raw TCP (port 9100) or the kernel's usblp."""

    kind: PrinterLinkKind
    path: Path = Path()  # serial, usb: the device
    host: str = ""  # tcp
    port: int = 9100  # tcp

    def __str__(self) -> str:
        where = f"{self.host}:{self.port}" if self.kind == "tcp" else str(self.path)
        return f"{self.kind}:{where}"


def parse_printer_link(text: str) -> PrinterLink:
    """ "serial:/dev/...", "tcp:host[:port]", "usb:/dev/usb/lp0"; ValueError says what is wrong."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in ("serial", "tcp", "usb"):
        raise ValueError(f"expected {_LINK_HINT}")
    if kind == "tcp":
        try:
            host, port = _parse_endpoint(rest, 9100)
        except ValueError:
            raise ValueError(f"expected tcp:host:port, e.g. {_LINK_HINT}") from None
        return PrinterLink("tcp", host=host, port=port)
    if not rest.startswith("/"):
        raise ValueError(f"expected an absolute device path after {kind}:, e.g. {_LINK_HINT}")
    return PrinterLink("serial" if kind == "serial" else "usb", path=Path(rest))


@dataclass(frozen=True, slots=True)
class PrinterConfig:
    # Where the printer is: "serial:/dev/serial/by-id/...", "tcp:10.0.0.21:9100" (raw TCP, the
    # port 9100 of network printers) or "usb:/dev/usb/lp0" (the kernel's usblp).
    link: str = ""
    # The serial device, as before `link`: the same as link = "serial:<device>". Prefer the
    # stable /dev/serial/by-id/... path (it survives replugging).
    device: Path | None = None
    # Printer profile (gateway/escpos/profiles/<name>.json): paper width, supported commands.
    profile: str = "generic-80mm"
    baud: int = field(default=115200, metadata=_meta(min=1200, max=4_000_000))
    # A printer that does not answer a status request within this is reported silent.
    # With the idle poll every 0.5 s, a printer that stops answering is offline within 1 s.
    status_timeout_s: float = field(default=0.5, metadata=_meta(min=0.1, max=30))

    def effective_link(self) -> PrinterLink:
        """`link`, else `device` as a serial line; ValueError if neither (or both) is set."""
        if self.link and self.device is not None:
            raise ValueError("found both link and device, expected one of them")
        if self.device is not None:
            return PrinterLink("serial", path=self.device)
        if not self.link:
            raise ValueError(f"found nothing, expected where the printer is: {_LINK_HINT}")
        return parse_printer_link(self.link)


@dataclass(frozen=True, slots=True)
class LaneConfig:
    # The printer that prints this POS lane's coupons; "" for a lane without one (its events
    # and coupon redemptions are taken, its totals print nothing).
    printer: str = ""
    # A coupon is valid this many days after it is printed.
    coupon_valid_days: int = field(default=30, metadata=_meta(min=1, max=3650))
    # A receipt claim code (printed for a customer who did not identify) can be claimed in
    # the app this many days after it is printed.
    claim_valid_days: int = field(default=90, metadata=_meta(min=1, max=3650))


@dataclass(frozen=True, slots=True)
class CameraConfig:
    # The opt-in camera. Off by default; enabling it needs the purposes AND notice_posted.
    enabled: bool = False
    # What the camera may be used for: "qr_identify" (a customer shows the app's loyalty QR
    # code) and/or "audience_count" (how many people look at a screen; no identity kept).
    purposes: tuple[str, ...] = ()
    # The store confirms the camera notice is displayed where the camera is.
    notice_posted: bool = False
    # /dev/videoN, an rtsp:// or http(s):// stream, or a video file.
    source: str = "/dev/video0"
    # qr_identify: the kiosk whose journey (content on it and its screens) a scanned code feeds.
    kiosk: str = ""
    # audience_count: the screen whose audience is counted.
    screen: str = ""
    # Frames analysed per second (the rest are dropped: a buffer of one frame).
    process_fps: float = field(default=5.0, metadata=_meta(min=0.2, max=60))
    # Counts under this are reported as "<k" (k-anonymity floor).
    k_anonymity: int = field(default=5, metadata=_meta(min=2, max=100))
    # The same QR code again within this is the same customer still holding up the phone.
    qr_repeat_s: float = field(default=10.0, metadata=_meta(min=0, max=3600))
    # No frame for this long: the camera is stalled and is reopened (backoff up to reopen_max_s).
    stall_timeout_s: float = field(default=5.0, metadata=_meta(min=0.5, max=600))
    reopen_max_s: float = field(default=30.0, metadata=_meta(min=1, max=3600))
    # The camera's threads run this much nicer than the daemon (0: as nice): on a busy core the
    # event loop goes first and frames are dropped, not touchpoints delayed.
    niceness: int = field(default=10, metadata=_meta(min=0, max=19))


@dataclass(frozen=True, slots=True)
class ScreenConfig:
    zone: str = ""


@dataclass(frozen=True, slots=True)
class TabletConfig:
    """An associate tablet (sales assist)."""

    zone: str = ""  # where it usually serves; a serve request may name another
    # A serving session with no request for this long ends: who it served is forgotten.
    session_idle_s: float = field(default=600.0, metadata=_meta(min=10, max=86400))


@dataclass(frozen=True, slots=True)
class AppConfig:
    """In-app moments: an opted-in customer's app seen in the store gets a message, pushed by
    the cloud (docs/cloud.md, "In-app messages")."""

    enabled: bool = True
    # A message that could not leave the box this soon after it was decided is dropped.
    ttl_s: float = field(default=120.0, metadata=_meta(min=5, max=86400))
    per_visit: int = field(default=1, metadata=_meta(min=0, max=20))
    per_day: int = field(default=2, metadata=_meta(min=0, max=50))
    # Not seen in the store for this long: the next sighting starts a new visit.
    visit_gap_s: float = field(default=3600.0, metadata=_meta(min=60, max=86400))
    # No messages in these local hours, "HH:MM-HH:MM" (may cross midnight); "" for none.
    quiet_hours: str = ""


@dataclass(frozen=True, slots=True)
class KioskConfig:
    zone: str = ""
    screens: tuple[str, ...] = ()
