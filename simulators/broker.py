"""A private Mosquitto on a free loopback port: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "Mosquitto",
    "MosquittoMissing",
    "ServerProcess",
    "find_mosquitto",
    "free_port",
    "listening",
]

INSTALL_HINT = "sudo apt-get install -y mosquitto"


class MosquittoMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(f"no mosquitto binary found; install it with: {INSTALL_HINT}")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a server stopped and started
    again on it (a broker restart, a cloud outage) never finds it taken meanwhile as the local
    port of some client's connection, as a port the kernel picked could be (seen after a
    2-minute outage in scripts/bench.py store)."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(10_000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # a crowded range: the kernel's pick
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
    return low if low > 11_000 else 32768


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A server binary on a loopback `port`, configured by a file it is started with.

    Subclasses give `binary`, `config_text()` and the paths; `stop()` then `start()` reuses
    the port (and whatever the server keeps on disk), as a restart would.
    """

    name = "server"
    binary: str
    workdir: Path
    port: int
    conf_path: Path
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config_text())
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the owner, not the server
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {self.port} in {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: no goodbye to clients or peers, nothing flushed."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# The shipped configuration's flow control, which the gateway's intake relies on (the queue
# that holds what the gateway has not acknowledged yet): test brokers use the same.
SHIPPED_CONF = (
    Path(__file__).resolve().parent.parent / "systemd" / "mosquitto" / "store-gateway.conf"
)
_FLOW_CONTROL = ("max_queued_messages", "max_queued_bytes", "max_inflight_messages")


def shipped_flow_control() -> str:
    """The flow-control lines of systemd/mosquitto/store-gateway.conf ("" if not shipped)."""
    if not SHIPPED_CONF.exists():
        return ""
    lines = SHIPPED_CONF.read_text().splitlines()
    return "".join(f"{line}\n" for line in lines if line.split(" ")[0] in _FLOW_CONTROL)


class Mosquitto(ServerProcess):
    """Start with `start()` (or `with`), stop with `stop()`; `start()` again reuses the port."""

    name = "mosquitto"

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        binary = find_mosquitto()
        if binary is None:
            raise MosquittoMissing
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"

    def config_text(self) -> str:
        # As root, mosquitto would switch to user 'mosquitto', who can't read our temp files.
        user = "user root\n" if os.geteuid() == 0 else ""
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            f"{user}"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{shipped_flow_control()}"
            f"{self.extra_conf}\n"
        )
