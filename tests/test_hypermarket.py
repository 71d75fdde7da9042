"""The store bench's hypermarket: a config the gateway accepts, with the issue's sizes."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.runtime.config import load_config
from gateway.store import load_seed
from simulators import hypermarket


def test_the_hypermarket_config_loads_with_every_device(tmp_path: Path) -> None:
    members = hypermarket.customers(50)
    printers = {f"receipt-{n:02d}": f"serial:/dev/pts/{n}" for n in range(1, 11)}
    path = hypermarket.write_config(
        tmp_path, members=members, printer_links=printers, local_radio=True, camera=None
    )
    config = load_config(path)
    assert (len(config.screens), len(config.kiosks), len(config.lanes)) == (200, 20, 40)
    assert (len(config.tablets), len(config.printers)) == (20, 10)
    assert len(config.ble.scanners) == 41  # 40 nodes and the box's own radio
    assert sum(1 for lane in config.lanes.values() if lane.printer) == 10
    assert {s.zone for s in config.screens.values()} == {z.name for z in hypermarket.LAYOUT.zones}
    assert config.catalog.seed_file is not None
    offers, consents = load_seed(config.catalog.seed_file, b"k" * 32)
    assert len(offers) > 60
    assert sum(1 for c in consents if c.eid_key is not None) >= len(members)
    seed = json.loads(config.catalog.seed_file.read_text())
    assert {c["loyalty"] for c in seed["consents"]} >= {m.loyalty for m in members}
