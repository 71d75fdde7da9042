"""Pure codecs: MQTT payloads and topics, event ids, customer identity (keyed hashes, tokens)."""
