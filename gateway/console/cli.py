"""`store-gateway console ...`: the local accounts, managed on the box."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from gateway.console.accounts import AccountError, Accounts
from gateway.runtime.config import Config

__all__ = ["run_console_command"]


def run_console_command(config: Config, args: argparse.Namespace) -> int:
    accounts = Accounts(config.console.users_path(config.store.state_dir))
    try:
        if args.console_command == "add-user":
            password = _password(args.password_stdin)
            if password is None:
                return 1
            accounts.add(args.name, args.role, password)
            print(f"{args.name}: {args.role}, in {accounts.path}")
            return 0
        if args.console_command == "remove-user":
            if not accounts.remove(args.name):
                print(f"store-gateway: no account {args.name!r}", file=sys.stderr)
                return 1
            print(f"{args.name}: removed (open sessions end at their expiry or a restart)")
            return 0
        data = json.loads(accounts.path.read_text()) if accounts.path.exists() else {}
        for name, entry in sorted(data.get("users", {}).items()):
            print(f"{name}\t{entry.get('role', '?')}")
        return 0
    except AccountError as exc:
        print(f"store-gateway: {exc}", file=sys.stderr)
        return 1


def _password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("store-gateway: the two passwords differ", file=sys.stderr)
        return None
    return first
