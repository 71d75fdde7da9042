"""The gateway's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from gateway import __version__
from gateway.codecs.topics import SECTIONS

__all__ = ["MOMENTS", "PRINT_OUTCOMES", "REFUSALS", "Metrics"]

# The bounded label values, so each labelled counter is there at 0 from the start.
REFUSALS = ("invalid", "undeclared", "busy", "storage_full", "not_accepted", "internal")
REFUSING_KINDS = (*SECTIONS, "node", "other")
MOMENTS = ("kiosk_identify", "zone_enter", "zone_dwell", "checkout", "tablet_serve", "app_message")
AUDIENCES = ("personal", "anonymous")
PRINT_OUTCOMES = ("printed", "failed", "interrupted")

# Event-loop lag and collector pauses: fine where the targets are (a few ms), coarse beyond.
_PAUSE_BUCKETS = (  # fine up to 100 ms: a store's loop lag p99 is read from these (issue 14)
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 1.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:  # noqa: PLR0915 - one statement per metric, declared in one place
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.component_up = Gauge(
            "gateway_component_up",
            "1 when the component is ready, 0 otherwise",
            ["component"],
            registry=r,
        )
        self.component_restarts = Gauge(
            "gateway_component_restarts",
            "Restarts of a component since the gateway started",
            ["component"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the store broker", registry=r
        )
        self.mqtt_connects = Counter(
            "gateway_mqtt_connects", "Successful connections to the store broker", registry=r
        )
        self.mqtt_received = Counter(
            "gateway_mqtt_received", "Inbound MQTT messages by route", ["route"], registry=r
        )
        self.mqtt_rejected = Counter(
            "gateway_mqtt_rejected",
            "Inbound MQTT messages refused (answered on the errors topic, within a share)",
            ["route"],
            registry=r,
        )
        self.refusals = Counter(
            "gateway_refusals",
            "Inbound messages refused, by device kind and reason (both bounded)",
            ["kind", "reason"],
            registry=r,
        )
        for kind in REFUSING_KINDS:
            for reason in REFUSALS:
                self.refusals.labels(kind, reason)
        self.mqtt_busy = Counter(
            "gateway_mqtt_busy",
            "Inbound messages refused as over their device's budget ([budgets])",
            ["kind", "device"],
            registry=r,
        )
        self.mqtt_answers_suppressed = Counter(
            "gateway_mqtt_answers_suppressed",
            "Refusals not answered on the errors topic: the device had its share of answers",
            registry=r,
        )
        self.mqtt_dropped = Counter(
            "gateway_mqtt_dropped",
            "Outbound messages dropped because the offline queue was full",
            registry=r,
        )
        self.decisions = Counter(
            "gateway_decisions", "Decisions taken", ["moment", "audience"], registry=r
        )
        for moment in MOMENTS:
            for audience in AUDIENCES:
                self.decisions.labels(moment, audience)
        self.decision_seconds = Histogram(
            "gateway_decision_seconds",
            "Moment received -> content published, by moment (in-app messages wait last)",
            ["moment"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        for moment in MOMENTS:
            self.decision_seconds.labels(moment)

        # Issue 17: what the decision log is worth for learning (gateway.decision.policy.EssMeter).
        self.decision_ess_week = Gauge(
            "gateway_decision_projected_ess_week",
            "Effective sample size the last week's decisions give a new policy (projected to a"
            " week): what off-policy evaluation of the next model will have to go on",
            registry=r,
        )

        self.events_accepted = Counter(
            "gateway_events_accepted", "Events committed to the outbox", registry=r
        )
        self.events_shed = Counter(
            "gateway_events_shed",
            "Telemetry events dropped because the outbox reached its disk budget",
            registry=r,
        )
        self.outbox_events = Gauge(
            "gateway_outbox_events", "Events waiting for the cloud's acknowledgement", registry=r
        )
        self.outbox_bytes = Gauge(
            "gateway_outbox_bytes", "Bytes of events waiting for the cloud", registry=r
        )
        self.uplink_events = Counter(
            "gateway_uplink_events", "Events acknowledged by the cloud broker", registry=r
        )
        self.uplink_bytes = Counter(
            "gateway_uplink_bytes", "Bytes of event batches acknowledged by the cloud", registry=r
        )
        # The associates' KPIs (the playbook ties incentives to them), by a keyed hash of the
        # staff id: customers served, suggestions made and accepted, sales after a serve.
        self.associate_served = Counter(
            "gateway_associate_served",
            "Customers an associate started serving",
            ["associate"],
            registry=r,
        )
        self.associate_suggestions = Counter(
            "gateway_associate_suggestions",
            "Suggestions put on an associate's tablet",
            ["associate"],
            registry=r,
        )
        self.associate_assisted_sales = Counter(
            "gateway_associate_assisted_sales",
            "Checkouts of a customer the associate served within the reward window",
            ["associate"],
            registry=r,
        )
        self.clock_trusted = Gauge(
            "gateway_clock_trusted",
            "0 while the system clock is known to be wrong (behind what the box knows)",
            registry=r,
        )
        self.clock_synchronized = Gauge(
            "gateway_clock_synchronized",
            "1 when the kernel reports NTP synchronisation, 0 when not, -1 unknown",
            registry=r,
        )
        self.clock_behind_seconds = Gauge(
            "gateway_clock_behind_seconds",
            "How far the system clock reads behind what the box knows (0: not behind)",
            registry=r,
        )
        self.clock_jumps = Counter(
            "gateway_clock_jumps", "Jumps of the wall clock seen while running", registry=r
        )
        self.events_expired = Counter(
            "gateway_events_expired",
            "Events dropped unsent: past their expiry before the cloud could take them",
            ["type"],
            registry=r,
        )
        self.cloud_connected = Gauge(
            "gateway_cloud_connected", "1 while connected to the cloud broker", registry=r
        )
        self.bundles = Counter(
            "gateway_bundles", "Bundles from the cloud by outcome", ["kind", "outcome"], registry=r
        )

        self.ble_adverts_per_s = Gauge(
            "gateway_ble_adverts_per_s",
            "Adverts per second over the last 10 s, per scanner",
            ["scanner"],
            registry=r,
        )
        self.ble_seconds_since_last_advert = Gauge(
            "gateway_ble_seconds_since_last_advert",
            "Seconds since the scanner delivered an advert",
            ["scanner"],
            registry=r,
        )
        self.ble_scanner_restarts = Gauge(
            "gateway_ble_scanner_restarts",
            "Watchdog restarts of a scanner",
            ["scanner"],
            registry=r,
        )
        self.ble_adapter_resets = Gauge(
            "gateway_ble_adapter_resets",
            "Adapter power cycles through BlueZ after repeated silent restarts",
            ["scanner"],
            registry=r,
        )
        self.ble_devices = Gauge(
            "gateway_ble_devices", "Devices and customers the presence engine tracks", registry=r
        )
        self.ble_zone_occupancy = Gauge(
            "gateway_ble_zone_occupancy",
            "Visitors in a zone (entered, not yet left)",
            ["zone", "audience"],
            registry=r,
        )
        self.ble_zone_events = Counter(
            "gateway_ble_zone_events", "Zone enter / dwell / exit events", ["kind"], registry=r
        )
        self.ble_unresolved_eids = Gauge(
            "gateway_ble_unresolved_eids",
            "Rotating identifiers heard that match no opted-in customer (counted, not kept)",
            registry=r,
        )
        self.ble_dropped = Gauge(
            "gateway_ble_dropped",
            "Sightings dropped by the noise rules, by reason",
            ["reason"],
            registry=r,
        )

        self.printer_state = Enum(
            "gateway_printer_state",
            "What the receipt printer reports",
            ["printer"],
            states=[
                "starting",
                "ready",
                "paper_out",
                "cover_open",
                "offline",
                "unplugged",
                "error",
            ],
            registry=r,
        )
        self.print_jobs = Counter(
            "gateway_print_jobs", "Print jobs by outcome", ["printer", "outcome"], registry=r
        )

        self.camera_frames_persisted = Counter(
            "gateway_camera_frames_persisted",
            "Camera frames written anywhere by the gateway: no code path does; stays 0",
            registry=r,
        )
        self.camera_qr_codes = Counter(
            "gateway_camera_qr_codes", "QR codes read by the camera and passed on", registry=r
        )
        self.camera_audience = Gauge(
            "gateway_camera_audience_peak",
            "Peak viewers of the last full minute (0 when under the k-anonymity floor)",
            ["screen"],
            registry=r,
        )

        # How late the event loop runs a callback, and the collector's pauses (gateway.pauses).
        self.loop_lag = Histogram(
            "gateway_loop_lag_seconds",
            "How late a timer on the event loop fired (sampled every 25 ms)",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "gateway_loop_lag_max_seconds", "The longest event-loop lag since start", registry=r
        )
        self.gc_pause = Histogram(
            "gateway_gc_pause_seconds",
            "Garbage-collector pauses, by generation",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        # The experiment readout, refreshed once a day (gateway/decision/readout.py; issue 16).
        self.experiment_lift = Gauge(
            "gateway_experiment_lift",
            "Lift of personalised over holdout (or model over rules), bound: value, low, high"
            " of its 95 % interval",
            ["touchpoint", "comparison", "bound"],
            registry=r,
        )
        self.experiment_conversion = Gauge(
            "gateway_experiment_conversion",
            "Conversion per arm of the readout's comparisons (last 14 days)",
            ["touchpoint", "comparison", "arm"],
            registry=r,
        )
        self.experiment_revenue_per_visit = Gauge(
            "gateway_experiment_revenue_per_visit",
            "Revenue per identified visit per arm, channel: in_store, online, together",
            ["touchpoint", "channel", "arm"],
            registry=r,
        )
        self.experiment_off_policy = Gauge(
            "gateway_experiment_off_policy",
            "Off-policy estimate of the greedy model's conversion (ips, snips), and the rules'",
            ["touchpoint", "estimator"],
            registry=r,
        )
        Info("gateway_build", "The gateway's version and its Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )

        # What the process holds, read when scraped (the soak benchmark follows them over time).
        Gauge(
            "gateway_python_heap_blocks",
            "Memory blocks the Python allocator has handed out (sys.getallocatedblocks)",
            registry=r,
        ).set_function(sys.getallocatedblocks)
        Gauge(
            "gateway_sqlite_memory_bytes",
            "Memory SQLite holds in this process, page caches included (sqlite3_memory_used)",
            registry=r,
        ).set_function(_sqlite_memory_used)
        # Read from the store when scraped (the composition root sets its function); -1
        # where no store reports it.
        self.store_wal_restarts = Gauge(
            "gateway_store_wal_restarts",
            "WAL restarts tried since the store opened: each holds every write for its fsyncs",
            registry=r,
        )
        self.store_wal_restarts.set(-1)

    def start_at_zero(self, components: Iterable[str], printers: Iterable[str]) -> None:
        """The series named by the configuration, at 0 before anything happens to them."""
        for name in components:
            self.component_up.labels(name).set(0)
            self.component_restarts.labels(name).set(0)
        for printer in printers:
            self.printer_state.labels(printer).state("starting")
            for outcome in PRINT_OUTCOMES:
                self.print_jobs.labels(printer, outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@functools.cache
def _sqlite_library() -> ctypes.CDLL | None:
    # The library Python's sqlite3 module is linked with: its counters are this process's.
    name = ctypes.util.find_library("sqlite3")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _sqlite_memory_used() -> float:
    """-1 where the SQLite library can't be found (a statically linked Python)."""
    library = _sqlite_library()
    if library is None:
        return -1.0
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return float(library.sqlite3_memory_used())
