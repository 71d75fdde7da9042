"""The reconnect loop both links share: a long outage is a few log lines, each failure is in
health, and a connection that came back starts a new streak."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import pytest
import structlog
from structlog.testing import capture_logs

from drivers.mqtt import _reconnect
from drivers.mqtt._reconnect import reconnecting
from gateway.runtime.supervisor import Backoff, Handle, State
from simulators.broker import free_port


async def test_a_long_outage_is_summed_up_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reconnect, "SUMMARY_S", 0.3)
    port = free_port()  # nothing listens: every attempt is refused
    backoff = Backoff(0.005, 0.01, random.Random(1))
    states: list[tuple[State, str]] = []
    handle = Handle("cloud", lambda _, state, detail: states.append((state, detail)))
    attempts = 0

    async def session(host: str, port: int) -> None:
        nonlocal attempts
        attempts += 1
        _, writer = await asyncio.open_connection(host, port)
        try:
            backoff.reset()  # connected, as a link's session says once it is
        finally:
            writer.close()  # and the connection is lost at once
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    with capture_logs() as logs:
        task = asyncio.create_task(
            reconnecting(
                handle,
                what="cloud",
                endpoints=[("127.0.0.1", port)],
                backoff=backoff,
                session=session,
                lost=(OSError,),
                log=structlog.get_logger("test"),
            )
        )
        await asyncio.sleep(1.0)  # about a hundred refusals
        refused = attempts
        # A listening socket that never accepts: the kernel completes each connection, and no
        # transport exists on this side (an asyncio server's, made as a test ends, was once left
        # open for the collector to find during a later test).
        listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        await asyncio.sleep(0.1)  # connects, is lost, connects...
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()
    starts = [i for i, e in enumerate(logs) if e["event"] == "cloud unreachable"]
    first_streak = logs[: starts[1]]
    assert refused > 30
    # health hears every failure (the last attempt may have been cancelled before failing)
    assert attempts - 1 <= len(states) <= attempts
    assert all(s == State.DEGRADED and "unreachable" in d for s, d in states)
    # the streak of refusals: its first failure, then a summary every 0.3 s (about 3)
    assert first_streak[0]["event"] == "cloud unreachable"
    summaries = [e for e in first_streak if e["event"] == "cloud still unreachable"]
    assert 2 <= len(summaries) <= 4, first_streak
    assert sum(e["attempts"] for e in summaries) < refused
    assert len(first_streak) == 1 + len(summaries)
    # once connected, each loss is a new streak's first line again
    assert logs[len(first_streak)]["event"] == "cloud unreachable"
    assert logs[len(first_streak)]["error"] == "connection closed"
