"""BLE presence: beacon frames, sightings, zones and dwell, private rotating identifiers."""
