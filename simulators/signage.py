"""A signage screen: shows what the gateway sends to its content topic.

python -m simulators.signage --port 1883 --store demo-store --screen entrance-1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiomqtt

from gateway.codecs.payloads import Content, PayloadError, decode_content
from gateway.codecs.topics import Topics

__all__ = ["render"]


def render(screen_id: str, content: Content) -> str:
    """One line: what the screen would show."""
    if content.offer is None:
        shown = "house content (no offer)"
    else:
        o = content.offer
        shown = f"{o.title!r} [{o.id}]" + (f" {o.discount_pct:g}% off" if o.discount_pct else "")
    return f"[{screen_id}] {content.message}: {shown} ({content.audience})"


async def _main(args: argparse.Namespace) -> None:
    topics = Topics(args.store)
    async with aiomqtt.Client(args.host, args.port, identifier=args.screen) as client:
        await client.subscribe(topics.screen_content(args.screen), qos=1)
        print(f"[{args.screen}] waiting for content on {topics.screen_content(args.screen)}")
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                print(render(args.screen, decode_content(payload)), flush=True)
            except PayloadError as exc:
                print(f"[{args.screen}] unreadable content: {exc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="A simulated signage screen.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--store", default="demo-store")
    parser.add_argument("--screen", default="entrance-1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
