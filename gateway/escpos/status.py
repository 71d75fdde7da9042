"""Printer status: the real-time replies (DLE EOT n) and Automatic Status Back (GS a) blocks.

Both come back on the same line, unannounced ASB blocks between requested replies, so the host
side is a sans-I/O `StatusDecoder`. The fixed bits tell them apart (Epson's "identification of
send status"): a DLE EOT reply is 0xx1xx10, an ASB block starts with 0xx1xx00 and its three
other bytes are 0xx0xxxx (an XOFF may come between them). A DLE EOT reply does not say which
request it answers, so the decoder is told (`expect`) in the order the requests were sent.
The encoders are the printer's side, for the simulator: the decoder inverts them.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, replace

from gateway.escpos.commands import EnableAsb, ProcessIdRequest, StatusRequest, encode

__all__ = [
    "AutoStatus",
    "Garbage",
    "PrinterStatus",
    "ProcessIdReply",
    "RealtimeStatus",
    "StatusDecoder",
    "StatusReply",
    "asb_enable",
    "encode_asb",
    "encode_process_id",
    "encode_realtime_status",
    "process_id_request",
    "realtime_status_request",
]

_XOFF = 0x13
_PID_HEADER = b"\x37\x22"
_PID_SHAPE = re.compile(rb"\x37\x22[\x30-\x7e]{4}\x00")
_PID_SHAPE_SO_FAR = re.compile(rb"\x37(\x22[\x30-\x7e]{0,4})?")


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    online: bool = True
    paper_out: bool = False
    paper_near_end: bool = False
    cover_open: bool = False
    error: bool = False  # autocutter, mechanical, unrecoverable or auto-recoverable error

    @property
    def ready(self) -> bool:
        """Would print what it is sent."""
        return self.online and not (self.paper_out or self.cover_open or self.error)


# What each DLE EOT n reports; the other fields keep their previous value in `update`.
_COVERS: dict[int, tuple[str, ...]] = {
    1: ("online",),
    2: ("cover_open", "paper_out", "error"),
    3: ("error",),
    4: ("paper_near_end", "paper_out"),
}


@dataclass(frozen=True, slots=True)
class RealtimeStatus:
    """The one-byte reply to DLE EOT n."""

    n: int
    byte: int

    @property
    def status(self) -> PrinterStatus:
        """What this reply says; the fields it does not cover are at their healthy defaults."""
        b = self.byte
        match self.n:
            case 1:  # printer status: bit 3 offline
                return PrinterStatus(online=not b & 0x08)
            case 2:  # offline cause: bit 2 cover open, bit 5 stopped by paper end, bit 6 error
                return PrinterStatus(
                    cover_open=bool(b & 0x04), paper_out=bool(b & 0x20), error=bool(b & 0x40)
                )
            case 3:  # error cause: bit 3 autocutter, bit 5 unrecoverable, bit 6 auto-recoverable
                return PrinterStatus(error=bool(b & 0x68))
            case _:  # roll paper sensor: bits 2-3 near end, bits 5-6 paper end
                return PrinterStatus(paper_near_end=bool(b & 0x0C), paper_out=bool(b & 0x60))

    def update(self, previous: PrinterStatus) -> PrinterStatus:
        """`previous` with the fields this reply covers replaced by what it says."""
        decoded = self.status
        return replace(previous, **{f: getattr(decoded, f) for f in _COVERS[self.n]})


@dataclass(frozen=True, slots=True)
class AutoStatus:
    """A 4-byte Automatic Status Back block: the whole status, sent on a change."""

    status: PrinterStatus
    data: bytes


@dataclass(frozen=True, slots=True)
class ProcessIdReply:
    """The answer to GS ( H fn 48 (37h 22h d1..d4 00h): everything sent before it is printed."""

    pid: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    count: int  # bytes skipped: neither a reply that was expected nor an ASB block


StatusReply = RealtimeStatus | AutoStatus | ProcessIdReply | Garbage


def realtime_status_request(n: int) -> bytes:
    """DLE EOT n: 1 printer, 2 offline cause, 3 error cause, 4 roll paper sensor."""
    return encode(StatusRequest(n))


def asb_enable(mask: int = 0xFF) -> bytes:
    """GS a n: bit 0 drawer, 1 online/offline, 2 error, 3 paper sensor; 0 disables ASB."""
    return encode(EnableAsb(mask))


def process_id_request(pid: bytes) -> bytes:
    """GS ( H fn 48: the printer answers `pid` only after printing what was sent before it."""
    return encode(ProcessIdRequest(pid))


def encode_process_id(pid: bytes) -> bytes:
    """The printer's process id response."""
    return b"\x37\x22" + pid + b"\x00"


def encode_realtime_status(n: int, status: PrinterStatus) -> bytes:
    """The printer's reply to DLE EOT n (fixed bits 0xx1xx10)."""
    byte = 0x12
    match n:
        case 1:
            byte |= 0 if status.online else 0x08
        case 2:
            byte |= 0x04 * status.cover_open | 0x20 * status.paper_out | 0x40 * status.error
        case 3:
            byte |= 0x40 * status.error  # reported as auto-recoverable: it clears by itself
        case 4:
            byte |= 0x0C * status.paper_near_end | 0x60 * status.paper_out
        case _:
            raise ValueError(f"status request: expected 1..4, found {n}")
    return bytes([byte])


def encode_asb(status: PrinterStatus) -> bytes:
    """The printer's ASB block: printer, error, paper sensor and (reserved) bytes."""
    return bytes(
        [
            0x10 | 0x08 * (not status.online) | 0x20 * status.cover_open,
            0x40 * status.error,
            0x03 * status.paper_near_end | 0x0C * status.paper_out,
            0x00,
        ]
    )


def _decode_asb(block: bytes) -> PrinterStatus:
    return PrinterStatus(
        online=not block[0] & 0x08,
        cover_open=bool(block[0] & 0x20),
        error=bool(block[1] & 0x6C),  # mechanical, autocutter, unrecoverable, auto-recoverable
        paper_near_end=bool(block[2] & 0x03),
        paper_out=bool(block[2] & 0x0C),
    )


class StatusDecoder:
    """Host side: the printer's bytes in, replies out. Never raises on input bytes."""

    def __init__(self) -> None:
        self._expected: deque[int] = deque()
        self._asb = bytearray()  # an ASB block being received
        self._pid = bytearray()  # a process id response being received
        self.garbage = 0  # bytes skipped so far

    def expect(self, n: int) -> None:
        """A DLE EOT n was sent: the next reply-shaped byte answers it (after earlier ones)."""
        if not 1 <= n <= 4:
            raise ValueError(f"status request: expected 1..4, found {n}")
        self._expected.append(n)

    @property
    def pending(self) -> tuple[int, ...]:
        """The requests sent and not answered yet, oldest first."""
        return tuple(self._expected)

    def cancel_expected(self) -> None:
        """Give up on the pending requests (timed out): a late reply is then garbage."""
        self._expected.clear()

    def feed(self, data: bytes) -> list[StatusReply]:
        out: list[StatusReply] = []
        skipped = 0
        for byte in data:
            if self._asb:
                if byte == _XOFF:  # flow control may interrupt a block; it is not part of it
                    continue
                if byte & 0x90 == 0:
                    self._asb.append(byte)
                    if len(self._asb) == 4:
                        block = bytes(self._asb)
                        self._asb.clear()
                        skipped = self._flush(out, skipped)
                        out.append(AutoStatus(_decode_asb(block), block))
                    continue
                skipped += len(self._asb)  # a broken block; this byte may start something
                self._asb.clear()
            if self._pid or byte == _PID_HEADER[0]:
                self._pid.append(byte)
                if not _PID_SHAPE.fullmatch(self._pid) and not _PID_SHAPE_SO_FAR.fullmatch(
                    self._pid
                ):
                    skipped += len(self._pid) - 1  # a broken response; this byte goes on
                    self._pid.clear()
                elif len(self._pid) == len(_PID_HEADER) + 5:
                    pid = bytes(self._pid[2:6])
                    self._pid.clear()
                    skipped = self._flush(out, skipped)
                    out.append(ProcessIdReply(pid))
                    continue
                else:
                    continue
            if byte & 0x93 == 0x10:
                self._asb.append(byte)
            elif byte & 0x93 == 0x12 and self._expected:
                skipped = self._flush(out, skipped)
                out.append(RealtimeStatus(self._expected.popleft(), byte))
            else:
                skipped += 1
        self._flush(out, skipped)
        return out

    def _flush(self, out: list[StatusReply], skipped: int) -> int:
        if skipped:
            self.garbage += skipped
            out.append(Garbage(skipped))
        return 0
