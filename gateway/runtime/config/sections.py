"""The configuration's sections for the gateway itself: the store, its links, the outbox,
the decision engine. Defaults are the shipped ones; `_meta` bounds what `loader` accepts."""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    # Scanner nodes' reports (ble.nodes_topic) on a connection of their own, as user
    # `{username}-nodes` with the same password: a crowd's thousands of reports a second then
    # never queue ahead of a kiosk's request on the one connection (issue 14).
    nodes_connection: bool = True

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
    # Outcomes from other channels (online purchases after a follow-up e-mail, app redemptions)
    # join their decision within this window; at least reward_window_s (issue 16).
    online_window_s: int = field(default=30 * 86400, metadata=_meta(min=60, max=365 * 86400))
    # The promotion gate (issue 17): a model from a bundle serves in shadow until the box's own
    # log gives its off-policy estimate at least this effective sample size (0: no gate, it
    # serves at once), and is refused if worse than the serving policy's by more than
    # promotion_margin (a share of the serving policy's value); the last
    # promotion_window_days of the log are used.
    promotion_min_ess: float = field(default=200.0, metadata=_meta(min=0, max=1e9))
    promotion_margin: float = field(default=0.05, metadata=_meta(min=0, max=1))
    promotion_window_days: float = field(default=28.0, metadata=_meta(min=1, max=365))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
