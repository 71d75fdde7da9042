"""Beacon frames: iBeacon, AltBeacon and Eddystone UID / URL / TLM / EID, decoded and encoded.

Pure codecs (bytes in, frames out), shared by the drivers and the simulators. A malformed or
foreign frame decodes to None; nothing here raises on input bytes. The encoders are for the
simulators: they raise ValueError on out-of-range fields, and `decode_advert(*encode_advert(f))
== f` for every frame they accept (a TLM temperature or uptime finer than the wire's 1/256 °C or
0.1 s is rounded to it).

Advertisements come in bleak's shape: manufacturer data keyed by company id (without it), service
data keyed by the lowercase 128-bit service UUID string (without it), and the advertised service
UUIDs (bleak's `service_uuids`, the AD types 0x02-0x07) as lowercase 128-bit strings.
`decode_ad_structures` and `encode_ad_structures` convert between that shape and a raw
advertising payload. An Eddystone frame counts only where the specification puts it: service
data 0xFEAA in an advert whose service UUID list names 0xFEAA.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import assert_never
from uuid import UUID

__all__ = [
    "BASE_UUID_TAIL",
    "EDDYSTONE_0M_TO_1M_DB",
    "EDDYSTONE_UUID",
    "AltBeacon",
    "EddystoneEID",
    "EddystoneTLM",
    "EddystoneUID",
    "EddystoneURL",
    "Frame",
    "IBeacon",
    "ad_structures",
    "decode_ad_structures",
    "decode_advert",
    "encode_ad_structures",
    "encode_advert",
]


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: UUID
    major: int
    minor: int
    tx_power: int  # measured RSSI at 1 m, dBm


@dataclass(frozen=True, slots=True)
class AltBeacon:
    company_id: int
    beacon_id: bytes  # 20 bytes (conventionally a UUID, major, minor)
    ref_rssi: int  # dBm at 1 m
    reserved: int


@dataclass(frozen=True, slots=True)
class EddystoneUID:
    namespace: bytes  # 10 bytes
    instance: bytes  # 6 bytes
    tx_power: int  # dBm at 0 m


@dataclass(frozen=True, slots=True)
class EddystoneURL:
    url: str
    tx_power: int


@dataclass(frozen=True, slots=True)
class EddystoneTLM:
    battery_mv: int
    temperature_c: float | None  # None: the beacon does not measure it (0x8000)
    adv_count: int
    uptime_s: float


@dataclass(frozen=True, slots=True)
class EddystoneEID:
    eid: bytes  # 8 bytes, rotating
    tx_power: int


Frame = IBeacon | AltBeacon | EddystoneUID | EddystoneURL | EddystoneTLM | EddystoneEID

# Service data keys as bleak gives them: the lowercase 128-bit form of the service UUID.
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
EDDYSTONE_0M_TO_1M_DB = 41  # Eddystone frames carry the power at 0 m; 1 m is 41 dB less
BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"  # Bluetooth base UUID after the first 32 bits

_APPLE = 0x004C
_IBEACON_PREFIX = b"\x02\x15"
_ALTBEACON_CODE = b"\xbe\xac"

_UID, _URL, _TLM, _EID = 0x00, 0x10, 0x20, 0x30
_TEMP_UNSUPPORTED = 0x8000

_AD_FLAGS = 0x01
_AD_UUID16_COMPLETE = 0x03
# Incomplete and complete lists of 16-, 32- and 128-bit service UUIDs: bytes per UUID.
_AD_UUID_LISTS = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}
_AD_SERVICE_DATA_16 = 0x16
_AD_SERVICE_DATA_32 = 0x20
_AD_SERVICE_DATA_128 = 0x21
_AD_MANUFACTURER = 0xFF
_FLAGS_LE_GENERAL_NO_BREDR = 0x06

# Eddystone-URL: the scheme byte, and the bytes 0x00-0x0D that expand to common TLD fragments.
_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_EXPANSIONS = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)  # fmt: skip
_URL_MAX_ENCODED = 17  # bytes after the scheme that fit a legacy 31-byte advertisement
# Longest first, so the encoder prefers ".com/" over ".com" and "https://www." over "https://".
_SCHEMES_BY_LENGTH = sorted(enumerate(_SCHEMES), key=lambda item: -len(item[1]))
_EXPANSIONS_BY_LENGTH = sorted(enumerate(_EXPANSIONS), key=lambda item: -len(item[1]))


def _int8(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


# ---------------------------------------------------------------------------------------------
# Decoding: total functions, any bytes in, a frame or None out.


def decode_advert(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    service_uuids: Collection[str],
) -> Frame | None:
    """The first beacon frame recognised, in this order: iBeacon (Apple's company id), then
    AltBeacon (lowest company id first), then Eddystone (service data 0xFEAA, with 0xFEAA in
    `service_uuids` as the specification requires); None if none is."""
    apple = manufacturer_data.get(_APPLE)
    if apple is not None:
        ibeacon = _decode_ibeacon(apple)
        if ibeacon is not None:
            return ibeacon
    for company_id in sorted(manufacturer_data):
        altbeacon = _decode_altbeacon(company_id, manufacturer_data[company_id])
        if altbeacon is not None:
            return altbeacon
    eddystone = service_data.get(EDDYSTONE_UUID)
    if eddystone is None or not any(u.lower() == EDDYSTONE_UUID for u in service_uuids):
        return None
    return _decode_eddystone(eddystone)


def _decode_ibeacon(data: bytes) -> IBeacon | None:
    if len(data) != 23 or data[:2] != _IBEACON_PREFIX:
        return None
    return IBeacon(
        uuid=UUID(bytes=bytes(data[2:18])),
        major=int.from_bytes(data[18:20], "big"),
        minor=int.from_bytes(data[20:22], "big"),
        tx_power=_int8(data[22]),
    )


def _decode_altbeacon(company_id: int, data: bytes) -> AltBeacon | None:
    if len(data) != 24 or data[:2] != _ALTBEACON_CODE or not 0 <= company_id <= 0xFFFF:
        return None
    return AltBeacon(
        company_id=company_id,
        beacon_id=bytes(data[2:22]),
        ref_rssi=_int8(data[22]),
        reserved=data[23],
    )


def _decode_eddystone(data: bytes) -> Frame | None:
    if len(data) < 2:
        return None
    frame_type, tx_power = data[0], _int8(data[1])
    if frame_type == _UID and len(data) in (18, 20):  # some beacons leave out the 2 RFU bytes
        return EddystoneUID(
            namespace=bytes(data[2:12]), instance=bytes(data[12:18]), tx_power=tx_power
        )
    if frame_type == _URL and len(data) >= 3:
        url = _decode_url(data[2], data[3:])
        return None if url is None else EddystoneURL(url=url, tx_power=tx_power)
    if frame_type == _TLM:
        return _decode_tlm(data)
    if frame_type == _EID and len(data) == 10:
        return EddystoneEID(eid=bytes(data[2:10]), tx_power=tx_power)
    return None


def _decode_url(scheme: int, encoded: bytes) -> str | None:
    if scheme >= len(_SCHEMES):
        return None
    parts = [_SCHEMES[scheme]]
    for byte in encoded:
        if byte < len(_EXPANSIONS):
            parts.append(_EXPANSIONS[byte])
        elif 0x21 <= byte <= 0x7E:  # printable ASCII; the rest is reserved by the spec
            parts.append(chr(byte))
        else:
            return None
    return "".join(parts)


def _decode_tlm(data: bytes) -> EddystoneTLM | None:
    # Version 0x00 is plain; 0x01 (eTLM) is encrypted with the EID key and not ours to read.
    if len(data) != 14 or data[1] != 0x00:
        return None
    raw_temp = int.from_bytes(data[4:6], "big")
    temperature = None if raw_temp == _TEMP_UNSUPPORTED else _signed16(raw_temp) / 256
    return EddystoneTLM(
        battery_mv=int.from_bytes(data[2:4], "big"),
        temperature_c=temperature,
        adv_count=int.from_bytes(data[6:10], "big"),
        uptime_s=int.from_bytes(data[10:14], "big") / 10,
    )


def _signed16(value: int) -> int:
    return value - 0x10000 if value >= 0x8000 else value


def decode_ad_structures(  # noqa: PLR0912 - one branch per AD type
    payload: bytes,
) -> tuple[dict[int, bytes], dict[str, bytes], list[str]]:
    """Manufacturer data, service data and service UUIDs of a raw advertising payload, in
    bleak's shape.

    Parsing stops at the first malformed structure (or at a zero length, where a legacy payload's
    padding starts) and returns what came before it. A repeated key keeps its last value.
    """
    manufacturer: dict[int, bytes] = {}
    service: dict[str, bytes] = {}
    uuids: list[str] = []
    i, end = 0, len(payload)
    while i < end:
        length = payload[i]
        if length == 0 or i + 1 + length > end:
            break
        ad_type, data = payload[i + 1], bytes(payload[i + 2 : i + 1 + length])
        i += 1 + length
        if ad_type == _AD_MANUFACTURER:
            if len(data) < 2:
                break
            manufacturer[int.from_bytes(data[:2], "little")] = data[2:]
        elif ad_type == _AD_SERVICE_DATA_16:
            if len(data) < 2:
                break
            service[_uuid_from_short(int.from_bytes(data[:2], "little"))] = data[2:]
        elif ad_type == _AD_SERVICE_DATA_32:
            if len(data) < 4:
                break
            service[_uuid_from_short(int.from_bytes(data[:4], "little"))] = data[4:]
        elif ad_type == _AD_SERVICE_DATA_128:
            if len(data) < 16:
                break
            service[str(UUID(bytes=data[15::-1]))] = data[16:]
        elif ad_type in _AD_UUID_LISTS:
            size = _AD_UUID_LISTS[ad_type]
            if len(data) % size:
                break
            for at in range(0, len(data), size):
                uuid = _uuid_of(data[at : at + size])
                if uuid not in uuids:
                    uuids.append(uuid)
    return manufacturer, service, uuids


def _uuid_of(little_endian: bytes) -> str:
    if len(little_endian) == 16:
        return str(UUID(bytes=little_endian[::-1]))
    return _uuid_from_short(int.from_bytes(little_endian, "little"))


def _uuid_from_short(short: int) -> str:
    return f"{short:08x}{BASE_UUID_TAIL}"


# ---------------------------------------------------------------------------------------------
# Encoding, for the simulators: validated, ValueError on anything a beacon could not send.


def encode_advert(frame: Frame) -> tuple[dict[int, bytes], dict[str, bytes], list[str]]:
    """Manufacturer data, service data and service UUIDs (bleak's shape) that `decode_advert`
    decodes to `frame`."""
    match frame:
        case IBeacon(uuid=uuid, major=major, minor=minor, tx_power=tx_power):
            data = (
                _IBEACON_PREFIX
                + uuid.bytes
                + _u16(major, "major")
                + _u16(minor, "minor")
                + _i8(tx_power, "tx_power")
            )
            return {_APPLE: data}, {}, []
        case AltBeacon(company_id=company_id, beacon_id=beacon_id, ref_rssi=ref_rssi):
            _u16(company_id, "company_id")
            data = (
                _ALTBEACON_CODE
                + _exact(beacon_id, 20, "beacon_id")
                + _i8(ref_rssi, "ref_rssi")
                + _u8(frame.reserved, "reserved")
            )
            return {company_id: data}, {}, []
        case EddystoneUID(namespace=namespace, instance=instance, tx_power=tx_power):
            data = (
                bytes((_UID,))
                + _i8(tx_power, "tx_power")
                + _exact(namespace, 10, "namespace")
                + _exact(instance, 6, "instance")
                + b"\x00\x00"
            )
        case EddystoneURL(url=url, tx_power=tx_power):
            data = bytes((_URL,)) + _i8(tx_power, "tx_power") + _encode_url(url)
        case EddystoneTLM():
            data = _encode_tlm(frame)
        case EddystoneEID(eid=eid, tx_power=tx_power):
            data = bytes((_EID,)) + _i8(tx_power, "tx_power") + _exact(eid, 8, "eid")
        case _:
            assert_never(frame)
    return {}, {EDDYSTONE_UUID: data}, [EDDYSTONE_UUID]


def _encode_url(url: str) -> bytes:
    found = next((item for item in _SCHEMES_BY_LENGTH if url.startswith(item[1])), None)
    if found is None:
        raise ValueError(f"url must start with one of {', '.join(_SCHEMES)}: {url!r}")
    code, scheme = found
    out = bytearray((code,))
    rest, i = url[len(scheme) :], 0
    while i < len(rest):
        for expansion_code, expansion in _EXPANSIONS_BY_LENGTH:
            if rest.startswith(expansion, i):
                out.append(expansion_code)
                i += len(expansion)
                break
        else:
            char = ord(rest[i])
            if not 0x21 <= char <= 0x7E:
                raise ValueError(f"url may hold printable ASCII only, not {rest[i]!r}")
            out.append(char)
            i += 1
    if len(out) - 1 > _URL_MAX_ENCODED:
        raise ValueError(f"url encodes to {len(out) - 1} bytes, over {_URL_MAX_ENCODED}: {url!r}")
    return bytes(out)


def _encode_tlm(frame: EddystoneTLM) -> bytes:
    if frame.temperature_c is None:
        temperature = _TEMP_UNSUPPORTED.to_bytes(2, "big")
    else:
        raw = round(frame.temperature_c * 256)
        if not -0x7FFF <= raw <= 0x7FFF:  # -0x8000 is the "not supported" marker
            raise ValueError(f"temperature_c out of range: {frame.temperature_c}")
        temperature = (raw & 0xFFFF).to_bytes(2, "big")
    return (
        bytes((_TLM, 0x00))
        + _u16(frame.battery_mv, "battery_mv")
        + temperature
        + _u32(frame.adv_count, "adv_count")
        + _u32(round(frame.uptime_s * 10), "uptime_s (in 0.1 s)")
    )


def encode_ad_structures(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    service_uuids: Sequence[str] | None = None,
) -> bytes:
    """A raw advertising payload that `decode_ad_structures` decodes to the same data.

    `service_uuids` (16-bit ones, as 128-bit strings on the base UUID) go in the complete
    16-bit list; None: the 16-bit UUIDs of the service data, as beacons advertise them. The
    length is not capped: a legacy advertisement must stay within 31 bytes, an extended one may
    not.
    """
    uuids16 = None if service_uuids is None else [_short(u) for u in service_uuids]
    out = bytearray()
    for ad_type, body in ad_structures(manufacturer_data, service_data, uuids16):
        if len(body) > 254:
            raise ValueError(f"an AD structure holds at most 254 data bytes, not {len(body)}")
        out += bytes((len(body) + 1, ad_type)) + body
    return bytes(out)


def ad_structures(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    uuids16: Sequence[int] | None = None,
) -> list[tuple[int, bytes]]:
    """The AD structures (type, data) of an advert, in the order beacons send them: flags,
    the complete list of 16-bit service UUIDs (by default those of the service data: 0xFEAA
    for Eddystone), manufacturer data, service data."""
    structures = [(_AD_FLAGS, bytes((_FLAGS_LE_GENERAL_NO_BREDR,)))]
    service: list[tuple[int, bytes]] = []
    uuid16: list[int] = []
    for key, data in service_data.items():
        try:
            uuid = UUID(key)
        except ValueError:
            raise ValueError(f"service data key is not a UUID: {key!r}") from None
        text = str(uuid)
        short = int(text[:8], 16)
        if text.endswith(BASE_UUID_TAIL) and short <= 0xFFFF:
            uuid16.append(short)
            service.append((_AD_SERVICE_DATA_16, short.to_bytes(2, "little") + data))
        elif text.endswith(BASE_UUID_TAIL):
            service.append((_AD_SERVICE_DATA_32, short.to_bytes(4, "little") + data))
        else:
            service.append((_AD_SERVICE_DATA_128, uuid.bytes[::-1] + data))
    listed = uuid16 if uuids16 is None else uuids16
    if listed:
        structures.append(
            (_AD_UUID16_COMPLETE, b"".join(short.to_bytes(2, "little") for short in listed))
        )
    for company_id, data in manufacturer_data.items():
        company = _u16(company_id, "company_id")[::-1]  # little-endian on air
        structures.append((_AD_MANUFACTURER, company + data))
    structures.extend(service)
    return structures


def _short(uuid: str) -> int:
    text = uuid.lower()
    if not text.endswith(BASE_UUID_TAIL) or not text.startswith("0000"):
        raise ValueError(f"service UUID list: 16-bit UUIDs only, not {uuid!r}")
    return int(text[4:8], 16)


def _uint(value: int, size: int, name: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{name} must be 0..{(1 << (8 * size)) - 1}, not {value}")
    return value.to_bytes(size, "big")


def _u8(value: int, name: str) -> bytes:
    return _uint(value, 1, name)


def _u16(value: int, name: str) -> bytes:
    return _uint(value, 2, name)


def _u32(value: int, name: str) -> bytes:
    return _uint(value, 4, name)


def _i8(value: int, name: str) -> bytes:
    if not -128 <= value <= 127:
        raise ValueError(f"{name} must be -128..127 dBm, not {value}")
    return (value & 0xFF).to_bytes(1, "big")


def _exact(value: bytes, size: int, name: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")
    return bytes(value)
