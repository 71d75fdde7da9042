"""Artifact downloads for bundles (models): HTTPS only, size-capped, off the event loop."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from pathlib import Path

__all__ = ["https_fetcher"]

_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


def https_fetcher(ca_file: Path | None) -> Fetcher:
    return Fetcher(ssl.create_default_context(cafile=str(ca_file) if ca_file else None))


class Fetcher:
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    async def __call__(self, url: str, max_bytes: int) -> bytes:
        if not url.startswith("https://"):
            raise OSError(f"refusing a non-HTTPS artifact URL ({url.split(':', 1)[0]})")
        return await asyncio.to_thread(self._get, url, max_bytes)

    def _get(self, url: str, max_bytes: int) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "store-gateway"})  # noqa: S310 - https only, checked above
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=self._context) as reply:  # noqa: S310
            chunks: list[bytes] = []
            total = 0
            while chunk := reply.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise OSError(f"artifact larger than {max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)
