"""Console sessions (a random cookie, kept hashed in memory) and the failed-login brake."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field

from gateway.console.accounts import Account

__all__ = ["FAILURES_BEFORE_BRAKE", "LoginBrake", "Session", "Sessions"]

FAILURES_BEFORE_BRAKE = 5
_WINDOW_S = 900.0  # failures older than this are forgotten
_FIRST_WAIT_S = 30.0  # after the 5th failure; doubles with each further one
_MAX_WAIT_S = 900.0
_MAX_TRACKED = 1024  # names and addresses remembered at most (the oldest forgotten)


@dataclass(slots=True)
class Session:
    account: Account
    csrf: str
    expires: float


class Sessions:
    """token -> session; the token lives only in the browser's cookie, its hash here."""

    def __init__(self, lifetime_s: float, limit: int = 256) -> None:
        self._lifetime_s = lifetime_s
        self._limit = limit
        self._by_hash: dict[str, Session] = {}

    def open(self, account: Account, now: float) -> tuple[str, Session]:
        self._forget_expired(now)
        while len(self._by_hash) >= self._limit:
            self._by_hash.pop(next(iter(self._by_hash)))  # the oldest
        token = secrets.token_urlsafe(32)
        session = Session(account, secrets.token_urlsafe(24), now + self._lifetime_s)
        self._by_hash[_digest(token)] = session
        return token, session

    def get(self, token: str | None, now: float) -> Session | None:
        if not token:
            return None
        session = self._by_hash.get(_digest(token))
        if session is None or session.expires <= now:
            return None
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_hash.pop(_digest(token), None)

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, s in self._by_hash.items() if s.expires <= now]:
            del self._by_hash[key]


def csrf_ok(session: Session, offered: str | None) -> bool:
    return offered is not None and hmac.compare_digest(session.csrf, offered)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)


class LoginBrake:
    """Failed logins per name and per client address: from the 5th within 15 minutes, each
    attempt waits 30 s, doubling with each further failure (capped at 15 minutes)."""

    def __init__(self) -> None:
        self._failures: dict[str, _Failures] = {}

    def wait_s(self, keys: tuple[str, ...], now: float) -> float:
        """Seconds to wait before another attempt with these keys is looked at (0: go on)."""
        wait = 0.0
        for key in keys:
            found = self._failures.get(key)
            if found is None:
                continue
            while found.times and found.times[0] < now - _WINDOW_S:
                found.times.popleft()
            extra = len(found.times) - FAILURES_BEFORE_BRAKE
            if extra >= 0:
                hold = min(_MAX_WAIT_S, _FIRST_WAIT_S * 2**extra)
                wait = max(wait, found.times[-1] + hold - now)
        return max(0.0, wait)

    def failed(self, keys: tuple[str, ...], now: float) -> int:
        """Note a failure; returns the failures now counted for the first key."""
        for key in keys:
            if key not in self._failures and len(self._failures) >= _MAX_TRACKED:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(key, _Failures()).times.append(now)
        return len(self._failures[keys[0]].times)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._failures.pop(key, None)
