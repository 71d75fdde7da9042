"""What a configuration must hold across its sections: references between devices, files
that exist, a camera with its notice, brokers that parse."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.runtime.config.devices import BleConfig
from gateway.runtime.config.sections import CloudConfig, _did_you_mean, _has_port, _parse_endpoint

if TYPE_CHECKING:
    from gateway.runtime.config.loader import Config


def check(config: Config, problems: list[str]) -> None:
    """Add what is wrong across the sections of a configuration that built."""
    _check_references(config, problems)
    _check_files(config, problems)


def _check_references(config: Config, problems: list[str]) -> None:
    if not config.mqtt.host.strip():
        problems.append("mqtt.host: found nothing, expected the store broker's host name")
    _check_ble(config.ble, problems)
    _check_camera(config, problems)
    _check_printing(config, problems)
    _check_kiosks_and_links(config, problems)
    _check_cloud_brokers(config.cloud, problems)
    if config.decision.online_window_s < config.decision.reward_window_s:
        problems.append(
            f"decision.online_window_s: found {config.decision.online_window_s}, expected at"
            f" least decision.reward_window_s ({config.decision.reward_window_s}): online"
            " outcomes come later than in-store ones"
        )
    if config.app.quiet_hours and quiet_hours(config.app.quiet_hours) is None:
        problems.append(
            f'app.quiet_hours: found {config.app.quiet_hours!r}, expected "HH:MM-HH:MM"'
            ' (e.g. "21:00-08:00") or ""'
        )


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
    problems += config.console.problems()  # issue 18
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
    from gateway.codecs.identity import parse_public_key

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
    from gateway.codecs.identity import load_or_create_hash_key
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
