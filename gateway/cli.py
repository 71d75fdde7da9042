"""`store-gateway`: run the daemon, check a configuration, print the version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.clock import c_library
from gateway.config import Config, ConfigError, load_config

__all__ = ["main"]

_M_ARENA_MAX = -8  # glibc's mallopt parameter
EX_CONFIG = 78  # sysexits.h; the systemd unit does not restart on it (RestartPreventExitStatus)

DESCRIPTION = """\
The in-store edge gateway: kiosks, signage and devices over the store's MQTT broker,
decisions on the box, everything kept in SQLite while the internet is away.

commands:
  run            run the daemon in the foreground (systemd runs it this way)
  check-config   validate a configuration file and list every problem
  report         the store's experiment readout, from its own decision log
  version        print the version

examples:
  store-gateway check-config /etc/store-gateway/config.toml
  store-gateway run --config examples/demo.toml --set mqtt.port=18830
  store-gateway report --since 14
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="store-gateway",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one key of the file, e.g. --set mqtt.port=1884 (repeatable);"
        " an empty value unsets an optional key",
    )
    run = commands.add_parser(
        "run",
        parents=[overrides],
        help="run the daemon",
        description="Run the daemon in the foreground.",
    )
    run.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/store-gateway/config.toml"),
        help="configuration file (default: %(default)s)",
    )
    check = commands.add_parser(
        "check-config",
        parents=[overrides],
        help="validate a configuration file",
        description="Check a configuration file: exit 0 if valid, else 1, one line per problem.",
    )
    check.add_argument("config", type=Path, help="configuration file to check")
    report = commands.add_parser(
        "report",
        parents=[overrides],
        help="the experiment readout",
        description="Personalised vs holdout, and the model's switchback slots vs the rules',"
        " per touchpoint: conversion, revenue per identified visit (in store and online),"
        " lift with a 95 %% interval, off-policy estimates and the marketing tests per arm,"
        " from the decision log.",
    )
    report.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/store-gateway/config.toml"),
        help="configuration file, for the state directory (default: %(default)s)",
    )
    report.add_argument("--since", type=float, default=14.0, metavar="DAYS", help="(default 14)")
    report.add_argument("--json", action="store_true", help="the figures as JSON")
    commands.add_parser("version", help="print the version")
    return parser


def _overrides(items: Sequence[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"store-gateway: --set expects KEY=VALUE, found {item!r}")
        result[key.strip()] = value.strip()
    return result


def _load(path: Path, overrides: Sequence[str]) -> Config | ConfigError:
    try:
        return load_config(path, _overrides(overrides))
    except ConfigError as exc:
        return exc


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"{error.source}: {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"store-gateway {__version__}")
        return 0
    loaded = _load(args.config, args.set)
    if args.command == "check-config":
        return _check(args.config, loaded)
    if isinstance(loaded, ConfigError):
        _print_problems(loaded)
        return EX_CONFIG
    if args.command == "report":
        return _report(loaded, args.since, as_json=args.json)
    from gateway.app import run_gateway
    from gateway.logs import configure_logging
    from gateway.store import StateDirUnusable

    configure_logging(loaded.logging.format, loaded.logging.level)
    _few_malloc_arenas()
    try:
        asyncio.run(run_gateway(loaded))
    except StateDirUnusable as exc:  # a restart cannot fix it: one line, and systemd stops
        print(f"store-gateway: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0


def _check(path: Path, loaded: Config | ConfigError) -> int:
    if isinstance(loaded, ConfigError):
        _print_problems(loaded)
        return 1
    broker = f"{loaded.mqtt.host}:{loaded.mqtt.port}"
    devices = {
        "kiosk": loaded.kiosks,
        "screen": loaded.screens,
        "lane": loaded.lanes,
        "printer": loaded.printers,
        "tablet": loaded.tablets,
    }
    counts = "".join(
        f", {len(ids)} {kind}{'' if len(ids) == 1 else 's'}" for kind, ids in devices.items()
    )
    print(f"{path}: OK (store {loaded.store.id}, broker {broker}{counts})")
    return 0


def _report(config: Config, since_days: float, *, as_json: bool) -> int:
    import time

    from gateway.report import read, render

    database = config.store.state_dir / "gateway.sqlite3"
    if not database.exists():
        print(f"store-gateway: no decision log at {database}", file=sys.stderr)
        return 1
    readout = read(database, since_days=since_days, now=time.time())
    print(readout.to_json() if as_json else render(readout))
    return 0


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena, which fragments and keeps
    growing: the soak benchmark saw RSS grow ~70 KiB/min beyond what Python and SQLite held,
    and flat with two arenas. Set before any thread starts (MALLOC_ARENA_MAX, if set, wins)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    libc = c_library()
    with contextlib.suppress(AttributeError):  # not glibc (musl has one arena): nothing to do
        if libc is not None:
            libc.mallopt(_M_ARENA_MAX, 2)
