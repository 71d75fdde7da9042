"""Printer profiles: what a model can do, as data (gateway/escpos/profiles/<name>.json).

A profile is validated when it is loaded; a problem raises ValueError naming the file and the
key, so a typo in a store's profile fails at start, not on the first coupon.
"""

from __future__ import annotations

import codecs
import json
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from gateway.escpos.commands import BARCODE_KINDS

__all__ = ["Profile", "load_profile"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    paper_width_mm: int
    dots_per_line: int  # printable width at 203 dpi: 576 on 80 mm paper, 384 on 58 mm
    chars_per_line: int  # font A at normal size
    code_pages: Mapping[str, int]  # Python codec name -> ESC t n
    qr: bool  # native QR (GS ( k)
    barcodes: tuple[str, ...]  # GS k symbologies, e.g. "EAN13", "CODE128"
    asb: bool  # Automatic Status Back (GS a)
    cut: bool  # an autocutter (GS V)
    # How a job is confirmed printed. "process_id": GS ( H, answered only once the printer has
    # printed everything before it (Epson TM models). "status": a DLE EOT poll after the last
    # byte; real-time, so answered ahead of what is still in the printer's buffer: a fault
    # while the buffer prints is missed. Optional in a profile file, "status" if left out.
    confirm: str = "status"


# Every key is required: a profile says what the printer can do, nothing is assumed.
_KEYS: dict[str, type] = {
    "description": str,
    "paper_width_mm": int,
    "dots_per_line": int,
    "chars_per_line": int,
    "code_pages": dict,
    "qr": bool,
    "barcodes": list,
    "asb": bool,
    "cut": bool,
}
_OPTIONAL: dict[str, type] = {"confirm": str}
_CONFIRM = ("process_id", "status")


def load_profile(name: str, *, directory: Path | None = None) -> Profile:
    """The profile `name` from the package's profiles (or from `directory`)."""
    folder: Traversable = (
        directory if directory is not None else resources.files("gateway.escpos") / "profiles"
    )
    source = f"{folder}/{name}.json"
    if not _NAME.fullmatch(name):
        raise ValueError(f"printer profile {name!r}: expected a name like 'generic-80mm'")
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(
            p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
        )
        raise ValueError(f"{source}: no such printer profile; known profiles: {known}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    return _profile(name, data, source)


def _profile(name: str, data: Any, source: str) -> Profile:
    _check_keys(data, source)
    for key, low, high in (
        ("paper_width_mm", 20, 120),
        ("dots_per_line", 8, 2048),
        ("chars_per_line", 8, 128),
    ):
        if not low <= data[key] <= high:
            raise ValueError(f"{source}: {key}: expected {low}..{high}, found {data[key]}")
    for kind in data["barcodes"]:
        if kind not in BARCODE_KINDS:
            raise ValueError(
                f"{source}: barcodes: unknown symbology {kind!r}; expected some of"
                f" {list(BARCODE_KINDS)}"
            )
    return Profile(
        name=name,
        description=data["description"],
        paper_width_mm=data["paper_width_mm"],
        dots_per_line=data["dots_per_line"],
        chars_per_line=data["chars_per_line"],
        code_pages=types.MappingProxyType(_code_pages(data["code_pages"], source)),
        qr=data["qr"],
        barcodes=tuple(data["barcodes"]),
        asb=data["asb"],
        cut=data["cut"],
        confirm=data.get("confirm", "status"),
    )


def _check_keys(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, found {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS) - set(_OPTIONAL))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown}; expected {sorted(_KEYS | _OPTIONAL)}"
        )
    if "confirm" in data and data["confirm"] not in _CONFIRM:
        raise ValueError(
            f"{source}: confirm: expected one of {list(_CONFIRM)}, found {data['confirm']!r}"
        )
    for key, kind in _KEYS.items():
        if key not in data:
            raise ValueError(f"{source}: {key}: missing")
        value = data[key]
        # bool is an int subclass: true is not a width.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{source}: {key}: expected {kind.__name__}, found {value!r}")


def _code_pages(pages: dict[str, Any], source: str) -> dict[str, int]:
    for codec, table in pages.items():
        try:
            codecs.lookup(codec)
        except LookupError:
            raise ValueError(f"{source}: code_pages: {codec!r} is not a Python codec") from None
        if isinstance(table, bool) or not isinstance(table, int) or not 0 <= table <= 255:
            raise ValueError(f"{source}: code_pages.{codec}: expected 0..255, found {table!r}")
    if not pages:
        raise ValueError(f"{source}: code_pages: expected at least one code page")
    return dict(pages)
