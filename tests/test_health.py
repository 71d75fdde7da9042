"""/healthz and /metrics over real HTTP on loopback, from a running daemon."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import aiomqtt
import pytest

from gateway.codecs.ids import uuid7
from gateway.runtime.health import listen
from simulators.broker import Mosquitto, free_port
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e


async def _get(port: int, path: str, raw: bytes | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    writer.write(raw or request.encode())
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
        "mqtt_nodes",  # the scanner nodes' own connection (mqtt.nodes_connection)
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
    assert report["degraded"] == []
    broker.stop()
    report = await _wait_status(port, "unavailable")
    mqtt = report["components"]["mqtt"]  # type: ignore[index]
    assert mqtt["state"] == "degraded"
    assert "unreachable" in mqtt["detail"]
    async with asyncio.timeout(15):
        while report["degraded"] != ["mqtt", "mqtt_nodes"]:  # each connection finds out itself
            assert report["degraded"] == ["mqtt"]
            await asyncio.sleep(0.1)
            report = await _wait_status(port, "unavailable")
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
    post = b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert (await _get(port, "", raw=post))[0] == 405
    assert (await _get(port, "", raw=b"\x00\x01garbage\r\n\r\n"))[0] == 400  # no crash
    await _wait_status(port, "ok")  # still serving after the junk
    assert (await _get(port, "/healthz"))[0] == 200


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_stopped_broker_is_noticed_at_once_not_at_the_next_keepalive(
    broker: Mosquitto, gateway: GatewayFactory, how: str
) -> None:
    port = free_port()
    overrides = {"health.enabled": "true", "health.port": str(port), "mqtt.keepalive_s": "60"}
    gateway(overrides=overrides).wait_ready()
    await _wait_status(port, "ok")
    stopped = asyncio.get_running_loop().time()
    broker.stop() if how == "stop" else broker.kill()
    await _wait_status(port, "unavailable")
    noticed_s = asyncio.get_running_loop().time() - stopped
    # Well under the keepalive (60 s: a ping would have found it after up to 90 s).
    assert noticed_s < 5
    _, metrics = await _get(port, "/metrics")
    assert "gateway_mqtt_connected 0.0" in metrics.decode()


async def test_a_part_down_while_the_gateway_serves_is_200_and_named_degraded(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    port = free_port()
    away = free_port()  # the cloud broker: nobody listens there
    overrides = {
        "health.enabled": "true",
        "health.port": str(port),
        "cloud.enabled": "true",
        "cloud.host": "127.0.0.1",
        "cloud.port": str(away),
        "cloud.tls": "false",
        "cloud.reconnect_min_s": "0.05",
        "cloud.reconnect_max_s": "0.5",
    }
    gateway(overrides=overrides).wait_ready()
    report = await _wait_status(port, "degraded")
    async with asyncio.timeout(15):
        # Components past the store and the devices' link may still be starting (the journey,
        # the nodes' connection): until then they are named too.
        while report["degraded"] != ["cloud"]:
            await asyncio.sleep(0.1)
            report = await _wait_status(port, "degraded")
    assert report["components"]["cloud"]["state"] == "degraded"  # type: ignore[index]
    status, _ = await _get(port, "/healthz")
    assert status == 200


async def test_metrics_at_start_build_info_labelled_zeros_and_the_outbox_backlog(
    broker: Mosquitto, gateway: GatewayFactory
) -> None:
    port = free_port()
    overrides = {"health.enabled": "true", "health.port": str(port)}
    first = gateway(overrides=overrides)
    first.wait_ready()
    await _wait_status(port, "ok")
    # An undeclared kiosk: a refusal labelled by kind and reason; a screen's event: one
    # waiting for the cloud (there is none).
    event = {"id": uuid7(), "type": "screen.played", "priority": "telemetry", "data": {}}
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish("store/demo-store/v1/kiosk/nobody/identify", b"{}", qos=1)
        await client.publish(
            "store/demo-store/v1/screen/entrance-1/events", json.dumps(event), qos=1
        )
    refused = 'gateway_refusals_total{kind="kiosk",reason="undeclared"} 1.0'
    await _metrics_until(port, lambda t: refused in t)
    text = await _metrics_until(port, lambda t: _sample(t, "gateway_outbox_events") > 0)
    waiting = _sample(text, "gateway_outbox_events")
    first.stop()

    gateway(overrides=overrides).wait_ready()
    await _wait_status(port, "ok")
    text = (await _get(port, "/metrics"))[1].decode()
    assert 'gateway_build_info{python="' in text
    assert 'version="' in text
    # At zero before anything happened to them, so a rate() has its first point.
    assert 'gateway_refusals_total{kind="kiosk",reason="invalid"} 0.0' in text
    assert 'gateway_refusals_total{kind="pos",reason="busy"} 0.0' in text
    assert 'gateway_decisions_total{audience="personal",moment="kiosk_identify"} 0.0' in text
    assert 'gateway_decision_seconds_count{moment="checkout"} 0.0' in text  # by moment
    assert "\ngateway_store_wal_restarts 0.0" in text  # read from the running store
    assert 'gateway_mqtt_rejected_total{route="kiosk_identify"} 0.0' in text
    # What the first run left waiting, at once, not at the next commit.
    assert _sample(text, "gateway_outbox_events") >= waiting


async def _metrics_until(port: int, wanted: Callable[[str], bool]) -> str:
    async with asyncio.timeout(10):
        while True:
            text = (await _get(port, "/metrics"))[1].decode()
            if wanted(text):
                return text
            await asyncio.sleep(0.1)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP: with 0 (what
    socket.create_server gives), a kept-alive connection's responses waited ~40 ms each."""
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname()[:2])
        accepted, _ = sock.accept()
        assert accepted.proto == socket.IPPROTO_TCP  # what asyncio's _set_nodelay checks
        accepted.close()
        client.close()
    finally:
        sock.close()
