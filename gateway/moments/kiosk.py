"""Kiosks: an identification (a card, a number, the app's QR code, or the kiosk's camera reading
one) becomes a moment for the kiosk and its screens. A refused identifier is answered on the
errors topic, and the customer still gets the anonymous content."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from gateway.codecs.identity import IdentityResolver
from gateway.codecs.payloads import PayloadError, decode_kiosk_identify, encode_error
from gateway.codecs.topics import Topics
from gateway.moments.moment import KioskMoment, Moment, Publisher
from gateway.runtime.clock import Clock
from gateway.runtime.config import KioskConfig

__all__ = ["Kiosks"]

log = structlog.get_logger("gateway.kiosk")


class Kiosks:
    def __init__(
        self,
        *,
        topics: Topics,
        kiosks: Mapping[str, KioskConfig],
        identity: IdentityResolver,
        publisher: Publisher,
        submit: Callable[[Moment], bool],
        clock: Clock,
        checked_in: Callable[[str, str | None], None] = lambda _ref, _zone: None,
    ) -> None:
        """checked_in(customer ref, zone): the app's QR code was shown (the app is here)."""
        self._topics = topics
        self._kiosks = kiosks
        self._identity = identity
        self._publisher = publisher
        self._submit = submit
        self._clock = clock
        self._checked_in = checked_in

    def on_identify(self, topic: str, payload: bytes) -> None:
        """Route handler: raises `PayloadError` for the link to answer."""
        kiosk_id = self._topics.device_id(topic, "kiosk")
        if kiosk_id is None:
            raise PayloadError("topic is not a kiosk topic")
        if kiosk_id not in self._kiosks:
            # The broker's ACL lets every device user write under its own id in any kind's tree;
            # only kiosks the store declared may identify customers.
            raise PayloadError(f"unknown kiosk {kiosk_id!r}: declare it under [kiosks.{kiosk_id}]")
        event = decode_kiosk_identify(kiosk_id, payload)
        if not self._take(kiosk_id, event.method, event.value, event.request_id):
            raise PayloadError("gateway overloaded, try again")

    def on_camera_qr(self, kiosk_id: str, token: str) -> None:
        """The kiosk's camera read an app QR code: the same path as a kiosk's qr_token."""
        if kiosk_id not in self._kiosks:
            log.warning("camera QR for an undeclared kiosk", kiosk=kiosk_id)
            return
        self._take(kiosk_id, "qr_token", token, None)

    def _take(self, kiosk_id: str, method: str, value: str, request_id: str | None) -> bool:
        """The raw value goes no further than this method."""
        received = self._clock.monotonic()
        ref, problem = self._identity.resolve(method, value)
        if problem is not None:
            topic = self._topics.kiosk_identify(kiosk_id)
            log.warning("identification refused", kiosk=kiosk_id, reason=problem)
            error = encode_error(topic, problem, self._clock.now(), request_id)
            self._publisher.post(self._topics.gateway_errors, error)
        kiosk = self._kiosks[kiosk_id]
        if method == "qr_token" and ref is not None:
            self._checked_in(ref, kiosk.zone or None)
        moment = KioskMoment(
            touchpoint=kiosk_id,
            customer_ref=ref,
            request_id=request_id,
            received=received,
            zone=kiosk.zone or None,
            nearby=kiosk.screens,
        )
        return self._submit(moment)
