"""Associate tablets (sales assist): a serve request becomes a moment; the card goes back on the
tablet's own topic, never retained.

A serving session is the tablet's: it starts with the first request naming a session id, says
once how the customer identified (hashed here, at once), and ends with `.../close` or after
`tablets.<id>.session_idle_s` without a request. Only the session's customer ref and the
associate's keyed hash are held, in memory, while it lasts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gateway.codecs.identity import IdentityResolver, associate_ref
from gateway.codecs.payloads import PayloadError, decode, decode_tablet_serve
from gateway.codecs.topics import Topics, undeclared
from gateway.moments.moment import Moment, TabletMoment
from gateway.runtime.clock import Clock
from gateway.runtime.config import TabletConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle

__all__ = ["Tablets"]

log = structlog.get_logger("gateway.tablet")
_SWEEP_S = 10.0
_MAX_SESSIONS = 64  # per tablet: an associate serves one customer at a time, a few at most


@dataclass(slots=True)
class _Session:
    customer_ref: str | None
    associate: str
    touched: float  # monotonic


class Tablets:
    name = "tablets"
    requires: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        topics: Topics,
        tablets: Mapping[str, TabletConfig],
        identity: IdentityResolver,
        hash_key: bytes,
        submit: Callable[[Moment], bool],
        clock: Clock,
        metrics: Metrics,
        checked_in: Callable[[str, str | None], None] = lambda _ref, _zone: None,
        session_ended: Callable[[str, str], None] = lambda _tablet, _session: None,
    ) -> None:
        """checked_in(customer ref, zone): the app's QR code was scanned (the app is here).
        session_ended(tablet, session): an identified customer's serving session ended (closed
        or idle), for the follow-up request."""
        self._topics = topics
        self._tablets = tablets
        self._identity = identity
        self._hash_key = hash_key
        self._submit = submit
        self._clock = clock
        self._metrics = metrics
        self._checked_in = checked_in
        self._session_ended = session_ended
        self._sessions: dict[tuple[str, str], _Session] = {}  # (tablet, session id) -> session

    def _tablet(self, topic: str) -> str:
        tablet = self._topics.device_id(topic, "tablet")
        if tablet is None or tablet not in self._tablets:
            raise PayloadError(undeclared("tablet", tablet or "<id>"))
        return tablet

    def on_serve(self, topic: str, payload: bytes) -> None:
        """Route handler: the raw identifier goes no further than this method."""
        tablet = self._tablet(topic)
        serve = decode_tablet_serve(tablet, payload)
        now = self._clock.monotonic()
        key = (tablet, serve.session)
        session = self._sessions.get(key)
        if serve.method is not None and serve.value is not None:
            ref, problem = self._identity.resolve(serve.method, serve.value)
            if problem is not None:
                raise PayloadError(problem)
            if serve.method == "qr_token" and ref is not None:
                self._checked_in(ref, serve.zone or self._tablets[tablet].zone or None)
        else:
            ref = session.customer_ref if session is not None else None
        associate = associate_ref(self._hash_key, serve.associate)
        if session is None:
            if sum(1 for t, _ in self._sessions if t == tablet) >= _MAX_SESSIONS:
                raise PayloadError(f"too many open sessions on this tablet ({_MAX_SESSIONS})")
            self._metrics.associate_served.labels(associate).inc()
        self._sessions[key] = _Session(ref, associate, now)
        moment = TabletMoment(
            touchpoint=tablet,
            customer_ref=ref,
            request_id=serve.request_id,
            received=now,
            zone=serve.zone or self._tablets[tablet].zone or None,
            session=serve.session,
            associate=associate,
            asks=serve.asks,
            basket=serve.basket,
        )
        if not self._submit(moment):
            raise PayloadError("gateway overloaded, try again")

    def on_close(self, topic: str, payload: bytes) -> None:
        tablet = self._tablet(topic)
        session = decode("tablet-close", payload)["session"]
        ended = self._sessions.pop((tablet, session), None)  # an unknown one is no error
        if ended is not None and ended.customer_ref is not None:
            self._session_ended(tablet, session)

    def sweep(self) -> int:
        """End the sessions idle past their tablet's session_idle_s; how many ended."""
        now = self._clock.monotonic()
        idle = [
            key
            for key, s in self._sessions.items()
            if now - s.touched > self._tablets[key[0]].session_idle_s
        ]
        for key in idle:
            if self._sessions.pop(key).customer_ref is not None:
                self._session_ended(*key)
        return len(idle)

    async def run(self, handle: Handle) -> None:
        handle.ready(f"{len(self._tablets)} tablet(s)")
        while True:
            await asyncio.sleep(_SWEEP_S)
            if ended := self.sweep():
                log.info("serving sessions ended (idle)", sessions=ended)
