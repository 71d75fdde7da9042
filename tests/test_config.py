"""Configuration: defaults, every problem named by key, and the check-config command."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.runtime.cli import main
from gateway.runtime.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    return caught.value.problems


def test_an_empty_file_runs_on_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.health.host == "127.0.0.1"
    assert config.supervisor.shutdown_timeout_s == 10.0
    assert config.store.id  # the host name, made topic-safe
    assert "/" not in config.store.id
    assert config.kiosks == {}


def test_config_objects_are_immutable(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    with pytest.raises(AttributeError):
        config.mqtt.port = 1  # type: ignore[misc]


def test_every_problem_is_reported_with_its_key_and_a_suggestion(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        [mqtt]
        hots = "broker"
        port = "1883"
        keepalive_s = 1
        [logging]
        format = "jsn"
        [kiosks.kiosk-1]
        screens = ["entrace-1"]
        [screens.entrance-1]
        [stor]
        id = "x"
        """,
    )
    assert problems == [
        "mqtt.hots: unknown key; did you mean 'host'?",
        "mqtt.port: found '1883' (string), expected an integer",
        "mqtt.keepalive_s: found 1, expected a value from 5 to 3600",
        "logging.format: found 'jsn' (string), expected 'auto' or 'json' or 'console';"
        " did you mean 'json'?",
        "stor: unknown key; did you mean 'store'?",
        "kiosks.kiosk-1.screens[0]: found 'entrace-1', expected a screen defined under"
        " [screens.<id>]; did you mean 'entrance-1'?",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[store]\nid = "store/1"', "store.id: found 'store/1', expected an id of"),
        ("[health]\nenabled = 1", "health.enabled: found 1 (integer), expected true or false"),
        ("mqtt = 3", "mqtt: found 3 (integer), expected a table"),
        ('[kiosks."bad id"]', "kiosks.bad id: not a valid id"),
        ('[mqtt]\npassword_file = "nope.txt"', "mqtt.username: found nothing"),
        ('[catalog]\nseed_file = "missing.json"', "catalog.seed_file: found"),
        ('[identity]\ntoken_public_key = "abc"', "identity.token_public_key: expected base64"),
        ("[mqtt]\nreconnect_min_s = 9\nreconnect_max_s = 2", "mqtt.reconnect_min_s: found 9"),
        ("[decision]\nonline_window_s = 3600", "decision.online_window_s: found 3600, expected at"),
    ],
)
def test_wrong_values_are_named_by_key(tmp_path: Path, text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in _problems(tmp_path, text)), expected


def test_broken_toml_says_where(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "[mqtt\nport = 1")
    assert problem.startswith("not valid TOML:")
    assert "line 1" in problem


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "seed.json").write_text("{}")
    config = load_config(_write(tmp_path, '[catalog]\nseed_file = "seed.json"'))
    assert config.catalog.seed_file == tmp_path / "seed.json"


def test_overrides_take_toml_values_or_bare_words(tmp_path: Path) -> None:
    path = _write(tmp_path, "[mqtt]\nport = 1883")
    config = load_config(
        path, {"mqtt.port": "1999", "store.id": "store-9", "health.enabled": "false"}
    )
    assert (config.mqtt.port, config.store.id, config.health.enabled) == (1999, "store-9", False)


def test_an_empty_override_unsets_an_optional_key(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    path = _write(tmp_path, '[decision]\nmodel_file = "m.onnx"')
    assert load_config(path).decision.model_file == tmp_path / "m.onnx"
    assert load_config(path, {"decision.model_file": ""}).decision.model_file is None


def test_the_documented_examples_are_valid() -> None:
    for name in ("store.toml", "demo.toml"):
        assert isinstance(load_config(REPO / "examples" / name), Config)


def test_examples_store_toml_documents_every_key() -> None:
    text = (REPO / "examples" / "store.toml").read_text()
    for section, cls in Config.__dataclass_fields__.items():
        if isinstance(cls.default_factory(), Mapping):  # type: ignore[misc]  # [lanes.<id>], ...
            assert f"[{section}." in text, section
            continue
        assert f"[{section}]" in text, section
        for key in cls.default_factory().__dataclass_fields__:  # type: ignore[misc]
            documented = f"{key} =" in text or f"[{section}.{key}." in text  # a key or a table
            assert documented, f"{section}.{key} is not documented in examples/store.toml"


def test_check_config_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, '[store]\nid = "s1"')
    assert main(["check-config", str(good)]) == 0
    assert "OK (store s1" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nport = 0\nhots = "x"\n')
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}: mqtt.port: found 0, expected a value from 1 to 65535",
        f"{bad}: mqtt.hots: unknown key; did you mean 'host'?",
    ]
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_check_config_refuses_a_list_of_brokers_in_cloud_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(tmp_path, '[cloud]\nenabled = true\nhost = "a:1,b:2"')
    assert main(["check-config", str(bad)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"{bad}: cloud.host: found 'a:1,b:2', expected one host name without a port (the port"
        ' is cloud.port); for the nodes of a cluster use cloud.brokers = ["host1:8883",'
        ' "host2:8883"]'
    )


@pytest.mark.parametrize(
    ("cloud", "expected"),
    [
        ('host = "cloud.example"\nport = 8884', [("cloud.example", 8884)]),  # as before
        ('host = "::1"', [("::1", 8883)]),  # an IPv6 address is not a host with a port
        (
            'brokers = ["n1.example:4222", "[fd00::2]:4223", "n3.example"]\nport = 8883',
            [("n1.example", 4222), ("fd00::2", 4223), ("n3.example", 8883)],
        ),
    ],
)
def test_cloud_brokers_or_a_single_host(
    tmp_path: Path, cloud: str, expected: list[tuple[str, int]]
) -> None:
    config = load_config(_write(tmp_path, f"[cloud]\nenabled = true\n{cloud}"))
    assert config.cloud.endpoints() == expected


@pytest.mark.parametrize(
    ("cloud", "expected"),
    [
        ('host = "a:1"', "cloud.host: found 'a:1', expected one host name without a port"),
        ('host = "a b"', "cloud.host: found 'a b', expected one host name"),
        ('host = "h"\nbrokers = ["a:1"]', "cloud.host, cloud.brokers: found both"),
        ('brokers = ["a:1,b:2"]', "cloud.brokers[0]: found 'a:1,b:2', expected host:port"),
        ('brokers = ["a:1", "b:0"]', "cloud.brokers[1]: found 'b:0', expected a port from 1"),
        ('brokers = ["a:b:1"]', "cloud.brokers[0]: found 'a:b:1', expected host:port"),
        ('brokers = "a:1,b:2"', "cloud.brokers: found 'a:1,b:2' (string), expected an array"),
        ("", "cloud.host: found nothing"),
    ],
)
def test_cloud_broker_addresses_are_checked(tmp_path: Path, cloud: str, expected: str) -> None:
    problems = _problems(tmp_path, f"[cloud]\nenabled = true\n{cloud}")
    assert any(p.startswith(expected) for p in problems), problems


def test_console_script_help_version_and_bad_config_exit_code(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "gateway"]
    version = subprocess.run([*exe, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("store-gateway ")
    helptext = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "check-config", "version"):
        assert command in helptext.stdout
    bad = _write(tmp_path, "[mqtt]\nport = -1")
    run = subprocess.run(
        [*exe, "run", "--config", str(bad)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 78  # EX_CONFIG: systemd does not restart-loop on it
    assert "mqtt.port" in run.stderr


def test_values_that_would_only_fail_at_run_time_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not hex\n")
    (tmp_path / "seed.json").write_text('{"offers": [{"id": "OFF-1"}]}')
    problems = _problems(
        tmp_path,
        """
[mqtt]
host = ""
reconnect_max_s = nan
[outbox]
max_mb = inf
[identity]
hash_key_file = "bad.key"
[catalog]
seed_file = "seed.json"
[ble]
enabled = true
nodes_topic = "espresense/#"
[ble.scanners.espresense-entrance]
zone = "entrance"
""",
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "ble.nodes_topic",
        "catalog.seed_file",
        "identity.hash_key_file",
        "mqtt.host",
        "mqtt.reconnect_max_s",
        "outbox.max_mb",
    ]
    assert any("expected a finite number" in p for p in problems)
    assert any("expected 64 hexadecimal characters" in p for p in problems)
    assert any("must contain ['title']" in p for p in problems)


@pytest.mark.parametrize(
    ("printer", "link"),
    [
        ('link = "serial:/dev/ttyUSB0"', "serial:/dev/ttyUSB0"),
        ('device = "/dev/ttyUSB0"', "serial:/dev/ttyUSB0"),  # the key from before `link`
        ('link = "tcp:10.0.0.21:9100"', "tcp:10.0.0.21:9100"),
        ('link = "tcp:printer-2.local"', "tcp:printer-2.local:9100"),
        ('link = "tcp:[fe80::1]:9101"', "tcp:fe80::1:9101"),
        ('link = "usb:/dev/usb/lp0"', "usb:/dev/usb/lp0"),
    ],
)
def test_a_printer_link_names_serial_tcp_or_usb(tmp_path: Path, printer: str, link: str) -> None:
    config = load_config(_write(tmp_path, f"[printers.p1]\n{printer}\n"))
    assert str(config.printers["p1"].effective_link()) == link


@pytest.mark.parametrize(
    ("printer", "expected"),
    [
        ("", "printers.p1.link: found nothing, expected where the printer is"),
        ('link = "/dev/ttyUSB0"', "printers.p1.link: found '/dev/ttyUSB0', expected \"serial:"),
        ('link = "lpt:/dev/lp0"', "printers.p1.link: found 'lpt:/dev/lp0', expected \"serial:"),
        ('link = "tcp:10.0.0.21:0"', "printers.p1.link: found 'tcp:10.0.0.21:0', expected tcp:"),
        ('link = "tcp:"', "printers.p1.link: found 'tcp:', expected tcp:host:port"),
        ('link = "usb:lp0"', "printers.p1.link: found 'usb:lp0', expected an absolute device"),
        (
            'link = "usb:/dev/usb/lp0"\ndevice = "/dev/ttyUSB0"',
            "printers.p1.link, device: found both link and device",
        ),
    ],
)
def test_a_wrong_printer_link_is_named_with_the_forms_it_can_take(
    tmp_path: Path, printer: str, expected: str
) -> None:
    problems = _problems(tmp_path, f"[printers.p1]\n{printer}\n")
    assert any(p.startswith(expected) for p in problems), problems
