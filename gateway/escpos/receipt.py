"""The receipt builder: text, rules, QR codes, barcodes and logos as ESC/POS for one profile.

Every method checks what it is given against the profile (paper width, code pages, QR, barcode
symbologies, cutter) and raises ValueError at once, so a job that cannot print is never sent.
Text modes are tracked, and a command is emitted only when a mode changes.
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Sequence
from typing import Literal, Self

from gateway.escpos.barcodes import BarcodeKind, ean13_check_digit, escape_code128
from gateway.escpos.commands import (
    Align,
    Barcode,
    BarcodeHeight,
    BarcodeHri,
    BarcodeModuleWidth,
    Bold,
    CharSize,
    Command,
    Cut,
    Initialize,
    Justify,
    LineFeed,
    PrintAndFeed,
    QrErrorCorrection,
    QrModel,
    QrModuleSize,
    QrPrint,
    QrStore,
    Raster,
    SelectCodePage,
    Text,
    Underline,
    encode,
)
from gateway.escpos.profiles import Profile

__all__ = ["Receipt"]

# Module widths tried for a barcode, widest first: 3 dots (0.375 mm at 203 dpi) scans well and
# is the printers' default; 2 is the narrowest a thermal head prints reliably.
_MODULE_WIDTHS = (3, 2)


class Receipt:
    """Builds one job: ESC @, the code page, then what the calls add, in order."""

    def __init__(self, profile: Profile, code_page: str = "cp858") -> None:
        if code_page not in profile.code_pages:
            raise ValueError(
                f"printer profile {profile.name}: no code page {code_page!r};"
                f" it has {sorted(profile.code_pages)}"
            )
        self.profile = profile
        self._codec = code_page
        self._commands: list[Command] = [
            Initialize(),
            SelectCodePage(profile.code_pages[code_page]),
        ]
        # The modes after ESC @.
        self._bold, self._underline, self._size = False, 0, (1, 1)
        self._align: Align = "left"

    @property
    def commands(self) -> tuple[Command, ...]:
        return tuple(self._commands)

    def build(self) -> bytes:
        return b"".join(encode(c) for c in self._commands)

    def text(
        self,
        s: str,
        *,
        bold: bool = False,
        underline: int = 0,
        double_width: bool = False,
        double_height: bool = False,
        align: Align = "left",
    ) -> Self:
        """Lines of text, wrapped at the words to the paper; "?" for what the code page lacks."""
        if underline not in (0, 1, 2):
            raise ValueError(f"underline: expected 0, 1 or 2 dots, found {underline}")
        width = 2 if double_width else 1
        self._modes(align, bold=bold, underline=underline, size=(width, 2 if double_height else 1))
        for line in _wrap(s, self.profile.chars_per_line // width):
            if line:
                raw = line.encode(self._codec, errors="replace")
                # No code page we know maps a printable character below 0x20; be sure anyway.
                self._commands.append(Text(bytes(b if b >= 0x20 else 0x3F for b in raw)))
            self._commands.append(LineFeed())
        return self

    def rule(self, char: str = "-") -> Self:
        """A full-width line of `char`."""
        if len(char) != 1:
            raise ValueError(f"rule: expected one character, found {char!r}")
        return self.text(char * self.profile.chars_per_line)

    def qr(
        self,
        data: str,
        *,
        module_size: int = 6,
        ec: Literal["L", "M", "Q", "H"] = "M",
        align: Align = "center",
    ) -> Self:
        """A QR code (model 2) drawn by the printer; `data` is sent as UTF-8."""
        if not self.profile.qr:
            raise ValueError(f"printer profile {self.profile.name}: no native QR codes")
        payload = data.encode("utf-8")
        if not 1 <= len(payload) <= 7089:
            raise ValueError(f"QR: expected 1..7089 bytes of data, found {len(payload)}")
        if not 1 <= module_size <= 16:
            raise ValueError(f"QR: module size: expected 1..16 dots, found {module_size}")
        self._modes(align)
        self._commands += [
            QrModel(2),
            QrModuleSize(module_size),
            QrErrorCorrection(ec),
            QrStore(payload),
            QrPrint(),
        ]
        return self

    def barcode(
        self,
        data: str,
        kind: BarcodeKind,
        *,
        height: int = 80,
        hri: bool = True,
        align: Align = "center",
    ) -> Self:
        """EAN-13 (12 digits, or 13 with a valid check digit) or CODE128 (printable ASCII).

        The module width is the widest that fits the paper; ValueError if none does (see
        `fits_barcode`).
        """
        payload = self._barcode_payload(data, kind)
        if not 1 <= height <= 255:
            raise ValueError(f"barcode height: expected 1..255 dots, found {height}")
        modules = _modules(kind, payload)
        widths = [w for w in _MODULE_WIDTHS if modules * w <= self.profile.dots_per_line]
        if not widths:
            raise ValueError(
                f"{kind} {data!r}: {modules} modules do not fit {self.profile.dots_per_line}"
                f" dots at {_MODULE_WIDTHS[-1]} dots each"
            )
        self._modes(align)
        self._commands += [
            BarcodeHeight(height),
            BarcodeModuleWidth(widths[0]),
            BarcodeHri(2 if hri else 0),  # human-readable digits below the bars
            Barcode(kind, payload),
        ]
        return self

    def fits_barcode(self, data: str, kind: BarcodeKind) -> bool:
        """Whether `barcode(data, kind)` would be accepted on this profile."""
        try:
            payload = self._barcode_payload(data, kind)
        except ValueError:
            return False
        return _modules(kind, payload) * _MODULE_WIDTHS[-1] <= self.profile.dots_per_line

    def logo(self, bitmap: Sequence[Sequence[bool]], *, align: Align = "center") -> Self:
        """A raster image, rows of dots (True = black), at most the paper's dots wide."""
        height = len(bitmap)
        width = len(bitmap[0]) if height else 0
        if not 1 <= height <= 4095 or not 1 <= width <= self.profile.dots_per_line:
            raise ValueError(
                f"logo: expected 1..{self.profile.dots_per_line} dots wide and 1..4095 high,"
                f" found {width}x{height}"
            )
        if any(len(row) != width for row in bitmap):
            raise ValueError("logo: every row must have the same number of dots")
        width_bytes = (width + 7) // 8
        data = bytearray(width_bytes * height)
        for y, row in enumerate(bitmap):
            for x, dot in enumerate(row):
                if dot:
                    data[y * width_bytes + x // 8] |= 0x80 >> (x % 8)
        self._modes(align)
        self._commands.append(Raster(width_bytes, height, bytes(data)))
        return self

    def feed(self, lines: int = 1) -> Self:
        if not 0 <= lines <= 255:
            raise ValueError(f"feed: expected 0..255 lines, found {lines}")
        self._commands.append(PrintAndFeed(lines))
        return self

    def cut(self, partial: bool = True) -> Self:
        """Feed the last line past the cutter, then cut (partial: one point left uncut)."""
        if not self.profile.cut:
            raise ValueError(f"printer profile {self.profile.name}: no autocutter")
        self._commands.append(Cut(partial=partial, feed=0))
        return self

    def _modes(
        self,
        align: Align,
        *,
        bold: bool | None = None,
        underline: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Emit the mode commands that change; None leaves a mode as it is."""
        if align != self._align:
            self._align = align
            self._commands.append(Justify(align))
        if bold is not None and bold != self._bold:
            self._bold = bold
            self._commands.append(Bold(bold))
        if underline is not None and underline != self._underline:
            self._underline = underline
            self._commands.append(Underline(underline))
        if size is not None and size != self._size:
            self._size = size
            self._commands.append(CharSize(*size))

    def _barcode_payload(self, data: str, kind: BarcodeKind) -> bytes:
        if kind not in self.profile.barcodes:
            raise ValueError(f"printer profile {self.profile.name}: no {kind} barcodes")
        if kind == "EAN13":
            if not (data.isascii() and data.isdigit() and len(data) in (12, 13)):
                raise ValueError(f"EAN13: expected 12 or 13 digits, found {data!r}")
            check = ean13_check_digit(data[:12])
            if len(data) == 13 and data[12] != check:
                raise ValueError(f"EAN13: {data}: check digit should be {check}")
            return (data[:12] + check).encode("ascii")
        payload = escape_code128(data)
        if len(payload) > 255:
            raise ValueError(f"CODE128: at most 255 bytes of data, found {len(payload)}")
        return payload


def _modules(kind: BarcodeKind, payload: bytes) -> int:
    """Module count without quiet zones: EAN-13 is 95; CODE128 11 per symbol, stop 13."""
    if kind == "EAN13":
        return 95
    symbols = len(payload) - 2 - payload.count(b"{{")
    return 11 * (symbols + 2) + 13  # start, data, check, stop


def _wrap(s: str, columns: int) -> list[str]:
    lines: list[str] = []
    for paragraph in s.splitlines() or [""]:
        # A control character would reach the printer as a command: it prints as "?".
        clean = "".join(
            " " if ch == "\t" else "?" if unicodedata.category(ch) == "Cc" else ch
            for ch in paragraph
        )
        lines += textwrap.wrap(clean, columns) or [""]
    return lines
