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
    "cloud").
    """
    at = start
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
        at = (at + 1) % len(endpoints)
        delay = backoff.next()
        following = f"{endpoints[at][0]}:{endpoints[at][1]}"
        then = f"{following} in" if len(endpoints) > 1 else "retry in"
        handle.degraded(f"{what} {where} unreachable ({error}); {then} {delay:.1f}s")
        extra = {"next": following} if len(endpoints) > 1 else {}
        log.warning(
            f"{what} unreachable", broker=where, error=error, retry_s=round(delay, 2), **extra
        )
        await asyncio.sleep(delay)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
