"""The store broker link (aiomqtt)."""

from drivers.mqtt._link import NO_DELAY, MqttLink, credentials

__all__ = ["NO_DELAY", "MqttLink", "credentials"]
