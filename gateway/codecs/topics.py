"""The versioned MQTT topic tree, rooted at the store (documented in docs/mqtt.md)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SECTIONS", "Topics", "undeclared"]

# Device kind in topics -> its config section.
SECTIONS = {"kiosk": "kiosks", "pos": "lanes", "tablet": "tablets", "screen": "screens"}


def undeclared(kind: str, device_id: str) -> str:
    """The refusal for a device config.toml does not declare under this kind."""
    section = SECTIONS.get(kind, kind)
    return f"unknown {kind} {device_id!r}: declare it under [{section}.{device_id}]"


@dataclass(frozen=True, slots=True)
class Topics:
    store_id: str
    version: str = "v1"

    @property
    def root(self) -> str:
        return f"store/{self.store_id}/{self.version}"

    @property
    def gateway_status(self) -> str:
        return f"{self.root}/gateway/status"

    @property
    def gateway_errors(self) -> str:
        return f"{self.root}/gateway/errors"

    @property
    def kiosk_identify_filter(self) -> str:
        return f"{self.root}/kiosk/+/identify"

    def kiosk_identify(self, kiosk_id: str) -> str:
        return f"{self.root}/kiosk/{kiosk_id}/identify"

    def kiosk_content(self, kiosk_id: str) -> str:
        return f"{self.root}/kiosk/{kiosk_id}/content"

    def screen_content(self, screen_id: str) -> str:
        return f"{self.root}/screen/{screen_id}/content"

    @property
    def pos_basket_filter(self) -> str:
        return f"{self.root}/pos/+/basket"

    @property
    def pos_loyalty_filter(self) -> str:
        return f"{self.root}/pos/+/loyalty"

    def pos_basket(self, lane: str) -> str:
        return f"{self.root}/pos/{lane}/basket"

    def pos_loyalty(self, lane: str) -> str:
        return f"{self.root}/pos/{lane}/loyalty"

    def pos_coupon(self, lane: str) -> str:
        return f"{self.root}/pos/{lane}/coupon"

    @property
    def tablet_serve_filter(self) -> str:
        return f"{self.root}/tablet/+/serve"

    @property
    def tablet_close_filter(self) -> str:
        return f"{self.root}/tablet/+/close"

    def tablet_serve(self, tablet: str) -> str:
        return f"{self.root}/tablet/{tablet}/serve"

    def tablet_close(self, tablet: str) -> str:
        return f"{self.root}/tablet/{tablet}/close"

    def tablet_card(self, tablet: str) -> str:
        return f"{self.root}/tablet/{tablet}/card"

    @property
    def device_events_filter(self) -> str:
        return f"{self.root}/+/+/events"

    def device_events(self, kind: str, device_id: str) -> str:
        return f"{self.root}/{kind}/{device_id}/events"

    def device_events_ack(self, kind: str, device_id: str) -> str:
        return f"{self.root}/{kind}/{device_id}/events/ack"

    def device_of(self, topic: str) -> tuple[str, str] | None:
        """(kind, device id) of `store/{id}/v1/{kind}/{device}/...`, or None."""
        parts = topic.split("/")
        prefix = self.root.split("/")
        if len(parts) < len(prefix) + 2 or parts[: len(prefix)] != prefix:
            return None
        return parts[len(prefix)], parts[len(prefix) + 1]

    def device_id(self, topic: str, kind: str) -> str | None:
        """The device id level of `store/{id}/v1/{kind}/{device}/...`, or None."""
        parts = topic.split("/")
        prefix = self.root.split("/")
        if len(parts) < len(prefix) + 2 or parts[: len(prefix)] != prefix:
            return None
        if parts[len(prefix)] != kind:
            return None
        return parts[len(prefix) + 1]
