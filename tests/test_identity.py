"""Keyed customer refs and the app's signed QR tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.codecs.identity import (
    TokenError,
    customer_ref,
    load_or_create_hash_key,
    mint_token,
    parse_public_key,
    public_key_text,
    verify_token,
)

KEY = bytes(range(32))


def test_refs_are_keyed_normalised_and_reveal_nothing() -> None:
    ref = customer_ref(KEY, "loyalty", "4000 0000-0000.1")
    assert ref == customer_ref(KEY, "loyalty", "4000000000001")
    assert ref != customer_ref(bytes(32), "loyalty", "4000000000001")
    assert ref != customer_ref(KEY, "phone", "4000000000001")
    assert customer_ref(KEY, "email", " Ada@Example.com ") == customer_ref(
        KEY, "email", "ada@example.com"
    )
    assert "4000" not in ref
    assert ref.startswith("c_")
    assert len(ref) == 34


def test_hash_key_is_created_private_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.key"
    key = load_or_create_hash_key(path)
    assert len(key) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create_hash_key(path) == key
    path.write_text("not hex")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        load_or_create_hash_key(path)


def test_a_fresh_token_names_its_customer() -> None:
    private = Ed25519PrivateKey.generate()
    public = parse_public_key(public_key_text(private))
    token = mint_token(private, "c_abc", issued_at=1000, ttl_s=300)
    assert verify_token(public, token, now=1100, leeway_s=30).ref == "c_abc"


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (1000 + 300 + 31, "token expired$"),
        (1000 + 300 + 5 * 3600, r"token expired 5.0 h ago .*check the clock"),  # clock ahead?
        (1000 - 31, r"issued in the future \(check the clock\)"),
    ],
)
def test_tokens_outside_their_window_are_refused(now: int, message: str) -> None:
    private = Ed25519PrivateKey.generate()
    token = mint_token(private, "c_abc", issued_at=1000, ttl_s=300)
    with pytest.raises(TokenError, match=message):
        verify_token(private.public_key(), token, now=now, leeway_s=30)


def test_forged_and_tampered_tokens_are_refused() -> None:
    chain, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = mint_token(forger, "c_abc", issued_at=1000)
    with pytest.raises(TokenError, match="signature"):
        verify_token(chain.public_key(), forged, now=1000, leeway_s=0)
    genuine = mint_token(chain, "c_abc", issued_at=1000)
    prefix, _, sig = genuine.split(".")
    other = mint_token(chain, "c_xyz", issued_at=1000).split(".")[1]
    with pytest.raises(TokenError, match="signature"):
        verify_token(chain.public_key(), f"{prefix}.{other}.{sig}", now=1000, leeway_s=0)
    for junk in ("", "SGW1", "SGW2.a.b", "SGW1.!!!.???", "x" * 5000):
        with pytest.raises(TokenError):
            verify_token(chain.public_key(), junk, now=1000, leeway_s=0)


def test_public_key_parsing_explains_mistakes() -> None:
    with pytest.raises(ValueError, match="base64"):
        parse_public_key("not base64!")
    with pytest.raises(ValueError, match="found 3 bytes"):
        parse_public_key("YWJj")
