"""`scripts/bench.py console`: what the console costs the daemon (issue 18).

- `console_rss_mib`: idle RSS of the demo daemon with the console on minus with it off (health on
  in both: the HTTP stack, Starlette on uvicorn, is the health server's too), median of 2 each.
- `console_e2e_delta_ms`: e2e p99 (kiosk identify -> content, 200/s) with five browsers' event
  streams open (the screens page, re-rendered twice a second each) minus without; the runs
  without are before and after, averaged. `console_off_e2e_p99_ms`: the same with the console
  off, for scale.
- `console_idle_cpu_pct`, `console_streams_cpu_pct`: the idle daemon's CPU (% of one core)
  without, then with, the five streams open.
- `console_page_ms`: p99 of a page's GET on loopback with a session (every page in turn): the
  server's rendering plus one loopback HTTP round trip, an upper bound of the server-side time.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_figures import percentile as _percentile  # noqa: E402 - beside this file

from gateway.console.accounts import Accounts  # noqa: E402
from simulators.broker import Mosquitto, free_port  # noqa: E402
from simulators.daemon import GatewayProcess, cpu_s, rss_mib, settings  # noqa: E402

__all__ = ["bench_console"]

DEMO = REPO / "examples" / "demo.toml"
PASSWORD = "bench password 1"  # noqa: S105 - a throwaway account of the run
STREAMS = 5
PAGES = ("overview", "floor", "devices", "printers", "camera")
_NO_KIOSK_BUDGET = {"budgets.kiosk_per_s": "1000000", "budgets.kiosk_burst": "1000000"}

Latency = Callable[[int, float, int], Awaitable[list[float]]]


def _gateway(work: Path, broker: int, console: bool) -> tuple[GatewayProcess, int]:
    port = free_port()
    users = work / "console-users.json"
    if console:
        Accounts(users).add("bench", "viewer", PASSWORD)
    base = settings(store_port=broker, state_dir=work / "state", logging__level="warning")
    overrides: Mapping[str, str] = (
        base
        | _NO_KIOSK_BUDGET
        | {
            "health.enabled": "true",
            "health.port": str(free_port()),
            "console.enabled": "true" if console else "false",
            "console.port": str(port),
            "console.users_file": str(users),
        }
    )
    return GatewayProcess(DEMO, work, overrides=overrides), port


def _login(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = f"name=bench&password={PASSWORD.replace(' ', '+')}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/login", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        cookie = response.headers["Set-Cookie"]
        return str(cookie.split(";", 1)[0])
    finally:
        connection.close()


def _page_times(port: int, cookie: str, rounds: int) -> list[float]:
    times = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.connect()
    # As a browser does: else the client's Nagle holds each request ~40 ms for an ACK.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(rounds):
            for page in PAGES:
                started = time.perf_counter()
                connection.request("GET", f"/{page}", headers={"Cookie": cookie})
                response = connection.getresponse()
                response.read()
                times.append((time.perf_counter() - started) * 1000)
                assert response.status == 200, response.status
    finally:
        connection.close()
    return times


async def _stream(port: int, cookie: str, stop: asyncio.Event) -> int:
    """One browser's event stream on the screens page, read until `stop`; bytes read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /stream/devices HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    await writer.drain()
    read = 0
    try:
        while not stop.is_set():
            try:
                async with asyncio.timeout(0.5):
                    read += len(await reader.read(65536))
            except TimeoutError:
                continue
    finally:
        writer.close()
    return read


async def _with_streams(port: int, cookie: str, measure: Awaitable[list[float]]) -> list[float]:
    stop = asyncio.Event()
    readers = [asyncio.create_task(_stream(port, cookie, stop)) for _ in range(STREAMS)]
    await asyncio.sleep(1.0)  # each has had its first rendering
    try:
        return await measure
    finally:
        stop.set()
        read = await asyncio.gather(*readers)
        assert all(read), "a stream got nothing"


async def _stream_cpu(
    pid: int, port: int, cookie: str, seconds: float = 5.0
) -> tuple[float, float]:
    """The daemon's CPU (% of one core) idle, then with the five streams open: a figure the
    machine's load disturbs less than a latency's tail."""

    async def cpu_pct() -> float:
        before, started = cpu_s(pid), time.monotonic()
        await asyncio.sleep(seconds)
        return (cpu_s(pid) - before) / (time.monotonic() - started) * 100

    idle = await cpu_pct()
    streaming = await _with_streams(port, cookie, _as_list(cpu_pct()))
    return idle, streaming[0]


async def _as_list(value: Awaitable[float]) -> list[float]:
    return [await value]


def _idle_rss(work: Path) -> tuple[float, float]:
    """Median idle RSS of the daemon with the console off, and on (2 runs each)."""
    rss: dict[bool, list[float]] = {False: [], True: []}
    for run in range(2):
        for console in (False, True):
            with Mosquitto(work / f"b-{run}-{console}") as broker:
                gw, _ = _gateway(work / f"idle-{run}-{console}", broker.port, console)
                gw.start()
                try:
                    gw.wait_ready()
                    time.sleep(2.0)
                    rss[console].append(rss_mib(gw.pid))
                finally:
                    gw.stop()
    return statistics.median(rss[False]), statistics.median(rss[True])


def bench_console(quick: bool, latency: Latency) -> dict[str, float]:
    rate, count = 200.0, (600 if quick else 3000)
    figures: dict[str, float] = {"console_streams": STREAMS, "console_e2e_requests": count}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        work = Path(tmp)
        figures["console_off_rss_mib"], figures["console_on_rss_mib"] = _idle_rss(work)
        figures["console_rss_mib"] = figures["console_on_rss_mib"] - figures["console_off_rss_mib"]

        with Mosquitto(work / "off-broker") as broker:
            gw, _ = _gateway(work / "off", broker.port, console=False)
            gw.start()
            try:
                gw.wait_ready()
                time.sleep(1.0)
                off = asyncio.run(latency(broker.port, rate, count))
            finally:
                gw.stop()
        with Mosquitto(work / "broker") as broker:
            gw, port = _gateway(work / "e2e", broker.port, console=True)
            gw.start()
            try:
                gw.wait_ready()
                time.sleep(1.0)
                cookie = _login(port)
                pages = _page_times(port, cookie, 20 if quick else 100)
                idle, streaming_cpu = asyncio.run(_stream_cpu(gw.pid, port, cookie))
                before = asyncio.run(latency(broker.port, rate, count))
                streaming = asyncio.run(
                    _with_streams(port, cookie, latency(broker.port, rate, count))
                )
                after = asyncio.run(latency(broker.port, rate, count))
                figures["console_streaming_rss_mib"] = rss_mib(gw.pid)
            finally:
                gw.stop()
    without = (_percentile(before, 99) + _percentile(after, 99)) / 2
    figures["console_idle_cpu_pct"] = idle
    figures["console_streams_cpu_pct"] = streaming_cpu
    figures["console_page_ms"] = _percentile(pages, 99)
    figures["console_page_p50_ms"] = _percentile(pages, 50)
    figures["console_e2e_p99_without_ms"] = without
    figures["console_e2e_p99_streaming_ms"] = _percentile(streaming, 99)
    figures["console_e2e_delta_ms"] = figures["console_e2e_p99_streaming_ms"] - without
    figures["console_e2e_p99_before_ms"] = _percentile(before, 99)
    figures["console_e2e_p99_after_ms"] = _percentile(after, 99)
    figures["console_off_e2e_p99_ms"] = _percentile(off, 99)
    return figures
