"""The store broker link (aiomqtt), and the reconnect loop both links use."""

from drivers.mqtt._frames import encode_publish
from drivers.mqtt._link import NO_DELAY, MqttLink, credentials
from drivers.mqtt._reconnect import reconnecting

__all__ = ["NO_DELAY", "MqttLink", "credentials", "encode_publish", "reconnecting"]
