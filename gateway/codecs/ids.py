"""Time-ordered event ids (UUIDv7, RFC 9562), the idempotency key of every event."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["uuid7"]


class _Generator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def __call__(self, now_ms: int | None = None) -> str:
        with self._lock:
            ms = int(time.time() * 1000) if now_ms is None else now_ms
            if ms <= self._last_ms:
                # Same (or earlier) millisecond: keep order with a 12-bit counter, then borrow
                # the next millisecond.
                self._seq += 1
                if self._seq > 0xFFF:
                    self._last_ms += 1
                    self._seq = 0
                ms = self._last_ms
            else:
                self._last_ms, self._seq = ms, int.from_bytes(os.urandom(2)) & 0x7FF
            seq = self._seq
        rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
        return str(uuid.UUID(int=value))


uuid7 = _Generator()
uuid7.__doc__ = "A UUIDv7 string; ids made in one process are strictly increasing."
