"""MQTT payload codec: bytes in, typed events out, and back; shared by drivers and simulators.

Every payload is checked against its JSON Schema in `gateway/schemas/` (the same files
`docs/mqtt.md` documents), so the schema is the contract and this module cannot drift from it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import fastjsonschema

from gateway.codecs.ids import uuid7

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "STORAGE_FULL",
    "Card",
    "Content",
    "ContentOffer",
    "GatewayStatus",
    "KioskIdentify",
    "PayloadError",
    "Suggestion",
    "TabletServe",
    "decode",
    "decode_card",
    "decode_content",
    "decode_kiosk_identify",
    "decode_status",
    "decode_tablet_serve",
    "encode_card",
    "encode_content",
    "encode_coupon_reply",
    "encode_error",
    "encode_kiosk_identify",
    "encode_status",
    "encode_tablet_serve",
    "offer_json",
    "session_floor",
    "validate",
]

MAX_PAYLOAD_BYTES = 16 * 1024
# The refusal a device hears when a commit found no room on the disk (docs/mqtt.md).
STORAGE_FULL = "storage full, retry later"
IdentifyMethod = Literal["loyalty", "qr_token", "phone", "email"]


class PayloadError(ValueError):
    """A payload that does not meet its schema; the message never echoes the payload's values."""


@cache
def _validator(name: str) -> Callable[[Any], Any]:
    text = resources.files("gateway.schemas").joinpath(f"{name}.schema.json").read_text()
    return fastjsonschema.compile(json.loads(text))


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema document `name` (for docs and tests)."""
    text = resources.files("gateway.schemas").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def _no_constant(name: str) -> Any:
    raise PayloadError(f"payload holds {name}, which is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError("payload holds a number too large for a double")
    return value


def _integer(text: str) -> int:
    # Python refuses over 4,300 digits with a ValueError, after quadratic work; no field needs 40.
    if len(text) > 40:
        raise PayloadError(f"payload holds an integer of {len(text)} digits")
    return int(text)


# One decoder for all device input (json.loads with hooks would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite, parse_int=_integer)
# \uD800-\uDFFF escapes: JSON lets a lone surrogate through, and it fails later when encoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode(name: str, payload: bytes, max_bytes: int | None = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse JSON and validate it against schema `name`, or raise `PayloadError`."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {max_bytes}")
    data = parse_json(payload)
    validate(name, data)
    assert isinstance(data, dict)
    return data


def parse_json(payload: bytes) -> Any:
    """Strict JSON from a device: UTF-8, finite numbers, no lone surrogates; else PayloadError.

    Everything it returns can be encoded again (to the store, the uplink, a log line).
    """
    try:
        # Decode first: json.loads would guess UTF-16/32 from the first bytes of a payload.
        text = payload.decode("utf-8")
        data = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):  # rare: escaped pairs (emoji) pass, lone halves not
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(
            "payload holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape)"
        ) from None
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"payload is not JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    except RecursionError:
        raise PayloadError("payload is nested too deeply") from None
    return data


def validate(name: str, data: object) -> None:
    """Check already-parsed data against schema `name`, or raise `PayloadError`."""
    try:
        _validator(name)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        if exc.rule == "additionalProperties":  # the message would name the key: never echoed
            raise PayloadError(
                f"{exc.name} holds a key the {name} schema does not define"
            ) from None
        raise PayloadError(f"{exc.message} ({name} schema)") from None


def _encode(name: str, data: Mapping[str, Any]) -> bytes:
    _validator(name)(data)  # our own output must meet the contract too; a failure is a bug
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class KioskIdentify:
    kiosk_id: str
    method: IdentifyMethod
    value: str
    request_id: str | None


def decode_kiosk_identify(kiosk_id: str, payload: bytes) -> KioskIdentify:
    data = decode("kiosk-identify", payload)
    return KioskIdentify(
        kiosk_id=kiosk_id, method=data["method"], value=data["value"], request_id=data.get("id")
    )


def encode_kiosk_identify(
    method: IdentifyMethod, value: str, request_id: str | None = None, ts: float | None = None
) -> bytes:
    data: dict[str, Any] = {"method": method, "value": value}
    if request_id is not None:
        data["id"] = request_id
    if ts is not None:
        data["ts"] = ts
    return _encode("kiosk-identify", data)


@dataclass(frozen=True, slots=True)
class ContentOffer:
    id: str
    title: str
    body: str
    category: str
    discount_pct: float


@dataclass(frozen=True, slots=True)
class Content:
    id: str
    ts: float
    audience: Literal["personal", "anonymous"]
    touchpoint: str
    request_id: str | None
    decision_id: str
    message: str
    offer: ContentOffer | None


def encode_content(content: Content) -> bytes:
    offer = content.offer
    return _encode(
        "content",
        {
            "schema": "content/1",
            "id": content.id,
            "ts": content.ts,
            "audience": content.audience,
            "touchpoint": content.touchpoint,
            "request_id": content.request_id,
            "decision_id": content.decision_id,
            "message": content.message,
            "offer": None if offer is None else offer_json(offer),
        },
    )


def offer_json(offer: ContentOffer) -> dict[str, Any]:
    return {
        "id": offer.id,
        "title": offer.title,
        "body": offer.body,
        "category": offer.category,
        "discount_pct": offer.discount_pct,
    }


def decode_content(payload: bytes) -> Content:
    data = decode("content", payload)
    offer = data["offer"]
    return Content(
        id=data["id"],
        ts=data["ts"],
        audience=data["audience"],
        touchpoint=data["touchpoint"],
        request_id=data.get("request_id"),
        decision_id=data["decision_id"],
        message=data["message"],
        offer=None if offer is None else ContentOffer(**offer),
    )


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    state: Literal["online", "offline"]
    session: int
    ts: float | None  # None in the last will: the broker sends it whenever it notices the loss
    version: str


# Session numbers are at least the seconds since this moment (2026-01-01T00:00:00Z): they keep
# growing across a lost database, and fit a device's 32-bit integer for 68 years.
SESSION_EPOCH = 1_767_225_600


def session_floor(now: float) -> int:
    """The lowest session number a connection made at `now` (wall clock) may carry."""
    return max(1, int(now) - SESSION_EPOCH)


def encode_status(status: GatewayStatus) -> bytes:
    data: dict[str, Any] = {
        "schema": "gateway-status/1",
        "state": status.state,
        "session": status.session,
        "version": status.version,
    }
    if status.ts is not None:
        data["ts"] = status.ts
    return _encode("gateway-status", data)


def decode_status(payload: bytes) -> GatewayStatus:
    data = decode("gateway-status", payload)
    return GatewayStatus(
        state=data["state"], session=data["session"], ts=data.get("ts"), version=data["version"]
    )


def encode_coupon_reply(code: str, status: str, request_id: str, message: str) -> bytes:
    """A lane's answer to a coupon redemption (pos/{lane}/coupon)."""
    return _encode(
        "coupon-reply",
        {
            "schema": "coupon-reply/1",
            "code": code,
            "status": status,
            "request_id": request_id,
            "message": message,
        },
    )


def encode_error(topic: str, error: str, ts: float, request_id: str | None = None) -> bytes:
    return _encode(
        "gateway-error",
        {
            "schema": "gateway-error/1",
            "id": uuid7(),
            "ts": ts,
            "topic": topic,
            "error": error,
            "request_id": request_id,
        },
    )


@dataclass(frozen=True, slots=True)
class TabletServe:
    tablet_id: str
    session: str
    associate: str  # the staff id as sent: hashed by the tablet intake, never kept
    method: IdentifyMethod | None
    value: str | None
    zone: str | None
    asks: tuple[str, ...]
    basket: tuple[str, ...]
    request_id: str | None


def decode_tablet_serve(tablet_id: str, payload: bytes) -> TabletServe:
    data = decode("tablet-serve", payload)
    identify = data.get("identify") or {}
    return TabletServe(
        tablet_id=tablet_id,
        session=data["session"],
        associate=data["associate"],
        method=identify.get("method"),
        value=identify.get("value"),
        zone=data.get("zone"),
        asks=tuple(dict.fromkeys(data.get("asks", ()))),
        basket=tuple(dict.fromkeys(data.get("basket", ()))),
        request_id=data.get("id"),
    )


def encode_tablet_serve(serve: TabletServe) -> bytes:
    data: dict[str, Any] = {"session": serve.session, "associate": serve.associate}
    if serve.request_id is not None:
        data["id"] = serve.request_id
    if serve.method is not None and serve.value is not None:
        data["identify"] = {"method": serve.method, "value": serve.value}
    if serve.zone is not None:
        data["zone"] = serve.zone
    if serve.asks:
        data["asks"] = list(serve.asks)
    if serve.basket:
        data["basket"] = list(serve.basket)
    return _encode("tablet-serve", data)


@dataclass(frozen=True, slots=True)
class Suggestion:
    rank: int
    decision_id: str
    propensity: float
    offer: ContentOffer


@dataclass(frozen=True, slots=True)
class Card:
    """A sales-assist card: who (only as much as the consent allows) and what to suggest."""

    id: str
    ts: float
    session: str
    request_id: str | None
    audience: Literal["personal", "anonymous"]
    segment: str | None
    categories: tuple[str, ...] | None  # None: no profile (anonymous)
    suggestions: tuple[Suggestion, ...]


def encode_card(card: Card) -> bytes:
    profile = None
    if card.categories is not None:
        profile = {"segment": card.segment, "categories": list(card.categories[:5])}
    return _encode(
        "card",
        {
            "schema": "card/1",
            "id": card.id,
            "ts": card.ts,
            "session": card.session,
            "request_id": card.request_id,
            "audience": card.audience,
            "profile": profile,
            "suggestions": [
                {
                    "rank": s.rank,
                    "decision_id": s.decision_id,
                    "propensity": s.propensity,
                    "offer": offer_json(s.offer),
                }
                for s in card.suggestions
            ],
        },
    )


def decode_card(payload: bytes) -> Card:
    data = decode("card", payload)
    profile = data["profile"]
    return Card(
        id=data["id"],
        ts=data["ts"],
        session=data["session"],
        request_id=data["request_id"],
        audience=data["audience"],
        segment=None if profile is None else profile["segment"],
        categories=None if profile is None else tuple(profile["categories"]),
        suggestions=tuple(
            Suggestion(s["rank"], s["decision_id"], s["propensity"], ContentOffer(**s["offer"]))
            for s in data["suggestions"]
        ),
    )
