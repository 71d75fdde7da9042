"""One logging pipeline: structlog and the libraries' stdlib loggers, JSON or console."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.runtime.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_library_logs_and_ours_come_out_as_the_same_json() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger("gateway.journey").info("customer identified", kiosk="kiosk-1")
    logging.getLogger("bleak.backends.bluezdbus").warning("adapter %s gone", "hci0")
    logging.getLogger("mqtt").info("Connection refused")
    ours, bleak, mqtt = _lines(out)
    assert (ours["component"], ours["event"], ours["kiosk"]) == (
        "journey",
        "customer identified",
        "kiosk-1",
    )
    assert (bleak["component"], bleak["event"], bleak["level"]) == (
        "ble",
        "adapter hci0 gone",
        "warning",
    )
    assert mqtt["component"] == "mqtt"
    assert all("timestamp" in line for line in (ours, bleak, mqtt))


def test_identifier_keys_are_redacted_as_a_last_defence() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger("gateway.x").info(
        "oops", value="4000000000001", token="SGW1.a.b", kiosk="k"
    )
    (line,) = _lines(out)
    assert line["value"] == line["token"] == "[redacted]"
    assert line["kiosk"] == "k"


def test_console_format_is_for_people_and_levels_filter() -> None:
    out = io.StringIO()
    configure_logging("console", "warning", out)
    structlog.get_logger("gateway.app").info("hidden")
    structlog.get_logger("gateway.app").warning("shown", store="s1")
    text = out.getvalue()
    assert "hidden" not in text
    assert "shown" in text
    assert "store=s1" in text
    assert not text.lstrip().startswith("{")


def test_bleak_never_logs_an_address_or_debug_lines() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", out)
    bleak = logging.getLogger("bleak.backends.bluezdbus.manager")
    bleak.debug("received D-Bus signal for /org/bluez/hci0/dev_F0_CA_FE_00_00_01")
    bleak.warning("device %s disconnected", "F0:CA:FE:00:00:01")
    bleak.warning("device %s gone", "f0-ca-fe-00-00-01")
    lines = _lines(out)
    assert [line["event"] for line in lines] == ["device <mac> disconnected", "device <mac> gone"]
    text = out.getvalue().lower()
    assert not any(form in text for form in ("ca:fe", "ca-fe", "ca_fe", "cafe00"))


def test_tracebacks_carry_no_local_variables() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)

    def handler(payload: bytes) -> None:
        mac = "f0:ca:fe:00:00:09"  # a local a careless handler might hold
        raise ValueError(f"bad payload of {len(payload)} bytes from a device {len(mac)}")

    try:
        handler(b'{"loyalty": "4000000000001"}')
    except ValueError:
        structlog.get_logger("gateway.test").exception("handler failed")
    text = out.getvalue()
    assert "ValueError" in text  # the traceback is there...
    assert "4000000000001" not in text  # ...without the frames' locals
    assert "f0:ca:fe" not in text
