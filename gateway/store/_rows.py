"""The row types of the tables the features own (their SQL lives with them: the catalog and the
decision log in gateway/decision, the print queue in gateway/flows/printing.py, ...)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DECISION_COLUMNS", "OFFER_CHANNELS", "Consent", "Decision", "Offer", "PrintJobRow"]


OFFER_CHANNELS = ("kiosk", "screen", "receipt", "tablet", "app")  # an offer's channels by default


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    title: str
    body: str = ""
    category: str = ""
    discount_pct: float = 0.0
    channels: tuple[str, ...] = OFFER_CHANNELS
    segments: tuple[str, ...] = ()
    dayparts: tuple[str, ...] = ()
    priority: int = 0
    valid_from: float | None = None
    valid_to: float | None = None
    inventory: int | None = None  # None: not tracked
    price_band: str = "mid"  # low, mid, high
    margin: float = 0.0  # share of the price, 0..1
    price: float | None = None  # shelf price before the discount; None: unknown (issue 17)


@dataclass(frozen=True, slots=True)
class Consent:
    customer_ref: str
    personalisation: bool
    segment: str | None = None
    eid_key: bytes | None = None  # the app's BLE identity key, for rotating identifiers
    eid_k: int = 10  # the identifier rotates every 2**eid_k seconds
    app_messages: bool = True  # False: opted out of in-app messages (personalisation aside)


@dataclass(frozen=True, slots=True)
class PrintJobRow:
    id: str
    lane: str
    printer: str
    coupon_code: str
    body: bytes  # the coupon as JSON; rendered to ESC/POS for the printer's profile at send time
    copy: bool
    attempts: int


# The decisions table's columns in `Decision`'s order: the one list every query uses.
DECISION_COLUMNS = (
    "id, ts, moment, touchpoint, customer_ref, offer_id, policy, propensity, request_id,"
    " model_version, feature_hash, context"
)


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    ts: float
    moment: str
    touchpoint: str
    customer_ref: str | None
    offer_id: str | None
    policy: str
    propensity: float
    request_id: str | None
    model_version: str | None = None
    feature_hash: str | None = None
    context: str | None = None  # JSON: what the features were made of

    def joined_fields(self) -> dict[str, object]:
        """What an outcome event going up says of its decision: never the customer."""
        return {
            "offer_id": self.offer_id,
            "policy": self.policy,
            "propensity": self.propensity,
            "model_version": self.model_version,
            "touchpoint": self.touchpoint,
            "decided_at": self.ts,
        }
