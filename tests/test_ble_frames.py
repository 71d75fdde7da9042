"""Beacon frame codecs: real advertisements byte by byte, round trips, and garbage never raises."""

from __future__ import annotations

from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.frames import (
    BASE_UUID_TAIL,
    EDDYSTONE_UUID,
    AltBeacon,
    EddystoneEID,
    EddystoneTLM,
    EddystoneUID,
    EddystoneURL,
    Frame,
    IBeacon,
    decode_ad_structures,
    decode_advert,
    encode_ad_structures,
    encode_advert,
)

FRAME_TYPES = (IBeacon, AltBeacon, EddystoneUID, EddystoneURL, EddystoneTLM, EddystoneEID)
FLAGS = "020106"
EDDYSTONE_LIST = "0303aafe"  # complete list of 16-bit service UUIDs: 0xFEAA

# Real advertising payloads (AD structures), and what they carry.
GOLDEN: list[tuple[str, str, Frame]] = [
    (
        "ibeacon",
        # length 0x1A, manufacturer data, Apple 0x004C (LE), iBeacon 0x02 0x15, UUID, major 1,
        # minor 2, measured power 0xC5 = -59 dBm
        FLAGS + "1aff4c000215" + "e2c56db5dffb48d2b060d0f5a71096e0" + "0001" + "0002" + "c5",
        IBeacon(UUID("E2C56DB5-DFFB-48D2-B060-D0F5A71096E0"), major=1, minor=2, tx_power=-59),
    ),
    (
        "altbeacon",
        # the AltBeacon specification's example: Radius Networks 0x0118, beacon code 0xBEAC,
        # 20-byte id, reference RSSI -59 dBm, reserved byte 0
        FLAGS + "1bff1801beac" + "2f234454cf6d4a0fadf2f4911ba9ffa600010002" + "c5" + "00",
        AltBeacon(
            company_id=0x0118,
            beacon_id=bytes.fromhex("2f234454cf6d4a0fadf2f4911ba9ffa600010002"),
            ref_rssi=-59,
            reserved=0,
        ),
    ),
    (
        "eddystone-uid",
        # service data 0xFEAA, frame 0x00, tx -25 dBm, namespace, instance, 2 RFU bytes
        FLAGS + EDDYSTONE_LIST + "1716aafe" + "00e7" + "edd1ebeac04e5defa017" + "0bdb87539b670000",
        EddystoneUID(
            namespace=bytes.fromhex("edd1ebeac04e5defa017"),
            instance=bytes.fromhex("0bdb87539b67"),
            tx_power=-25,
        ),
    ),
    (
        "eddystone-url",
        # frame 0x10, tx -21 dBm, scheme 0x01 "https://www.", "google", 0x00 ".com/"
        FLAGS + EDDYSTONE_LIST + "0d16aafe" + "10eb" + "01" + "676f6f676c65" + "00",
        EddystoneURL(url="https://www.google.com/", tx_power=-21),
    ),
    (
        "eddystone-tlm",
        # frame 0x20 version 0, 3000 mV, 23.5 °C (0x1780 in 8.8), 1000 adverts, 10000 x 0.1 s
        FLAGS + EDDYSTONE_LIST + "1116aafe" + "2000" + "0bb8" + "1780" + "000003e8" + "00002710",
        EddystoneTLM(battery_mv=3000, temperature_c=23.5, adv_count=1000, uptime_s=1000.0),
    ),
    (
        "eddystone-eid",
        # frame 0x30, tx -16 dBm, the 8-byte ephemeral id
        FLAGS + EDDYSTONE_LIST + "0d16aafe" + "30f0" + "a9b76a71c5f89290",
        EddystoneEID(eid=bytes.fromhex("a9b76a71c5f89290"), tx_power=-16),
    ),
]
GOLDEN_IDS = [name for name, _, _ in GOLDEN]


@pytest.mark.parametrize(("name", "payload", "frame"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_adverts_decode(name: str, payload: str, frame: Frame) -> None:
    assert decode_advert(*decode_ad_structures(bytes.fromhex(payload))) == frame


@pytest.mark.parametrize(("name", "payload", "frame"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_adverts_encode_byte_for_byte(name: str, payload: str, frame: Frame) -> None:
    assert encode_ad_structures(*encode_advert(frame)).hex() == payload


@pytest.mark.parametrize(("name", "payload", "frame"), GOLDEN, ids=GOLDEN_IDS)
def test_truncated_adverts_decode_to_none(name: str, payload: str, frame: Frame) -> None:
    raw = bytes.fromhex(payload)
    for length in range(len(raw)):
        assert decode_advert(*decode_ad_structures(raw[:length])) is None


@pytest.mark.parametrize(("name", "payload", "frame"), GOLDEN, ids=GOLDEN_IDS)
def test_truncated_frame_data_decodes_to_none(name: str, payload: str, frame: Frame) -> None:
    manufacturer, service, uuids = encode_advert(frame)
    (data,) = [*manufacturer.values(), *service.values()]
    shortest = 18 if isinstance(frame, EddystoneUID) else len(data)  # UID without its RFU
    for length in range(len(data)):
        cut = data[:length]
        decoded = decode_advert(
            dict.fromkeys(manufacturer, cut), dict.fromkeys(service, cut), uuids
        )
        if isinstance(frame, EddystoneURL) and length >= 3:
            assert isinstance(decoded, EddystoneURL)  # a shorter URL: the frame has no length
        elif length == shortest:
            assert decoded == frame
        else:
            assert decoded is None, length


def test_hcitool_url_advert_with_padding() -> None:
    # A Raspberry Pi beacon's 31 bytes as set with hcitool: 22 significant bytes, zero padding.
    raw = bytes.fromhex("0201060303aafe0e16aafe100003" + "6d79702e6d653f41" + "00" * 9)
    manufacturer, service, uuids = decode_ad_structures(raw)
    assert manufacturer == {}
    assert service == {EDDYSTONE_UUID: bytes.fromhex("100003") + b"myp.me?A"}
    assert uuids == [EDDYSTONE_UUID]
    url = EddystoneURL("https://myp.me?A", tx_power=0)
    assert decode_advert(manufacturer, service, uuids) == url


def test_tlm_temperature_variants() -> None:
    def tlm(temperature: str, version: str = "00") -> Frame | None:
        data = bytes.fromhex("20" + version + "0c1c" + temperature + "00000001" + "00000005")
        return decode_advert({}, {EDDYSTONE_UUID: data}, [EDDYSTONE_UUID])

    assert tlm("ff80") == EddystoneTLM(3100, -0.5, 1, 0.5)
    assert tlm("8000") == EddystoneTLM(3100, None, 1, 0.5)  # not measured
    assert tlm("7fff") == EddystoneTLM(3100, 0x7FFF / 256, 1, 0.5)
    assert tlm("1780", version="01") is None  # encrypted TLM: not ours to read
    etlm = bytes.fromhex("2001") + bytes(16)  # a real eTLM: 12 bytes, salt, MIC
    assert decode_advert({}, {EDDYSTONE_UUID: etlm}, [EDDYSTONE_UUID]) is None


def test_url_expansion_codes() -> None:
    for url, encoded in [
        ("http://www.a.com/", "0061" + "00"),
        ("https://www.a.org/", "0161" + "01"),
        ("http://a.edu/b.net/c.info/d.biz/e.gov/", "0261" + "02" + "6203630464056506"),
        ("https://a.com.org.edu.net.info.biz.gov", "0361" + "0708090a0b0c0d"),
        ("https://a.information", "0361" + "0b" + "726d6174696f6e"),  # ".info" then "rmation"
        ("https://", "03"),
    ]:
        _, service, _ = encode_advert(EddystoneURL(url, tx_power=-20))
        assert service[EDDYSTONE_UUID].hex() == "10ec" + encoded, url
        assert decode_advert({}, service, [EDDYSTONE_UUID]) == EddystoneURL(url, tx_power=-20)


@pytest.mark.parametrize(
    "encoded",
    ["04", "0361" + "0e", "0361" + "20", "0361" + "7f", "0361" + "ff"],
    ids=["bad-scheme", "reserved-0e", "space", "del", "high"],
)
def test_reserved_url_bytes_decode_to_none(encoded: str) -> None:
    assert (
        decode_advert({}, {EDDYSTONE_UUID: bytes.fromhex("10ec" + encoded)}, [EDDYSTONE_UUID])
        is None
    )


def test_decode_order_is_ibeacon_altbeacon_eddystone() -> None:
    ibeacon = IBeacon(UUID(int=1), 2, 3, -4)
    alt_low = AltBeacon(0x0001, bytes(20), -50, 0)
    alt_high = AltBeacon(0xFFFF, bytes(20), -50, 0)
    eddystone = EddystoneEID(bytes(8), -10)
    manufacturer = {
        **encode_advert(alt_high)[0],
        **encode_advert(ibeacon)[0],
        **encode_advert(alt_low)[0],
    }
    _, service, uuids = encode_advert(eddystone)
    assert decode_advert(manufacturer, service, uuids) == ibeacon
    del manufacturer[0x004C]
    assert decode_advert(manufacturer, service, uuids) == alt_low
    assert decode_advert({0xFFFF: manufacturer[0xFFFF]}, service, uuids) == alt_high
    apple = {0x004C: b"\x10\x05\x01\x18"}  # Apple, not an iBeacon
    assert decode_advert(apple, service, uuids) == eddystone


def test_ad_structures_service_uuid_sizes() -> None:
    custom = UUID("12345678-9abc-def0-1234-56789abcdef0")
    raw = bytes.fromhex(
        "020106"
        + "0516aafe0102"  # 16-bit service data
        + "0720785634120304"  # 32-bit service data
        + "1221"
        + custom.bytes[::-1].hex()
        + "05"  # 128-bit, little-endian on air
        + "04ff5900aa"  # Nordic 0x0059
    )
    manufacturer, service, uuids = decode_ad_structures(raw)
    assert uuids == []
    assert manufacturer == {0x0059: b"\xaa"}
    assert service == {
        EDDYSTONE_UUID: b"\x01\x02",
        "12345678-0000-1000-8000-00805f9b34fb": b"\x03\x04",
        str(custom): b"\x05",
    }
    assert decode_ad_structures(encode_ad_structures(manufacturer, service)) == (
        manufacturer,
        service,
        [EDDYSTONE_UUID],  # listed by default: the 16-bit UUIDs of the service data
    )


def test_ad_structures_stop_at_the_first_malformed_one() -> None:
    good = "04ff5900aa"
    for bad in ["02ff59", "0216aa", "0420785634", "0521" + "00" * 4, "09ff00"]:
        assert decode_ad_structures(bytes.fromhex(good + bad + "0516aafe0102")) == (
            {0x0059: b"\xaa"},
            {},
            [],
        ), bad


@pytest.mark.parametrize(
    "frame",
    [
        IBeacon(UUID(int=0), major=65536, minor=0, tx_power=0),
        IBeacon(UUID(int=0), major=0, minor=-1, tx_power=0),
        IBeacon(UUID(int=0), major=0, minor=0, tx_power=128),
        AltBeacon(company_id=0x10000, beacon_id=bytes(20), ref_rssi=0, reserved=0),
        AltBeacon(company_id=1, beacon_id=bytes(19), ref_rssi=0, reserved=0),
        AltBeacon(company_id=1, beacon_id=bytes(20), ref_rssi=-129, reserved=0),
        AltBeacon(company_id=1, beacon_id=bytes(20), ref_rssi=0, reserved=256),
        EddystoneUID(namespace=bytes(9), instance=bytes(6), tx_power=0),
        EddystoneUID(namespace=bytes(10), instance=bytes(7), tx_power=0),
        EddystoneURL(url="ftp://example.com", tx_power=0),
        EddystoneURL(url="https://a b.com", tx_power=0),
        EddystoneURL(url="https://café.com", tx_power=0),
        EddystoneURL(url="https://abcdefghijklmnopqr", tx_power=0),  # 18 bytes, over 17
        EddystoneURL(url="https://a.com", tx_power=-200),
        EddystoneTLM(battery_mv=65536, temperature_c=None, adv_count=0, uptime_s=0),
        EddystoneTLM(battery_mv=0, temperature_c=128.0, adv_count=0, uptime_s=0),
        EddystoneTLM(battery_mv=0, temperature_c=-128.0, adv_count=0, uptime_s=0),  # 0x8000
        EddystoneTLM(battery_mv=0, temperature_c=None, adv_count=2**32, uptime_s=0),
        EddystoneTLM(battery_mv=0, temperature_c=None, adv_count=0, uptime_s=-1),
        EddystoneTLM(battery_mv=0, temperature_c=None, adv_count=0, uptime_s=2**32 / 10),
        EddystoneEID(eid=bytes(7), tx_power=0),
    ],
    ids=repr,
)
def test_encoder_rejects_out_of_range_fields(frame: Frame) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case names its own field
        encode_advert(frame)


def test_ad_structure_encoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        encode_ad_structures({}, {"feaa": b""})
    with pytest.raises(ValueError, match="company_id"):
        encode_ad_structures({0x10000: b""}, {})
    with pytest.raises(ValueError, match="at most 254"):
        encode_ad_structures({1: bytes(253)}, {})


# ---------------------------------------------------------------------------------------------
# Properties

int8 = st.integers(-128, 127)
tlds = (".com", ".org", ".edu", ".net", ".info", ".biz", ".gov")
url_tokens = st.sampled_from([tld + end for end in ("/", "") for tld in tlds]) | st.characters(
    min_codepoint=0x21, max_codepoint=0x7E
)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(IBeacon, st.uuids(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), int8),
    st.builds(
        AltBeacon,
        st.integers(0, 0xFFFF),
        st.binary(min_size=20, max_size=20),
        int8,
        st.integers(0, 255),
    ),
    st.builds(
        EddystoneUID, st.binary(min_size=10, max_size=10), st.binary(min_size=6, max_size=6), int8
    ),
    st.builds(
        EddystoneURL,
        st.tuples(
            st.sampled_from(["http://www.", "https://www.", "http://", "https://"]),
            st.lists(url_tokens, max_size=17),
        ).map(lambda p: p[0] + "".join(p[1])),
        int8,
    ),
    st.builds(
        EddystoneTLM,
        st.integers(0, 0xFFFF),
        st.none() | st.integers(-0x7FFF, 0x7FFF).map(lambda raw: raw / 256),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1).map(lambda n: n / 10),
    ),
    st.builds(EddystoneEID, st.binary(min_size=8, max_size=8), int8),
)


@given(frames)
def test_encode_decode_round_trip(frame: Frame) -> None:
    manufacturer, service, uuids = encode_advert(frame)
    assert decode_advert(manufacturer, service, uuids) == frame
    payload = encode_ad_structures(manufacturer, service, uuids)
    assert len(payload) <= 31  # every frame fits a legacy advertisement
    assert decode_advert(*decode_ad_structures(payload)) == frame


# Arbitrary bytes, and bytes that start like a real frame so the deeper branches are reached.
near_manufacturer = st.dictionaries(
    st.integers(-1, 0x10000),
    st.binary(max_size=40)
    | st.sampled_from([b"\x02\x15", b"\xbe\xac"]).flatmap(
        lambda prefix: st.binary(min_size=18, max_size=26).map(lambda rest: prefix + rest)
    ),
    max_size=4,
)
near_service = st.dictionaries(
    st.sampled_from([EDDYSTONE_UUID, EDDYSTONE_UUID.upper()]) | st.text(max_size=40),
    st.binary(max_size=40)
    | st.sampled_from([0x00, 0x10, 0x20, 0x30, 0x40]).flatmap(
        lambda frame_type: st.binary(max_size=22).map(lambda rest: bytes((frame_type,)) + rest)
    ),
    max_size=4,
)


near_uuids = st.lists(
    st.sampled_from([EDDYSTONE_UUID, EDDYSTONE_UUID.upper()]) | st.text(max_size=40), max_size=3
)


@given(near_manufacturer, near_service, near_uuids)
def test_decode_advert_never_raises(
    manufacturer: dict[int, bytes], service: dict[str, bytes], uuids: list[str]
) -> None:
    frame = decode_advert(manufacturer, service, uuids)
    assert frame is None or isinstance(frame, FRAME_TYPES)


@given(st.binary(max_size=80))
def test_decode_ad_structures_never_raises(payload: bytes) -> None:
    manufacturer, service, uuids = decode_ad_structures(payload)
    assert all(0 <= key <= 0xFFFF for key in manufacturer)
    assert all(str(UUID(key)) == key for key in service)
    assert all(str(UUID(u)) == u for u in uuids)
    frame = decode_advert(manufacturer, service, uuids)
    assert frame is None or isinstance(frame, FRAME_TYPES)


@given(
    st.lists(st.binary(max_size=30), max_size=6).map(
        lambda parts: b"".join(
            bytes((len(part) + 1, 0x16 if i % 2 else 0xFF)) + part for i, part in enumerate(parts)
        )
    )
)
def test_decode_well_framed_structures_never_raises(payload: bytes) -> None:
    decode_advert(*decode_ad_structures(payload))


service_keys = st.one_of(
    st.integers(0, 0xFFFF).map(lambda short: f"{short:08x}-0000-1000-8000-00805f9b34fb"),
    st.integers(0x10000, 0xFFFF_FFFF).map(lambda short: f"{short:08x}-0000-1000-8000-00805f9b34fb"),
    st.uuids().map(str),
)


@given(
    st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=100), max_size=3),
    st.dictionaries(service_keys, st.binary(max_size=100), max_size=3),
)
def test_ad_structures_round_trip(
    manufacturer: dict[int, bytes], service: dict[str, bytes]
) -> None:
    listed = [u for u in service if u.startswith("0000") and u.endswith(BASE_UUID_TAIL)]
    assert decode_ad_structures(encode_ad_structures(manufacturer, service)) == (
        manufacturer,
        service,
        listed,  # by default the 16-bit UUIDs of the service data
    )


# Public vectors from another maintained parser, beacontools (citruz/beacontools,
# tests/test_parser.py, MIT): whole advertising payloads and what it decodes them to.
BEACONTOOLS_UID = (
    "0201060303aafe" + "1716aafe00e3" + "12345678901234678901" + "000000000001" + "0000"
)
BEACONTOOLS = [
    (
        BEACONTOOLS_UID,
        EddystoneUID(bytes.fromhex("12345678901234678901"), bytes.fromhex("000000000001"), -29),
    ),
    (
        "0303aafe1316aafe10f803" + b"github".hex() + "00" + b"citruz".hex(),
        EddystoneURL("https://github.com/citruz", tx_power=-8),
    ),
    (
        "0201060303aafe1116aafe2000" + "0b18" + "1300" + "00001467" + "00002ac4",
        EddystoneTLM(battery_mv=2840, temperature_c=19.0, adv_count=5223, uptime_s=1094.8),
    ),
    (
        "0201060303aafe0d16aafe30e3" + b"EID_test".hex(),
        EddystoneEID(b"EID_test", tx_power=-29),
    ),
    # Its "bad packets": the UID frame above with 0xFEAB in the UUID list, and with frame type
    # 0x01; neither is an Eddystone frame.
    (BEACONTOOLS_UID.replace("0303aafe", "0303abfe"), None),
    (BEACONTOOLS_UID.replace("aafe00e3", "aafe01e3"), None),
    ("020106" + "0303", None),
]


@pytest.mark.parametrize(("payload", "frame"), BEACONTOOLS)
def test_beacontools_vectors(payload: str, frame: Frame | None) -> None:
    assert decode_advert(*decode_ad_structures(bytes.fromhex(payload))) == frame


def test_eddystone_counts_only_with_feaa_in_the_service_uuid_list() -> None:
    uid = FLAGS + "1716aafe" + "00e3" + "12345678901234678901" + "000000000001" + "0000"
    expected = EddystoneUID(
        bytes.fromhex("12345678901234678901"), bytes.fromhex("000000000001"), -29
    )

    def decode(payload: str) -> Frame | None:
        return decode_advert(*decode_ad_structures(bytes.fromhex(payload)))

    assert decode(uid) is None  # no list at all
    assert decode("0303" + "0f18" + uid) is None  # the list names the battery service only
    assert decode("0503" + "0f18aafe" + uid) == expected  # complete list, FEAA among others
    assert decode("0302" + "aafe" + uid) == expected  # an incomplete list counts too
    feaa128 = bytes.fromhex(EDDYSTONE_UUID.replace("-", ""))[::-1].hex()
    assert decode("1107" + feaa128 + uid) == expected  # FEAA written as a 128-bit UUID
    # bleak's shape: the same rule, whatever the case of the UUID string.
    _, service, _ = encode_advert(expected)
    assert decode_advert({}, service, []) is None
    assert decode_advert({}, service, [EDDYSTONE_UUID.upper()]) == expected
