"""Device keys: a radio address becomes a keyed hash that rotates every UTC day.

Drivers call `DeviceKeys.key(address)` at the boundary, so a raw MAC address never leaves the
driver's stack frame: sightings, logs, events, metrics and the uplink carry only the key. The
daily key is derived from the gateway's hash key, so keys cannot be joined across days or across
stores, and the hash key never leaves the box.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import b32encode

__all__ = ["DeviceKeys"]

_DAY_S = 86_400


class DeviceKeys:
    def __init__(self, hash_key: bytes) -> None:
        self._hash_key = hash_key
        self._day = -1
        self._day_key = b""
        self._cache: dict[str, str] = {}

    def key(self, address: str, now: float) -> str:
        """`d_` + 16 base32 characters of HMAC-SHA256(day key, normalised address)."""
        day = int(now // _DAY_S)
        if day != self._day:  # a new day: a new key, and yesterday's mapping is forgotten
            self._day = day
            self._day_key = hmac.new(self._hash_key, f"ble-day:{day}".encode(), "sha256").digest()
            self._cache.clear()
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        normalised = address.replace(":", "").replace("-", "").lower().encode()
        digest = hmac.new(self._day_key, normalised, hashlib.sha256).digest()
        key = "d_" + b32encode(digest[:10]).decode().lower()
        if len(self._cache) >= 16_384:  # bounded: address churn must not grow memory
            self._cache.clear()
        self._cache[address] = key
        return key
