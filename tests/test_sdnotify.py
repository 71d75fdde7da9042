"""sd_notify spoken to a real datagram socket, path and abstract; silent without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gateway.runtime.sdnotify import Notifier


def _receive(sock: socket.socket) -> str:
    sock.settimeout(2)
    return sock.recv(4096).decode()


def test_messages_reach_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready("serving")
        notifier.watchdog()
        notifier.stopping()
        assert _receive(sock) == "READY=1\nSTATUS=serving"
        assert _receive(sock) == "WATCHDOG=1"
        assert _receive(sock) == "STOPPING=1\nSTATUS=draining"
        notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"store-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.status("hello")
        assert _receive(sock) == "STATUS=hello"
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
    assert notifier.watchdog_interval_s is None


def test_watchdog_interval_respects_watchdog_pid() -> None:
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval_s == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready("x")
    notifier.close()
