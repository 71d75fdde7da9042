"""An MQTT echo: republishes every message from one topic onto another, QoS 1.

The benchmarks' baseline: the same broker hops as the gateway's path, with no work in between.

    python -m simulators.echo --port 1883 --listen bench/ping --answer bench/pong
"""

from __future__ import annotations

import argparse
import asyncio

import aiomqtt

from drivers.mqtt import NO_DELAY


async def _echo(host: str, port: int, listen: str, answer: str) -> None:
    async with aiomqtt.Client(host, port, identifier="echo", socket_options=[NO_DELAY]) as client:
        await client.subscribe(listen, qos=1)
        print("echo ready", flush=True)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await client.publish(answer, payload, qos=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--answer", required=True)
    args = parser.parse_args()
    asyncio.run(_echo(args.host, args.port, args.listen, args.answer))


if __name__ == "__main__":
    main()
