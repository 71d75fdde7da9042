"""What scripts/install.sh puts on a store box: the systemd unit, the service user and Mosquitto.

The unit is checked with systemd's own tools (`systemd-analyze verify` and `security`), and the
Mosquitto snippet and ACL are loaded into a real broker that kiosks and the gateway then talk to.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "store-gateway.service"
SYSUSERS = REPO / "systemd" / "store-gateway.sysusers"
MOSQUITTO_CONF = REPO / "systemd" / "mosquitto" / "store-gateway.conf"
MOSQUITTO_ACL = REPO / "systemd" / "mosquitto" / "store-gateway.acl"
INSTALL_SH = REPO / "scripts" / "install.sh"

MAX_EXPOSURE = 2.5
EXEC_START = "/opt/store-gateway/venv/bin/store-gateway run --config /etc/store-gateway/config.toml"
# systemd-analyze prints colours and pipes into a pager only for terminals; make sure of it.
QUIET_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}


def _tool(name: str, package: str) -> str:
    for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if found and os.access(found, os.X_OK):
            return found
    pytest.fail(f"{name} is not installed; scripts/test installs it (apt-get install -y {package})")


def _unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned (unit files repeat keys, so no configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _verifiable_copy(directory: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (the venv is not installed)."""
    true = next(p for p in ("/bin/true", "/usr/bin/true") if os.access(p, os.X_OK))
    text = UNIT.read_text(encoding="utf-8")
    rewritten, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={true}", text)
    assert count == 1, "expected exactly one ExecStart= line"
    copy = directory / UNIT.name
    copy.write_text(rewritten, encoding="utf-8")
    return copy


# --- systemd ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    unit = _verifiable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        timeout=50,
        check=False,
    )
    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if "store-gateway" in line]
    assert result.returncode == 0, output
    assert about_unit == [], "systemd-analyze verify warned about the unit:\n" + output


@pytest.mark.timeout(60)
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported for the unit."""
    analyze = _tool("systemd-analyze", "systemd")
    unit = _verifiable_copy(tmp_path)
    text = unit.read_text(encoding="utf-8")
    unit.write_text(text.replace("ProtectHome=yes", "ProtectHome=maybe\nProtectHomee=yes"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        timeout=50,
        check=False,
    )
    about_unit = [line for line in result.stderr.splitlines() if "store-gateway" in line]
    assert len(about_unit) >= 2, result.stderr


@pytest.mark.timeout(60)
def test_unit_security_exposure_is_low() -> None:
    analyze = _tool("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        timeout=50,
        check=False,
    )
    output = result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert found, f"no overall exposure level in the output:\n{output}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


@pytest.mark.timeout(60)
def test_unit_settings() -> None:
    settings = _unit_settings(UNIT.read_text(encoding="utf-8"))
    unit, service, install = settings["Unit"], settings["Service"], settings["Install"]

    def one(key: str) -> str:
        values = service.get(key)
        assert values, f"[Service] {key}= is missing"
        return values[-1]

    for dependency in ("mosquitto.service", "network-online.target"):
        assert any(dependency in v.split() for v in unit["Wants"]), dependency
        assert any(dependency in v.split() for v in unit["After"]), dependency
    assert install["WantedBy"] == ["multi-user.target"]

    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": EXEC_START,
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "78",  # EX_CONFIG: gateway/runtime/cli.py, a bad config.toml
        "TimeoutStopSec": "15",
        "User": "store-gateway",
        "Group": "store-gateway",
        "SupplementaryGroups": "dialout bluetooth",
        "StateDirectory": "store-gateway store-gateway/tmp",
        "StateDirectoryMode": "0750",
        "ConfigurationDirectory": "store-gateway",
        "UMask": "0077",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "TemporaryFileSystem": "/tmp:ro /var/tmp:ro",
        "Environment": "TMPDIR=/var/lib/store-gateway/tmp",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "PrivateUsers": "no",  # would unmap the dialout group of the serial printers
        "DevicePolicy": "closed",
        "RemoveIPC": "yes",
        "KeyringMode": "private",
    }
    wrong = {key: service.get(key) for key, value in expected.items() if one(key) != value}
    assert wrong == {}, f"unexpected [Service] values: {wrong}"
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert sorted(service["DeviceAllow"]) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]
    assert int(one("RestartSec")) > 0
    # The cloud broker is remote and DNS-named: no IP allow-list (see the unit's comment).
    assert "IPAddressDeny" not in service
    assert "PrivateNetwork" not in service
    # The daemon drains within 10 s by default; systemd must wait longer than that.
    assert int(one("TimeoutStopSec")) > 10


@pytest.mark.timeout(60)
def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers", "systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("dialout:x:20:\n", encoding="utf-8")
    for name in ("passwd", "shadow", "gshadow"):
        (root / "etc" / name).write_text("", encoding="utf-8")
    result = subprocess.run(
        [sysusers, f"--root={root}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passwd = (root / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("store-gateway:"))
    assert user[5] == "/var/lib/store-gateway"
    assert user[6].endswith("nologin")
    assert int(user[2]) < 1000, "expected a system uid"
    groups = (root / "etc" / "group").read_text(encoding="utf-8").splitlines()
    assert "dialout:x:20:store-gateway" in groups


@pytest.mark.timeout(60)
def test_native_libraries_allow_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute= forbids making a stack executable, which dlopen() does for a
    library marked with an executable stack (some onnxruntime releases were): importing it
    would then fail in the service only. None of the installed native libraries may need it."""
    roots = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    offenders = sorted(
        str(path.relative_to(root))
        for root in roots
        if root.is_dir()
        for path in root.rglob("*.so*")
        if path.is_file() and _needs_executable_stack(path)
    )
    assert offenders == [], f"libraries with an executable stack (see the unit): {offenders}"


def _needs_executable_stack(path: Path) -> bool:
    """True when the ELF file's PT_GNU_STACK header asks for PF_X (or is absent)."""
    pt_gnu_stack, pf_x = 0x6474E551, 0x1
    with path.open("rb") as elf:
        ident = elf.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF":
            return False
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = elf.read(48 if wide else 36)
        if wide:
            phoff, phentsize, phnum = struct.unpack_from(f"{order}16xQ14xHH", header)
        else:
            phoff, phentsize, phnum = struct.unpack_from(f"{order}12xI14xHH", header)
        loads = False
        for index in range(phnum):
            elf.seek(phoff + index * phentsize)
            entry = elf.read(phentsize)
            if wide:
                p_type, p_flags = struct.unpack_from(f"{order}II", entry)
            else:
                p_type, p_flags = struct.unpack_from(f"{order}I20xI", entry)
            loads = loads or p_type == 1
            if p_type == pt_gnu_stack:
                return bool(p_flags & pf_x)
        # No PT_GNU_STACK at all: glibc assumes an executable stack for loadable objects.
        return loads


@pytest.mark.timeout(60)
def test_install_script_is_valid_bash() -> None:
    bash = _tool("bash", "bash")
    syntax = subprocess.run(
        [bash, "-n", str(INSTALL_SH)], capture_output=True, text=True, timeout=30, check=False
    )
    assert syntax.returncode == 0, syntax.stderr
    shown = subprocess.run(
        [bash, str(INSTALL_SH), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "--no-start" in shown.stdout
    assert "--prefix" in shown.stdout
    refused = subprocess.run(
        [bash, str(INSTALL_SH), "--no-such-option"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0
    assert "unknown argument" in refused.stderr


# --- Mosquitto ----------------------------------------------------------------------------------

PASSWORDS = {
    "store-gateway": "gateway-secret",
    "store-gateway-nodes": "gateway-secret",
    "kiosk-1": "kiosk-1-secret",
    "kiosk-2": "kiosk-2-secret",
    "screen-1": "screen-1-secret",
    "espresense-entrance": "node-secret",
}
STORE = "store/s042/v1"


@dataclass(frozen=True)
class Broker:
    port: int
    log: Path

    def client_args(self, user: str) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-u", user, "-P", PASSWORDS[user]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _snippet_for_test(directory: Path, port: int) -> str:
    """The shipped snippet with its files moved to `directory`, the loopback listener on `port`
    and the TLS listener (the last section, needing certificates) left out."""
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    assert re.search(r"(?m)^listener 1883 127\.0\.0\.1$", text), "no loopback listener on 1883"
    tls = re.search(r"(?m)^listener 8883$", text)
    assert tls, "no TLS listener on 8883"
    after_tls = text[tls.end() :]
    assert "certfile /etc/mosquitto/certs/" in after_tls
    assert "keyfile /etc/mosquitto/certs/" in after_tls
    assert "listener" not in after_tls, "the TLS listener must be the last section"
    text = text[: tls.start()]
    text = re.sub(r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", text)
    return text.replace("/etc/mosquitto/", f"{directory}/")


@contextmanager
def _mosquitto(directory: Path) -> Iterator[Broker]:
    mosquitto = _tool("mosquitto", "mosquitto")
    mosquitto_passwd = _tool("mosquitto_passwd", "mosquitto")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(MOSQUITTO_ACL, directory / "store-gateway.acl")
    passwords = directory / "store-gateway.passwd"
    passwords.touch()
    for user, password in PASSWORDS.items():
        subprocess.run([mosquitto_passwd, "-b", str(passwords), user, password], check=True)
    (directory / "conf.d").mkdir(exist_ok=True)
    log = directory / "mosquitto.log"
    for _attempt in range(3):
        port = _free_port()
        (directory / "conf.d" / "store-gateway.conf").write_text(
            _snippet_for_test(directory, port), encoding="utf-8"
        )
        # Laid out like Debian's /etc/mosquitto/mosquitto.conf, which includes conf.d/.
        main = [
            f"persistence_location {directory}/",
            "log_dest stderr",
            "log_type all",
            f"include_dir {directory}/conf.d",
        ]
        if os.geteuid() == 0:
            main.insert(0, "user root")  # keep reading the private tmp dir after start
        (directory / "mosquitto.conf").write_text("\n".join(main) + "\n", encoding="utf-8")
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [mosquitto, "-c", str(directory / "mosquitto.conf")],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 10
            while process.poll() is None and not _listening(port):
                assert time.monotonic() < deadline, "mosquitto did not listen in 10 s"
                time.sleep(0.02)
            if process.poll() is not None:
                continue  # e.g. the port was taken in between: try another one
            yield Broker(port, log)
            return
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
    pytest.fail("mosquitto did not start with the shipped snippet:\n" + log.read_text())


@contextmanager
def _subscriber(broker: Broker, user: str, *filters: str) -> Iterator[list[str]]:
    """Subscribe as `user` (MQTT 5, QoS 1); yields the list that 'topic payload' lines arrive in."""
    received: list[str] = []
    subscribed = threading.Event()

    def on_connect(
        client: mqtt.Client,
        _userdata: object,
        _flags: ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic_filter, 1) for topic_filter in filters])

    def on_subscribe(
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        _reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        subscribed.set()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(f"{message.topic} {message.payload.decode()}")

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user}-test-sub", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, PASSWORDS[user])
    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        # Publish nothing before the broker has taken the subscription.
        if not subscribed.wait(10):
            pytest.fail(f"no SUBACK for {user}:\n{broker.log.read_text()}")
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def _wait_for(received: list[str], line: str) -> None:
    deadline = time.monotonic() + 10
    while line not in received and time.monotonic() < deadline:
        time.sleep(0.02)


def _publish(broker: Broker, user: str, topic: str, payload: str, client_id: str = "") -> int:
    """Publish with QoS 1 over MQTT 5 and return the PUBACK reason code (135: not authorised)."""
    command = [_tool("mosquitto_pub", "mosquitto-clients"), *broker.client_args(user)]
    command += ["-i", client_id or user, "-V", "mqttv5", "-q", "1", "-d"]
    command += ["-t", topic, "-m", payload]
    result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    found = re.search(r"received PUBACK \(Mid: \d+, RC:(\d+)\)", result.stdout + result.stderr)
    assert found, f"no PUBACK for {user} on {topic}:\n{result.stdout}{result.stderr}"
    return int(found.group(1))


@pytest.mark.timeout(60)
def test_mosquitto_acl_confines_a_kiosk_to_its_own_topics(tmp_path: Path) -> None:
    denied, granted = 135, 0
    with _mosquitto(tmp_path / "broker") as broker:
        with _subscriber(broker, "store-gateway", "store/#", "espresense/#") as gateway_sees:
            own = f"{STORE}/kiosk/kiosk-1/identify"
            other = f"{STORE}/kiosk/kiosk-2/identify"
            status = f"{STORE}/gateway/status"
            assert _publish(broker, "kiosk-1", own, "own-identify") == granted
            assert _publish(broker, "kiosk-1", other, "forged-identify") == denied
            # A client id is the client's choice: it does not open kiosk-2's topics.
            assert _publish(broker, "kiosk-1", other, "spoofed-id", client_id="kiosk-2") == denied
            assert _publish(broker, "kiosk-1", status, "forged-status") == denied
            assert _publish(broker, "kiosk-1", f"{STORE}/screen/screen-1/content", "x") == denied
            entrance = "espresense/devices/b/espresense-entrance"
            assert _publish(broker, "kiosk-1", entrance, "fake-presence") == denied
            assert _publish(broker, "screen-1", f"{STORE}/screen/screen-1/status", "up") == granted
            assert _publish(broker, "screen-1", f"{STORE}/screen/screen-1/content", "x") == denied
            node = "espresense-entrance"
            assert _publish(broker, node, f"espresense/devices/b/{node}", "1.5") == granted
            assert _publish(broker, node, "espresense/devices/b/elsewhere", "x") == denied
            # Last, from the kiosk: everything it sent before has been routed by now.
            assert _publish(broker, "kiosk-1", own, "sentinel") == granted
            _wait_for(gateway_sees, f"{own} sentinel")
        # One connection per user (client id = username): the gateway user's own publish
        # is made once its subscriber is gone, which it would otherwise replace.
        no_subscribers = 16  # MQTT 5: accepted, and nobody subscribed
        assert _publish(broker, "store-gateway", status, "online") in {granted, no_subscribers}
        assert gateway_sees == [
            f"{own} own-identify",
            f"{STORE}/screen/screen-1/status up",
            "espresense/devices/b/espresense-entrance 1.5",
            f"{own} sentinel",
        ]


@pytest.mark.timeout(60)
def test_mosquitto_acl_gives_the_nodes_connection_the_nodes_reports_only(tmp_path: Path) -> None:
    """The gateway's second user (mqtt.nodes_connection) reads the scanner nodes and answers
    them on gateway/errors; it can neither see nor post a device's request or content."""
    denied, granted = 135, 0
    with _mosquitto(tmp_path / "broker") as broker:
        with _subscriber(broker, "store-gateway-nodes", "store/#", "espresense/#") as seen:
            node = "espresense-entrance"
            assert _publish(broker, node, f"espresense/devices/b/{node}", "1.5") == granted
            assert _publish(broker, "kiosk-1", f"{STORE}/kiosk/kiosk-1/identify", "x") == granted
            # Last: everything before it has been routed by now.
            assert _publish(broker, node, f"espresense/rooms/{node}/status", "online") == granted
            _wait_for(seen, f"espresense/rooms/{node}/status online")
        nodes = "store-gateway-nodes"
        no_subscribers = 16  # MQTT 5: accepted, and nobody subscribed
        assert _publish(broker, nodes, f"{STORE}/gateway/errors", "{}") in {granted, no_subscribers}
        assert _publish(broker, nodes, f"{STORE}/screen/screen-1/content", "x") == denied
        assert _publish(broker, nodes, f"{STORE}/gateway/status", "online") == denied
    assert seen == [
        "espresense/devices/b/espresense-entrance 1.5",
        "espresense/rooms/espresense-entrance/status online",
    ]


@pytest.mark.timeout(60)
def test_mosquitto_acl_shows_a_kiosk_only_its_own_content(tmp_path: Path) -> None:
    with _mosquitto(tmp_path / "broker") as broker:
        status = f"{STORE}/gateway/status"
        mine, theirs = f"{STORE}/kiosk/kiosk-1/content", f"{STORE}/kiosk/kiosk-2/content"
        with _subscriber(broker, "kiosk-1", "store/#", "espresense/#") as kiosk_sees:
            assert _publish(broker, "store-gateway", theirs, "for-kiosk-2") == 0
            assert _publish(broker, "store-gateway", f"{STORE}/screen/screen-1/content", "s") == 0
            assert _publish(broker, "store-gateway", "espresense/rooms/entrance/set", "x") == 0
            # Every device reads the errors topic to learn why a request of its own was refused.
            assert _publish(broker, "store-gateway", f"{STORE}/gateway/errors", "refused") == 0
            assert _publish(broker, "store-gateway", mine, "for-kiosk-1") == 0
            assert _publish(broker, "store-gateway", status, "online") == 0
            _wait_for(kiosk_sees, f"{status} online")
        assert kiosk_sees == [
            f"{STORE}/gateway/errors refused",
            f"{mine} for-kiosk-1",
            f"{status} online",
        ]


@pytest.mark.timeout(60)
def test_mosquitto_refuses_anonymous_and_unknown_clients(tmp_path: Path) -> None:
    mosquitto_pub = _tool("mosquitto_pub", "mosquitto-clients")
    with _mosquitto(tmp_path / "broker") as broker:
        base = [mosquitto_pub, "-h", "127.0.0.1", "-p", str(broker.port), "-t", "x", "-m", "x"]
        for credentials in ([], ["-u", "kiosk-1", "-P", "wrong"], ["-u", "kiosk-9", "-P", "x"]):
            result = subprocess.run(
                [*base, *credentials], capture_output=True, text=True, timeout=20, check=False
            )
            assert result.returncode != 0, credentials
            assert "not authorised" in (result.stdout + result.stderr).lower(), result.stderr


@pytest.mark.timeout(90)
def test_a_device_cannot_take_over_the_gateways_client_id(tmp_path: Path) -> None:
    """kiosk-1 connecting again and again with the gateway's client id (here the old,
    predictable default) does not disconnect the gateway: the broker uses its username."""
    from simulators.daemon import GatewayProcess, settings

    mosquitto_pub = _tool("mosquitto_pub", "mosquitto-clients")
    with _mosquitto(tmp_path / "broker") as broker:
        secret = tmp_path / "mqtt.password"
        secret.write_text(PASSWORDS["store-gateway"])
        values = settings(
            store_port=broker.port,
            state_dir=tmp_path / "state",
            mqtt__username="store-gateway",
            mqtt__password_file=str(secret),
            mqtt__client_id="store-gateway-demo-store",
            decision__model_file="",
        )
        process = GatewayProcess(REPO / "examples" / "demo.toml", tmp_path, overrides=values)
        process.start()
        try:
            process.wait_ready()
            for _ in range(10):
                result = subprocess.run(
                    [
                        mosquitto_pub,
                        *broker.client_args("kiosk-1"),
                        "-i",
                        "store-gateway-demo-store",
                        "-t",
                        "store/demo-store/v1/kiosk/kiosk-1/identify",
                        "-m",
                        "x",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
                assert result.returncode == 0, result.stderr
            time.sleep(1.0)
            assert process.alive
        finally:
            process.stop()
    events = [line for line in process.log(None).splitlines() if '"logger": "drivers.mqtt"' in line]
    connected = [line for line in events if '"event": "connected"' in line]
    # Once each: the gateway's connection, and the scanner nodes' (mqtt.nodes_connection).
    assert sum('"session"' in line for line in connected) == 1, events
    assert sum('"link": "mqtt_nodes"' in line for line in connected) == 1, events
    assert not [line for line in events if "broker unreachable" in line]
