"""ESC/POS commands as values: `encode` for the host side, `CommandParser` for the printer side.

The parser is sans-I/O: feed it bytes as they come off the line, in any chunking, and it returns
the commands completed so far. Text is held until a control byte ends it (a printer prints a
line at LF anyway), so the commands do not depend on how the bytes were chunked. Anything it
does not know becomes `Unknown(bytes)`; nothing here raises on input bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, assert_never

__all__ = [
    "BARCODE_KINDS",
    "Align",
    "Barcode",
    "BarcodeHeight",
    "BarcodeHri",
    "BarcodeModuleWidth",
    "Bold",
    "CharSize",
    "Command",
    "CommandParser",
    "Cut",
    "EnableAsb",
    "Initialize",
    "Justify",
    "LineFeed",
    "PrintAndFeed",
    "PrintMode",
    "ProcessIdRequest",
    "QrErrorCorrection",
    "QrModel",
    "QrModuleSize",
    "QrPrint",
    "QrStore",
    "Raster",
    "SelectCodePage",
    "StatusRequest",
    "Text",
    "Underline",
    "Unknown",
    "encode",
]

Align = Literal["left", "center", "right"]
QrLevel = Literal["L", "M", "Q", "H"]

LF, DLE, EOT, ESC, FS, GS = 0x0A, 0x10, 0x04, 0x1B, 0x1C, 0x1D


@dataclass(frozen=True, slots=True)
class Initialize:
    """ESC @: clear the buffer, reset the modes."""


@dataclass(frozen=True, slots=True)
class Text:
    data: bytes  # in the selected code page, no control bytes


@dataclass(frozen=True, slots=True)
class LineFeed:
    """LF: print the line buffer, feed one line."""


@dataclass(frozen=True, slots=True)
class PrintAndFeed:
    lines: int  # ESC d n


@dataclass(frozen=True, slots=True)
class SelectCodePage:
    table: int  # ESC t n


@dataclass(frozen=True, slots=True)
class Bold:
    on: bool  # ESC E n


@dataclass(frozen=True, slots=True)
class PrintMode:
    """ESC ! n: font, bold, double height and width, underline in one byte (n is kept whole)."""

    n: int

    @property
    def font_b(self) -> bool:
        return bool(self.n & 0x01)

    @property
    def bold(self) -> bool:
        return bool(self.n & 0x08)

    @property
    def height(self) -> int:
        return 2 if self.n & 0x10 else 1

    @property
    def width(self) -> int:
        return 2 if self.n & 0x20 else 1

    @property
    def underline(self) -> bool:
        return bool(self.n & 0x80)


@dataclass(frozen=True, slots=True)
class ProcessIdRequest:
    """GS ( H fn 48: answered with `pid` once everything before it is processed (printed)."""

    pid: bytes  # 4 bytes, each an ASCII digit or letter (0x30..0x7E)


@dataclass(frozen=True, slots=True)
class Underline:
    dots: int  # ESC - n: 0 off, 1 or 2 dots thick


@dataclass(frozen=True, slots=True)
class CharSize:
    width: int  # GS ! n: magnification 1..8 each
    height: int


@dataclass(frozen=True, slots=True)
class Justify:
    align: Align  # ESC a n


@dataclass(frozen=True, slots=True)
class QrModel:
    model: int  # GS ( k fn 65: 1, 2, or 3 (micro QR)


@dataclass(frozen=True, slots=True)
class QrModuleSize:
    dots: int  # GS ( k fn 67: 1..16


@dataclass(frozen=True, slots=True)
class QrErrorCorrection:
    level: QrLevel  # GS ( k fn 69


@dataclass(frozen=True, slots=True)
class QrStore:
    data: bytes  # GS ( k fn 80: the symbol's data, stored until printed


@dataclass(frozen=True, slots=True)
class QrPrint:
    """GS ( k fn 81: print the stored symbol."""


@dataclass(frozen=True, slots=True)
class BarcodeHeight:
    dots: int  # GS h n


@dataclass(frozen=True, slots=True)
class BarcodeModuleWidth:
    dots: int  # GS w n


@dataclass(frozen=True, slots=True)
class BarcodeHri:
    position: int  # GS H n: 0 none, 1 above, 2 below, 3 both


@dataclass(frozen=True, slots=True)
class Barcode:
    kind: str  # one of BARCODE_KINDS
    data: bytes  # as sent: CODE128 starts with its code set, e.g. b"{B"


@dataclass(frozen=True, slots=True)
class Raster:
    width_bytes: int  # GS v 0 m: 8 dots per byte, most significant bit leftmost, 1 = black
    height: int
    data: bytes
    mode: int = 0  # 0 normal, 1 double width, 2 double height, 3 quadruple


@dataclass(frozen=True, slots=True)
class Cut:
    partial: bool
    feed: int | None = 0  # GS V 65/66 n: feed to the cutter (+ n) first; None: GS V 0/1, in place


@dataclass(frozen=True, slots=True)
class StatusRequest:
    n: int  # DLE EOT n, 1..4: answered at once with one status byte


@dataclass(frozen=True, slots=True)
class EnableAsb:
    mask: int  # GS a n


@dataclass(frozen=True, slots=True)
class Unknown:
    data: bytes  # a command or byte the parser does not model


Command = (
    Initialize
    | Text
    | LineFeed
    | PrintAndFeed
    | PrintMode
    | ProcessIdRequest
    | SelectCodePage
    | Bold
    | Underline
    | CharSize
    | Justify
    | QrModel
    | QrModuleSize
    | QrErrorCorrection
    | QrStore
    | QrPrint
    | BarcodeHeight
    | BarcodeModuleWidth
    | BarcodeHri
    | Barcode
    | Raster
    | Cut
    | StatusRequest
    | EnableAsb
    | Unknown
)

# GS k function B (m = 65..78): symbology per m. Function A (m = 0..6, NUL-terminated) maps onto
# the first seven.
BARCODE_KINDS: Final = (
    "UPC-A",
    "UPC-E",
    "EAN13",
    "EAN8",
    "CODE39",
    "ITF",
    "CODABAR",
    "CODE93",
    "CODE128",
    "GS1-128",
    "GS1-DATABAR-OMNI",
    "GS1-DATABAR-TRUNCATED",
    "GS1-DATABAR-LIMITED",
    "GS1-DATABAR-EXPANDED",
)
_TEXT = re.compile(rb"[\x20-\xff]+")
_TEXT_MAX = 4096  # a run longer than this is split (a printer wraps the line long before)
_RASTER_MAX = 1 << 20  # bytes; a bigger header is taken for garbage, not buffered for
_NUL_MAX = 255  # GS k function A data without its NUL terminator within this is garbage
_ALIGNS: Final[tuple[Align, ...]] = ("left", "center", "right")
_QR_LEVELS: Final[tuple[QrLevel, ...]] = ("L", "M", "Q", "H")


def _check(value: int, what: str, low: int = 0, high: int = 255) -> int:
    if not low <= value <= high:
        raise ValueError(f"{what}: expected {low}..{high}, found {value}")
    return value


def _qr(fn: int, payload: bytes) -> bytes:
    # GS ( k pL pH cn fn [params]: the length counts cn, fn and the parameters; cn 49 is QR.
    size = len(payload) + 2
    return bytes([GS, 0x28, 0x6B, size & 0xFF, size >> 8, 49, fn]) + payload


def encode(command: Command) -> bytes:  # noqa: PLR0911, PLR0912 - one case per command
    """The bytes of one command; ValueError for a value the wire cannot carry."""
    match command:
        case Initialize():
            return b"\x1b@"
        case Text(data):
            if any(b < 0x20 for b in data):
                raise ValueError("text: control bytes would be read as commands")
            return data
        case LineFeed():
            return b"\n"
        case PrintAndFeed(lines):
            return bytes([ESC, 0x64, _check(lines, "feed lines")])
        case SelectCodePage(table):
            return bytes([ESC, 0x74, _check(table, "code page")])
        case PrintMode(n):
            return bytes([ESC, 0x21, _check(n, "print mode")])
        case ProcessIdRequest(pid):
            if len(pid) != 4 or not all(0x30 <= b <= 0x7E for b in pid):
                raise ValueError("process id: expected 4 bytes from 0x30 to 0x7E")
            return bytes([GS, 0x28, 0x48, 6, 0, 48, 48]) + pid
        case Bold(on):
            return bytes([ESC, 0x45, int(on)])
        case Underline(dots):
            return bytes([ESC, 0x2D, _check(dots, "underline", 0, 2)])
        case CharSize(width, height):
            n = (_check(width, "width", 1, 8) - 1) << 4 | (_check(height, "height", 1, 8) - 1)
            return bytes([GS, 0x21, n])
        case Justify(align):
            return bytes([ESC, 0x61, _ALIGNS.index(align)])
        case QrModel(model):
            return _qr(65, bytes([48 + _check(model, "QR model", 1, 3), 0]))
        case QrModuleSize(dots):
            return _qr(67, bytes([_check(dots, "QR module size", 1, 16)]))
        case QrErrorCorrection(level):
            return _qr(69, bytes([48 + _QR_LEVELS.index(level)]))
        case QrStore(data):
            _check(len(data), "QR data length", 1, 7089)
            return _qr(80, b"0" + data)  # m = 48
        case QrPrint():
            return _qr(81, b"0")
        case BarcodeHeight(dots):
            return bytes([GS, 0x68, _check(dots, "barcode height", 1)])
        case BarcodeModuleWidth(dots):
            return bytes([GS, 0x77, _check(dots, "barcode module width", 1, 6)])
        case BarcodeHri(position):
            return bytes([GS, 0x48, _check(position, "HRI position", 0, 3)])
        case Barcode(kind, data):
            if kind not in BARCODE_KINDS:
                raise ValueError(f"barcode: unknown symbology {kind!r}")
            m = 65 + BARCODE_KINDS.index(kind)
            return bytes([GS, 0x6B, m, _check(len(data), "barcode data length", 1)]) + data
        case Raster(width_bytes, height, data, mode):
            _check(width_bytes, "raster width in bytes", 1, 0xFFFF)
            _check(height, "raster height", 1, 4095)
            _check(width_bytes * height, "raster size in bytes", 1, _RASTER_MAX)
            if len(data) != width_bytes * height:
                raise ValueError("raster: data must be width_bytes * height bytes")
            return (
                bytes([GS, 0x76, 0x30, _check(mode, "raster mode", 0, 3)])
                + width_bytes.to_bytes(2, "little")
                + height.to_bytes(2, "little")
                + data
            )
        case Cut(partial, feed):
            if feed is None:
                return bytes([GS, 0x56, int(partial)])
            return bytes([GS, 0x56, 66 if partial else 65, _check(feed, "cut feed")])
        case StatusRequest(n):
            return bytes([DLE, EOT, _check(n, "status request", 1, 4)])
        case EnableAsb(mask):
            return bytes([GS, 0x61, _check(mask, "ASB mask")])
        case Unknown(data):
            return data
        case _:
            assert_never(command)


# --------------------------------------------------------------------------------------------
# Printer side

# Commands with fixed-size arguments, (prefix, code) -> argument bytes. `_simple` makes values of
# the modelled ones; the others are skipped whole, so their arguments are not printed as text.
_FIXED: Final[dict[tuple[int, int], int]] = {
    **{(ESC, ord(c)): 1 for c in " !%-3=EGJKMRTVadertu{"},
    **{(ESC, ord(c)): 0 for c in "2<@LS"},
    (ESC, ord("$")): 2,
    (ESC, ord("\\")): 2,
    (ESC, ord("c")): 2,  # ESC c 3/4/5 n: paper sensors, panel buttons
    (ESC, ord("p")): 3,  # drawer kick pulse
    (ESC, ord("W")): 8,
    **{(GS, ord(c)): 1 for c in "!/BHIabfhjrw"},
    **{(GS, ord(c)): 2 for c in "$LPW\\"},
    (GS, ord(":")): 0,
    (GS, ord("^")): 3,
    (FS, ord(".")): 0,
    (FS, ord("&")): 0,
    (FS, ord("p")): 2,  # print NV bit image
    (DLE, 0x05): 1,  # DLE ENQ n
}

_Parsed = tuple[Command, int] | None  # the command and where the next one starts; None: wait


class CommandParser:
    """Printer side: bytes off the line in, commands out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._text = bytearray()

    def feed(self, data: bytes) -> list[Command]:
        """The commands completed by `data`; a partial command waits for the next call."""
        self._buf += data
        buf, pos = self._buf, 0
        out: list[Command] = []
        while pos < len(buf):
            run = _TEXT.match(buf, pos)
            if run is not None:
                self._text += run.group()
                while len(self._text) >= _TEXT_MAX:
                    out.append(Text(bytes(self._text[:_TEXT_MAX])))
                    del self._text[:_TEXT_MAX]
                pos = run.end()
                continue
            parsed = _control(buf, pos)
            if parsed is None:
                break
            if self._text:
                out.append(Text(bytes(self._text)))
                self._text.clear()
            out.append(parsed[0])
            pos = parsed[1]
        del buf[:pos]
        return out


def _control(buf: bytearray, pos: int) -> _Parsed:  # noqa: PLR0911 - one return per shape
    """The control command at `pos` (a byte below 0x20)."""
    first = buf[pos]
    if first == LF:
        return LineFeed(), pos + 1
    if first not in (ESC, GS, FS, DLE):
        return Unknown(bytes([first])), pos + 1
    if pos + 1 >= len(buf):
        return None
    code = buf[pos + 1]
    if first == GS and code == 0x28:  # GS ( X pL pH ...: length-prefixed functions
        return _gs_paren(buf, pos)
    if first == FS and code == 0x28:
        return _length_prefixed(buf, pos)
    if first == GS and code == 0x6B:
        return _barcode(buf, pos)
    if first == GS and code == 0x76:
        return _raster(buf, pos)
    if first == GS and code == 0x56:
        return _cut(buf, pos)
    if (first, code) == (DLE, EOT):
        return _status_request(buf, pos)
    args = _FIXED.get((first, code))
    if args is None:
        # Unknown: drop the prefix byte alone, the next byte is parsed afresh.
        return Unknown(bytes([first])), pos + 1
    end = pos + 2 + args
    if end > len(buf):
        return None
    raw = bytes(buf[pos:end])
    return _simple(first, code, raw[2:]) or Unknown(raw), end


def _simple(first: int, code: int, args: bytes) -> Command | None:  # noqa: PLR0911
    """A modelled fixed-size command from its arguments; None if not modelled or out of range."""
    n = args[0] if args else 0
    match first, chr(code):
        case (0x1B, "@"):
            return Initialize()
        case (0x1B, "E"):
            return Bold(bool(n & 1))
        case (0x1B, "-") if n in (0, 1, 2, 48, 49, 50):
            return Underline(n % 48)
        case (0x1B, "a") if n in (0, 1, 2, 48, 49, 50):
            return Justify(_ALIGNS[n % 48])
        case (0x1B, "d"):
            return PrintAndFeed(n)
        case (0x1B, "t"):
            return SelectCodePage(n)
        case (0x1B, "!"):
            return PrintMode(n)
        case (0x1D, "!") if not n & 0x88:
            return CharSize((n >> 4) + 1, (n & 0x0F) + 1)
        case (0x1D, "h") if n:
            return BarcodeHeight(n)
        case (0x1D, "w") if 1 <= n <= 6:
            return BarcodeModuleWidth(n)
        case (0x1D, "H") if n in (0, 1, 2, 3, 48, 49, 50, 51):
            return BarcodeHri(n % 48)
        case (0x1D, "a"):
            return EnableAsb(n)
    return None


def _length_prefixed(buf: bytearray, pos: int) -> _Parsed:
    """X Y fn pL pH data: skipped whole by its length."""
    if pos + 5 > len(buf):
        return None
    end = pos + 5 + (buf[pos + 3] | buf[pos + 4] << 8)
    if end > len(buf):
        return None
    return Unknown(bytes(buf[pos:end])), end


def _gs_paren(buf: bytearray, pos: int) -> _Parsed:
    """GS ( k with cn 49 is QR, GS ( H fn 48 a process id; every other GS ( function is skipped
    by its length."""
    head = _length_prefixed(buf, pos)
    if head is None:
        return None
    raw, end = bytes(buf[pos : head[1]]), head[1]
    if raw[2] == 0x48 and len(raw) == 11 and raw[5:7] == b"00":
        pid = raw[7:]
        return (ProcessIdRequest(pid) if all(0x30 <= b <= 0x7E for b in pid) else Unknown(raw)), end
    if raw[2] != 0x6B or len(raw) < 7 or raw[5] != 49:
        return Unknown(raw), end
    fn, params = raw[6], raw[7:]
    command: Command | None = None
    if fn == 65 and len(params) == 2 and 49 <= params[0] <= 51:
        command = QrModel(params[0] - 48)
    elif fn == 67 and len(params) == 1 and 1 <= params[0] <= 16:
        command = QrModuleSize(params[0])
    elif fn == 69 and len(params) == 1 and 48 <= params[0] <= 51:
        command = QrErrorCorrection(_QR_LEVELS[params[0] - 48])
    elif fn == 80 and 2 <= len(params) <= 7090 and params[0] == 48:
        command = QrStore(params[1:])
    elif fn == 81 and params == b"0":
        command = QrPrint()
    return command or Unknown(raw), end


def _barcode(buf: bytearray, pos: int) -> _Parsed:  # noqa: PLR0911 - waits per shape
    if pos + 3 > len(buf):
        return None
    m = buf[pos + 2]
    if m <= 6:  # function A: data up to a NUL
        nul = buf.find(0, pos + 3, pos + 4 + _NUL_MAX)
        if nul < 0:
            if len(buf) - pos - 3 <= _NUL_MAX:
                return None
            return Unknown(bytes(buf[pos : pos + 3])), pos + 3
        if nul == pos + 3:
            return Unknown(bytes(buf[pos : nul + 1])), nul + 1  # no data: nothing to print
        return Barcode(BARCODE_KINDS[m], bytes(buf[pos + 3 : nul])), nul + 1
    if 65 <= m < 65 + len(BARCODE_KINDS):
        if pos + 4 > len(buf):
            return None
        end = pos + 4 + buf[pos + 3]
        if end > len(buf):
            return None
        if end == pos + 4:
            return Unknown(bytes(buf[pos:end])), end
        return Barcode(BARCODE_KINDS[m - 65], bytes(buf[pos + 4 : end])), end
    return Unknown(bytes(buf[pos : pos + 3])), pos + 3


def _raster(buf: bytearray, pos: int) -> _Parsed:
    """GS v 0 m xL xH yL yH d1...dk, k = x * y."""
    if pos + 8 > len(buf):
        return None
    head = bytes(buf[pos : pos + 8])
    mode = head[3] % 48 if head[3] in (0, 1, 2, 3, 48, 49, 50, 51) else -1
    width, height = head[4] | head[5] << 8, head[6] | head[7] << 8
    if head[2] != 0x30 or mode < 0 or not width or not 1 <= height <= 4095:
        return Unknown(head[:3]), pos + 3
    if width * height > _RASTER_MAX:
        return Unknown(head), pos + 8
    end = pos + 8 + width * height
    if end > len(buf):
        return None
    return Raster(width, height, bytes(buf[pos + 8 : end]), mode), end


def _cut(buf: bytearray, pos: int) -> _Parsed:
    if pos + 3 > len(buf):
        return None
    m = buf[pos + 2]
    if m in (0, 1, 48, 49):
        return Cut(partial=bool(m & 1), feed=None), pos + 3
    if m in (65, 66, 97, 98, 103, 104):  # functions B, C, D carry a feed amount
        if pos + 4 > len(buf):
            return None
        if m in (65, 66):
            return Cut(partial=m == 66, feed=buf[pos + 3]), pos + 4
        return Unknown(bytes(buf[pos : pos + 4])), pos + 4
    return Unknown(bytes(buf[pos : pos + 3])), pos + 3


def _status_request(buf: bytearray, pos: int) -> _Parsed:
    if pos + 3 > len(buf):
        return None
    n = buf[pos + 2]
    if 1 <= n <= 4:
        return StatusRequest(n), pos + 3
    if n in (7, 8):  # DLE EOT 7/8 a: ink and paper-layout status, not modelled
        if pos + 4 > len(buf):
            return None
        return Unknown(bytes(buf[pos : pos + 4])), pos + 4
    return Unknown(bytes(buf[pos : pos + 3])), pos + 3
