"""Cloud sync: the durable event outbox, the uplink, and signed downlink bundles."""
