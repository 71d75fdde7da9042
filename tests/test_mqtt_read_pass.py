"""The store broker's link never holds the event loop for a whole read (issue 14): a pass over
what one read brought gives the loop a turn after a few milliseconds, and reads on after it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import paho.mqtt.client as paho

from drivers.mqtt import MqttLink
from gateway.codecs.topics import Topics
from gateway.runtime.clock import SystemClock
from gateway.runtime.config import MqttConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle, State
from simulators.broker import Mosquitto

BURST = 300


def _publish_burst(port: int) -> None:
    """Another process's burst, published while the gateway's loop is busy elsewhere."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="burst")
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish("test/burst", f"{n:04d}".encode(), qos=0) for n in range(BURST)]
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


async def test_a_burst_read_at_once_lets_the_loop_run_between_messages(broker: Mosquitto) -> None:
    handled: list[int] = []
    seen_by_the_loop: list[int] = []
    ready, all_handled = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_message(_topic: str, payload: bytes) -> None:
        if not handled:
            # Something else the loop has to do, due as soon as this message is handled.
            loop.call_soon(lambda: seen_by_the_loop.append(len(handled)))
        handled.append(int(payload))
        if len(handled) == BURST:
            all_handled.set()
        time.sleep(0.001)  # a message's work (presence, a decision): 1 ms here

    def report(_name: str, state: State, _detail: str) -> None:
        if state == State.READY:
            ready.set()

    link = MqttLink(
        MqttConfig(host="127.0.0.1", port=broker.port),
        Topics("test-store"),
        session_source=lambda: asyncio.sleep(0, result=1),
        metrics=Metrics(),
        clock=SystemClock(),
    )
    link.route("test/#", "test", on_message, device_of=lambda _topic: None)
    running = asyncio.create_task(link.run(Handle("mqtt", report)))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        # The whole burst reaches the gateway's socket while its loop is blocked: its next read
        # takes it all at once (the link reads 64 KiB).
        publisher = threading.Thread(target=_publish_burst, args=(broker.port,))
        publisher.start()
        publisher.join()
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is kept busy on purpose
        async with asyncio.timeout(10):
            await all_handled.wait()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert handled == list(range(BURST))  # all of it, in order
    # The loop ran its other work a few messages into the burst (4 ms of them), not after it.
    assert seen_by_the_loop, "the loop's callback never ran"
    assert seen_by_the_loop[0] < 20, seen_by_the_loop
