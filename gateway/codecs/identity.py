"""Customer identity on the box: keyed hashes instead of identifiers, signed app tokens.

A loyalty number, phone or email is turned into a *customer ref* (HMAC-SHA256 under a key shared
with the cloud) the moment it arrives; only the ref is stored, logged or sent. The app's loyalty QR
code carries a short-lived token signed with Ed25519 by the chain's backend; the gateway holds the
public key only, so a compromised box cannot mint tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "IDENTIFIER_KEYS",
    "IDENTIFIER_WORDS",
    "TOKEN_PREFIX",
    "IdentityResolver",
    "TokenError",
    "associate_ref",
    "customer_ref",
    "load_or_create_hash_key",
    "mint_token",
    "parse_public_key",
    "public_key_text",
    "verify_token",
]

TOKEN_PREFIX = "SGW1"  # noqa: S105 - a format tag, not a secret
# Names of fields that would carry a raw identifier (device events refuse them, logs redact
# them): a word anywhere in a key ("customer_phone", "loyaltyNumber") ...
IDENTIFIER_WORDS = frozenset(
    {"loyalty", "phone", "mobile", "msisdn", "email", "mac", "token", "cardholder"}
)
# ... or the whole key, for words that are innocent inside others ("product_name").
IDENTIFIER_KEYS = frozenset({"card", "card_number", "address", "name", "qr", "qr_token"})
_NON_DIGIT = re.compile(r"[\s\-.]")


class TokenError(ValueError):
    """A QR token that cannot be trusted; the message says why (never echoes the token)."""


def load_or_create_hash_key(path: Path) -> bytes:
    """Read a 32-byte key stored as hex; create one (mode 0600) if the file is absent."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
        return key
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError(f"{path}: expected 64 hexadecimal characters") from exc
    if len(key) < 16:
        raise ValueError(f"{path}: key too short ({len(key)} bytes), expected 32")
    return key


def customer_ref(key: bytes, kind: str, value: str) -> str:
    """The pseudonymous ref of an identifier: stable per key, useless without it."""
    normalised = _NON_DIGIT.sub("", value) if kind == "loyalty" else value.strip().lower()
    digest = hmac.new(key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()
    return f"c_{digest[:32]}"


def associate_ref(key: bytes, staff_id: str) -> str:
    """An associate's pseudonymous ref: their KPIs are counted, never under their staff id."""
    digest = hmac.new(key, f"associate:{staff_id.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"a_{digest[:16]}"


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("expected base64 of a 32-byte Ed25519 public key") from exc
    if len(raw) != 32:
        raise ValueError(f"expected a 32-byte Ed25519 public key, found {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(private: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    ref: str
    issued_at: int
    expires_at: int


def mint_token(private: Ed25519PrivateKey, ref: str, issued_at: int, ttl_s: int = 300) -> str:
    """What the chain's app backend does; here for simulators and tests."""
    body = json.dumps(
        {"sub": ref, "iat": issued_at, "exp": issued_at + ttl_s}, separators=(",", ":")
    )
    signed = f"{TOKEN_PREFIX}.{_b64(body.encode())}"
    return f"{signed}.{_b64(private.sign(signed.encode()))}"


# An app shows a token minted moments before; one this long past its expiry is a screenshot,
# or this gateway's clock is ahead.
_FRESH_TOKEN_S = 3600.0


def verify_token(public: Ed25519PublicKey, token: str, now: float, leeway_s: int) -> TokenClaims:
    """Check a token's form, signature and time window; returns the customer ref it names."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenError(f"not a {TOKEN_PREFIX} token")
    try:
        body, signature = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError) as exc:
        raise TokenError("token is not base64url") from exc
    try:
        public.verify(signature, f"{parts[0]}.{parts[1]}".encode())
    except InvalidSignature as exc:
        raise TokenError("token signature is not valid") from exc
    try:
        claims = json.loads(body)
        ref, iat, exp = claims["sub"], claims["iat"], claims["exp"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError("token body is malformed") from exc
    if not (isinstance(ref, str) and isinstance(iat, int) and isinstance(exp, int)):
        raise TokenError("token body is malformed")
    if now > exp + leeway_s:
        late = now - exp
        if late > _FRESH_TOKEN_S:  # an app shows a fresh token: an old one hints at the clock
            raise TokenError(
                f"token expired {late / 3600:.1f} h ago by this gateway's clock"
                " (if fresh codes are refused, check the clock)"
            )
        raise TokenError("token expired")
    if now < iat - leeway_s:
        raise TokenError("token issued in the future (check the clock)")
    return TokenClaims(ref=ref, issued_at=iat, expires_at=exp)


class IdentityResolver:
    """What a customer shows (a loyalty card, a phone number, the app's QR token) -> their
    customer ref. Kiosks, lanes and the camera use it directly; the raw value goes no further."""

    def __init__(
        self,
        hash_key: bytes,
        token_key: Ed25519PublicKey | None,
        token_leeway_s: int,
        now: Callable[[], float],
    ) -> None:
        self._hash_key = hash_key
        self._token_key = token_key
        self._token_leeway_s = token_leeway_s
        self._now = now

    def resolve(self, method: str, value: str) -> tuple[str | None, str | None]:
        """(customer ref, problem): a refused token gives no ref and says why."""
        if method != "qr_token":
            return customer_ref(self._hash_key, method, value), None
        if self._token_key is None:
            return None, "QR tokens are not accepted here (identity.token_public_key is not set)"
        try:
            claims = verify_token(self._token_key, value, self._now(), self._token_leeway_s)
        except TokenError as exc:
            return None, f"QR token refused: {exc}"
        return claims.ref, None
