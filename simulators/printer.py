"""A receipt printer on a pseudo-terminal or TCP: it reads ESC/POS, answers status, renders
receipts.

`PrinterSimulator(path)` opens a pty pair and keeps `path` a symlink to the slave side, like a
stable /dev/serial/by-id/... path: the driver opens it with pyserial and cannot tell it from a
printer. The same pty stands in for usblp's /dev/usb/lp0 (a character device the driver reads
and writes raw, without termios). `PrinterSimulator("tcp:127.0.0.1:0")` listens on loopback
like a network printer's port 9100 instead (`address` is where, e.g. "tcp:127.0.0.1:40123"),
one connection at a time: a new one replaces the old.

It parses what it reads with the gateway's own `CommandParser`, answers DLE EOT n at once with
`encode_realtime_status`, sends ASB blocks (`encode_asb`) once GS a enables them and
whenever its status changes, and renders each receipt (up to the cut) as the text a person
would read and as a PNG at the profile's dot width, QR codes drawn from the GS ( k data like a
printer does (so a camera, or OpenCV in a test, can scan them).

Faults are methods: paper out / near end, cover open, unplugged (the pty is closed and the link
removed, or the TCP connection and listener closed: the driver's reads and writes fail; `plug`
brings the same path or port back), `drop` (TCP: the connection is closed, the printer listens
again at once), silent (never answers; a TCP connection stays open), line garbage, and a line
rate (`set_baud`, the pty) so a job takes its physical time. While the paper is out or the
cover open the printer is offline: what it processes is thrown away and the receipt in progress
is lost (counted in `spoiled`), like a real printer that stopped.

The printer has a buffer: with `set_print_speed(mm_s)` it prints what it received at that paper
speed, so the bytes of a receipt can all be in while it is still printing. Real-time requests
(DLE EOT n) are answered on arrival, ahead of the buffer; GS ( H (process id, answered when the
profile says `confirm = "process_id"`) is answered only once everything before it is printed.

python -m simulators.printer --link /tmp/printer0 [--profile generic-58mm] [--out-dir receipts]
python -m simulators.printer --link tcp:127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import time
import tty
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Self

import segno
from PIL import Image, ImageDraw, ImageFont, ImageOps

from gateway.escpos import (
    Barcode,
    BarcodeHeight,
    BarcodeHri,
    BarcodeModuleWidth,
    Bold,
    CharSize,
    Command,
    CommandParser,
    Cut,
    EnableAsb,
    Initialize,
    Justify,
    LineFeed,
    PrintAndFeed,
    PrinterStatus,
    PrintMode,
    ProcessIdRequest,
    Profile,
    QrErrorCorrection,
    QrModuleSize,
    QrPrint,
    QrStore,
    Raster,
    SelectCodePage,
    StatusRequest,
    Text,
    Underline,
    Unknown,
    encode_asb,
    encode_process_id,
    encode_realtime_status,
    load_profile,
)
from gateway.escpos.barcodes import bars, ean13_check_digit, unescape_code128
from gateway.escpos.commands import Align

__all__ = ["PrinterSimulator", "RenderedReceipt"]

_READ_SIZE = 4096
_CELL_H = 24  # font A is 12 x 24 dots; the cell width is the profile's dots / chars
_LINE_PITCH = 30  # default line spacing, about 1/6 inch at 203 dpi
_MARGIN = 16  # dots of paper above and below a receipt
_QUIET = 4  # QR quiet zone, in modules
_DOTS_PER_MM = 8  # 203 dpi
_QR_DOTS = 250  # about the paper a coupon's QR code takes, for the print time


@dataclass(frozen=True, slots=True)
class RenderedReceipt:
    index: int  # 1, 2, ... in the order they were cut
    text: str  # what a person reads; QR codes and barcodes as [QR: ...], [CODE128: ...]
    png: bytes
    path: Path | None  # the PNG, when the simulator has an out_dir
    # When its first and last (the cut) bytes arrived (time.monotonic()), and its size: for
    # benchmarks of the gateway's latency and line use, measured before rendering.
    started_at: float = 0.0
    finished_at: float = 0.0
    size: int = 0


# --------------------------------------------------------------------------------------------
# The printer's mechanism: commands in, printed blocks out (no I/O)


@dataclass(frozen=True, slots=True)
class _Run:
    text: str
    bold: bool
    underline: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class _Line:
    runs: tuple[_Run, ...]
    align: Align
    height: int  # magnification of an empty line


@dataclass(frozen=True, slots=True)
class _Qr:
    data: bytes
    module: int
    ec: str
    align: Align


@dataclass(frozen=True, slots=True)
class _Bars:
    kind: str
    data: bytes
    height: int
    module: int
    hri: int
    align: Align


@dataclass(frozen=True, slots=True)
class _Image:
    raster: Raster
    align: Align


_Block = _Line | _Qr | _Bars | _Image


@dataclass(slots=True)
class _Modes:
    """The printer's modes after ESC @ (Epson's defaults)."""

    bold: bool = False
    underline: int = 0
    width: int = 1
    height: int = 1
    align: Align = "left"
    code_page: int = 0
    qr_module: int = 3
    qr_ec: str = "L"
    qr_data: bytes = b""
    bar_height: int = 162
    bar_module: int = 3
    hri: int = 0


@dataclass(slots=True)
class _Page:
    """One receipt being printed: the blocks so far and the line buffer."""

    profile: Profile
    modes: _Modes = field(default_factory=_Modes)
    blocks: list[_Block] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)
    cells: int = 0
    line_align: Align | None = None  # ESC a counts where a line starts

    @property
    def empty(self) -> bool:
        return not self.blocks and not self.runs

    @property
    def inked(self) -> bool:
        """Anything printed but blank lines: a page of paper feed alone is not a receipt."""
        return bool(self.runs) or any(
            not isinstance(b, _Line) or any(r.text.strip() for r in b.runs) for b in self.blocks
        )

    def apply(self, command: Command) -> None:  # noqa: PLR0912 - one branch per command
        m = self.modes
        match command:
            case Text(data):
                self._text(data)
            case LineFeed():
                self._newline()
            case PrintAndFeed(lines):
                # ESC d n prints the buffer and feeds n lines in all: the printed one counts.
                for _ in range(max(lines, bool(self.runs))):
                    self._newline()
            case Bold(on):
                m.bold = on
            case Underline(dots):
                m.underline = dots
            case CharSize(width, height):
                m.width, m.height = width, height
            case PrintMode():  # font B is drawn as font A
                m.bold, m.underline = command.bold, int(command.underline)
                m.width, m.height = command.width, command.height
            case Justify(align):
                m.align = align
            case SelectCodePage(table):
                m.code_page = table
            case QrModuleSize(dots):
                m.qr_module = dots
            case QrErrorCorrection(level):
                m.qr_ec = level
            case QrStore(data):
                m.qr_data = data
            case QrPrint() if m.qr_data:
                self._block(_Qr(m.qr_data, m.qr_module, m.qr_ec, m.align))
            case BarcodeHeight(dots):
                m.bar_height = dots
            case BarcodeModuleWidth(dots):
                m.bar_module = dots
            case BarcodeHri(position):
                m.hri = position
            case Barcode(kind, data):
                self._block(_Bars(kind, data, m.bar_height, m.bar_module, m.hri, m.align))
            case Raster():
                self._block(_Image(command, m.align))
            case _:  # QrModel (every model is drawn as model 2), and what a page ignores
                pass

    def finish(self) -> list[_Block]:
        if self.runs:
            self._newline()
        return self.blocks

    def _text(self, data: bytes) -> None:
        m = self.modes
        # A table the profile does not name is read as PC437, the printers' table 0.
        pages = (c for c, n in self.profile.code_pages.items() if n == m.code_page)
        for ch in data.decode(next(pages, "cp437"), errors="replace"):
            if self.cells + m.width > self.profile.chars_per_line:
                self._newline()  # the printer wraps a full line
            if self.line_align is None:
                self.line_align = m.align
            last = self.runs[-1] if self.runs else None
            style = (m.bold, m.underline, m.width, m.height)
            if last is not None and (last.bold, last.underline, last.width, last.height) == style:
                self.runs[-1] = replace(last, text=last.text + ch)
            else:
                self.runs.append(_Run(ch, *style))
            self.cells += m.width

    def _newline(self) -> None:
        height = max((r.height for r in self.runs), default=self.modes.height)
        self.blocks.append(_Line(tuple(self.runs), self.line_align or self.modes.align, height))
        self.runs, self.cells, self.line_align = [], 0, None

    def _block(self, block: _Block) -> None:
        if self.runs:
            self._newline()
        self.blocks.append(block)


# --------------------------------------------------------------------------------------------
# Rendering: blocks to text and to a PNG, in one pass so both say the same


class _Renderer:
    def __init__(self, profile: Profile) -> None:
        self.dots = profile.dots_per_line
        self.columns = profile.chars_per_line
        self.cell_w = profile.dots_per_line // profile.chars_per_line
        self.font = ImageFont.load_default(size=20)
        self._glyphs: dict[tuple[str, bool], Image.Image] = {}

    def render(self, blocks: Sequence[_Block]) -> tuple[str, bytes]:
        lines: list[str] = []
        strips: list[Image.Image] = []  # masks: 255 is ink
        for block in blocks:
            line, strip = self._block(block)
            lines.append(line.rstrip())
            strips.append(strip)
        height = sum(s.height for s in strips) + 2 * _MARGIN
        page = Image.new("L", (self.dots, height), 0)
        y = _MARGIN
        for strip in strips:
            page.paste(strip, (0, y))
            y += strip.height
        out = io.BytesIO()
        ImageOps.invert(page).convert("1").save(out, "PNG")
        return "\n".join(lines).rstrip("\n") + "\n", out.getvalue()

    def _block(self, block: _Block) -> tuple[str, Image.Image]:
        match block:
            case _Line():
                return self._line(block)
            case _Qr():
                return self._qr(block)
            case _Bars():
                return self._bars(block)
            case _Image():
                return self._image(block)

    def _aligned(self, text: str, width: int, align: Align) -> str:
        pad = max(0, self.columns - width)
        return " " * {"left": 0, "center": pad // 2, "right": pad}[align] + text

    def _x(self, width: int, align: Align) -> int:
        pad = max(0, self.dots - width)
        return {"left": 0, "center": pad // 2, "right": pad}[align]

    def _note(self, note: str, *, printed: bool = False) -> tuple[str, Image.Image]:
        """A block as a line of text: on paper too if `printed`, else only in the text."""
        strip = Image.new("L", (self.dots, _LINE_PITCH), 0)
        if printed:
            image = self._run(_Run(note, False, 0, 1, 1))
            strip.paste(image, (self._x(image.width, "center"), _LINE_PITCH - _CELL_H - 3))
        return self._aligned(note, len(note), "center"), strip

    def _line(self, line: _Line) -> tuple[str, Image.Image]:
        text = "".join(r.text for r in line.runs)
        width = sum(len(r.text) * r.width for r in line.runs)
        strip = Image.new("L", (self.dots, _LINE_PITCH * line.height), 0)
        x = self._x(width * self.cell_w, line.align)
        for run in line.runs:
            image = self._run(run)
            strip.paste(image, (x, strip.height - image.height - 3))
            x += image.width
        return self._aligned(text, width, line.align), strip

    def _run(self, run: _Run) -> Image.Image:
        image = Image.new("L", (len(run.text) * self.cell_w, _CELL_H), 0)
        for i, ch in enumerate(run.text):
            image.paste(self._glyph(ch, run.bold), (i * self.cell_w, 0))
        if (run.width, run.height) != (1, 1):
            size = (image.width * run.width, image.height * run.height)
            image = image.resize(size, Image.Resampling.NEAREST)
        if run.underline:
            draw = ImageDraw.Draw(image)
            draw.rectangle((0, image.height - run.underline, image.width, image.height), 255)
        return image

    def _glyph(self, ch: str, bold: bool) -> Image.Image:
        """One character in its cell; a glyph wider than the cell is squeezed into it."""
        key = (ch, bold)
        if key not in self._glyphs:
            wide = Image.new("L", (self.cell_w * 3, _CELL_H), 0)
            draw = ImageDraw.Draw(wide)
            # Pillow's default font is ASCII only: an accented letter is drawn without its accent.
            base = unicodedata.normalize("NFKD", ch)[:1]
            shown = base if not ch.isascii() and base.isascii() else ch
            for dx in (0, 1) if bold else (0,):
                draw.text((self.cell_w + dx, 19), shown, fill=255, font=self.font, anchor="ls")
            cell = Image.new("L", (self.cell_w, _CELL_H), 0)
            box = wide.getbbox()
            if box is not None:
                ink = wide.crop((box[0], 0, box[2], _CELL_H))
                if ink.width > self.cell_w - 1:
                    ink = ink.resize((self.cell_w - 1, _CELL_H), Image.Resampling.LANCZOS)
                cell.paste(ink, ((self.cell_w - ink.width) // 2, 0))
            self._glyphs[key] = cell.point(lambda v: 255 if v >= 96 else 0)
        return self._glyphs[key]

    def _qr(self, qr: _Qr) -> tuple[str, Image.Image]:
        data = qr.data.decode("utf-8", errors="replace")
        try:
            code = segno.make_qr(qr.data, error=qr.ec.lower(), boost_error=False)
        except ValueError:  # more data than a QR code holds: the printer prints nothing
            return self._note(f"[QR not printed: {len(qr.data)} bytes is too much data]")
        matrix = code.matrix
        side = (len(matrix) + 2 * _QUIET) * qr.module
        if side > self.dots:
            return self._note(f"[QR not printed: {side} dots is too wide]")
        image = Image.new("L", (len(matrix), len(matrix)), 0)
        image.putdata([255 if v else 0 for row in matrix for v in row])
        image = image.resize((len(matrix) * qr.module,) * 2, Image.Resampling.NEAREST)
        strip = Image.new("L", (self.dots, side), 0)
        strip.paste(image, (self._x(side, qr.align) + _QUIET * qr.module, _QUIET * qr.module))
        return self._aligned(f"[QR: {data}]", len(data) + 6, qr.align), strip

    def _bars(self, bar: _Bars) -> tuple[str, Image.Image]:
        text: str | None
        if bar.kind == "CODE128":
            text = unescape_code128(bar.data)  # None: not code set B, not drawn here
        else:
            text = bar.data.decode("ascii", errors="replace")
            if bar.kind == "EAN13" and len(text) == 12 and text.isdigit():
                text += ean13_check_digit(text)  # sent without its check digit: the printer adds it
        label = f"[{bar.kind}: {bar.data.decode('ascii', 'replace') if text is None else text}]"
        modules = bars(bar.kind, text) if text is not None else None
        if modules is None or text is None:
            return self._note(label, printed=True)  # a symbology not drawn here: as text
        width = len(modules) * bar.module
        if width > self.dots:
            return self._note(f"[{bar.kind} not printed: {width} dots is too wide]")
        hri = self._run(_Run(text, False, 0, 1, 1)) if bar.hri else None
        above = hri is not None and bar.hri in (1, 3)
        below = hri is not None and bar.hri in (2, 3)
        strip = Image.new("L", (self.dots, bar.height + (above + below) * _LINE_PITCH + 6), 0)
        draw = ImageDraw.Draw(strip)
        x0, y0 = self._x(width, bar.align), 3 + above * _LINE_PITCH
        for i, on in enumerate(modules):
            if on:
                x = x0 + i * bar.module
                draw.rectangle((x, y0, x + bar.module - 1, y0 + bar.height - 1), 255)
        if hri is not None:
            hx = self._x(hri.width, bar.align)
            if above:
                strip.paste(hri, (hx, 0))
            if below:
                strip.paste(hri, (hx, y0 + bar.height + 3))
        return self._aligned(label, len(label), bar.align), strip

    def _image(self, block: _Image) -> tuple[str, Image.Image]:
        raster = block.raster
        size = (raster.width_bytes * 8, raster.height)
        image = Image.frombytes("1", size, raster.data, "raw", "1").convert("L")
        if raster.mode:  # 1 double width, 2 double height, 3 both
            scale = (1 + (raster.mode & 1), 1 + (raster.mode >> 1))
            image = image.resize((size[0] * scale[0], size[1] * scale[1]), Image.Resampling.NEAREST)
        label = f"[image {image.width}x{image.height}]"
        strip = Image.new("L", (self.dots, image.height), 0)
        strip.paste(image, (self._x(image.width, block.align), 0))  # wider than paper: clipped
        return self._aligned(label, len(label), block.align), strip


# --------------------------------------------------------------------------------------------
# The device: a pty, the line, the faults


class PrinterSimulator:
    """A receipt printer behind `link`; an async context manager (plugged in while inside)."""

    def __init__(
        self,
        link: Path | str,
        profile: str = "generic-80mm",
        *,
        baud: int | None = None,
        out_dir: Path | None = None,
        print_speed_mm_s: float | None = None,
    ) -> None:
        self._tcp: tuple[str, int] | None = None
        if isinstance(link, str) and link.startswith("tcp:"):
            host, _, port = link.removeprefix("tcp:").rpartition(":")
            self._tcp = (host or "127.0.0.1", int(port or 0))
        self.link = Path(link) if self._tcp is None else Path()
        self.profile = load_profile(profile)
        self.out_dir = out_dir
        self.receipts: list[RenderedReceipt] = []
        self.bytes_received = 0
        self._chunk_start = (0.0, 0)  # when the chunk being parsed arrived, bytes before it
        self._job_start: tuple[float, int] | None = None
        self.spoiled = 0  # receipts lost to a fault (offline, unplugged, reset mid-receipt)
        self._renderer = _Renderer(self.profile)
        self._parser = CommandParser()
        self._page: _Page | None = None
        self._modes = _Modes()  # kept across receipts: ESC @ resets them, a cut does not
        self._discarding = False  # offline mid-job: the rest of it, up to its cut, is lost
        self._paper_out = self._near_end = self._cover_open = self._silent = False
        self._asb_mask = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived = asyncio.Event()
        # Line rate: a token bucket of bytes, refilled at baud / 10 per second (8N1 framing).
        self._rate: float | None = None
        self._allowance = 0.0
        self._last = 0.0
        self._resume: asyncio.TimerHandle | None = None
        # TCP: the listener, and the one connection served.
        self._server: asyncio.Server | None = None
        self._peer: asyncio.Transport | None = None
        self._listening: asyncio.Task[None] | None = None  # plug() listening again
        # The buffer: commands received, printed at the paper speed (None: at once).
        self._buffer: deque[tuple[Command, tuple[float, int]]] = deque()
        self._speed: float | None = None
        self._printing: asyncio.TimerHandle | None = None
        if baud is not None:
            self.set_baud(baud)
        self.set_print_speed(print_speed_mm_s)

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        if self._tcp is not None:
            await self._listen_tcp()
        else:
            self.plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()
        if self._server is not None:
            await self._server.wait_closed()

    # -- state --------------------------------------------------------------------------------

    @property
    def status(self) -> PrinterStatus:
        offline = self._paper_out or self._cover_open
        return PrinterStatus(
            online=not offline,
            paper_out=self._paper_out,
            paper_near_end=self._near_end,
            cover_open=self._cover_open,
        )

    @property
    def plugged(self) -> bool:
        return self._master is not None or self._server is not None

    @property
    def address(self) -> str:
        """Where the driver finds it: "tcp:127.0.0.1:<port>", or the pty's link path."""
        if self._tcp is None:
            return str(self.link)
        return f"tcp:{self._tcp[0]}:{self._tcp[1]}"

    @property
    def connected(self) -> bool:
        """TCP: a host is connected."""
        return self._peer is not None

    async def wait_for_receipts(self, n: int) -> list[RenderedReceipt]:
        """Wait until `n` receipts have been cut; the first `n`. Bound it with asyncio.timeout."""
        while len(self.receipts) < n:
            await self._arrived.wait()
        return self.receipts[:n]

    # -- faults -------------------------------------------------------------------------------

    def paper_out(self) -> None:
        self._set(paper_out=True)

    def paper_in(self) -> None:
        """A new roll: neither out nor near its end."""
        self._set(paper_out=False, near_end=False)

    def paper_near_end(self, on: bool = True) -> None:
        self._set(near_end=on)

    def cover_open(self) -> None:
        self._set(cover_open=True)

    def cover_close(self) -> None:
        self._set(cover_open=False)

    def silent(self, on: bool = True) -> None:
        """Receive and print, but never answer status (a wedged controller, a one-way cable)."""
        self._silent = on

    def garbage(self, data: bytes) -> None:
        """Line noise towards the host."""
        self._send(data)

    def set_print_speed(self, mm_s: float | None) -> None:
        """Print what is buffered at `mm_s` of paper per second (None: at once, no buffer)."""
        if mm_s is not None and mm_s <= 0:
            raise ValueError(f"print speed: expected a positive speed, found {mm_s}")
        self._speed = mm_s

    def drop(self) -> None:
        """TCP: the printer closes the connection (a reset, a reboot) and listens again."""
        if self._peer is not None:
            self._peer.abort()
            self._peer = None
            self._power_cut()

    def set_baud(self, baud: int | None) -> None:
        """Read at most baud / 10 bytes per second (None: as fast as the pty goes); the pty
        only, TCP has no line rate (`set_print_speed` makes a job take its time there)."""
        if baud is not None and baud <= 0:
            raise ValueError(f"baud: expected a positive rate, found {baud}")
        self._rate = baud / 10 if baud else None
        self._allowance = 0.0
        self._last = self._loop.time() if self._loop else 0.0
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
            self._listen()

    def unplug(self) -> None:
        """The cable is pulled (and the printer loses the job in progress)."""
        if self._server is not None:
            self._server.close()  # no new connections: refused, like a powered-off printer
            self._server = None
            self.drop()
            return
        if self._master is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        tty_name = os.ttyname(self._slave) if self._slave is not None else None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        with contextlib.suppress(FileNotFoundError):
            if self.link.is_symlink() and os.readlink(self.link) == tty_name:
                self.link.unlink()
        self._power_cut()

    def plug(self) -> None:
        """A new pty behind the same `link`, or the TCP port listening again."""
        if self._master is not None or self._server is not None:
            return
        if self._loop is None:
            raise RuntimeError("plug() runs inside `async with PrinterSimulator(...)`")
        if self._tcp is not None:
            self._listening = self._loop.create_task(self._listen_tcp())
            return
        if self.link.exists() and not self.link.is_symlink():
            raise FileExistsError(f"{self.link} exists and is not a symlink: not replacing it")
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: a byte-clean line
        os.set_blocking(master, False)
        # The slave stays open here too: when the driver closes it, reads do not fail with EIO.
        self._master, self._slave = master, slave
        temporary = self.link.with_name(f".{self.link.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.ttyname(slave))
        temporary.replace(self.link)
        self._listen()

    # -- the line -----------------------------------------------------------------------------

    async def _listen_tcp(self) -> None:
        assert self._tcp is not None
        assert self._loop is not None
        host, port = self._tcp
        self._server = await self._loop.create_server(
            lambda: _TcpPeer(self), host, port, reuse_address=True
        )
        self._tcp = (host, self._server.sockets[0].getsockname()[1])  # port 0: the one given

    def _tcp_connected(self, transport: asyncio.Transport) -> None:
        if self._peer is not None:
            self._peer.abort()  # one host at a time: the newest wins
        self._peer = transport
        self._parser = CommandParser()

    def _tcp_lost(self, transport: asyncio.Transport) -> None:
        if self._peer is transport:
            self._peer = None  # what it sent stays in the buffer and prints

    def _listen(self) -> None:
        if self._master is not None and self._loop is not None:
            self._loop.add_reader(self._master, self._on_readable)

    def _pause(self, seconds: float) -> None:
        assert self._master is not None
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        self._resume = self._loop.call_later(seconds, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self._listen()

    def _on_readable(self) -> None:
        assert self._master is not None
        assert self._loop is not None
        size = _READ_SIZE
        if self._rate is not None:
            now = self._loop.time()
            burst = max(1.0, self._rate * 0.002)  # read in slices of about 2 ms of line time
            self._allowance = min(self._allowance + (now - self._last) * self._rate, burst)
            self._last = now
            if self._allowance < 1:
                self._pause((1 - self._allowance) / self._rate)
                return
            size = min(size, int(self._allowance))
        try:
            data = os.read(self._master, size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO with no slave side open; cannot last while ours is open
            self._pause(0.05)
            return
        if self._rate is not None:
            self._allowance -= len(data)
        if data:
            self._receive(data)

    def _send(self, data: bytes) -> None:
        if self._peer is not None:
            self._peer.write(data)
            return
        if self._master is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view) :]
            except OSError:  # the host is not reading and the pty is full: the bytes are lost
                return

    def _receive(self, data: bytes) -> None:
        # On a real line these bytes took len / rate seconds to arrive: the first came then.
        wire = len(data) / self._rate if self._rate is not None else 0.0
        self._chunk_start = (time.monotonic() - wire, self.bytes_received)
        self.bytes_received += len(data)
        for command in self._parser.feed(data):
            match command:
                case StatusRequest(n):  # real-time: answered even offline, ahead of the buffer
                    if not self._silent:
                        self._send(encode_realtime_status(n, self.status))
                case EnableAsb(mask):
                    if self.profile.asb:
                        self._asb_mask = mask
                        if mask & 0x0F and not self._silent:
                            self._send(encode_asb(self.status))
                case Unknown():
                    pass
                case _:
                    self._buffer.append((command, self._chunk_start))
        self._run_buffer()

    # -- printing -----------------------------------------------------------------------------

    def _run_buffer(self) -> None:
        """Print what is buffered; at a paper speed, one command per its printing time."""
        while self._buffer and self._printing is None:
            command, arrived = self._buffer.popleft()
            self._print(command, arrived)
            dots = self._dots(command)
            if self._speed is not None and dots and self._loop is not None:
                seconds = dots / (_DOTS_PER_MM * self._speed)
                self._printing = self._loop.call_later(seconds, self._printed)

    def _printed(self) -> None:
        self._printing = None
        self._run_buffer()

    def _dots(self, command: Command) -> int:
        """Paper a command moves, roughly: for the time it takes at the paper speed."""
        match command:
            case LineFeed():
                return _LINE_PITCH * self._modes.height
            case PrintAndFeed(lines):
                return _LINE_PITCH * max(lines, 1)
            case QrPrint():
                return _QR_DOTS
            case Barcode():
                return self._modes.bar_height + _LINE_PITCH
            case Raster(height=height):
                return height
            case _:
                return 0

    def _print(self, command: Command, arrived: tuple[float, int]) -> None:  # noqa: PLR0912
        if isinstance(command, ProcessIdRequest):
            # In order: everything before it is printed. Offline, the printer is not processing.
            answers = self.profile.confirm == "process_id" and not self._silent
            if answers and self.status.ready:
                self._send(encode_process_id(command.pid))
            return
        feed = isinstance(command, LineFeed | PrintAndFeed)
        if feed and (self._page is None or not self._page.inked) and not self._discarding:
            # Paper fed between receipts (many clients end a job with LF after the cut): no ink,
            # not a receipt, nothing lost.
            return
        if not self.status.ready:
            if not self._discarding:
                self.spoiled += 1
                self._page = None
            self._discarding = not isinstance(command, Cut)  # the lost job ends at its cut
            return
        if isinstance(command, Initialize):
            self._job_start = arrived  # ESC @ opens a job
            self._modes = _Modes()
            if self._page is not None and self._page.inked:
                if self.profile.cut:
                    self._lose_page()  # started again before the cut: the driver resends
                else:
                    self._finish()  # no cutter: a receipt ends where the next one starts
            self._discarding = False
            self._page = _Page(self.profile, self._modes)
            return
        if self._discarding:
            self._discarding = not isinstance(command, Cut)
            return
        if self._page is None:
            self._page = _Page(self.profile, self._modes)
            if self._job_start is None:
                self._job_start = arrived  # a job without ESC @ starts with its first command
        if isinstance(command, Cut):
            self._finish()
        else:
            self._page.apply(command)

    def _finish(self) -> None:
        page, self._page = self._page, None
        finished_at = time.monotonic()
        started_at, start_bytes = self._job_start or (finished_at, self.bytes_received)
        self._job_start = None  # the next byte starts the next job
        if page is None or not page.inked:
            return
        text, png = self._renderer.render(page.finish())
        index = len(self.receipts) + 1
        path = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"receipt-{index:04d}.png"
            path.write_bytes(png)
            path.with_suffix(".txt").write_text(text, encoding="utf-8")
        size = self.bytes_received - start_bytes
        self.receipts.append(RenderedReceipt(index, text, png, path, started_at, finished_at, size))
        self._arrived.set()
        self._arrived = asyncio.Event()

    def _lose_page(self) -> None:
        if self._page is not None and self._page.inked:
            self.spoiled += 1
        self._page = None

    def _power_cut(self) -> None:
        """Power or the host gone: the page in progress and the buffer are lost."""
        self._buffer.clear()
        if self._printing is not None:
            self._printing.cancel()
            self._printing = None
        self._lose_page()
        self._parser = CommandParser()

    def _set(
        self,
        *,
        paper_out: bool | None = None,
        near_end: bool | None = None,
        cover_open: bool | None = None,
    ) -> None:
        before = self.status
        if paper_out is not None:
            self._paper_out = paper_out
        if near_end is not None:
            self._near_end = near_end
        if cover_open is not None:
            self._cover_open = cover_open
        after = self.status
        # ASB mask bits: 1 online/offline (the cover is in that byte), 2 error, 3 paper sensor.
        online = before.online != after.online or before.cover_open != after.cover_open
        paper = before.paper_out != after.paper_out or before.paper_near_end != after.paper_near_end
        changed = 0x02 * online | 0x04 * (before.error != after.error) | 0x08 * paper
        if changed & self._asb_mask and not self._silent:
            self._send(encode_asb(after))


class _TcpPeer(asyncio.Protocol):
    """One host connected to the printer's TCP port."""

    def __init__(self, printer: PrinterSimulator) -> None:
        self._printer = printer
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._printer._tcp_connected(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is self._printer._peer:
            self._printer._receive(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._printer._tcp_lost(self._transport)


# --------------------------------------------------------------------------------------------
# CLI


async def _main(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C, so the link is removed on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    link = args.link if args.link.startswith("tcp:") else Path(args.link)
    async with PrinterSimulator(
        link, args.profile, baud=args.baud, out_dir=args.out_dir
    ) as printer:
        where = printer.address
        if isinstance(link, Path):
            where = f"{printer.link} -> {os.readlink(printer.link)}"
        print(f"{printer.profile.name} on {where}", flush=True)
        printed = 0
        while True:
            for receipt in (await printer.wait_for_receipts(printed + 1))[printed:]:
                print(f"--- receipt {receipt.index} ---\n{receipt.text}", end="", flush=True)
            printed = len(printer.receipts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A receipt printer on a pseudo-terminal.")
    parser.add_argument(
        "--link",
        required=True,
        help="symlink to create, e.g. /tmp/printer0, or tcp:127.0.0.1:9100 to listen on",
    )
    parser.add_argument("--profile", default="generic-80mm")
    parser.add_argument("--baud", type=int, default=None, help="emulate this line rate")
    parser.add_argument("--out-dir", type=Path, default=None, help="write receipt PNGs here")
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
