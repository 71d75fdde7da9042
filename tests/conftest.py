"""Shared fixtures: a real Mosquitto on a free port, the daemon as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto, find_mosquitto
from simulators.daemon import GatewayProcess, settings

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "examples" / "demo.toml"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; scripts/test installs it (apt-get install mosquitto)"
        )
    with Mosquitto(tmp_path / "broker") as running:
        yield running


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway(tmp_path: Path, broker: Mosquitto) -> Iterator[GatewayFactory]:
    """Start the daemon with examples/demo.toml against `broker`; stopped after the test."""
    started: list[GatewayProcess] = []

    def start(
        *,
        config: Path = DEMO_CONFIG,
        overrides: dict[str, str] | None = None,
        watchdog_usec: int | None = None,
        env: dict[str, str] | None = None,
    ) -> GatewayProcess:
        # The journey tests assert the rules' picks: no model file and no exploration, the
        # rules' greedy pick serves. Tests of the shipped model or of exploration pass
        # decision.model_file or decision.exploration themselves.
        values = settings(
            store_port=broker.port,
            state_dir=tmp_path / "state",
            decision__model_file="",
            decision__exploration="0",
        ) | (overrides or {})
        process = GatewayProcess(
            config, tmp_path, overrides=values, watchdog_usec=watchdog_usec, env=env
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        type=int,
        default=0,
        metavar="KILLS",
        help="crash-consistency soak: SIGKILL the daemon this many times (default suite: 20)",
    )
