"""The gateway's configuration: one TOML file parsed into frozen dataclasses.

Every problem is collected (not just the first), each naming the key path, what was found and
what is expected, so `store-gateway check-config` can print them all at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import hmac
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "STREAM_SCHEMES",
    "AppConfig",
    "BleConfig",
    "BleScannerConfig",
    "BudgetsConfig",
    "CameraConfig",
    "CatalogConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DecisionConfig",
    "HealthConfig",
    "IdentityConfig",
    "KioskConfig",
    "LaneConfig",
    "LoggingConfig",
    "MqttConfig",
    "OutboxConfig",
    "PrinterConfig",
    "PrinterLink",
    "ScreenConfig",
    "StoreConfig",
    "SupervisorConfig",
    "load_config",
    "parse_config",
    "parse_printer_link",
    "quiet_hours",
]

# Ids become MQTT topic levels, so they must not hold '/', '+', '#' or spaces.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ID_HINT = "1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"


def _default_store_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-.")
    return name or "store"


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere the FHS location.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/store-gateway").split(":")[0])


def _meta(
    *, min: float | None = None, max: float | None = None, pattern: bool = False
) -> dict[str, Any]:
    return {"min": min, "max": max, "id": pattern}


@dataclass(frozen=True, slots=True)
class StoreConfig:
    id: str = field(default_factory=_default_store_id, metadata=_meta(pattern=True))
    state_dir: Path = field(default_factory=_default_state_dir)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=_meta(min=1, max=65535))
    client_id: str = ""
    username: str = ""
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = field(default=30, metadata=_meta(min=5, max=3600))
    reconnect_min_s: float = field(default=0.5, metadata=_meta(min=0.05, max=60))
    reconnect_max_s: float = field(default=30.0, metadata=_meta(min=0.1, max=3600))
    # Messages that are not state (errors, events) kept while the broker is away.
    offline_queue: int = field(default=1000, metadata=_meta(min=0, max=1_000_000))
    # QoS 1 messages the broker may have in flight to the gateway, unacknowledged (MQTT 5
    # receive maximum): the gateway acknowledges a message once it has taken it (committed, or
    # refused with an answer), so this bounds its memory; the rest waits at the broker.
    receive_maximum: int = field(default=2000, metadata=_meta(min=10, max=65535))
    # A publish not acknowledged by the broker within this time means the link is broken,
    # whatever the socket says: reconnect.
    publish_timeout_s: float = field(default=10.0, metadata=_meta(min=1, max=300))
    # Seconds the broker keeps the gateway's session (subscriptions, messages that arrive
    # meanwhile) while it is away: a restart loses nothing that devices sent in between.
    session_expiry_s: int = field(default=3600, metadata=_meta(min=0, max=7 * 86400))

    def effective_client_id(self, store_id: str, secret: bytes) -> str:
        """The configured id, else one that a device cannot guess from the store id alone."""
        if self.client_id:
            return self.client_id
        tag = hmac.new(secret, b"mqtt-client-id", hashlib.sha256).hexdigest()[:12]
        return f"store-gateway-{store_id}-{tag}"


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    """Messages per second (sustained) and burst each device may send, by kind; beyond, a
    message is refused with a `busy` answer before it is even parsed (docs/mqtt.md)."""

    # A kiosk is used by one person at a time: an identification or a tap every half second,
    # sustained, is already a lot.
    kiosk_per_s: float = field(default=2.0, metadata=_meta(min=0.01, max=1e6))
    kiosk_burst: int = field(default=20, metadata=_meta(min=1, max=10_000_000))
    screen_per_s: float = field(default=10.0, metadata=_meta(min=0.01, max=1e6))
    screen_burst: int = field(default=50, metadata=_meta(min=1, max=10_000_000))
    tablet_per_s: float = field(default=20.0, metadata=_meta(min=0.01, max=1e6))
    tablet_burst: int = field(default=100, metadata=_meta(min=1, max=10_000_000))
    # A lane that was cut off from the gateway flushes what it kept: a large burst.
    pos_per_s: float = field(default=200.0, metadata=_meta(min=0.01, max=1e6))
    pos_burst: int = field(default=5000, metadata=_meta(min=1, max=10_000_000))
    # A BLE scanner node reports every phone it hears, about once a second each.
    node_per_s: float = field(default=500.0, metadata=_meta(min=0.01, max=1e6))
    node_burst: int = field(default=2000, metadata=_meta(min=1, max=10_000_000))


@dataclass(frozen=True, slots=True)
class HealthConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=9810, metadata=_meta(min=0, max=65535))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    shutdown_timeout_s: float = field(default=10.0, metadata=_meta(min=0.1, max=600))
    restart_min_s: float = field(default=0.5, metadata=_meta(min=0.01, max=600))
    restart_max_s: float = field(default=60.0, metadata=_meta(min=0.01, max=3600))


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    # Key for the keyed hashes of customer identifiers; shared chain-wide so consents synced
    # from the cloud match. Absent: a per-box key is generated in the state directory.
    hash_key_file: Path | None = None
    # Ed25519 public key (base64, 32 raw bytes) that signs the app's loyalty QR tokens.
    token_public_key: str = ""
    token_leeway_s: int = field(default=30, metadata=_meta(min=0, max=600))


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    # JSON file with offers and consents loaded at start (development and demo stores).
    seed_file: Path | None = None


@dataclass(frozen=True, slots=True)
class CloudConfig:
    # The chain's cloud broker (AWS IoT Core, EMQX, HiveMQ, NATS, ...): events up, bundles down.
    enabled: bool = False
    host: str = ""
    port: int = field(default=8883, metadata=_meta(min=1, max=65535))
    # A clustered broker: its nodes, "host:port" each ("[ipv6]:port"; a bare host takes
    # cloud.port), instead of cloud.host. The link starts at a random node (a chain's stores
    # spread over them) and moves to the next one when its node fails.
    brokers: tuple[str, ...] = ()
    # Empty: "{store.id}" (AWS IoT Core's habit: client id = thing name). It must stay the same
    # across restarts (persistent session) and differ from mqtt.client_id.
    client_id: str = ""
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    keepalive_s: int = field(default=60, metadata=_meta(min=5, max=3600))
    reconnect_min_s: float = field(default=1.0, metadata=_meta(min=0.05, max=600))
    # A cap of seconds, not minutes: the link is back within about one cap of the cloud's
    # return (scripts/bench.py fleet: 1,000 stores, p95 under 30 s, at most ~5 % in one second).
    reconnect_max_s: float = field(default=32.0, metadata=_meta(min=0.1, max=3600))
    # One MQTT message carries at most this many bytes (AWS IoT Core's limit is 128 KB).
    batch_max_bytes: int = field(default=128_000, metadata=_meta(min=1024, max=268435455))
    compress: bool = True
    # Batches awaiting the broker's acknowledgement at once.
    inflight: int = field(default=8, metadata=_meta(min=1, max=64))
    # Uplink bandwidth cap in bytes per second; 0: none.
    bandwidth_bytes_per_s: int = field(default=0, metadata=_meta(min=0, max=10**10))
    # Ed25519 public key (base64) that signs the cloud's bundles; empty: bundles are refused.
    bundle_public_key: str = ""
    # CA file for the HTTPS servers of bundle artifacts (models); absent: the system's CAs.
    artifact_ca_file: Path | None = None

    def effective_client_id(self, store_id: str) -> str:
        return self.client_id or store_id

    def endpoints(self) -> list[tuple[str, int]]:
        """The broker nodes to try, in order: cloud.brokers, or cloud.host and cloud.port."""
        if not self.brokers:
            return [(self.host, self.port)]
        return [_parse_endpoint(b, self.port) for b in self.brokers]


def _parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """ "host:port", "[ipv6]:port" or a bare host -> (host, port); ValueError says what is wrong."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or (not text.startswith("[") and ":" in host):
        host, port_text = text, ""  # no port, or a bare IPv6 address
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in ",;/[]" for c in host) or _has_port(host):
        raise ValueError("expected host:port, one broker per array item")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("expected a port from 1 to 65535 after the host")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    # Disk budget of events waiting for the cloud; above it the oldest telemetry is shed.
    # Transactions, rewards and consents are never shed.
    max_mb: float = field(default=512.0, metadata=_meta(min=1, max=1_000_000))
    # Free space to keep on the state directory's file system: under it the budget shrinks and
    # the oldest telemetry makes room, so transactions are accepted as long as possible. 0: off.
    min_free_mb: float = field(default=64.0, metadata=_meta(min=0, max=1_000_000))


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    # The model to serve until a model bundle installs {store.state_dir}/models/nba.onnx;
    # absent or refused: the rule-based policy serves.
    model_file: Path | None = None
    # Share of decisions that explore (epsilon-greedy): every eligible offer is then chosen
    # with a probability of at least exploration / (number of eligible offers), and the
    # propensity is logged, so the store's own log can train and evaluate the next model.
    exploration: float = field(default=0.2, metadata=_meta(min=0, max=1))
    # Learning on: the rules explore too when no model serves (the holdout and the switchback's
    # control arm never do); off: the rules pick deterministically (propensity 1).
    learning: bool = True
    # What a decision maximises: conversion, revenue (price after discount) or margin
    # (price x margin); the model's probability x the offer's value (issue 17).
    objective: Literal["conversion", "revenue", "margin"] = "conversion"
    # The promotion gate (issue 17): a model from a bundle serves in shadow until the box's own
    # log gives its off-policy estimate at least this effective sample size (0: no gate, it
    # serves at once), and is refused if worse than the serving policy's by more than
    # promotion_margin (a share of the serving policy's value); the last
    # promotion_window_days of the log are used.
    promotion_min_ess: float = field(default=200.0, metadata=_meta(min=0, max=1e9))
    promotion_margin: float = field(default=0.05, metadata=_meta(min=0, max=1))
    promotion_window_days: float = field(default=28.0, metadata=_meta(min=1, max=365))
    # Share of identified customers kept as a control group (hashed, stable everywhere).
    holdout_share: float = field(default=0.1, metadata=_meta(min=0, max=1))
    # Anonymous audiences: each screen alternates model / rules in slots of this length.
    switchback_slot_s: int = field(default=1800, metadata=_meta(min=60, max=86400 * 7))
    # A redemption, tap or "accepted" joins its decision within this window; later: reward 0.
    reward_window_s: int = field(default=7 * 86400, metadata=_meta(min=60, max=90 * 86400))
    # Frequency caps: the same offer to the same customer per day, on the same screen per hour.
    cap_customer_per_day: int = field(default=3, metadata=_meta(min=1, max=1000))
    cap_touchpoint_per_hour: int = field(default=30, metadata=_meta(min=1, max=100000))
    # Shadow mode: a new model scores beside the serving one (both logged) but does not act.
    shadow: bool = False
    # Recent decisions a new model must score sanely before it serves.
    replay_size: int = field(default=200, metadata=_meta(min=0, max=100000))


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


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    ble: BleConfig = field(default_factory=BleConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    app: AppConfig = field(default_factory=AppConfig)
    screens: Mapping[str, ScreenConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    kiosks: Mapping[str, KioskConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    printers: Mapping[str, PrinterConfig] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    lanes: Mapping[str, LaneConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    tablets: Mapping[str, TabletConfig] = field(default_factory=lambda: types.MappingProxyType({}))


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def load_config(path: Path, overrides: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a TOML file; `overrides` maps dotted keys to TOML values."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    for key, raw in (overrides or {}).items():
        _apply_override(data, key, raw, problems)
    if problems:
        raise ConfigError(str(path), problems)
    return parse_config(data, base_dir=path.parent, source=str(path))


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: str = "config") -> Config:
    """Validate parsed TOML data; relative paths are taken relative to `base_dir`."""
    problems: list[str] = []
    config = _build(Config, data, "", base_dir, problems)
    assert isinstance(config, Config)  # TOML's top level is always a table
    _check_references(config, problems)
    _check_files(config, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def _apply_override(data: dict[str, Any], key: str, raw: str, problems: list[str]) -> None:
    parts = key.split(".")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is taken as a string: --set store.id=store-42
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"--set {key}: '{part}' is not a table")
            return
        node = child
    node[parts[-1]] = value


def _describe(value: object) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, dict | list) else kind
    return f"{shown} ({kind})" if shown != kind else kind


def _build(tp: Any, value: Any, path: str, base_dir: Path, problems: list[str]) -> Any:  # noqa: PLR0911, PLR0912 - one branch per TOML type
    """Convert `value` to type `tp`, appending a problem (and returning None) when it can't."""
    origin = typing.get_origin(tp)
    where = path or "(top level)"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{where}: found {_describe(value)}, expected a table")
            return None
        return _build_dataclass(tp, value, path, base_dir, problems)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        # An empty string unsets an optional value: `--set decision.model_file=` means none.
        if value is None or value == "":
            return None
        return _build(inner, value, path, base_dir, problems)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        expected = " or ".join(repr(c) for c in choices)
        problems.append(f"{where}: found {_describe(value)}, expected {expected}{hint}")
        return None
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: found {_describe(value)}, expected an array of strings")
            return None
        return tuple(value)
    if origin is Mapping:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{where}: found {_describe(value)}, expected a table of tables")
            return None
        items = {}
        for name, item in value.items():
            if not _ID.match(name):
                problems.append(f"{path}.{name}: not a valid id, expected {_ID_HINT}")
            items[name] = _build(item_tp, item, f"{path}.{name}", base_dir, problems)
        return types.MappingProxyType(items)
    if tp is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: found {_describe(value)}, expected a file path string")
            return None
        return base_dir / value
    accepts, expected = _SCALARS[tp]
    if accepts(value):
        return float(value) if tp is float else value
    problems.append(f"{where}: found {_describe(value)}, expected {expected}")
    return None


# Scalar type -> (accepts the TOML value?, what to call it in an error). bool is not an int here.
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _build_dataclass(
    cls: type[Any], data: dict[str, Any], path: str, base_dir: Path, problems: list[str]
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            problems.append(f"{key_path}: unknown key{_did_you_mean(key, list(fields))}")
            continue
        built = _build(hints[key], value, key_path, base_dir, problems)
        if built is None:
            continue
        meta = fields[key].metadata
        if not _within_bounds(built, meta, key_path, problems):
            continue
        kwargs[key] = built
    return cls(**kwargs)


def _within_bounds(value: Any, meta: Mapping[str, Any], path: str, problems: list[str]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison
        problems.append(f"{path}: found {value!r}, expected a finite number")
        return False
    if isinstance(value, int | float) and (
        (low is not None and value < low) or (high is not None and value > high)
    ):
        problems.append(f"{path}: found {value!r}, expected a value from {low:g} to {high:g}")
        return False
    if meta.get("id") and not _ID.match(str(value)):
        problems.append(f"{path}: found {value!r}, expected an id of {_ID_HINT}")
        return False
    return True


def _check_ble(ble: BleConfig, problems: list[str]) -> None:
    if not ble.enabled:
        return
    if not ble.adapter and not ble.nodes_topic:
        problems.append("ble.adapter, ble.nodes_topic: found neither, expected a BLE source")
    levels = ble.nodes_topic.split("/")
    if ble.nodes_topic and (not all(levels) or any("+" in lv or "#" in lv for lv in levels)):
        problems.append(
            f"ble.nodes_topic: found {ble.nodes_topic!r}, expected a topic prefix such as"
            " 'espresense' (no wildcards, no empty levels)"
        )
    if not ble.scanners:
        problems.append('ble.scanners: found none, expected [ble.scanners.<id>] zone = "..."')
    for scanner_id, scanner in ble.scanners.items():
        if not scanner.zone:
            problems.append(f"ble.scanners.{scanner_id}.zone: found nothing, expected a zone name")
    if ble.switch_now_db < ble.switch_db:
        problems.append(
            f"ble.switch_now_db: found {ble.switch_now_db:g}, expected at least ble.switch_db"
            f" ({ble.switch_db:g})"
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_references(config: Config, problems: list[str]) -> None:
    if not config.mqtt.host.strip():
        problems.append("mqtt.host: found nothing, expected the store broker's host name")
    _check_ble(config.ble, problems)
    _check_camera(config, problems)
    _check_printing(config, problems)
    _check_kiosks_and_links(config, problems)
    _check_cloud_brokers(config.cloud, problems)
    if config.app.quiet_hours and quiet_hours(config.app.quiet_hours) is None:
        problems.append(
            f'app.quiet_hours: found {config.app.quiet_hours!r}, expected "HH:MM-HH:MM"'
            ' (e.g. "21:00-08:00") or ""'
        )


def quiet_hours(text: str) -> tuple[int, int] | None:
    """ "HH:MM-HH:MM" -> (start, end) in minutes of the day; None if malformed."""
    try:
        start, end = (t.strip() for t in text.split("-"))
        minutes = []
        for t in (start, end):
            hours, mins = t.split(":")
            if not (0 <= int(hours) < 24 and 0 <= int(mins) < 60 and len(mins) == 2):
                return None
            minutes.append(int(hours) * 60 + int(mins))
    except ValueError:
        return None
    return minutes[0], minutes[1]


def _check_camera(config: Config, problems: list[str]) -> None:
    camera = config.camera
    allowed = ("qr_identify", "audience_count")
    for i, purpose in enumerate(camera.purposes):
        if purpose not in allowed:
            problems.append(
                f"camera.purposes[{i}]: found {purpose!r}, expected one of {list(allowed)}"
                f"{_did_you_mean(purpose, list(allowed))}"
            )
    if not camera.enabled:
        return
    _check_camera_source(camera.source, problems)
    if not camera.purposes:
        problems.append(
            "camera.purposes: found none, expected the purposes the store enabled"
            ' ("qr_identify", "audience_count"): a camera is only on for a purpose'
        )
    if not camera.notice_posted:
        problems.append(
            "camera.notice_posted: found false, expected true: the store must confirm the"
            " camera notice is displayed before the camera is enabled"
        )
    if "qr_identify" in camera.purposes and camera.kiosk not in config.kiosks:
        problems.append(
            f"camera.kiosk: found {camera.kiosk!r}, expected a kiosk under [kiosks.<id>]"
            " (qr_identify feeds that kiosk's journey)"
        )
    if "audience_count" in camera.purposes and camera.screen not in config.screens:
        problems.append(
            f"camera.screen: found {camera.screen!r}, expected a screen under [screens.<id>]"
            " (audience_count counts that screen's audience)"
        )


STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})  # camera.source as a stream URL


def _check_camera_source(source: str, problems: list[str]) -> None:
    """A stream URL must name a host (and a numeric port); the message never repeats the URL,
    which may hold a password."""
    from urllib.parse import urlsplit

    scheme = urlsplit(source).scheme.lower()
    if scheme not in STREAM_SCHEMES:
        if not source:
            problems.append("camera.source: found nothing, expected a device, URL or file")
        return
    try:
        parts = urlsplit(source)
        _ = parts.port  # raises on a non-numeric or out-of-range port
        host = parts.hostname
    except ValueError:
        host = None
    if not host:
        problems.append(
            f"camera.source: a {scheme}:// URL without a valid host or port, expected"
            f" {scheme}://[user:password@]host[:port]/path"
        )


def _check_printing(config: Config, problems: list[str]) -> None:
    from gateway.escpos.profiles import load_profile

    for lane_id, lane in config.lanes.items():
        if lane.printer and lane.printer not in config.printers:
            hint = _did_you_mean(lane.printer, list(config.printers))
            problems.append(
                f"lanes.{lane_id}.printer: found {lane.printer!r}, expected a printer defined"
                f" under [printers.<id>]{hint}"
            )
    for printer_id, printer in config.printers.items():
        try:
            printer.effective_link()
        except ValueError as exc:
            key = "link, device" if printer.link and printer.device else "link"
            found = f"found {printer.link!r}, " if printer.link and not printer.device else ""
            problems.append(f"printers.{printer_id}.{key}: {found}{exc}")
        try:
            load_profile(printer.profile)  # a malformed profile file is refused here too
        except ValueError as exc:
            problems.append(f"printers.{printer_id}.profile: {exc}")


def _check_kiosks_and_links(config: Config, problems: list[str]) -> None:
    for kiosk_id, kiosk in config.kiosks.items():
        for i, screen in enumerate(kiosk.screens):
            if screen not in config.screens:
                hint = _did_you_mean(screen, list(config.screens))
                problems.append(
                    f"kiosks.{kiosk_id}.screens[{i}]: found {screen!r}, expected a screen"
                    f" defined under [screens.<id>]{hint}"
                )
    if config.supervisor.restart_min_s > config.supervisor.restart_max_s:
        problems.append(
            f"supervisor.restart_min_s: found {config.supervisor.restart_min_s:g}, expected at"
            f" most supervisor.restart_max_s ({config.supervisor.restart_max_s:g})"
        )
    for name in ("mqtt", "cloud"):
        section = getattr(config, name)
        if (section.cert_file is None) != (section.key_file is None):
            problems.append(
                f"{name}.cert_file, {name}.key_file: expected both (client certificate) or none"
            )
        if section.password_file is not None and not section.username:
            problems.append(
                f"{name}.username: found nothing, expected a user for {name}.password_file"
            )
        if section.reconnect_min_s > section.reconnect_max_s:
            problems.append(
                f"{name}.reconnect_min_s: found {section.reconnect_min_s:g}, expected at most"
                f" {name}.reconnect_max_s ({section.reconnect_max_s:g})"
            )


def _check_cloud_brokers(cloud: CloudConfig, problems: list[str]) -> None:
    several = 'for the nodes of a cluster use cloud.brokers = ["host1:8883", "host2:8883"]'
    host = cloud.host.strip()
    if host and (any(c.isspace() or c in ",;/" for c in host) or _has_port(host)):
        problems.append(
            f"cloud.host: found {host!r}, expected one host name without a port (the port is"
            f" cloud.port); {several}"
        )
    if host and cloud.brokers:
        problems.append("cloud.host, cloud.brokers: found both, expected one of them")
    if cloud.enabled and not host and not cloud.brokers:
        problems.append(
            f"cloud.host: found nothing, expected the cloud broker's host name; {several}"
        )
    for i, broker in enumerate(cloud.brokers):
        try:
            _parse_endpoint(broker, cloud.port)
        except ValueError as exc:
            problems.append(f"cloud.brokers[{i}]: found {broker!r}, {exc}")


def _has_port(host: str) -> bool:
    """ "name:1" has a port; a bare IPv6 address ("::1") does not."""
    import ipaddress

    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return True
    return False


def _check_files(config: Config, problems: list[str]) -> None:
    files = {
        "mqtt.password_file": config.mqtt.password_file,
        "mqtt.ca_file": config.mqtt.ca_file,
        "mqtt.cert_file": config.mqtt.cert_file,
        "mqtt.key_file": config.mqtt.key_file,
        "cloud.password_file": config.cloud.password_file,
        "cloud.ca_file": config.cloud.ca_file,
        "cloud.cert_file": config.cloud.cert_file,
        "cloud.key_file": config.cloud.key_file,
        "cloud.artifact_ca_file": config.cloud.artifact_ca_file,
        "identity.hash_key_file": config.identity.hash_key_file,
        "catalog.seed_file": config.catalog.seed_file,
        "decision.model_file": config.decision.model_file,
    }
    for key, file in files.items():
        if file is not None and not file.is_file():
            problems.append(f"{key}: found {str(file)!r}, expected an existing readable file")
    _check_contents(config, problems)
    from gateway.identity import parse_public_key

    keys = {
        "identity.token_public_key": config.identity.token_public_key,
        "cloud.bundle_public_key": config.cloud.bundle_public_key,
    }
    for key, text in keys.items():
        if text:
            try:
                parse_public_key(text)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")


def _check_contents(config: Config, problems: list[str]) -> None:
    """Files the daemon reads at start: a bad one is a config error now, not a crash loop."""
    from gateway.identity import load_or_create_hash_key
    from gateway.store import SeedError, load_seed

    key_file = config.identity.hash_key_file
    if key_file is not None and key_file.is_file():
        try:
            load_or_create_hash_key(key_file)  # exists: read only
        except (ValueError, OSError) as exc:
            problems.append(f"identity.hash_key_file: {exc}")
    seed = config.catalog.seed_file
    if seed is not None and seed.is_file():
        try:
            load_seed(seed, bytes(32))  # any key: this checks the file, nothing is kept
        except (SeedError, OSError) as exc:
            problems.append(f"catalog.seed_file: {exc}")
