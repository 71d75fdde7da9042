"""The printer simulator through a real pseudo-terminal, opened like the driver opens a printer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import serial
import serial_asyncio_fast
import zxingcpp

from gateway.escpos import (
    AutoStatus,
    Garbage,
    PrinterStatus,
    ProcessIdReply,
    RealtimeStatus,
    Receipt,
    StatusDecoder,
    StatusReply,
    asb_enable,
    load_profile,
    process_id_request,
    realtime_status_request,
)
from simulators.printer import PrinterSimulator

CODE = "CPN-7KQX-M4TB-W9HZ"


def coupon(profile: str = "generic-80mm") -> bytes:
    receipt = (
        Receipt(load_profile(profile))
        .text("20% OFF", bold=True, double_width=True, double_height=True, align="center")
        .text("Coffee beans, any 500 g bag")
        .rule()
        .qr(CODE)
        .barcode("400638133393", "EAN13")
    )
    if receipt.fits_barcode(CODE, "CODE128"):
        receipt.barcode(CODE, "CODE128", height=60)
    return receipt.text(CODE, align="center").feed(2).cut().build()


class Line:
    """The host's end of the serial line, through pyserial like the driver, and its decoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = StatusDecoder()

    @classmethod
    async def open(cls, link: Path) -> Line:
        return cls(*await serial_asyncio_fast.open_serial_connection(url=str(link), baudrate=9600))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies(self, count: int, within: float = 3.0) -> list[StatusReply]:
        """The next `count` replies other than garbage."""
        out: list[StatusReply] = []
        async with asyncio.timeout(within):
            while len([r for r in out if not isinstance(r, Garbage)]) < count:
                out += self.decoder.feed(await self.reader.read(64))
        return out

    async def status(self, *ns: int) -> PrinterStatus:
        """Ask DLE EOT n for each n; the status the replies add up to."""
        for n in ns:
            self.decoder.expect(n)
        await self.send(b"".join(realtime_status_request(n) for n in ns))
        status = PrinterStatus()
        for reply in await self.replies(len(ns)):
            assert isinstance(reply, RealtimeStatus)
            status = reply.update(status)
        return status

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def printer(tmp_path: Path) -> AsyncIterator[PrinterSimulator]:
    async with PrinterSimulator(tmp_path / "printer0", out_dir=tmp_path / "out") as simulator:
        yield simulator


@pytest.fixture
async def line(printer: PrinterSimulator) -> AsyncIterator[Line]:
    opened = await Line.open(printer.link)
    yield opened
    opened.close()


def scan_qr(png: bytes) -> str:
    """What a till's scanner reads: zxing-cpp, the reference decoder (OpenCV's classic detector
    missed ~0.3 % of the coupon symbols, 1 of 300 random codes in a flaky CI run)."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    found = zxingcpp.read_barcode(image, formats=zxingcpp.BarcodeFormat.QRCode)
    return "" if found is None else bytes(found.bytes).decode("utf-8", errors="replace")


async def test_a_job_renders_to_text_and_png(printer: PrinterSimulator, line: Line) -> None:
    job = coupon()
    await line.send(job)
    async with asyncio.timeout(5):
        (receipt,) = await printer.wait_for_receipts(1)
    assert printer.bytes_received == len(job)
    lines = receipt.text.splitlines()
    assert lines[0].strip() == "20% OFF"
    assert lines[0].startswith(" " * 16)  # centred: 7 double-width characters on 48 columns
    assert "Coffee beans, any 500 g bag" in lines
    assert "-" * 48 in lines
    assert f"[QR: {CODE}]" in receipt.text
    assert "[EAN13: 4006381333931]" in receipt.text
    assert f"[CODE128: {CODE}]" in receipt.text
    assert receipt.png.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(receipt.png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape[1] == 576  # the profile's dots
    # The printer draws the QR code from the GS ( k data: a scanner reads the coupon code.
    assert scan_qr(receipt.png) == CODE
    # And the EAN-13 bars are faithful: OpenCV reads them at some scale, as a scanner would.
    detector = cv2.barcode.BarcodeDetector()
    scans = {
        detector.detectAndDecode(cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))[
            0
        ]
        for f in (0.5, 2 / 3, 1.0, 1.5)
    }
    assert "4006381333931" in scans
    assert receipt.path is not None
    assert receipt.path.read_bytes() == receipt.png
    assert receipt.path.with_suffix(".txt").read_text() == receipt.text


async def test_a_58mm_printer(tmp_path: Path) -> None:
    async with PrinterSimulator(tmp_path / "narrow", "generic-58mm") as printer:
        line = await Line.open(printer.link)
        await line.send(coupon("generic-58mm"))
        async with asyncio.timeout(5):
            (receipt,) = await printer.wait_for_receipts(1)
        line.close()
    image = cv2.imdecode(np.frombuffer(receipt.png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image.shape[1] == 384
    assert scan_qr(receipt.png) == CODE
    assert "CODE128" not in receipt.text  # too wide for 58 mm: the builder left it out
    assert receipt.path is None
    assert not (tmp_path / "narrow").exists()  # the link goes with the simulator


async def test_status_requests_are_answered(printer: PrinterSimulator, line: Line) -> None:
    assert await line.status(1, 2, 3, 4) == PrinterStatus()
    printer.paper_near_end()
    assert await line.status(4) == PrinterStatus(paper_near_end=True)
    printer.cover_open()
    assert await line.status(1, 2) == PrinterStatus(online=False, cover_open=True)
    printer.cover_close()
    printer.paper_out()
    offline = PrinterStatus(online=False, paper_out=True, paper_near_end=True)
    assert await line.status(1, 2, 3, 4) == offline
    assert printer.status == offline


async def test_asb_is_sent_when_enabled_and_on_paper_out(
    printer: PrinterSimulator, line: Line
) -> None:
    printer.paper_near_end()  # no ASB yet: not enabled
    await line.send(asb_enable())
    (first,) = await line.replies(1)  # sent at once when enabled
    assert first == AutoStatus(PrinterStatus(paper_near_end=True), first.data)
    printer.paper_out()
    (out,) = await line.replies(1)
    assert isinstance(out, AutoStatus)
    assert out.status == PrinterStatus(online=False, paper_out=True, paper_near_end=True)
    printer.paper_in()
    (back,) = await line.replies(1)
    assert isinstance(back, AutoStatus)
    assert back.status == PrinterStatus()
    # Only the enabled items: with paper sensor changes only, a cover is not reported.
    await line.send(asb_enable(0x08))
    await line.replies(1)
    printer.cover_open()
    printer.paper_near_end()
    (paper,) = await line.replies(1)
    assert isinstance(paper, AutoStatus)
    assert paper.status.paper_near_end
    assert paper.status.cover_open  # each block carries the whole status


async def test_paper_out_discards_the_job(printer: PrinterSimulator, line: Line) -> None:
    job = coupon()
    printer.paper_out()
    await line.send(job)
    await line.status(1)  # answered after the job's bytes: they have been read
    assert printer.receipts == []
    assert printer.spoiled == 1
    assert printer.bytes_received == len(job) + 3
    # Out of paper halfway through: the rest of the receipt is lost, not printed later.
    # (Split where a command starts: a status request inside another command's data is data.)
    half = job.index(b"\x1d(k")  # the QR code's first command
    printer.paper_in()
    await line.send(job[:half])
    await line.status(1)
    printer.paper_out()
    await line.send(job[half:])
    await line.status(1)
    printer.paper_in()
    await line.status(1)
    assert printer.receipts == []
    assert printer.spoiled == 2
    # The driver sends it again: it prints whole.
    await line.send(job)
    async with asyncio.timeout(5):
        (receipt,) = await printer.wait_for_receipts(1)
    assert scan_qr(receipt.png) == CODE


async def test_cover_open_discards_too(printer: PrinterSimulator, line: Line) -> None:
    printer.cover_open()
    await line.send(coupon())
    await line.status(1)
    printer.cover_close()
    await line.send(coupon())
    async with asyncio.timeout(5):
        await printer.wait_for_receipts(1)
    assert printer.spoiled == 1
    assert len(printer.receipts) == 1


async def test_unplug_removes_the_link_and_plug_restores_it(
    printer: PrinterSimulator, line: Line
) -> None:
    link = printer.link
    assert link.is_symlink()
    await line.send(coupon()[:100])  # a job in progress is lost with the power
    await line.status(1)
    printer.unplug()
    assert not link.exists()
    assert not link.is_symlink()
    with pytest.raises(serial.SerialException):
        async with asyncio.timeout(3):
            await line.reader.read(1)
    with pytest.raises(serial.SerialException, match="No such file"):
        await Line.open(link)
    assert printer.spoiled == 1
    printer.plug()
    assert link.is_symlink()
    again = await Line.open(link)
    assert await again.status(1) == PrinterStatus()
    await again.send(coupon())
    async with asyncio.timeout(5):
        await printer.wait_for_receipts(1)
    again.close()


async def test_silent_printer_receives_but_never_answers(
    printer: PrinterSimulator, line: Line
) -> None:
    printer.silent()
    line.decoder.expect(1)
    await line.send(realtime_status_request(1) + asb_enable())
    with pytest.raises(TimeoutError):
        await line.replies(1, within=0.3)
    assert printer.bytes_received == 6
    await line.send(coupon())  # it still prints
    async with asyncio.timeout(5):
        await printer.wait_for_receipts(1)
    printer.silent(False)
    line.decoder.cancel_expected()
    assert await line.status(4) == PrinterStatus()


async def test_garbage_on_the_line(printer: PrinterSimulator, line: Line) -> None:
    printer.garbage(b"\xff\xfe\x00")
    line.decoder.expect(1)
    await line.send(realtime_status_request(1))
    replies = await line.replies(1)
    assert replies[-1] == RealtimeStatus(1, 0x12)
    assert line.decoder.garbage == 3


async def test_set_baud_makes_a_job_take_its_line_time(
    printer: PrinterSimulator, line: Line
) -> None:
    logo = [[(x + y) % 3 == 0 for x in range(96)] for y in range(64)]  # 768 bytes of raster
    job = Receipt(load_profile("generic-80mm")).logo(logo).qr(CODE).rule().cut().build()
    baud = 19200
    printer.set_baud(baud)
    started = time.monotonic()
    await line.send(job)
    async with asyncio.timeout(10):
        await printer.wait_for_receipts(1)
    line_time = len(job) * 10 / baud  # 8N1: ten bits a byte
    assert time.monotonic() - started >= 0.8 * line_time
    printer.set_baud(None)  # as fast as the pty goes again
    await line.send(job)
    async with asyncio.timeout(5):
        await printer.wait_for_receipts(2)


async def _tcp(printer: PrinterSimulator) -> Line:
    host, port = printer.address.removeprefix("tcp:").rsplit(":", 1)
    return Line(*await asyncio.open_connection(host, int(port)))


async def test_a_tcp_printer_on_loopback_answers_and_prints() -> None:
    async with PrinterSimulator("tcp:127.0.0.1:0") as printer:
        assert printer.address.startswith("tcp:127.0.0.1:")
        assert not printer.address.endswith(":0")  # the port the system gave
        line = await _tcp(printer)
        assert await line.status(1, 2, 4) == PrinterStatus()
        await line.send(coupon())
        async with asyncio.timeout(5):
            (receipt,) = await printer.wait_for_receipts(1)
        assert scan_qr(receipt.png) == CODE
        line.close()


async def test_a_tcp_printer_drops_unplugs_and_plugs_back() -> None:
    async with PrinterSimulator("tcp:127.0.0.1:0") as printer:
        line = await _tcp(printer)
        await line.status(1)
        await line.send(coupon()[:100])
        await line.status(1)
        printer.drop()  # a reset: the connection ends, the port still listens
        async with asyncio.timeout(3):
            assert await line.reader.read(1) == b""
        assert printer.spoiled == 1  # the receipt in progress is lost with it
        line.close()
        line = await _tcp(printer)
        assert await line.status(1) == PrinterStatus()
        printer.unplug()  # powered off: refused
        async with asyncio.timeout(3):
            assert await line.reader.read(1) == b""
        line.close()
        with pytest.raises(ConnectionRefusedError):
            await _tcp(printer)
        printer.plug()
        async with asyncio.timeout(3):
            while not printer.plugged:  # noqa: ASYNC110 - listening again is a task
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        again = await _tcp(printer)
        assert await again.status(1) == PrinterStatus()
        again.close()


@pytest.mark.parametrize("profile", ["epson-tm-t20iii", "generic-80mm"])
async def test_the_buffer_answers_dle_eot_at_once_and_a_process_id_once_printed(
    profile: str,
) -> None:
    async with PrinterSimulator("tcp:127.0.0.1:0", profile) as printer:
        printer.set_print_speed(100)  # the coupon: about 1 s of paper
        line = await _tcp(printer)
        loop = asyncio.get_running_loop()
        started = loop.time()
        line.decoder.expect(1)
        await line.send(coupon() + process_id_request(b"0001") + realtime_status_request(1))
        (status,) = await line.replies(1)
        assert status == RealtimeStatus(1, 0x12)
        assert loop.time() - started < 0.2  # ahead of the buffer
        assert printer.receipts == []  # still printing
        if profile == "generic-80mm":  # its profile has no process id: never answered
            with pytest.raises(TimeoutError):
                await line.replies(1, within=2.0)
            assert len(printer.receipts) == 1
            line.close()
            return
        (done,) = await line.replies(1)
        assert done == ProcessIdReply(b"0001")
        assert loop.time() - started > 0.5
        assert len(printer.receipts) == 1  # answered after the cut
        line.close()
