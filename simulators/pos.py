"""A POS lane: basket updates, loyalty scans, totals and coupon redemptions over MQTT.

The lane's events (the total, a redemption) go through `EventSource`, which keeps each one until
the gateway acknowledges it; basket and loyalty are plain messages; the gateway's answers to
redemptions arrive on `pos/{lane}/coupon`. See docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any

import aiomqtt

from drivers.mqtt import NO_DELAY
from simulators.events import EventSource

__all__ = ["PosLane"]


class PosLane:
    def __init__(self, host: str, port: int, store_id: str, lane: str = "pos-1") -> None:
        self.events = EventSource(host, port, store_id, device_id=lane)
        self.lane, self.topics = lane, self.events.topics
        self.root = f"{self.topics.root}/pos/{lane}"  # for a test's hand-made messages
        self.client = aiomqtt.Client(host, port, identifier=lane, socket_options=[NO_DELAY])
        self.replies: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PosLane:
        await self.client.__aenter__()
        await self.client.subscribe(self.topics.pos_coupon(self.lane), qos=1)
        await self.events.__aenter__()
        self._reader = asyncio.create_task(self._read(), name="pos-lane-replies")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader], timeout=2)
        await self.events.__aexit__(exc_type, exc, tb)
        await self.client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self.client.messages:
            if isinstance(message.payload, bytes):
                async with self._changed:
                    self.replies.append(json.loads(message.payload))
                    self._changed.notify_all()

    async def basket(self, categories: list[str], total: float) -> None:
        body = {"categories": categories, "items": len(categories), "total": total}
        await self.client.publish(self.topics.pos_basket(self.lane), json.dumps(body), qos=1)

    async def loyalty(self, card: str) -> None:
        body = {"method": "loyalty", "value": card}
        await self.client.publish(self.topics.pos_loyalty(self.lane), json.dumps(body), qos=1)

    async def total(self, total: float) -> str:
        """The transaction event: the gateway prints a coupon once it is committed."""
        return await self.events.send("pos.transaction", "transaction", {"total": total})

    async def receipt(
        self,
        transaction: str,
        lines: list[tuple[str, str, str, float, float]],
        *,
        tender: str = "card",
        coupons: list[str] | None = None,
    ) -> str:
        """The receipt of the sale `transaction` (the total's event id), for an e-receipt or a
        claim code: lines are (sku, description, category, quantity, unit price). Returns the
        event's id."""
        items = [
            {"sku": sku, "description": text, "category": category, "quantity": quantity,
             "unit_price": price, "amount": round(quantity * price, 2)}
            for sku, text, category, quantity, price in lines
        ]  # fmt: skip
        gross = round(sum(round(quantity * price, 2) for *_, quantity, price in lines), 2)
        data = {
            "transaction": transaction,
            "currency": "EUR",
            "lines": items,
            "totals": {"gross": gross, "tax": round(gross - gross / 1.2, 2)},
            "tenders": [{"method": tender, "amount": gross}],
            "coupons": coupons or [],
        }
        return await self.events.send("pos.receipt", "transaction", data)

    async def redeem(self, code: str) -> dict[str, Any]:
        """Scan a coupon; returns the gateway's answer (bound it with asyncio.timeout)."""
        event_id = await self.events.send("pos.redemption", "reward", {"coupon": code})
        async with self._changed:
            await self._changed.wait_for(
                lambda: any(r.get("request_id") == event_id for r in self.replies)
            )
        return next(r for r in self.replies if r.get("request_id") == event_id)
