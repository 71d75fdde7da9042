"""The MQTT payload codec: bad bytes raise PayloadError and nothing else; output meets schemas."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs.payloads import (
    Content,
    ContentOffer,
    GatewayStatus,
    PayloadError,
    decode,
    decode_content,
    decode_kiosk_identify,
    decode_status,
    encode_content,
    encode_error,
    encode_kiosk_identify,
    encode_status,
)

SCHEMAS = ("kiosk-identify", "content", "gateway-status", "gateway-error", "seed")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_rejected_only_with_payload_error(data: bytes) -> None:
    for name in SCHEMAS:
        with contextlib.suppress(PayloadError):
            decode(name, data)


@given(json_values)
def test_arbitrary_json_is_rejected_only_with_payload_error(value: object) -> None:
    payload = json.dumps(value).encode()
    for name in SCHEMAS:
        with contextlib.suppress(PayloadError):
            decode(name, payload)


@given(
    st.sampled_from(["loyalty", "qr_token", "phone", "email"]),
    st.text(min_size=1, max_size=200),
    st.none() | st.text(min_size=1, max_size=64),
)
def test_identify_round_trips(method: str, value: str, request_id: str | None) -> None:
    payload = encode_kiosk_identify(method, value, request_id)  # type: ignore[arg-type]
    event = decode_kiosk_identify("kiosk-9", payload)
    assert (event.kiosk_id, event.method, event.value, event.request_id) == (
        "kiosk-9",
        method,
        value,
        request_id,
    )


def test_errors_say_what_is_wrong_without_echoing_values() -> None:
    secret = "4000000000001"
    with pytest.raises(PayloadError) as caught:
        decode("kiosk-identify", json.dumps({"method": "fax", "value": secret}).encode())
    assert "data.method must be one of" in str(caught.value)
    assert secret not in str(caught.value)
    with pytest.raises(PayloadError, match="exceeds 16384"):
        decode("kiosk-identify", b" " * 20_000)
    with pytest.raises(PayloadError, match="nested too deeply"):
        decode("kiosk-identify", b"[" * 10_000)


def test_content_and_status_round_trip_through_their_schemas() -> None:
    offer = ContentOffer("OFF-1", "Coffee", "20% off", "coffee", 20.0)
    content = Content("id-1", 1.5, "personal", "kiosk-1", "r-1", "d-1", "Hello", offer)
    assert decode_content(encode_content(content)) == content
    anonymous = Content("id-2", 1.5, "anonymous", "kiosk-1", None, "d-2", "Hi", None)
    assert decode_content(encode_content(anonymous)) == anonymous
    status = GatewayStatus("online", 3, 2.5, "0.1.0")
    assert decode_status(encode_status(status)) == status
    error = json.loads(encode_error("t/1", "bad", 1.0, "r-1"))
    assert decode("gateway-error", json.dumps(error).encode())["request_id"] == "r-1"


def test_encoders_refuse_output_that_breaks_the_contract() -> None:
    with pytest.raises(ValueError, match="session"):
        encode_status(GatewayStatus("online", 0, 1.0, "x"))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"total": 3, "loyalty": "4000000000001"}, "data.loyalty: raw identifiers"),
        ({"customer": {"email": "x"}}, r"data.<key>.email: raw identifiers"),
        ({"note": "seen F0:CA:FE:00:00:01"}, "data.<key>: looks like a device address"),
        ({"note": "write to ada@example.com"}, "data.<key>: looks like .* an e-mail"),
        ({"items": [{"email": "ada@example.com"}]}, r"data.<key>\[0\].email: raw identifiers"),
        ({"seen": ["AA:BB:CC:DD:EE:FF"]}, r"data.<key>\[0\]: looks like a device address"),
        ({"customer_phone": "x"}, "data.customer_phone: raw identifiers"),
        ({"loyaltyNumber": "x"}, "data.loyaltyNumber: raw identifiers"),
        ({"Mobile": "x"}, "data.Mobile: raw identifiers"),
        ({"note": "call +44 7700 900123"}, "data.<key>: looks like .* a phone number"),
        ({"qr": "x"}, "data.qr: raw identifiers"),
        ({"scanned": "SGW1.eyJzdWIi.c2ln"}, "data.<key>: looks like .* a customer's token"),
    ],
)
def test_device_events_carrying_raw_identifiers_are_refused(
    data: dict[str, object], error: str
) -> None:
    from gateway.flows.device_events import _refuse_identifiers

    with pytest.raises(PayloadError, match=error):
        _refuse_identifiers(data)
    _refuse_identifiers({"decision_id": "01a20925-dfc6-757b-9cc2-1114bf20cbeb", "total": 4.2})
    # Product codes and names are not identifiers.
    _refuse_identifiers({"items": [{"ean": "4006381333931", "product_name": "Milk"}], "n": 3})


def test_strings_that_cannot_be_encoded_again_and_giant_integers_are_refused() -> None:
    from gateway.ble.espresense import decode_device_message

    event = (
        b'{"id": "01a20925-dfc6-757b-9cc2-1114bf20cbeb", "type": "pos.scan",'
        b' "priority": "telemetry", "data": %s}'
    )
    with pytest.raises(PayloadError, match="lone UTF-16 surrogate"):
        decode("device-event", event % b'{"category": "\\ud800"}')
    emoji = decode("device-event", event % b'{"note": "\\ud83d\\ude00"}')  # an escaped pair
    assert emoji["data"]["note"] == "\U0001f600"
    with pytest.raises(PayloadError, match="an integer of 5000 digits"):
        decode("device-event", event % b'{"n": %s}' % (b"9" * 5000))
    with pytest.raises(PayloadError, match="lone UTF-16 surrogate"):
        decode_device_message(
            "espresense",
            "espresense/devices/x/espresense-entrance",
            b'{"id": "\\udfff", "rssi": -60}',
        )


def test_nan_and_infinity_are_not_json_numbers() -> None:
    from gateway.codecs.payloads import decode

    body = (
        b'{"id": "01a20925-dfc6-757b-9cc2-1114bf20cbeb", "type": "pos.scan",'
        b' "priority": "telemetry", "data": {}, "ts": 1e400}'
    )
    with pytest.raises(PayloadError, match="too large"):
        decode("device-event", body)
    with pytest.raises(PayloadError, match="NaN"):
        decode("device-event", body.replace(b"1e400", b"NaN"))
    assert decode("device-event", body.replace(b"1e400", b"1.5e9"))["ts"] == 1.5e9


def test_refusals_never_echo_a_key_or_value_from_the_payload() -> None:
    """An e-mail address used as a key reached every device through the errors topic."""
    from gateway.flows.device_events import _refuse_identifiers

    email = "ada@example.com"
    unknown_key = json.dumps({"method": "loyalty", "value": "1", email: 1}).encode()
    with pytest.raises(PayloadError) as refused:
        decode("kiosk-identify", unknown_key)
    assert email not in str(refused.value)
    assert "holds a key the kiosk-identify schema does not define" in str(refused.value)
    with pytest.raises(PayloadError) as refused:
        _refuse_identifiers({email: "call +44 7700 900123"})
    assert email not in str(refused.value)
    assert str(refused.value).startswith("data.<key>: looks like")


def test_the_last_will_has_no_time_and_a_birth_must_have_one() -> None:
    will = GatewayStatus("offline", 3, None, "0.1.0")
    assert b'"ts"' not in encode_status(will)
    assert decode_status(encode_status(will)) == will
    with pytest.raises(ValueError, match="ts"):
        encode_status(GatewayStatus("online", 3, None, "0.1.0"))
