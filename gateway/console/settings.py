"""The `[console]` section: off unless a store turns it on."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConsoleConfig"]


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    enabled: bool = False
    # Loopback by default; a LAN address only with tls_cert_file and tls_key_file.
    host: str = "127.0.0.1"
    port: int = field(default=9811, metadata={"min": 0, "max": 65535, "id": False})
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The local accounts (`store-gateway console add-user`); empty: console-users.json in
    # store.state_dir.
    users_file: Path | None = None
    session_hours: float = field(default=12.0, metadata={"min": 0.1, "max": 720, "id": False})

    def users_path(self, state_dir: Path) -> Path:
        return self.users_file or state_dir / "console-users.json"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def problems(self) -> list[str]:
        """What is wrong with the section, one line each (config.py collects them)."""
        found = []
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            found.append("console.tls_cert_file, console.tls_key_file: expected both or none")
        if self.enabled and not self.tls and not _loopback(self.host):
            found.append(
                f"console.host: found {self.host!r} without TLS, expected a loopback address"
                " (127.0.0.1, ::1), or set console.tls_cert_file and console.tls_key_file"
                " to serve the console on the store's network"
            )
        for key, path in (
            ("tls_cert_file", self.tls_cert_file),
            ("tls_key_file", self.tls_key_file),
        ):
            if path is not None and not path.is_file():
                found.append(f"console.{key}: found {str(path)!r}, expected an existing file")
        return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
