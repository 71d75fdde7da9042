"""Barcode symbologies: validation for the encoder, and the bars for the printer simulator.

Only what the receipts use: EAN-13 and CODE128 code set B. `bars` returns one bool per module
(True = bar, no quiet zone), so a renderer draws `module_width` dots per entry, like a printer.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BarcodeKind", "bars", "ean13_check_digit", "escape_code128", "unescape_code128"]

BarcodeKind = Literal["EAN13", "CODE128"]

# EAN-13: left-half digits use the L (odd parity) or G (even parity) set, chosen per position by
# the first digit, which is not drawn itself; the right half uses R. Widths: space, bar, ...
_EAN_L = ("3211", "2221", "2122", "1411", "1132", "1231", "1114", "1312", "1213", "3112")
_EAN_PARITY = (
    "LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
    "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL",
)  # fmt: skip

# CODE128 symbol values 0..106 (ISO/IEC 15417), widths bar, space, bar, ... each 11 modules;
# 103-105 are START A/B/C and 106 is STOP (13 modules, ending on a bar).
_C128 = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312",  # 0-7
    "132212", "221213", "221312", "231212", "112232", "122132", "122231", "113222",  # 8-15
    "123122", "123221", "223211", "221132", "221231", "213212", "223112", "312131",  # 16-23
    "311222", "321122", "321221", "312212", "322112", "322211", "212123", "212321",  # 24-31
    "232121", "111323", "131123", "131321", "112313", "132113", "132311", "211313",  # 32-39
    "231113", "231311", "112133", "112331", "132131", "113123", "113321", "133121",  # 40-47
    "313121", "211331", "231131", "213113", "213311", "213131", "311123", "311321",  # 48-55
    "331121", "312113", "312311", "332111", "314111", "221411", "431111", "111224",  # 56-63
    "111422", "121124", "121421", "141122", "141221", "112214", "112412", "122114",  # 64-71
    "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111",  # 72-79
    "111242", "121142", "121241", "114212", "124112", "124211", "411212", "421112",  # 80-87
    "421211", "212141", "214121", "412121", "111143", "111341", "131141", "114113",  # 88-95
    "114311", "411113", "411311", "113141", "114131", "311141", "411131", "211412",  # 96-103
    "211214", "211232", "2331112",  # 104-106
)  # fmt: skip
_START_B, _STOP = 104, 106


def ean13_check_digit(digits12: str) -> str:
    """The check digit of 12 EAN digits: weights 1, 3, 1, 3, ... from the left."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return str(-total % 10)


def escape_code128(text: str) -> bytes:
    """`text` as the GS k data for code set B: printable ASCII, with '{' doubled."""
    if not text or any(not " " <= ch <= "~" for ch in text):
        raise ValueError(f"CODE128: expected printable ASCII (code set B), found {text!r}")
    return b"{B" + text.replace("{", "{{").encode("ascii")


def unescape_code128(data: bytes) -> str | None:
    """The text of GS k CODE128 data in code set B, or None for anything else."""
    if not data.startswith(b"{B"):
        return None
    body = data[2:]
    out, i = bytearray(), 0
    while i < len(body):
        if body[i] == 0x7B:  # '{' starts a code set switch or FNC unless doubled
            if body[i + 1 : i + 2] != b"{":
                return None
            i += 1
        out.append(body[i])
        i += 1
    return out.decode("ascii", "replace")


def _widths(pattern: str, *, bar_first: bool) -> list[bool]:
    modules: list[bool] = []
    bar = bar_first
    for width in pattern:
        modules += [bar] * int(width)
        bar = not bar
    return modules


def bars(kind: str, text: str) -> list[bool] | None:
    """The modules of `text` (EAN-13 digits, or CODE128 set B text); None if not drawable."""
    if kind == "EAN13":
        if len(text) != 13 or not text.isascii() or not text.isdigit():
            return None
        parity = _EAN_PARITY[int(text[0])]
        modules = [True, False, True]
        for i, d in enumerate(text[1:7]):
            code = _EAN_L[int(d)] if parity[i] == "L" else _EAN_L[int(d)][::-1]
            modules += _widths(code, bar_first=False)
        modules += [False, True, False, True, False]
        for d in text[7:]:
            modules += _widths(_EAN_L[int(d)], bar_first=True)
        return [*modules, True, False, True]
    if kind == "CODE128":
        if not text or any(not " " <= ch <= "~" for ch in text):
            return None
        values = [_START_B] + [ord(ch) - 32 for ch in text]
        check = (values[0] + sum(i * v for i, v in enumerate(values[1:], 1))) % 103
        modules = []
        for value in [*values, check, _STOP]:
            modules += _widths(_C128[value], bar_first=True)
        return modules
    return None
