"""ESC/POS codecs: golden job bytes, status both ways, parsers that never raise, profiles."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.escpos import (
    AutoStatus,
    Barcode,
    Bold,
    Command,
    CommandParser,
    Cut,
    EnableAsb,
    Garbage,
    Initialize,
    LineFeed,
    PrinterStatus,
    PrintMode,
    ProcessIdReply,
    ProcessIdRequest,
    QrPrint,
    QrStore,
    Raster,
    RealtimeStatus,
    Receipt,
    StatusDecoder,
    StatusReply,
    StatusRequest,
    Text,
    Unknown,
    asb_enable,
    encode_asb,
    encode_process_id,
    encode_realtime_status,
    load_profile,
    process_id_request,
    realtime_status_request,
)
from gateway.escpos.barcodes import bars
from gateway.escpos.commands import encode

PROFILES = ("generic-80mm", "generic-58mm", "epson-tm-t20iii")
CODE = "CPN-ABCD-EFGH-JKMN"
ALL_STATUSES = [
    PrinterStatus(*flags) for flags in itertools.product((False, True), repeat=5)
]  # online, paper_out, paper_near_end, cover_open, error


def coupon(profile: str = "generic-80mm", code: str = CODE) -> Receipt:
    return (
        Receipt(load_profile(profile))
        .text("20% OFF", bold=True, double_width=True, double_height=True, align="center")
        .text("Coffee beans, any 500 g bag")
        .text("Valid until 2025-12-31", align="center")
        .qr(code, module_size=6, ec="M")
        .barcode("400638133393", "EAN13", height=80)
        .barcode(code, "CODE128", height=60)
        .cut()
    )


# --------------------------------------------------------------------------------------------
# Golden bytes, written from the Epson ESC/POS command reference


def test_coupon_receipt_bytes() -> None:
    expected = b"".join(
        [
            b"\x1b\x40",  # ESC @: initialise the printer
            b"\x1b\x74\x13",  # ESC t 19: code page PC858 (PC850 with the euro sign)
            # The title: centred, bold, double width and height.
            b"\x1b\x61\x01",  # ESC a 1: centre
            b"\x1b\x45\x01",  # ESC E 1: bold on
            b"\x1d\x21\x11",  # GS ! n: width - 1 in bits 4-6, height - 1 in bits 0-2
            b"20% OFF\n",  # LF prints the line
            # A plain line: each mode goes back to its default, once.
            b"\x1b\x61\x00",  # ESC a 0: left
            b"\x1b\x45\x00",  # ESC E 0: bold off
            b"\x1d\x21\x00",  # GS ! 0: normal size
            b"Coffee beans, any 500 g bag\n",
            b"\x1b\x61\x01",  # centre again; the other modes are unchanged
            b"Valid until 2025-12-31\n",
            # QR: GS ( k pL pH cn fn ..., cn 49 = QR, pL pH count from cn on. Still centred.
            b"\x1d\x28\x6b\x04\x00\x31\x41\x32\x00",  # fn 65: model 2 (n1 50), n2 0
            b"\x1d\x28\x6b\x03\x00\x31\x43\x06",  # fn 67: modules of 6 dots
            b"\x1d\x28\x6b\x03\x00\x31\x45\x31",  # fn 69: error correction M (49)
            b"\x1d\x28\x6b\x15\x00\x31\x50\x30" + CODE.encode(),  # fn 80, m 48: 18 + 3 = 21
            b"\x1d\x28\x6b\x03\x00\x31\x51\x30",  # fn 81, m 48: print the symbol
            # EAN-13: the 12 digits given get their check digit, 1.
            b"\x1d\x68\x50",  # GS h 80: bars 80 dots high
            b"\x1d\x77\x03",  # GS w 3: 95 modules x 3 dots = 285 <= 576
            b"\x1d\x48\x02",  # GS H 2: human-readable digits below
            b"\x1d\x6b\x43\x0d" + b"4006381333931",  # GS k 67 (EAN13, function B), n 13
            # CODE128, code set B: 18 symbols + start + check = 20 x 11 + stop 13 = 233 modules;
            # x 3 = 699 dots is too wide for 576, x 2 = 466 fits.
            b"\x1d\x68\x3c",  # GS h 60
            b"\x1d\x77\x02",  # GS w 2
            b"\x1d\x48\x02",  # GS H 2
            b"\x1d\x6b\x49\x14" + b"{B" + CODE.encode(),  # GS k 73 (CODE128), n 20
            b"\x1d\x56\x42\x00",  # GS V 66 0: feed to the cutter, partial cut
        ]
    )
    assert coupon().build() == expected


def test_text_is_encoded_in_the_code_page_and_wrapped() -> None:
    profile = load_profile("generic-58mm")  # 32 characters a line
    job = (
        Receipt(profile)
        .text("Café 5 € ☺\tok\x1b@")  # ☺ is not in PC858; ESC must never reach the wire raw
        .text("one two three four five six seven eight")
        .text("WIDE WIDE WIDE WIDE", double_width=True)  # 16 double-width characters a line
        .text("")
        .rule("=")
        .feed(3)
        .build()
    )
    assert job == b"".join(
        [
            b"\x1b@\x1bt\x13",
            b"Caf\x82 5 \xd5 ? ok?@\n",  # é is 0x82, € is 0xD5 in PC858
            b"one two three four five six\nseven eight\n",
            b"\x1d\x21\x10WIDE WIDE WIDE\nWIDE\n",
            b"\x1d\x21\x00\n",  # the empty line, back at normal size
            b"=" * 32 + b"\n",
            b"\x1bd\x03",  # ESC d 3: print and feed 3 lines
        ]
    )


def test_other_code_pages_and_logo_bytes() -> None:
    profile = load_profile("generic-80mm")
    logo = [[True, False] * 5, [False, True] * 5]  # 10 x 2 dots, checkered
    job = Receipt(profile, "cp1252").text("Ñ").logo(logo, align="left").build()
    assert job == b"".join(
        [
            b"\x1b@\x1bt\x10",  # ESC t 16: WPC1252
            b"\xd1\n",
            # GS v 0 m xL xH yL yH: 2 bytes a row (10 dots, padded), 2 rows, MSB leftmost.
            b"\x1dv0\x00\x02\x00\x02\x00",
            b"\xaa\x80\x55\x40",
        ]
    )


def test_a_process_id_request_is_answered_in_order_and_decoded() -> None:
    request = process_id_request(b"0042")
    assert request == b"\x1d(H\x06\x00\x30\x30" + b"0042"  # GS ( H fn 48
    assert CommandParser().feed(request) == [ProcessIdRequest(b"0042")]
    reply = encode_process_id(b"0042")
    assert reply == b"\x37\x22" + b"0042" + b"\x00"
    decoder = StatusDecoder()
    decoder.expect(1)
    # Between an ASB block and a real-time reply, in any chunking; digits shaped like a
    # DLE EOT reply (0x32) inside it are its data, not a reply.
    stream = encode_asb(PrinterStatus()) + reply + encode_realtime_status(1, PrinterStatus())
    for size in (1, 2, 5, len(stream)):
        decoder = StatusDecoder()
        decoder.expect(1)
        replies = [
            r for i in range(0, len(stream), size) for r in decoder.feed(stream[i : i + size])
        ]
        assert [type(r).__name__ for r in replies] == [
            "AutoStatus",
            "ProcessIdReply",
            "RealtimeStatus",
        ]
        assert ProcessIdReply(b"0042") in replies
        assert decoder.garbage == 0
    # A broken response is garbage, and what follows it is read.
    decoder = StatusDecoder()
    decoder.expect(1)
    assert decoder.feed(b"\x37\x22\x30\x01" + b"\x12") == [Garbage(4), RealtimeStatus(1, 0x12)]
    with pytest.raises(ValueError, match="process id"):
        process_id_request(b"42")


def test_esc_bang_print_mode_is_parsed() -> None:
    (mode,) = CommandParser().feed(b"\x1b!\xb8")  # underline, double width and height, bold
    assert mode == PrintMode(0xB8)
    assert (mode.bold, mode.width, mode.height, mode.underline, mode.font_b) == (
        True,
        2,
        2,
        True,
        False,
    )
    assert encode(mode) == b"\x1b!\xb8"


def test_status_commands() -> None:
    assert realtime_status_request(1) == b"\x10\x04\x01"  # DLE EOT 1
    assert realtime_status_request(4) == b"\x10\x04\x04"
    assert asb_enable() == b"\x1d\x61\xff"  # GS a 255
    assert asb_enable(0) == b"\x1d\x61\x00"  # disables ASB
    with pytest.raises(ValueError, match=r"1\.\.4"):
        realtime_status_request(5)


# --------------------------------------------------------------------------------------------
# Receipt validation


def test_what_a_profile_cannot_print_is_refused() -> None:
    profile = load_profile("generic-80mm")
    bare = dataclasses.replace(profile, name="bare", qr=False, barcodes=(), cut=False)
    with pytest.raises(ValueError, match="bare: no native QR"):
        Receipt(bare).qr(CODE)
    with pytest.raises(ValueError, match="bare: no EAN13 barcodes"):
        Receipt(bare).barcode("400638133393", "EAN13")
    with pytest.raises(ValueError, match="no autocutter"):
        Receipt(bare).cut()
    with pytest.raises(ValueError, match="no code page 'cp932'"):
        Receipt(profile, "cp932")
    receipt = Receipt(profile)
    with pytest.raises(ValueError, match="check digit should be 1"):
        receipt.barcode("4006381333932", "EAN13")
    with pytest.raises(ValueError, match="12 or 13 digits"):
        receipt.barcode("40063813339", "EAN13")
    with pytest.raises(ValueError, match="printable ASCII"):
        receipt.barcode("CAFÉ", "CODE128")
    with pytest.raises(ValueError, match="underline"):
        receipt.text("x", underline=3)
    with pytest.raises(ValueError, match="module size"):
        receipt.qr(CODE, module_size=17)
    with pytest.raises(ValueError, match="same number of dots"):
        receipt.logo([[True], [True, False]])
    with pytest.raises(ValueError, match="576 dots wide"):
        receipt.logo([[True] * 577])


def test_a_barcode_too_wide_for_the_paper_is_refused() -> None:
    narrow = Receipt(load_profile("generic-58mm"))  # 384 dots: 233 modules x 2 = 466 > 384
    assert not narrow.fits_barcode(CODE, "CODE128")
    assert narrow.fits_barcode("CPN-1234", "CODE128")  # 123 modules x 3 = 369
    assert narrow.fits_barcode("400638133393", "EAN13")
    assert not narrow.fits_barcode("40063813339", "EAN13")  # invalid data does not fit either
    with pytest.raises(ValueError, match="do not fit 384 dots"):
        narrow.barcode(CODE, "CODE128")
    assert Receipt(load_profile("generic-80mm")).fits_barcode(CODE, "CODE128")


def test_code128_escapes_its_brace() -> None:
    job = Receipt(load_profile("generic-80mm")).barcode("a{b", "CODE128").build()
    assert job.endswith(b"\x1dkI\x06{Ba{{b")  # '{' is sent doubled in code set B


# --------------------------------------------------------------------------------------------
# Bars, for the simulator's drawing


def test_ean13_modules() -> None:
    modules = bars("EAN13", "4006381333931")
    assert modules is not None
    drawn = "".join("1" if m else "0" for m in modules)
    # 101, digits 006381 with parity LGLLGG (first digit 4), 01010, 333931 in R, 101.
    assert drawn == (
        "101"
        "0001101" "0100111" "0101111" "0111101" "0001001" "0110011"
        "01010"
        "1000010" "1000010" "1000010" "1110100" "1000010" "1100110"
        "101"
    )  # fmt: skip


def test_code128_modules() -> None:
    modules = bars("CODE128", "A")
    assert modules is not None
    drawn = "".join("1" if m else "0" for m in modules)
    # START B (104), 'A' (33), check (104 + 1 x 33) % 103 = 34 ('B'), STOP.
    assert drawn == "11010010000" + "10100011000" + "10001011000" + "1100011101011"
    assert bars("CODE128", "é") is None
    assert bars("EAN13", "123") is None


# --------------------------------------------------------------------------------------------
# Status, both ways


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_asb_round_trip(status: PrinterStatus) -> None:
    block = encode_asb(status)
    assert block[0] & 0x93 == 0x10  # first byte 0xx1xx00
    assert all(b & 0x90 == 0 for b in block[1:])  # others 0xx0xxxx
    decoder = StatusDecoder()
    assert decoder.feed(block) == [AutoStatus(status, block)]


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_realtime_round_trip(status: PrinterStatus) -> None:
    decoder = StatusDecoder()
    for n in (1, 2, 3, 4):
        decoder.expect(n)
    stream = b"".join(encode_realtime_status(n, status) for n in (1, 2, 3, 4))
    assert all(b & 0x93 == 0x12 for b in stream)  # 0xx1xx10
    replies = decoder.feed(stream)
    assert [r.n for r in replies if isinstance(r, RealtimeStatus)] == [1, 2, 3, 4]
    # The four replies together say everything.
    known = PrinterStatus()
    for reply in replies:
        assert isinstance(reply, RealtimeStatus)
        known = reply.update(known)
    assert known == status


def test_real_printer_bytes() -> None:
    decoder = StatusDecoder()
    for n in (1, 2, 4):
        decoder.expect(n)
    # Paper end: DLE EOT 1 offline (0x1A), 2 stopped by paper end (0x32), 4 near end and end.
    replies = decoder.feed(b"\x1a\x32\x7e")
    status = PrinterStatus()
    for reply in replies:
        assert isinstance(reply, RealtimeStatus)
        status = reply.update(status)
    assert status == PrinterStatus(online=False, paper_out=True, paper_near_end=True)
    # An ASB block for the cover open: offline + cover (0x38), no error, paper fine.
    assert decoder.feed(b"\x38\x00\x00\x00") == [
        AutoStatus(PrinterStatus(online=False, cover_open=True), b"\x38\x00\x00\x00")
    ]
    assert RealtimeStatus(1, 0x16).status == PrinterStatus()  # drawer pin high: still online


def test_a_realtime_reply_covers_only_its_fields() -> None:
    before = PrinterStatus(online=False, cover_open=True)
    assert RealtimeStatus(4, 0x12).update(before) == before  # paper fine: nothing else changes
    assert RealtimeStatus(1, 0x12).update(before) == PrinterStatus(cover_open=True)


def _stream() -> tuple[bytes, list[int]]:
    healthy, out = PrinterStatus(), PrinterStatus(online=False, paper_out=True)
    stream = (
        encode_asb(healthy)
        + encode_realtime_status(1, healthy)
        + b"\xff"  # garbage
        + encode_asb(out)[:2]
        + b"\x13"  # XOFF inside an ASB block is flow control, not part of it
        + encode_asb(out)[2:]
        + encode_realtime_status(4, out)
        + b"\x12"  # a reply nobody asked for: garbage
    )
    return stream, [1, 4]


def _decode(chunks: list[bytes], expected: list[int]) -> tuple[list[StatusReply], int]:
    decoder = StatusDecoder()
    for n in expected:
        decoder.expect(n)
    replies = [r for chunk in chunks for r in decoder.feed(chunk)]
    return [r for r in replies if not isinstance(r, Garbage)], decoder.garbage


def test_status_stream_in_every_chunking() -> None:
    stream, expected = _stream()
    whole, garbage = _decode([stream], expected)
    out = PrinterStatus(online=False, paper_out=True)
    assert whole == [
        AutoStatus(PrinterStatus(), encode_asb(PrinterStatus())),
        RealtimeStatus(1, 0x12),
        AutoStatus(out, encode_asb(out)),
        RealtimeStatus(4, 0x72),
    ]
    assert garbage == 2
    cuts = range(1, len(stream))
    for mask in range(1 << len(cuts)):  # every way to cut the stream into chunks
        points = [0, *(c for i, c in enumerate(cuts) if mask >> i & 1), len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
        assert _decode(chunks, expected) == (whole, garbage)


def test_a_broken_asb_block_is_garbage() -> None:
    decoder = StatusDecoder()
    decoder.expect(1)
    # An ASB first byte, then a reply-shaped byte: the two bytes before were not a block.
    assert decoder.feed(b"\x10\x00\x12") == [Garbage(2), RealtimeStatus(1, 0x12)]
    assert decoder.pending == ()
    decoder.expect(2)
    decoder.cancel_expected()
    assert decoder.feed(b"\x12") == [Garbage(1)]  # late: nobody waits for it any more


@given(st.binary(max_size=200), st.lists(st.integers(1, 4), max_size=8))
def test_status_decoder_never_raises(data: bytes, expected: list[int]) -> None:
    decoder = StatusDecoder()
    for n in expected:
        decoder.expect(n)
    replies = decoder.feed(data)
    used = sum(
        r.count if isinstance(r, Garbage) else 1 if isinstance(r, RealtimeStatus) else 4
        for r in replies
    )
    assert used <= len(data)


# --------------------------------------------------------------------------------------------
# The printer side


def _parse(chunks: list[bytes]) -> list[Command]:
    parser = CommandParser()
    return [c for chunk in chunks for c in parser.feed(chunk)]


@pytest.mark.parametrize("profile", PROFILES)
def test_coupon_parses_back_to_its_commands(profile: str) -> None:
    receipt = coupon(profile, "CPN-1234")  # short enough for a CODE128 on 58 mm
    job = receipt.build()
    assert _parse([job]) == list(receipt.commands)
    assert _parse([job[i : i + 1] for i in range(len(job))]) == list(receipt.commands)


def test_parser_reads_other_forms_and_skips_what_it_does_not_model() -> None:
    commands = _parse(
        [
            b"\x1b@",
            b"\x1bp\x00\x19\xfa",  # ESC p: drawer kick, 3 arguments
            b"\x1bE\xff",  # ESC E: only bit 0 counts
            b"\x1dk\x02400638133393\x00",  # GS k function A: EAN13, NUL-terminated
            b"\x1d(L\x02\x00\x30\x45",  # GS ( L: graphics, skipped by its length
            b"\x1dV\x01",  # GS V 1: partial cut in place
            b"\x10\x04\x02",  # DLE EOT 2
            b"\x1d\x61\x08",  # GS a 8
            b"\x07\x1b\x00",  # BEL; ESC + an unknown byte: the prefix is dropped alone
            b"abc\r\n",
        ]
    )
    assert commands == [
        Initialize(),
        Unknown(b"\x1bp\x00\x19\xfa"),
        Bold(True),
        Barcode("EAN13", b"400638133393"),
        Unknown(b"\x1d(L\x02\x00\x30\x45"),
        Cut(partial=True, feed=None),
        StatusRequest(2),
        EnableAsb(8),
        Unknown(b"\x07"),
        Unknown(b"\x1b"),
        Unknown(b"\x00"),
        Text(b"abc"),
        Unknown(b"\r"),
        LineFeed(),
    ]


def test_parser_holds_partial_commands() -> None:
    parser = CommandParser()
    job = Receipt(load_profile("generic-80mm")).qr(CODE).build()
    assert parser.feed(job[:-3]) != []
    assert parser.feed(job[-3:-1]) == []
    assert parser.feed(job[-1:]) == [QrPrint()]
    raster = encode(Raster(1, 1, b"\x80"))
    assert parser.feed(raster[:-1]) == []
    assert parser.feed(raster[-1:]) == [Raster(1, 1, b"\x80")]
    assert parser.feed(b"pending text") == []  # text waits for the LF that prints it
    assert parser.feed(b"\n") == [Text(b"pending text"), LineFeed()]


def test_oversized_lengths_do_not_stall_the_parser() -> None:
    # A raster header claiming 64 KiB x 4095 rows is garbage, not 268 MB to wait for.
    commands = _parse([b"\x1dv0\x00\xff\xff\xff\x0f" + b"A\n"])
    assert commands == [Unknown(b"\x1dv0\x00\xff\xff\xff\x0f"), Text(b"A"), LineFeed()]


@given(st.binary(max_size=300), st.data())
def test_command_parser_never_raises_and_ignores_chunking(data: bytes, draw: st.DataObject) -> None:
    whole = _parse([data])
    cuts = sorted(draw.draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=10)))
    points = [0, *(c for c in cuts if c < len(data)), len(data)]
    assert _parse([data[a:b] for a, b in itertools.pairwise(points)]) == whole
    # What it parsed encodes back to bytes that parse to the same commands (a LF ends the last:
    # an unknown ESC alone waits for the byte after it).
    assert _parse([b"".join(encode(c) for c in whole) + b"\n"]) == [*whole, LineFeed()]


_printable = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_ops: list[Callable[[Receipt], st.SearchStrategy[Receipt]]] = [
    lambda r: st.builds(
        lambda s, b, u, w, h, a: r.text(
            s, bold=b, underline=u, double_width=w, double_height=h, align=a
        ),
        _printable,
        st.booleans(),
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
        st.sampled_from(["left", "center", "right"]),
    ),
    lambda r: st.builds(r.rule, st.sampled_from("-=*")),
    lambda r: st.builds(
        lambda s, m, e: r.qr(s, module_size=m, ec=e),
        _printable.filter(bool),
        st.integers(1, 16),
        st.sampled_from("LMQH"),
    ),
    lambda r: st.builds(
        lambda d, h: r.barcode(d, "EAN13", height=h),
        st.text("0123456789", min_size=12, max_size=12),
        st.integers(1, 255),
    ),
    lambda r: st.builds(
        lambda d, hri: r.barcode(d, "CODE128", hri=hri) if r.fits_barcode(d, "CODE128") else r,
        st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20),
        st.booleans(),
    ),
    lambda r: st.builds(
        r.logo,
        st.integers(1, 40).flatmap(
            lambda w: st.lists(st.lists(st.booleans(), min_size=w, max_size=w), min_size=1)
        ),
    ),
    lambda r: st.builds(r.feed, st.integers(0, 255)),
    lambda r: st.builds(r.cut, st.booleans()),
]


@settings(max_examples=150)
@given(st.sampled_from(PROFILES), st.lists(st.integers(0, len(_ops) - 1), max_size=12), st.data())
def test_every_receipt_parses_back(profile: str, ops: list[int], draw: st.DataObject) -> None:
    receipt = Receipt(load_profile(profile))
    for op in ops:
        draw.draw(_ops[op](receipt))
    assert _parse([receipt.build()]) == list(receipt.commands)
    # What the parser's Text carries is what the encoder put on the wire: no control bytes.
    assert all(b >= 0x20 for c in receipt.commands if isinstance(c, Text) for b in c.data)


def test_qr_data_is_utf8() -> None:
    commands = Receipt(load_profile("generic-80mm")).qr("Grüße").commands
    assert QrStore("Grüße".encode()) in commands


# --------------------------------------------------------------------------------------------
# Profiles


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.dots_per_line // profile.chars_per_line == 12  # font A is 12 dots wide
    assert profile.code_pages["cp858"] == 19
    assert {"EAN13", "CODE128"} <= set(profile.barcodes)
    assert profile.qr
    assert profile.cut


def test_the_80_and_58_mm_profiles() -> None:
    wide, narrow = load_profile("generic-80mm"), load_profile("generic-58mm")
    assert (wide.dots_per_line, wide.chars_per_line, wide.asb) == (576, 48, True)
    assert (narrow.dots_per_line, narrow.chars_per_line) == (384, 32)


def _write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "shop.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return tmp_path


def _valid() -> dict[str, object]:
    return {
        "description": "a shop's own printer",
        "paper_width_mm": 80,
        "dots_per_line": 576,
        "chars_per_line": 48,
        "code_pages": {"cp858": 19},
        "qr": True,
        "barcodes": ["EAN13"],
        "asb": False,
        "cut": True,
    }


def test_a_profile_from_a_directory(tmp_path: Path) -> None:
    profile = load_profile("shop", directory=_write(tmp_path, _valid()))
    assert profile.description == "a shop's own printer"
    assert dict(profile.code_pages) == {"cp858": 19}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"qr": "yes"}, r"shop\.json: qr: expected bool, found 'yes'"),
        ({"dots_per_line": True}, r"dots_per_line: expected int, found True"),
        ({"chars_per_line": 4}, r"chars_per_line: expected 8\.\.128, found 4"),
        ({"code_pages": {"cp9999": 1}}, r"code_pages: 'cp9999' is not a Python codec"),
        ({"code_pages": {"cp437": 256}}, r"code_pages\.cp437: expected 0\.\.255"),
        ({"barcodes": ["QR"]}, r"barcodes: unknown symbology 'QR'"),
        ({"cutter": True}, r"unknown key\(s\) \['cutter'\]"),
        ({"cut": None}, r"cut: expected bool, found None"),
        ({"confirm": "gs_r"}, r"confirm: expected one of \['process_id', 'status'\], found 'gs_r'"),
    ],
)
def test_a_broken_profile_says_where_and_what(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_profile("shop", directory=_write(tmp_path, _valid() | change))


def test_a_missing_key_or_bad_json_or_no_file(tmp_path: Path) -> None:
    data = _valid()
    del data["asb"]
    with pytest.raises(ValueError, match=r"shop\.json: asb: missing"):
        load_profile("shop", directory=_write(tmp_path, data))
    with pytest.raises(ValueError, match=r"shop\.json: not valid JSON: .*line 1"):
        load_profile("shop", directory=_write(tmp_path, '{"qr": tru'))
    with pytest.raises(ValueError, match=r"shop\.json: expected a JSON object, found list"):
        load_profile("shop", directory=_write(tmp_path, "[]"))
    with pytest.raises(
        ValueError, match=r"generic-80m\.json: no such printer profile.*generic-80mm"
    ):
        load_profile("generic-80m")
    with pytest.raises(ValueError, match="expected a name like"):
        load_profile("../etc/passwd")
