"""Private rotating identifiers: Eddystone-EID ephemeral ids, and their resolution to customers.

An opted-in customer's app advertises `eid(identity_key, k, t)`, which changes every 2^k seconds
and means nothing to anyone without the key. The box holds the identity keys of the customers
whose consent is on record and resolves what it hears with one dict lookup: `EidResolver` keeps
the ids of the current window and `drift_windows` windows either side (the phone's clock is not
the box's) for every key, and at each rotation adds the new window and drops the stale one,
without recomputing the rest.

Pure: no I/O; the time is passed in (Unix seconds, the Eddystone 32-bit time counter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["EidResolver", "eid"]

_COUNTER_MASK = 0xFFFF_FFFF  # the beacon time counter is 32 bits and wraps
_MAX_K = 15


def eid(identity_key: bytes, k: int, t: int) -> bytes:
    """The 8-byte ephemeral id of the Eddystone-EID specification (eid-computation.md).

    `identity_key` is the 16-byte AES-128 key; the id rotates every 2^k seconds (0 <= k <= 15);
    `t` is the time counter in seconds, taken modulo 2^32.
    """
    _check(identity_key, k)
    return _eid(_aes(_temporary_key(_aes(identity_key), t)), k, t)


def _check(identity_key: bytes, k: int) -> None:
    if len(identity_key) != 16:
        raise ValueError(f"an identity key is 16 bytes, not {len(identity_key)}")
    if not 0 <= k <= _MAX_K:
        raise ValueError(f"the rotation exponent k must be 0..{_MAX_K}, not {k}")


def _aes(key: bytes) -> CipherContext:
    # The spec's construction is single-block AES-128; ECB of one block is exactly that.
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305


def _temporary_key(identity: CipherContext, t: int) -> bytes:
    # 11 zero bytes, salt 0xFF, 2 zero bytes, the counter's top 16 bits (it changes every 18 h).
    block = bytes(11) + b"\xff\x00\x00" + ((t & _COUNTER_MASK) >> 16).to_bytes(2, "big")
    return identity.update(block)


def _eid(temporary: CipherContext, k: int, t: int) -> bytes:
    # 11 zero bytes, k, the counter with its k low bits cleared; the id is the first 8 bytes.
    counter = t & _COUNTER_MASK & ~((1 << k) - 1)
    return temporary.update(bytes(11) + bytes((k,)) + counter.to_bytes(4, "big"))[:8]


@dataclass(slots=True)
class _Key:
    ref: str
    identity_key: bytes
    k: int
    # Cipher contexts are kept: creating one costs more than the AES block itself.
    identity: CipherContext = field(init=False)
    eids: dict[int, bytes] = field(default_factory=dict)  # window index -> its ephemeral id
    # Temporary-key ciphers by counter epoch (t >> 16); at most a few are live at a time.
    temporaries: dict[int, CipherContext] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.identity = _aes(self.identity_key)

    def compute(self, window: int) -> bytes:
        t = window << self.k
        epoch = (t & _COUNTER_MASK) >> 16
        temporary = self.temporaries.get(epoch)
        if temporary is None:
            if len(self.temporaries) >= 4:  # the epochs of older windows are done with
                self.temporaries.clear()
            temporary = self.temporaries[epoch] = _aes(_temporary_key(self.identity, t))
        return _eid(temporary, self.k, t)


@dataclass(slots=True)
class _Group:
    """The keys that share a rotation exponent, and so rotate together."""

    window: int  # the box's current window index (seconds >> k)
    keys: dict[str, _Key] = field(default_factory=dict)


class EidResolver:
    """Resolves an observed ephemeral id to the customer ref whose identity key produced it.

    Two different keys producing the same 8-byte id in overlapping windows is a 2^-64 event per
    pair (about 1e-11 for 10,000 keys with 3 live windows each); if it happens, the later key
    wins and the other customer goes unrecognised for one window, which is harmless.
    """

    def __init__(self, drift_windows: int = 1) -> None:
        if drift_windows < 0:
            raise ValueError(f"drift_windows must be >= 0, not {drift_windows}")
        self._drift = drift_windows
        self._by_eid: dict[bytes, str] = {}
        self._groups: dict[int, _Group] = {}
        self._keys: dict[str, _Key] = {}
        # The seconds [lo, hi) in which no group changes window: resolve() checks only these.
        self._lo = -math.inf
        self._hi = math.inf

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, keys: Mapping[str, tuple[bytes, int]], now: float) -> None:
        """Replace the key set (customer ref -> (identity key, k)): a withdrawn ref is no longer
        resolved. Unchanged keys keep their precomputed ids; a bad key raises ValueError and
        leaves the resolver as it was. The daemon loads into a fresh resolver off the loop and
        swaps it in (a loaded resolver's ciphers are used on the loop); reloading one in place
        is for a caller on a single thread, such as the benchmarks and tests."""
        for ref, (identity_key, k) in keys.items():
            try:
                _check(identity_key, k)
            except ValueError as exc:
                raise ValueError(f"customer {ref!r}: {exc}") from None
        for ref, old in list(self._keys.items()):
            if keys.get(ref) != (old.identity_key, old.k):
                self._remove(old)
        self.refresh(now)
        second = math.floor(now)
        for ref, (identity_key, k) in keys.items():
            if ref not in self._keys:
                self._add(_Key(ref, bytes(identity_key), k), second)
        self._set_bounds()

    def resolve(self, observed: bytes, now: float) -> str | None:
        """The customer ref whose key produced `observed` within the drift windows of `now`."""
        if not self._lo <= now < self._hi:
            self.refresh(now)
        return self._by_eid.get(observed)

    def refresh(self, now: float) -> None:
        """Move every group to the window of `now`: compute the windows that enter the drift
        range, drop the ones that leave it. resolve() calls it when needed; a caller may call it
        ahead of time to keep the rotation off the lookup path."""
        second = math.floor(now)
        for k, group in self._groups.items():
            window = second >> k
            if window != group.window:
                self._rotate(group, window)
        self._set_bounds()

    def _rotate(self, group: _Group, window: int) -> None:
        old = range(group.window - self._drift, group.window + self._drift + 1)
        new = range(window - self._drift, window + self._drift + 1)
        leaving = [w for w in old if w not in new]
        entering = [w for w in new if w not in old]
        by_eid = self._by_eid
        for key in group.keys.values():
            for w in leaving:
                gone = key.eids.pop(w)
                if by_eid.get(gone) == key.ref:  # never drop a colliding key's entry
                    del by_eid[gone]
            for w in entering:
                key.eids[w] = fresh = key.compute(w)
                by_eid[fresh] = key.ref
        group.window = window

    def _add(self, key: _Key, second: int) -> None:
        group = self._groups.get(key.k)
        if group is None:
            group = self._groups[key.k] = _Group(window=second >> key.k)
        for w in range(group.window - self._drift, group.window + self._drift + 1):
            key.eids[w] = fresh = key.compute(w)
            self._by_eid[fresh] = key.ref
        group.keys[key.ref] = key
        self._keys[key.ref] = key

    def _remove(self, key: _Key) -> None:
        for gone in key.eids.values():
            if self._by_eid.get(gone) == key.ref:
                del self._by_eid[gone]
        group = self._groups[key.k]
        del group.keys[key.ref]
        if not group.keys:
            del self._groups[key.k]
        del self._keys[key.ref]

    def _set_bounds(self) -> None:
        windows = self._groups.items()
        self._lo = max((group.window << k for k, group in windows), default=-math.inf)
        self._hi = min(((group.window + 1) << k for k, group in windows), default=math.inf)
