"""JSON Schemas of every MQTT payload and file the gateway reads (see docs/mqtt.md)."""
