"""An associate's tablet: serve a customer, read the card, accept or decline each suggestion.

python -m simulators.tablet --port 1883 --store demo-store --tablet tablet-1 --loyalty 4000000000001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import aiomqtt

from drivers.mqtt import NO_DELAY
from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import (
    Card,
    IdentifyMethod,
    PayloadError,
    TabletServe,
    decode_card,
    encode_tablet_serve,
)
from gateway.codecs.topics import Topics

__all__ = ["Tablet"]


class Tablet:
    """One tablet on its own connection: `serve` returns the card answering the request.
    Cards are never retained, so the tablet subscribes before it asks."""

    def __init__(self, host: str, port: int, store_id: str, tablet_id: str = "tablet-1") -> None:
        self.topics = Topics(store_id)
        self.tablet_id = tablet_id
        self._client = aiomqtt.Client(
            host, port, identifier=f"{tablet_id}-sim", socket_options=[NO_DELAY]
        )
        self.cards: dict[str, Card] = {}  # request id -> card
        self.retained = 0  # cards that arrived retained (there must be none)
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tablet:
        await self._client.__aenter__()
        await self._client.subscribe(self.topics.tablet_card(self.tablet_id), qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                card = decode_card(payload)
            except PayloadError:
                continue
            self.retained += int(message.retain)
            async with self._arrived:
                self.cards[card.request_id or ""] = card
                self._arrived.notify_all()

    async def serve(self, session: str, associate: str, **fields: Any) -> Card:
        """Publish one serve request (`ask`'s fields) and wait for its card (bound it with
        asyncio.timeout)."""
        rid = await self.ask(session, associate, **fields)
        async with self._arrived:
            await self._arrived.wait_for(lambda: rid in self.cards)
        return self.cards[rid]

    async def ask(
        self,
        session: str,
        associate: str,
        *,
        method: IdentifyMethod | None = None,
        value: str | None = None,
        zone: str | None = None,
        asks: Iterable[str] = (),
        basket: Iterable[str] = (),
    ) -> str:
        """Publish one serve request (QoS 1); its request id."""
        rid = uuid7()
        serve = TabletServe(
            self.tablet_id, session, associate, method, value, zone, tuple(asks), tuple(basket), rid
        )
        await self._client.publish(
            self.topics.tablet_serve(self.tablet_id), encode_tablet_serve(serve), qos=1
        )
        return rid

    async def close(self, session: str) -> None:
        body = json.dumps({"session": session, "ts": time.time()}).encode()
        await self._client.publish(self.topics.tablet_close(self.tablet_id), body, qos=1)


async def _main(args: argparse.Namespace) -> None:
    async with Tablet(args.host, args.port, args.store, args.tablet) as tablet:
        session = uuid7()
        async with asyncio.timeout(args.timeout):
            card = await tablet.serve(
                session, args.associate, method="loyalty", value=args.loyalty, asks=args.asks
            )
        print(f"{args.tablet}: {card.audience} card, profile segment {card.segment!r}")
        for s in card.suggestions:
            print(f"  {s.rank}. {s.offer.title} ({s.offer.id}, propensity {s.propensity:.2f})")
        await tablet.close(session)


def main() -> None:
    parser = argparse.ArgumentParser(description="A simulated associate tablet: one serve.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", default="demo-store")
    parser.add_argument("--tablet", default="tablet-1")
    parser.add_argument("--associate", default="A-1042")
    parser.add_argument("--loyalty", default="4000000000001", help="loyalty card number")
    parser.add_argument("--asks", nargs="*", default=[], help="categories the customer asks for")
    parser.add_argument("--timeout", type=float, default=5.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
