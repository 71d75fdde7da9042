"""The store broker link (aiomqtt)."""

from drivers.mqtt._link import MqttLink

__all__ = ["MqttLink"]
