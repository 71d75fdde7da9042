"""The moments of a visit: what a touchpoint saw, typed, with who it was (already resolved).

A moment is data: the decision takes it as it is, and its type says where the decision goes
(`content_topics`: a kiosk and its screens, one screen; or a printer: `CheckoutMoment`). A new
touchpoint is a new moment type here, and its intake beside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

from gateway.codecs.topics import Topics

__all__ = [
    "AppMoment",
    "CheckoutMoment",
    "KioskMoment",
    "Moment",
    "Publisher",
    "TabletMoment",
    "ZoneMoment",
]


class Publisher(Protocol):
    """Where content and answers go; the MQTT link implements it."""

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Send in posting order; delivery (QoS 1, kept across reconnects) is the publisher's."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Moment(ABC):
    channel: ClassVar[str]  # the decision's channel: kiosk, screen, receipt
    # Someone at a device waits for the answer (a kiosk, a lane, a tablet): it is decided
    # before any moment nobody waits for (a screen's signage, an in-app message to push).
    waited_for: ClassVar[bool] = True
    touchpoint: str  # the device the decision is for (a kiosk, a screen, a lane)
    customer_ref: str | None  # a keyed hash; the consent decides whether it is used
    request_id: str | None = None  # the device's request or event id, echoed in the answer
    received: float = 0.0  # monotonic: when the gateway took it in
    zone: str | None = None
    dwell_s: float = 0.0
    basket: tuple[str, ...] = ()  # categories in the customer's basket, when known

    @property
    @abstractmethod
    def name(self) -> str:
        """The moment's name in the decision log."""

    def request_topic(self, topics: Topics) -> str | None:
        """The topic of the device request that asked for it (its refusals name it); None
        when no device asked."""
        return None

    def content_topics(self, topics: Topics) -> tuple[str, ...]:
        """Where the decision's content is posted (retained); () for none."""
        return ()

    @property
    def screens(self) -> tuple[str, ...]:
        """Screens the content shows on: the screen-hold policy counts them as shown."""
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KioskMoment(Moment):
    """A customer identified (or not) at a kiosk: content on the kiosk and its screens."""

    channel: ClassVar[str] = "kiosk"
    nearby: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "kiosk_identify"

    def request_topic(self, topics: Topics) -> str | None:
        return topics.kiosk_identify(self.touchpoint)

    def content_topics(self, topics: Topics) -> tuple[str, ...]:
        return (topics.kiosk_content(self.touchpoint), *map(topics.screen_content, self.nearby))

    @property
    def screens(self) -> tuple[str, ...]:
        return self.nearby


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneMoment(Moment):
    """Someone entered or dwells in a zone: content on one of its screens (the touchpoint)."""

    channel: ClassVar[str] = "screen"
    waited_for: ClassVar[bool] = False
    kind: str  # enter, dwell

    @property
    def name(self) -> str:
        return f"zone_{self.kind}"

    def content_topics(self, topics: Topics) -> tuple[str, ...]:
        return (topics.screen_content(self.touchpoint),)

    @property
    def screens(self) -> tuple[str, ...]:
        return (self.touchpoint,)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutMoment(Moment):
    """A lane's total, committed: a coupon on the lane's printer. `request_id` is the total's
    event id, which the pending checkout is kept under until the decision settles it."""

    channel: ClassVar[str] = "receipt"
    zone: str | None = "checkout"
    printer: str
    coupon_valid_days: int
    total: float | None = None  # the lane's total, logged with the decision (revenue readout)

    @property
    def name(self) -> str:
        return "checkout"


@dataclass(frozen=True, slots=True, kw_only=True)
class TabletMoment(Moment):
    """An associate serves a customer: a sales-assist card on the tablet (not retained), with
    the top suggestions, each its own decision."""

    channel: ClassVar[str] = "tablet"
    session: str
    associate: str  # a keyed hash of the staff id
    asks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "tablet_serve"

    def request_topic(self, topics: Topics) -> str | None:
        return topics.tablet_serve(self.touchpoint)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppMoment(Moment):
    """An opted-in customer's app is in the store (a resolved rotating identifier, a QR check-in):
    an in-app message for the cloud to push, worthless after `ttl_s`."""

    channel: ClassVar[str] = "app"
    waited_for: ClassVar[bool] = False  # the cloud pushes it; a second here is nothing there
    trigger: str  # ble, qr
    ttl_s: float
    per_day: int

    @property
    def name(self) -> str:
        return "app_message"
