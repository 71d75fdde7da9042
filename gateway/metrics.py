"""The gateway's Prometheus metrics, in a registry of its own (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.component_up = Gauge(
            "gateway_component_up",
            "1 when the component is ready, 0 otherwise",
            ["component"],
            registry=r,
        )
        self.component_restarts = Gauge(
            "gateway_component_restarts",
            "Restarts of a component since the gateway started",
            ["component"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the store broker", registry=r
        )
        self.mqtt_connects = Counter(
            "gateway_mqtt_connects", "Successful connections to the store broker", registry=r
        )
        self.mqtt_received = Counter(
            "gateway_mqtt_received", "Inbound MQTT messages by route", ["route"], registry=r
        )
        self.mqtt_rejected = Counter(
            "gateway_mqtt_rejected",
            "Inbound MQTT messages refused (answered on the errors topic)",
            ["route"],
            registry=r,
        )
        self.mqtt_dropped = Counter(
            "gateway_mqtt_dropped",
            "Outbound messages dropped because the offline queue was full",
            registry=r,
        )
        self.decisions = Counter(
            "gateway_decisions", "Decisions taken", ["moment", "audience"], registry=r
        )
        self.decision_seconds = Histogram(
            "gateway_decision_seconds",
            "Moment received -> content published",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
