"""A kiosk: a customer identifies (loyalty card, app QR code, phone, email) and it shows content.

python -m simulators.kiosk --port 1883 --store demo-store --kiosk kiosk-1 --loyalty 4000000000001
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiomqtt

from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import IdentifyMethod, decode_content, encode_kiosk_identify
from gateway.codecs.topics import Topics
from simulators.population import CUSTOMERS, demo_token
from simulators.signage import render

__all__ = ["Kiosk"]


class Kiosk:
    """Publishes identifications for one kiosk id over a client the caller owns."""

    def __init__(self, client: aiomqtt.Client, topics: Topics, kiosk_id: str) -> None:
        self.client, self.topics, self.kiosk_id = client, topics, kiosk_id

    @property
    def content_topic(self) -> str:
        return self.topics.kiosk_content(self.kiosk_id)

    async def identify(
        self, method: IdentifyMethod, value: str, request_id: str | None = None
    ) -> str:
        """Publish one identification (QoS 1); returns its request id."""
        rid = request_id or uuid7()
        payload = encode_kiosk_identify(method, value, rid, time.time())
        await self.client.publish(self.topics.kiosk_identify(self.kiosk_id), payload, qos=1)
        return rid

    async def send_raw(self, payload: bytes) -> None:
        """Publish arbitrary bytes on the identify topic (fault injection)."""
        await self.client.publish(self.topics.kiosk_identify(self.kiosk_id), payload, qos=1)


async def _main(args: argparse.Namespace) -> None:
    topics = Topics(args.store)
    async with aiomqtt.Client(args.host, args.port, identifier=f"{args.kiosk}-sim") as client:
        kiosk = Kiosk(client, topics, args.kiosk)
        await client.subscribe(kiosk.content_topic, qos=1)
        if args.qr is not None:
            customer = CUSTOMERS[args.qr]
            rid = await kiosk.identify("qr_token", demo_token(customer, time.time()))
        else:
            rid = await kiosk.identify("loyalty", args.loyalty)
        async with asyncio.timeout(args.timeout):
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                content = decode_content(payload)
                if content.request_id == rid:
                    print(render(args.kiosk, content))
                    return


def main() -> None:
    parser = argparse.ArgumentParser(description="A simulated kiosk: one identification.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", default="demo-store")
    parser.add_argument("--kiosk", default="kiosk-1")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--loyalty", default="4000000000001", help="loyalty card number")
    who.add_argument("--qr", type=int, help="show the app QR code of demo customer N (0-4)")
    parser.add_argument("--timeout", type=float, default=5.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
