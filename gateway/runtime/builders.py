"""The composition root's device-facing parts: printers, the camera, BLE presence, the console.

With `app` and `cli`, the only modules of `gateway` that import drivers (tests/test_architecture.py
checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from drivers.mqtt import MqttLink
from gateway.ble.espresense import NodeSource
from gateway.ble.keys import DeviceKeys
from gateway.ble.presence import ZoneEvent
from gateway.ble.scanners import ScannerStats
from gateway.ble.service import Presence
from gateway.escpos import Profile
from gateway.flows.camera import CameraPurposes
from gateway.flows.printing import PrintJournal
from gateway.moments import Kiosks
from gateway.runtime.clock import Clock
from gateway.runtime.config import Config
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Component
from gateway.store import AsyncStore
from gateway.sync.outbox import Outbox

__all__ = ["both", "build_camera", "build_presence", "build_printers"]

log = structlog.get_logger("gateway.app")


def build_printers(
    config: Config,
    printing: PrintJournal,
    profiles: Mapping[str, Profile],
    clock: Clock,
    metrics: Metrics,
) -> tuple[Component, ...]:
    """The print journal and one driver per configured printer; () without printers."""
    if not config.printers:
        return ()
    from drivers.escpos import EscposPrinter  # pyserial only when a printer is configured

    components: list[Component] = [printing]
    for printer_id, printer in config.printers.items():
        components.append(
            EscposPrinter(
                printer_id,
                printer.effective_link(),  # checked with the configuration
                profiles[printer_id],
                printing,
                clock,
                baud=printer.baud,
                status_timeout_s=printer.status_timeout_s,
                on_state=lambda pid, state: metrics.printer_state.labels(pid).state(state),
            )
        )
    return tuple(components)


def build_camera(
    config: Config, kiosks: Kiosks, clock: Clock, metrics: Metrics, outbox: Outbox
) -> tuple[Component, ...]:
    """The camera driver, only when the store enabled it: OpenCV is not even imported else."""
    camera = config.camera
    if not camera.enabled:
        return ()
    from drivers.camera import CameraSource

    purposes = CameraPurposes(
        camera, on_qr_token=kiosks.on_camera_qr, clock=clock, metrics=metrics, outbox=outbox
    )
    return (
        purposes,  # stopped after the camera: it reports the minute in progress
        CameraSource(
            camera.source,
            qr=purposes.qr,
            audience=purposes.counting,
            on_qr=purposes.on_qr,
            on_faces=purposes.on_faces,
            clock=clock,
            process_fps=camera.process_fps,
            stall_timeout_s=camera.stall_timeout_s,
            reopen_max_s=camera.reopen_max_s,
            niceness=camera.niceness,
        ),
    )


def both(
    first: Callable[[ZoneEvent], None], second: Callable[[ZoneEvent], None]
) -> Callable[[ZoneEvent], None]:
    def both(event: ZoneEvent) -> None:
        first(event)
        second(event)

    return both


def build_presence(
    config: Config,
    *,
    db: AsyncStore,
    link: MqttLink,
    clock: Clock,
    metrics: Metrics,
    hash_key: bytes,
    on_zone: Callable[[ZoneEvent], None],
    outbox: Outbox,
) -> tuple[Presence | None, Component | None]:
    """The presence component and the local radio's source, when BLE and a radio are on."""
    ble = config.ble
    if not ble.enabled:
        return None, None
    stats = ScannerStats()
    keys = DeviceKeys(hash_key)
    presence = Presence(
        ble,
        db=db,
        clock=clock,
        metrics=metrics,
        stats=stats,
        on_event=on_zone,
        outbox=outbox,
    )
    radio: Component | None = None
    if ble.nodes_topic:
        nodes = NodeSource(
            ble.nodes_topic, keys, stats, presence.on_sighting, clock, rooms=ble.scanners
        )
        link.route(
            nodes.device_filter,
            "ble_nodes",
            nodes.on_device,
            device_of=nodes.node_of,
            private_topics=True,
        )
        link.route(
            nodes.status_filter,
            "ble_node_status",
            nodes.on_status,
            device_of=nodes.node_of,
            retained=True,  # a node's online/offline is retained state (its will among them)
        )
    if ble.adapter:
        from drivers.ble.bleak_scanner import BleakSource  # bleak only when a radio is used

        radio = BleakSource(
            ble.adapter,
            keys,
            stats,
            presence.on_sighting,
            clock,
            passive=ble.passive,
            watchdog_s=ble.watchdog_s,
            resets_after=ble.resets_after,
        )
    return presence, radio
