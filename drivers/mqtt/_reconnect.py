"""One reconnect loop for both links (the store broker, the cloud): connect, serve until the
connection is lost, say why (health and one log line), wait a jittered backoff, try the next
address. What a connection does is the link's; how it comes back is this loop's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import structlog

from gateway.runtime.supervisor import Backoff, Handle

__all__ = ["Endpoint", "reconnecting"]

Endpoint = tuple[str, int]
SUMMARY_S = 60.0  # a failing streak is logged at its start, then once a minute at most


async def reconnecting(
    handle: Handle,
    *,
    what: str,
    endpoints: Sequence[Endpoint],
    backoff: Backoff,
    session: Callable[[str, int], Awaitable[None]],
    lost: tuple[type[Exception], ...],
    log: structlog.stdlib.BoundLogger,
    start: int = 0,
) -> NoReturn:
    """Run `session(host, port)` forever, from `endpoints[start]` on, one address after the other.

    A session returns or raises one of `lost` (alone or in an exception group: a task group's
    connection) when its connection is gone; anything else is a bug and propagates. A session
    calls `backoff.reset()` once it is connected. `what` names the peer in messages ("broker",
    "cloud"). Health says every failure; the log says the first of a streak (or a new error),
    then sums the streak up once a minute: a 2-minute outage is a few lines, not hundreds.
    """
    at = start
    loop = asyncio.get_running_loop()
    streak = 0  # failed attempts since the last connection
    said_at, said_error, said_streak = 0.0, "", 0
    while True:
        host, port = endpoints[at]
        where = f"{host}:{port}"
        error = "connection closed"
        try:
            await session(host, port)
        except lost as exc:
            error = str(exc)
        except ExceptionGroup as group:
            matched, rest = group.split(lost)
            if rest is not None or matched is None:
                raise
            error = "; ".join(dict.fromkeys(str(e) for e in _leaves(matched)))
        if backoff.attempt == 0:  # the session connected (or this is the first attempt)
            streak = 0
        streak += 1
        at = (at + 1) % len(endpoints)
        delay = backoff.next()
        following = f"{endpoints[at][0]}:{endpoints[at][1]}"
        then = f"{following} in" if len(endpoints) > 1 else "retry in"
        handle.degraded(f"{what} {where} unreachable ({error}); {then} {delay:.1f}s")
        extra = {"next": following} if len(endpoints) > 1 else {}
        now = loop.time()
        if streak == 1 or error != said_error:
            log.warning(
                f"{what} unreachable", broker=where, error=error, retry_s=round(delay, 2), **extra
            )
            said_at, said_error, said_streak = now, error, streak
        elif now - said_at >= SUMMARY_S:
            log.warning(
                f"{what} still unreachable",
                broker=where,
                error=error,
                attempts=streak - said_streak,
                over_s=round(now - said_at),
                retry_s=round(delay, 2),
                **extra,
            )
            said_at, said_streak = now, streak
        await asyncio.sleep(delay)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
