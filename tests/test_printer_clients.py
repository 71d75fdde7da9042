"""The printer simulator against jobs made by a third-party encoder (python-escpos, its Dummy
printer): someone else's bytes, not only our own Receipt's, through a real pty."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial_asyncio_fast
from escpos.printer import Dummy
from PIL import Image, ImageOps

from gateway.escpos import Receipt, load_profile
from simulators.printer import PrinterSimulator

CODE = "CPN-7KQX-M4TB-W9HZ"

# What a person reads on the coupon below; the title is double width (7 characters take 14 of
# the 48 columns, centred: 17 spaces).
GOLDEN = f"""\
{" " * 17}20% OFF
Coffee beans, any 500 g bag
underlined
{" " * 43}right
[QR: {CODE}]
{" " * 13}[EAN13: 4006381333931]
"""


def coupon(*, init: bool = False) -> bytes:
    """A coupon as python-escpos writes it: no ESC @ (unless `init`), ESC ! for the title's
    size, a feed and a cut at the end, and (many clients do) a line feed after the cut."""
    p = Dummy()
    if init:
        p.hw("INIT")  # ESC @
    p.set(align="center", bold=True, double_height=True, double_width=True)
    p.text("20% OFF\n")
    p.set_with_default()
    p.text("Coffee beans, any 500 g bag\n")
    p.set(underline=1)
    p.text("underlined\n")
    p.set_with_default(align="right")
    p.text("right\n")
    p.set_with_default()
    p.qr(CODE, native=True, size=6)
    p.barcode("4006381333931", "EAN13")
    p.cut()
    p.text("\n")
    return bytes(p.output)


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "printer0") as simulator:
        yield simulator


@pytest.fixture
async def line(printer: PrinterSimulator) -> AsyncIterator[asyncio.StreamWriter]:
    _, writer = await serial_asyncio_fast.open_serial_connection(
        url=str(printer.link), baudrate=9600
    )
    yield writer
    writer.close()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def test_a_python_escpos_coupon_prints_as_its_author_meant(
    printer: PrinterSimulator, line: asyncio.StreamWriter
) -> None:
    job = coupon()
    assert not job.startswith(b"\x1b@")  # the client never initialises the printer
    assert b"\x1b!0" in job  # ESC ! 0x30: double height and width
    await _send(line, job)
    async with asyncio.timeout(5):
        (receipt,) = await printer.wait_for_receipts(1)
    # Dated from its first byte though it has no ESC @ (it was size 0, no duration).
    assert receipt.size == len(job)
    assert 0 < receipt.started_at <= receipt.finished_at
    assert receipt.text == GOLDEN


@pytest.mark.parametrize("init", [True, False])
async def test_a_line_feed_after_the_cut_is_not_a_spoiled_receipt(
    printer: PrinterSimulator, line: asyncio.StreamWriter, init: bool
) -> None:
    """The LF after a cut used to open a page: the next ESC @ threw it away as a spoiled
    receipt, and a next job without ESC @ printed below a blank line."""
    for i in range(3):
        await _send(line, coupon(init=init))
        async with asyncio.timeout(5):
            await printer.wait_for_receipts(i + 1)
    await asyncio.sleep(0.1)
    assert printer.spoiled == 0
    assert [r.text for r in printer.receipts] == [GOLDEN] * 3


async def test_esc_bang_draws_the_same_title_as_our_own_size_commands(
    printer: PrinterSimulator, line: asyncio.StreamWriter
) -> None:
    """The title from ESC ! (python-escpos) and from ESC E + GS ! (our Receipt) is the same
    ink on paper: the PNGs are equal."""
    theirs = Dummy()
    theirs.set(align="center", bold=True, double_height=True, double_width=True)
    theirs.text("20% OFF\n")
    theirs.cut()
    ours = Receipt(load_profile("generic-80mm"))
    ours.text("20% OFF", bold=True, double_width=True, double_height=True, align="center")
    for job in (bytes(theirs.output), ours.cut().build()):
        await _send(line, job)
    async with asyncio.timeout(5):
        first, second = await printer.wait_for_receipts(2)
    assert first.text == second.text == f"{' ' * 17}20% OFF\n"
    ink = [_ink(r.png) for r in (first, second)]
    assert ink[0].size == ink[1].size  # the same box: double width and height
    assert ink[0].tobytes() == ink[1].tobytes()  # and the same dots (the paper fed after differs)


def _ink(png: bytes) -> Image.Image:
    """The printed part of a receipt, cropped to its ink."""
    image = ImageOps.invert(Image.open(io.BytesIO(png)).convert("L"))
    box = image.getbbox()
    assert box is not None
    return image.crop(box)
