"""One ESC/POS receipt printer: its status watched, jobs pulled from the journal.

- Links: a serial line (opened 8N1, no flow control, exclusive, with pyserial-asyncio-fast;
  pyserial's open runs in a thread), raw TCP (a network printer's port 9100; TCP_NODELAY, and
  TCP_USER_TIMEOUT so a peer that vanished without a FIN is dropped), or the kernel's usblp
  (/dev/usb/lp0: a character device read and written without blocking). Everything below is
  the same on each; only serial lines are paced at their line rate.
- Automatic Status Back is enabled when the profile has it, and the printer
  is polled (DLE EOT 1, 2 and 4 in one burst) every `poll_s` while idle, right before a job and
  after its last byte. Unannounced ASB blocks update the state at any time.
- States: ready, paper_out, cover_open, error (what the printer says), offline (it said nothing
  within `status_timeout_s`), unplugged (the device is gone or the line broke). The component
  is `ready` only in ready; paper near end is a warning in the ready detail.
- Jobs: `next_job` is called only when ready. A job that arrives after the printer faulted is
  held, nothing sent (so it is not a copy), until the printer is ready again. After the last
  byte the job is confirmed as the profile says: with `confirm = "process_id"` a GS ( H request
  follows the job, and the printer answers it only once it has printed everything before it
  (status is polled meanwhile); with "status" a DLE EOT poll, which a printer answers ahead of
  what is still in its buffer. `printed` only if confirmed and no fault was seen during the
  job, else `interrupted` (the journal queues it again, as a copy). A job taken is always
  finished one way or the other, on stop too (shielded).
- A broken link (EOF, an I/O error, the device path gone, the TCP connection closed or reset)
  is noticed at once by the reader; the driver then waits for the device (or the TCP peer) to
  come back (jittered backoff capped at 1 s), reopens it and resumes.
- Serial writes are paced at the line rate: pyserial's non-blocking write busy-waits, in the
  event loop, while the kernel's buffer is full, so the backlog is kept well below that buffer.
  TCP and usblp writes wait on the transport's flow control (drain).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Literal

import structlog
from serial_asyncio_fast import open_serial_connection

from gateway.escpos import (
    AutoStatus,
    Garbage,
    PrinterStatus,
    ProcessIdReply,
    Profile,
    RealtimeStatus,
    StatusDecoder,
    asb_enable,
    process_id_request,
    realtime_status_request,
)
from gateway.flows.printing import PrintJob, PrintQueue
from gateway.runtime.clock import Clock
from gateway.runtime.config import PrinterLink
from gateway.runtime.supervisor import Backoff, Handle

__all__ = ["EscposPrinter", "PrinterState"]

PrinterState = Literal["ready", "paper_out", "cover_open", "offline", "unplugged", "error"]

log = structlog.get_logger("gateway.printer")

# Printer (online), offline cause (cover, paper end, error), roll paper sensor (near end, end).
_POLL = (1, 2, 4)
_POLL_REQUEST = b"".join(realtime_status_request(n) for n in _POLL)
_CHUNK = 256
_MAX_BACKLOG = 2048  # bytes on their way: well below a UART's 4 KiB and a pty's 16 KiB buffer
_BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop
_FAULT_POLL_S = 0.5  # while not ready: how soon a printer that speaks again is noticed
_REOPEN_MIN_S, _REOPEN_MAX_S = 0.05, 1.0
_CLOSE_TIMEOUT_S = 2.0
_CONNECT_TIMEOUT_S = 2.0  # a network printer on the store's LAN answers a SYN in milliseconds
_TCP_USER_TIMEOUT_MS = 3000  # data unacknowledged this long: the peer is gone, reconnect


class _LineBroken(Exception):
    """The link is gone: end of file, an I/O error, the device path removed, TCP closed."""


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


class _Line:
    """One open port: a reader task feeding the status decoder, paced writes, status polls."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        baud: int | None,
        *,
        on_status: Callable[[PrinterStatus], None],
        on_garbage: Callable[[int], None],
        on_broken: Callable[[], None],
    ) -> None:
        self._reader, self._writer = reader, writer
        # Seconds per byte on a serial line; None: the transport's flow control paces writes.
        self._byte_s = _BITS_PER_BYTE / baud if baud else None
        self._processed: set[bytes] = set()  # process ids answered
        self._progress = asyncio.Event()  # a process id answered, or the line broke
        self._on_status, self._on_garbage, self._on_broken = on_status, on_garbage, on_broken
        self._decoder = StatusDecoder()
        self._replies: list[RealtimeStatus] = []
        self._answered = asyncio.Event()
        self._polling = asyncio.Lock()  # replies say which request they answer only by order
        self._free_at = 0.0  # loop time when the last byte written has left the wire
        self.broken: str | None = None
        self._broken = asyncio.Event()
        self._pump = asyncio.create_task(self._read(), name="printer-line-reader")

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(1024):
                self._dispatch(data)
            self._break("end of file")
        except OSError as exc:  # pyserial's SerialException is an OSError
            self._break(str(exc) or type(exc).__name__)

    def _dispatch(self, data: bytes) -> None:
        for reply in self._decoder.feed(data):
            match reply:
                case AutoStatus():
                    self._on_status(reply.status)
                case RealtimeStatus():
                    self._replies.append(reply)
                    if len(self._replies) == len(_POLL):
                        self._answered.set()
                case ProcessIdReply():
                    self._processed.add(reply.pid)
                    self._progress.set()
                case Garbage():
                    self._on_garbage(reply.count)

    def _break(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
            self._broken.set()
            self._answered.set()  # wakes a poll waiting for replies
            self._progress.set()
            self._on_broken()

    def check(self) -> None:
        if self.broken is not None:
            raise _LineBroken(self.broken)

    def backlog_s(self) -> float:
        """How long the bytes written so far still need on the wire (serial lines)."""
        return max(0.0, self._free_at - asyncio.get_running_loop().time())

    async def send(self, data: bytes) -> None:
        """Write `data`; on a serial line never more than _MAX_BACKLOG bytes ahead of its rate."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(data), _CHUNK):
            if self._byte_s is not None:
                ahead = self.backlog_s() - _MAX_BACKLOG * self._byte_s
                if ahead > 0:
                    await _wait(self._broken, ahead)
            self.check()
            chunk = data[start : start + _CHUNK]
            self._writer.write(chunk)
            if self._byte_s is not None:
                self._free_at = max(self._free_at, loop.time()) + len(chunk) * self._byte_s
            try:
                await self._writer.drain()
            except OSError as exc:
                self._break(str(exc) or type(exc).__name__)
        self.check()

    async def processed(self, pid: bytes, within_s: float) -> bool:
        """Whether the printer answered process id `pid` (now or within `within_s`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while pid not in self._processed:
            self.check()
            self._progress.clear()
            if not await _wait(self._progress, deadline - loop.time()):
                break
        self.check()
        return pid in self._processed

    async def poll(self, within_s: float) -> list[RealtimeStatus] | None:
        """DLE EOT 1, 2, 4 in one burst: the replies, or None if not all came within `within_s`
        of the requests leaving the wire."""
        async with self._polling:
            self._replies = []
            self._answered.clear()
            for n in _POLL:
                self._decoder.expect(n)
            await self.send(_POLL_REQUEST)
            answered = await _wait(self._answered, within_s + self.backlog_s())
            self.check()
            if not answered:
                self._decoder.cancel_expected()  # a late reply is then garbage, not the next one
                return None
            return self._replies

    async def close(self) -> None:
        self._pump.cancel()
        await asyncio.wait({self._pump})
        self._writer.close()
        # The transport reports how it was lost (the read error) here; it is known already.
        with suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()


def _state_of(status: PrinterStatus) -> tuple[PrinterState, str]:
    if status.cover_open:
        return "cover_open", "cover open"
    if status.paper_out:
        return "paper_out", "paper out"
    if status.error:
        return "error", "printer error"
    if not status.online:
        return "error", "printer offline, no cause reported"
    return "ready", "ready, paper near end" if status.paper_near_end else "ready"


async def _open_usb(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """usblp's character device as a stream: reads (the printer's status) and writes on their
    own descriptors, so each pipe transport closes its own."""
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        write_fd = os.dup(fd)
    except OSError:
        os.close(fd)
        raise
    reader = asyncio.StreamReader()
    try:
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
    except BaseException:
        os.close(write_fd)
        raise
    try:
        # The write side gets its own protocol (a stream reader takes one transport only).
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
            os.fdopen(write_fd, "wb", buffering=0),
        )
    except BaseException:
        read_transport.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(_CONNECT_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a status poll is 9 bytes
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
        if user_timeout is not None:
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, _TCP_USER_TIMEOUT_MS)
    return reader, writer


class EscposPrinter:
    """A supervisor component: one ESC/POS printer on `link`, printing jobs from `queue`."""

    # The journal requeues jobs a crash left 'sending' when it starts: take none before.
    requires = ("printing",)

    def __init__(
        self,
        printer_id: str,
        link: PrinterLink,
        profile: Profile,
        queue: PrintQueue,
        clock: Clock,
        *,
        baud: int = 115200,
        status_timeout_s: float = 0.5,
        poll_s: float = 0.5,
        confirm_timeout_s: float = 30.0,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = f"printer-{printer_id}"
        self.printer_id = printer_id
        self.state: PrinterState = "offline"
        self.detail = "not opened yet"
        self._link = link
        self._profile = profile
        self._queue = queue
        self._clock = clock
        self._baud = baud
        self._status_timeout_s = status_timeout_s
        self._poll_s = poll_s
        self._confirm_timeout_s = confirm_timeout_s
        self._pid = 0  # the last process id sent (GS ( H), 0000..9999 round
        self._on_state = on_state
        self._log = log.bind(printer=printer_id)
        self._backoff = Backoff(_REOPEN_MIN_S, _REOPEN_MAX_S, random.Random())
        self._handle: Handle | None = None
        self._announced = False  # on_state has been told the first state
        self._status = PrinterStatus()
        self._wake = asyncio.Event()  # a job came, the state changed, or the line broke
        self._taking: asyncio.Task[PrintJob] | None = None  # next_job, started when ready
        self._held: PrintJob | None = None  # taken, nothing sent yet
        self._sending: PrintJob | None = None  # bytes sent, not confirmed yet
        self._fault: str | None = None  # what went wrong while _sending
        self._finishing: set[asyncio.Task[None]] = set()

    async def run(self, handle: Handle) -> None:
        self._handle = handle
        try:
            while True:
                line = await self._open()
                try:
                    await self._serve(line)
                except _LineBroken as exc:
                    await self._line_broke(str(exc))
                finally:
                    await line.close()
        except BaseException as exc:
            stopped = isinstance(exc, asyncio.CancelledError)
            reason = "stopped" if stopped else f"driver failed: {type(exc).__name__}: {exc}"
            await asyncio.shield(self._release(reason))
            raise

    async def _open(self) -> _Line:
        """The link, once the device (or TCP peer) is there and opens; waits with backoff."""
        link = self._link
        while True:
            if self._gone():
                self._set("unplugged", f"waiting for {link.path}")
            else:
                try:
                    reader, writer = await self._connect()
                except (OSError, TimeoutError) as exc:  # busy, gone again, refused, no route
                    what = "connect to" if link.kind == "tcp" else "open"
                    self._set("unplugged", f"cannot {what} {_where(link)}: {_reason(exc)}")
                else:
                    self._log.info("link open", link=str(link))
                    return _Line(
                        reader,
                        writer,
                        self._baud if link.kind == "serial" else None,
                        on_status=self._apply,
                        on_garbage=self._garbage,
                        on_broken=self._wake.set,
                    )
            await asyncio.sleep(self._backoff.next())

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        link = self._link
        if link.kind == "tcp":
            return await _open_tcp(link.host, link.port)
        if link.kind == "usb":
            return await _open_usb(link.path)
        return await open_serial_connection(
            url=str(link.path),
            baudrate=self._baud,
            bytesize=8,
            parity="N",
            stopbits=1,
            xonxoff=False,
            rtscts=False,
            dsrdtr=False,
            exclusive=True,
        )

    def _gone(self) -> bool:
        """The device path is missing (unplugged); a TCP peer has no path to watch."""
        return self._link.kind != "tcp" and not self._link.path.exists()

    async def _serve(self, line: _Line) -> None:
        """Watch the printer and print jobs until the line breaks."""
        loop = asyncio.get_running_loop()
        self._status = PrinterStatus()
        if self._profile.asb:
            await line.send(asb_enable())
        await self._poll(line)
        last_poll = loop.time()
        while True:
            self._wake.clear()
            line.check()
            if self._taking is not None and self._taking.done():
                self._held, self._taking = self._taking.result(), None
            if self.state == "ready":
                if self._held is not None:
                    await self._print(line, self._held)
                    last_poll = loop.time()
                    continue
                if self._taking is None:
                    self._take()
            interval = self._poll_s if self.state == "ready" else min(self._poll_s, _FAULT_POLL_S)
            due = last_poll + interval - loop.time()
            if due > 0 and await _wait(self._wake, due):
                continue
            await self._poll(line)
            last_poll = loop.time()

    def _take(self) -> None:
        task = asyncio.create_task(self._queue.next_job(self.printer_id), name=f"{self.name}-take")
        task.add_done_callback(lambda _: self._wake.set())
        self._taking = task

    async def _poll(self, line: _Line) -> None:
        if self._gone():
            raise _LineBroken(f"{self._link.path} is gone")
        replies = await line.poll(self._status_timeout_s)
        if replies is None:
            self._set("offline", f"silent: no status reply within {self._status_timeout_s:g}s")
            return
        status = self._status
        for reply in replies:
            status = reply.update(status)
        self._apply(status)

    async def _print(self, line: _Line, job: PrintJob) -> None:
        await self._poll(line)  # right before sending: a fault or silence since the last poll
        if self.state != "ready":
            self._log.info("job held until the printer is ready", job=job.id, state=self.state)
            return
        self._begin(job)
        started = self._clock.monotonic()
        self._log.info(
            "printing", job=job.id, copy=job.copy, attempt=job.attempts, size=len(job.data)
        )
        await line.send(job.data)
        if self._profile.confirm == "process_id":
            await self._until_processed(line)
        else:
            await self._poll(line)  # answered once the printer has read (not printed) it all
        fault, self._sending = self._fault, None
        if fault is None:
            await self._finish(job, None)
            self._log.info(
                "printed", job=job.id, seconds=round(self._clock.monotonic() - started, 3)
            )
        else:
            await self._finish(job, f"{fault} during the job")

    async def _until_processed(self, line: _Line) -> None:
        """GS ( H after the job: its answer says the printer printed the job. Status is polled
        while waiting, so a fault (or silence) meanwhile is the job's fault."""
        self._pid = self._pid % 9999 + 1
        pid = f"{self._pid:04d}".encode()
        await line.send(process_id_request(pid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._confirm_timeout_s + line.backlog_s()
        while self._fault is None:
            left = deadline - loop.time()
            if left <= 0:
                self._fault = f"no process id reply within {self._confirm_timeout_s:g}s"
                return
            if await line.processed(pid, min(self._poll_s, left)):
                return
            await self._poll(line)

    def _begin(self, job: PrintJob) -> None:
        self._held, self._sending, self._fault = None, job, None

    async def _line_broke(self, reason: str) -> None:
        self._set("unplugged", f"line broke: {reason}")
        job, self._sending = self._sending, None
        if job is not None:
            await self._finish(job, f"line broke: {reason}")

    async def _finish(self, job: PrintJob, interrupted: str | None) -> None:
        """Tell the journal; shielded, so a stop can't leave a job taken and never reported."""
        if interrupted is None:
            task = asyncio.create_task(self._queue.printed(job.id))
        else:
            self._log.warning("print job interrupted", job=job.id, reason=interrupted)
            task = asyncio.create_task(self._queue.interrupted(job.id, interrupted))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        await asyncio.shield(task)

    async def _release(self, reason: str) -> None:
        """On the way out: every job taken is given back, and every report has reached the
        journal."""
        sending, self._sending = self._sending, None
        # Taken but not one byte sent: back to the queue untouched, so the customer's first
        # print is not marked as a copy.
        untouched = [self._held] if self._held is not None else []
        self._held = None
        taking, self._taking = self._taking, None
        if taking is not None:
            taking.cancel()
            await asyncio.wait({taking})
            if not taking.cancelled() and taking.exception() is None:
                untouched.append(taking.result())
        if sending is not None:
            await self._finish(sending, reason)
        for job in untouched:
            self._log.info("print job handed back untouched", job=job.id, reason=reason)
            await asyncio.shield(self._queue.release(job.id))
        if self._finishing:
            await asyncio.wait(self._finishing)

    def _apply(self, status: PrinterStatus) -> None:
        self._status = status
        self._set(*_state_of(status))
        if self.state == "ready":
            self._backoff.reset()

    def _garbage(self, count: int) -> None:
        self._log.debug("garbage on the line", count=count)

    def _set(self, state: PrinterState, detail: str) -> None:
        if self._sending is not None and state != "ready" and self._fault is None:
            self._fault = detail
        changed = state != self.state or not self._announced
        if changed or detail != self.detail:
            level = self._log.info if detail == "ready" else self._log.warning
            level("printer state", state=state, detail=detail)
        self.state, self.detail = state, detail
        if changed:
            self._announced = True
            if self._on_state is not None:
                self._on_state(self.printer_id, state)
        if self._handle is not None:
            if state == "ready":
                self._handle.ready(detail)
            else:
                self._handle.degraded(detail)
        self._wake.set()


def _where(link: PrinterLink) -> str:
    return f"{link.host}:{link.port}" if link.kind == "tcp" else str(link.path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {_CONNECT_TIMEOUT_S:g}s"
    return str(exc) or type(exc).__name__
