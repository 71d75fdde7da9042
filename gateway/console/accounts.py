"""Local console accounts: a JSON file of names, roles and Argon2id hashes (never a password).

There is no default account and no default password: `store-gateway console add-user` makes
them. The daemon reads the file at each login, so a new or changed account needs no restart.
The file is written whole (a temporary file renamed over it), readable by its owner only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["ROLES", "Account", "AccountError", "Accounts", "Role"]

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MIN_PASSWORD = 10
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# OWASP's Argon2id minimum (19 MiB, 2 passes, 1 lane): ~30 ms on a small box, off the loop.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the name is unknown, so an unknown name costs what a wrong password does.
_DUMMY = _HASHER.hash("not a password of anyone's")


class AccountError(ValueError):
    """A name, role or password refused, or an unreadable accounts file."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: Role

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


class Accounts:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AccountError(f"{self.path}: unreadable ({exc})") from exc
        users = data.get("users", {}) if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise AccountError(f"{self.path}: expected {{'users': {{name: ...}}}}")
        return cast(dict[str, dict[str, str]], users)

    def names(self) -> list[str]:
        return sorted(self._read())

    def add(self, name: str, role: str, password: str) -> None:
        """Create or replace an account (its password and role)."""
        if not _NAME.fullmatch(name):
            raise AccountError(
                f"name: found {name!r}, expected 1-32 of a-z 0-9 . _ - (starting a-z or 0-9)"
            )
        if role not in ROLES:
            raise AccountError(f"role: found {role!r}, expected one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: expected at least {MIN_PASSWORD} characters")
        users = self._read()
        users[name] = {"role": role, "hash": _HASHER.hash(password)}
        self._write(users)

    def remove(self, name: str) -> bool:
        users = self._read()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def verify(self, name: str, password: str) -> Account | None:
        """The account if the password is its own; None otherwise (blocking: ~30 ms)."""
        entry = self._read().get(name)
        encoded = entry.get("hash", _DUMMY) if entry else _DUMMY
        try:
            _HASHER.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return None
        role = entry.get("role") if entry else None
        if entry is None or role not in ROLES:
            return None
        return Account(name, role)

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".console-users.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"users": users}, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
