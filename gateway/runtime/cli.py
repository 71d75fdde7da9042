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
from gateway.runtime.clock import c_library
from gateway.runtime.config import Config, ConfigError, load_config

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
  export-decisions  the decision log as training data (JSON lines, docs/decision.md)
  version        print the version

examples:
  store-gateway check-config /etc/store-gateway/config.toml
  store-gateway run --config examples/demo.toml --set mqtt.port=18830
  store-gateway report --since 14
  store-gateway export-decisions --since 28 --out decisions.jsonl
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
    export = commands.add_parser(
        "export-decisions",
        parents=[overrides],
        help="the decision log as training data",
        description="Stream the decisions of the last DAYS whose reward is known, with their"
        " candidates, context and catalog, as JSON lines (schema: docs/decision.md).",
    )
    export.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("/etc/store-gateway/config.toml"),
        help="configuration file, for the state directory (default: %(default)s)",
    )
    export.add_argument("--since", type=float, default=28.0, metavar="DAYS", help="(default 28)")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    commands.add_parser("version", help="print the version")
    _console_parser(commands, overrides)  # issue 18
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
    if args.command != "run":
        return _tool(loaded, args)
    from gateway.runtime.daemon import run_gateway
    from gateway.runtime.logs import configure_logging
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


def _tool(config: Config, args: argparse.Namespace) -> int:
    """The commands other than `run`, given a valid configuration."""
    if args.command == "status":  # issue 18
        from gateway.console.status import run_status

        host = "127.0.0.1" if config.health.host in ("0.0.0.0", "::") else config.health.host  # noqa: S104
        return run_status(host, args.port or config.health.port, color=sys.stdout.isatty())
    if args.command == "console":  # issue 18
        from gateway.console.cli import run_console_command

        return run_console_command(config, args)
    return _read_log(config, args)


def _report(config: Config, since_days: float, *, as_json: bool) -> int:
    import time

    from gateway.decision.report import read
    from gateway.decision.report_text import render

    database = config.store.state_dir / "gateway.sqlite3"
    if not database.exists():
        print(f"store-gateway: no decision log at {database}", file=sys.stderr)
        return 1
    readout = read(database, since_days=since_days, now=time.time())
    print(readout.to_json() if as_json else render(readout))
    return 0


def _read_log(config: Config, args: argparse.Namespace) -> int:
    """The commands that read the decision log (read-only: the daemon may be running)."""
    if args.command == "report":
        return _report(config, args.since, as_json=args.json)
    return _export(config, args.since, args.out)


def _export(config: Config, since_days: float, out: Path | None) -> int:
    import time

    from gateway.decision.export import export_decisions

    database = config.store.state_dir / "gateway.sqlite3"
    if not database.exists():
        print(f"store-gateway: no decision log at {database}", file=sys.stderr)
        return 1
    now = time.time()
    since = now - since_days * 86400
    if out is None:
        stats = export_decisions(database, sys.stdout, since=since, now=now)
    else:
        with out.open("w", encoding="utf-8") as handle:
            stats = export_decisions(database, handle, since=since, now=now)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(stats.skipped.items())) or "none"
    print(
        f"store-gateway: exported {stats.written} decisions, {stats.catalogs} catalog(s);"
        f" left out: {skipped}",
        file=sys.stderr,
    )
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


def _console_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    overrides: argparse.ArgumentParser,
) -> None:
    console = commands.add_parser(
        "console", help="the console's local accounts", description="Manage console accounts."
    )
    actions = console.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add-user",
        parents=[overrides],
        help="create an account, or set its role and password",
        description="Asks the password twice (or reads one line with --password-stdin).",
    )
    add.add_argument("name")
    add.add_argument("--role", choices=["viewer", "operator"], required=True)
    add.add_argument("--password-stdin", action="store_true", help="read it from standard input")
    remove = actions.add_parser("remove-user", parents=[overrides], help="delete an account")
    remove.add_argument("name")
    listing = actions.add_parser("list-users", parents=[overrides], help="names and roles")
    status = commands.add_parser(
        "status",
        parents=[overrides],
        help="the overview in a terminal",
        description="What the running daemon reports (its /healthz and /metrics on loopback):"
        " exit 0 while it serves, 1 while it cannot, 2 when it does not answer.",
    )
    status.add_argument("--port", type=int, help="the health port (default: health.port)")
    for sub in (add, remove, listing, status):
        sub.add_argument(
            "--config", "-c", type=Path, default=Path("/etc/store-gateway/config.toml")
        )
