"""Eddystone-EID ephemeral ids and their resolution to opted-in customers."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.eid import EidResolver, eid

IK = bytes.fromhex("0102030405060708090a111213141516")
ALICE = bytes.fromhex("7c91330e61dfea4606b5b3ecb4457d76")
BOB = bytes(range(16, 32))
NOW = 1_700_000_000  # a Unix time whose counter has non-zero top 16 bits


@pytest.mark.parametrize(
    ("identity_key", "k", "t", "expected"),
    [
        # RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb (beacon time 0, and now - 2000)
        (IK, 10, 0, "a9b76a71c5f89290"),
        (IK, 10, 2000, "4144413e45fefa58"),
        # an independent Python resolver's test (identity key from the ECDH + HKDF example)
        (ALICE, 0, 0, "436bfe57d5a09505"),
    ],
)
def test_published_vectors(identity_key: bytes, k: int, t: int, expected: str) -> None:
    assert eid(identity_key, k, t).hex() == expected


@pytest.mark.parametrize(
    ("k", "t", "expected"),
    [
        # Pinned from this implementation (no published vector exercises the counter's top 16
        # bits); test_matches_the_spec_tables checks the same layout independently.
        (10, 0x12345678, "be91854f43822ad0"),
        (15, 0x12345678, "1cc549bb8e948e76"),
        (10, NOW, "78408b15f42a8563"),
        (10, 0xFFFF_FFFF, "a3ad9cdfad092be4"),
    ],
)
def test_pinned_values(k: int, t: int, expected: str) -> None:
    assert eid(IK, k, t).hex() == expected


def _reference(identity_key: bytes, k: int, t: int) -> bytes:
    """eid-computation.md's two tables, written out field by field."""

    def aes(key: bytes, block: bytes) -> bytes:
        return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)  # noqa: S305

    top16 = (t >> 16) & 0xFFFF
    temporary = aes(identity_key, struct.pack(">11xB2xH", 0xFF, top16))
    counter = (t & 0xFFFF_FFFF) >> k << k
    return aes(temporary, struct.pack(">11xBI", k, counter))[:8]


@given(st.binary(min_size=16, max_size=16), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_matches_the_spec_tables(identity_key: bytes, k: int, t: int) -> None:
    assert eid(identity_key, k, t) == _reference(identity_key, k, t)


def test_counter_wraps_at_32_bits() -> None:
    assert eid(IK, 4, NOW + 2**32) == eid(IK, 4, NOW)
    assert eid(IK, 4, -1) == eid(IK, 4, 2**32 - 1)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        eid(bytes(15), 10, 0)
    with pytest.raises(ValueError, match=r"0\.\.15"):
        eid(IK, 16, 0)
    with pytest.raises(ValueError, match=r"0\.\.15"):
        eid(IK, -1, 0)


@pytest.mark.parametrize("k", [0, 3, 10, 15])
def test_rotates_exactly_at_power_of_two_boundaries(k: int) -> None:
    period = 1 << k
    # an ordinary boundary, and one where the temporary key changes too (t = 2^16 multiple)
    for boundary in (((NOW >> k) + 1) << k, 0x6554_0000):
        current = eid(IK, k, boundary)
        assert eid(IK, k, boundary + period - 1) == current
        assert eid(IK, k, boundary - 1) != current
        assert eid(IK, k, boundary + period) != current


# ---------------------------------------------------------------------------------------------
# The resolver

K = 10
PERIOD = 1 << K


def _resolver(drift_windows: int = 1, now: float = NOW) -> EidResolver:
    resolver = EidResolver(drift_windows)
    resolver.load({"alice": (ALICE, K), "bob": (BOB, 4)}, now)
    return resolver


def test_resolves_the_current_window() -> None:
    resolver = _resolver()
    assert len(resolver) == 2
    assert resolver.resolve(eid(ALICE, K, NOW), NOW) == "alice"
    assert resolver.resolve(eid(BOB, 4, NOW), NOW + 0.5) == "bob"


def test_unknown_ids_give_none() -> None:
    resolver = _resolver()
    assert resolver.resolve(bytes(8), NOW) is None
    assert resolver.resolve(eid(IK, K, NOW), NOW) is None  # a key nobody loaded
    assert resolver.resolve(eid(ALICE, 4, NOW), NOW) is None  # right key, wrong exponent
    assert resolver.resolve(b"", NOW) is None
    assert EidResolver().resolve(eid(ALICE, K, NOW), NOW) is None


def test_follows_time_across_rotation_boundaries() -> None:
    resolver = _resolver()
    boundary = ((NOW >> K) + 1) << K
    for now in (boundary - 1, boundary - 0.001, boundary, boundary + 3 * PERIOD + 7):
        # the phone and the box agree on the time
        assert resolver.resolve(eid(ALICE, K, int(now)), now) == "alice", now
        assert resolver.resolve(eid(BOB, 4, int(now)), now) == "bob", now


@pytest.mark.parametrize("drift_windows", [0, 1, 2])
def test_tolerates_clock_drift_of_drift_windows(drift_windows: int) -> None:
    resolver = _resolver(drift_windows)
    box = (NOW >> K << K) + PERIOD // 2  # mid-window
    for windows in range(-drift_windows - 2, drift_windows + 3):
        phone = box + windows * PERIOD
        expected = "alice" if abs(windows) <= drift_windows else None
        assert resolver.resolve(eid(ALICE, K, phone), box) == expected, windows


def test_drift_is_counted_in_windows_from_the_box_window() -> None:
    resolver = _resolver()
    start = NOW >> K << K
    # The box at the very end of its window accepts the phone's next window but not the one after.
    assert resolver.resolve(eid(ALICE, K, start + 2 * PERIOD - 1), start + PERIOD - 1) == "alice"
    assert resolver.resolve(eid(ALICE, K, start + 2 * PERIOD), start + PERIOD - 1) is None


def test_stale_windows_are_dropped() -> None:
    resolver = _resolver()
    old = eid(ALICE, K, NOW)
    assert resolver.resolve(old, NOW + PERIOD) == "alice"  # one window behind: drift
    assert resolver.resolve(old, NOW + 2 * PERIOD) is None
    assert resolver.resolve(old, NOW) == "alice"  # the box's clock stepped back: recomputed


def test_time_can_jump_far_either_way() -> None:
    resolver = _resolver()
    for now in (NOW + 86_400 * 3, NOW - 86_400 * 400, float(PERIOD // 2), NOW):
        assert resolver.resolve(eid(ALICE, K, int(now)), now) == "alice", now
        assert resolver.resolve(eid(BOB, 4, int(now)), now) == "bob", now


def test_keys_with_different_exponents_rotate_independently() -> None:
    resolver = _resolver()
    start = NOW >> K << K
    later = start + 2 * PERIOD  # two of alice's windows, 128 of bob's
    resolver.refresh(later)
    assert resolver.resolve(eid(BOB, 4, later - 16), later) == "bob"  # one window behind
    assert resolver.resolve(eid(BOB, 4, later - 32), later) is None
    assert resolver.resolve(eid(ALICE, K, later - PERIOD), later) == "alice"
    assert resolver.resolve(eid(ALICE, K, later - 2 * PERIOD), later) is None


def test_reloading_withdraws_a_revoked_customer() -> None:
    resolver = _resolver()
    alice_now = eid(ALICE, K, NOW)
    bob_now = eid(BOB, 4, NOW)
    resolver.load({"bob": (BOB, 4)}, NOW)  # alice revoked her consent
    assert len(resolver) == 1
    assert resolver.resolve(alice_now, NOW) is None
    assert resolver.resolve(bob_now, NOW) == "bob"
    # and across rotations, her ids do not come back
    later = NOW + 5 * PERIOD
    assert resolver.resolve(eid(ALICE, K, later), later) is None
    resolver.load({}, later)
    assert len(resolver) == 0
    assert resolver.resolve(eid(BOB, 4, later), later) is None


def test_reloading_a_changed_key_replaces_it() -> None:
    resolver = _resolver()
    resolver.load({"alice": (IK, K), "bob": (BOB, 6)}, NOW)  # a new key; a new exponent
    assert resolver.resolve(eid(ALICE, K, NOW), NOW) is None
    assert resolver.resolve(eid(IK, K, NOW), NOW) == "alice"
    assert resolver.resolve(eid(BOB, 4, NOW), NOW) is None
    assert resolver.resolve(eid(BOB, 6, NOW), NOW) == "bob"


def test_a_bad_key_fails_the_load_and_changes_nothing() -> None:
    resolver = _resolver()
    with pytest.raises(ValueError, match=r"'carol'.*16 bytes"):
        resolver.load({"alice": (ALICE, K), "carol": (bytes(8), K)}, NOW)
    with pytest.raises(ValueError, match=r"'carol'.*0\.\.15"):
        resolver.load({"carol": (IK, 20)}, NOW)
    assert len(resolver) == 2
    assert resolver.resolve(eid(BOB, 4, NOW), NOW) == "bob"
    with pytest.raises(ValueError, match="drift_windows"):
        EidResolver(-1)


def test_ten_thousand_keys() -> None:
    keys = {f"c{i:05d}": (i.to_bytes(16, "big"), 8 + i % 8) for i in range(10_000)}
    resolver = EidResolver()
    resolver.load(keys, NOW)
    assert len(resolver) == 10_000
    for ref in ("c00000", "c04321", "c09999"):
        identity_key, k = keys[ref]
        for now in (NOW, NOW + 3 * (1 << 15)):
            assert resolver.resolve(eid(identity_key, k, now), now) == ref
