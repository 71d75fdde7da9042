"""/healthz and /metrics over real HTTP on loopback, from a running daemon."""

from __future__ import annotations

import asyncio
import json

import pytest

from simulators.broker import Mosquitto, free_port
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e


async def _get(port: int, path: str, raw: bytes | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw or f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, body


async def _wait_status(port: int, wanted: str) -> dict[str, object]:
    async with asyncio.timeout(15):
        while True:
            _, body = await _get(port, "/healthz")
            report: dict[str, object] = json.loads(body)
            if report["status"] == wanted:
                return report
            await asyncio.sleep(0.1)


async def test_health_reports_components_and_degrades_while_the_broker_is_away(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    port = free_port()
    gateway(overrides={"health.enabled": "true", "health.port": str(port)}).wait_ready()
    await _wait_status(port, "ok")  # the model may still be loading at READY; the rules serve
    status, body = await _get(port, "/healthz")
    report = json.loads(body)
    assert status == 200
    assert set(report["components"]) == {
        "store",
        "clock",  # "not verified" here: the kernel reports no NTP synchronisation
        "mqtt",
        "outbox",
        "model",
        "journey",
        "rewards",
        "tablets",  # the demo store declares tablet-1
        "presence",  # the demo store has BLE scanner nodes
        "readout",  # the daily experiment summary
        "health",
    }
    assert report["ble"]["scanners"] == {}  # no node has published yet
    broker.stop()
    report = await _wait_status(port, "degraded")
    mqtt = report["components"]["mqtt"]  # type: ignore[index]
    assert mqtt["state"] == "degraded"
    assert "unreachable" in mqtt["detail"]
    assert report["components"]["journey"]["state"] == "ready"  # type: ignore[index]
    status, _ = await _get(port, "/healthz")
    assert status == 503
    broker.start()
    await _wait_status(port, "ok")


async def test_metrics_are_prometheus_text_and_junk_requests_are_handled(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    port = free_port()
    gateway(overrides={"health.enabled": "true", "health.port": str(port)}).wait_ready()
    status, body = await _get(port, "/metrics")
    assert status == 200
    text = body.decode()
    assert 'gateway_component_up{component="mqtt"} 1.0' in text
    assert "gateway_mqtt_connected 1.0" in text
    assert (await _get(port, "/nope"))[0] == 404
    assert (await _get(port, "", raw=b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
    assert (await _get(port, "", raw=b"\x00\x01garbage\r\n\r\n"))[0] == 0  # dropped, no crash
    await _wait_status(port, "ok")  # still serving after the junk
    assert (await _get(port, "/healthz"))[0] == 200
