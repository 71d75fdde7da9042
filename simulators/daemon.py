"""The gateway daemon as a subprocess, with a real NOTIFY_SOCKET to see what it tells systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

__all__ = ["GatewayProcess", "cpu_s", "rss_mib", "settings"]


def settings(
    *,
    store_port: int,
    state_dir: Path,
    cloud_port: int | Sequence[int] | None = None,
    bundle_key: str = "",
    **extra: str,
) -> dict[str, str]:
    """`--set` overrides for a test or demo gateway: its brokers on loopback, quick reconnects.

    `extra` keys use `__` for the dot: `outbox__max_mb="1"` is `outbox.max_mb=1`. Several
    `cloud_port`s are the nodes of a clustered cloud broker (`cloud.brokers`).
    """
    values = {
        "mqtt.port": str(store_port),
        "mqtt.reconnect_max_s": "1",
        "store.state_dir": str(state_dir),
        "health.enabled": "false",
        "console.enabled": "false",  # on in the demo's file; a test turns it on when it needs it
        "logging.format": "json",
    }
    if cloud_port is not None:
        values |= {
            "cloud.enabled": "true",
            **(
                {"cloud.host": "127.0.0.1", "cloud.port": str(cloud_port)}
                if isinstance(cloud_port, int)
                else {"cloud.brokers": json.dumps([f"127.0.0.1:{p}" for p in cloud_port])}
            ),
            "cloud.tls": "false",
            "cloud.reconnect_min_s": "0.05",
            "cloud.reconnect_max_s": "0.5",
            "cloud.bundle_public_key": bundle_key,
        }
    return values | {key.replace("__", "."): value for key, value in extra.items()}


def rss_mib(pid: int) -> float:
    """A process's resident memory now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """CPU time a process has used so far (user + system, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GatewayProcess:
    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        overrides: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        watchdog_usec: int | None = None,
        output: Path | None = None,
        command: Sequence[str] = ("-m", "gateway"),
        cpus: Collection[int] | None = None,
    ) -> None:
        """command: what the interpreter runs, given `run --config ...` after it. cpus: the
        cores the daemon may run on (taskset), as a store box has fewer than this machine."""
        self.config = config
        self.cpus = sorted(cpus) if cpus is not None else None
        self.command = tuple(command)
        self.workdir = workdir
        self.overrides = dict(overrides or {})
        self.extra_env = dict(env or {})
        self.watchdog_usec = watchdog_usec
        self.output = output or workdir / "gateway.log"
        self.notifications: list[tuple[float, str]] = []  # (monotonic time, message)
        self._ready = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"notify-{os.getpid()}-{id(self)}.sock"
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        threading.Thread(target=self._listen, daemon=True, name="notify").start()
        env = {**os.environ, **self.extra_env, "NOTIFY_SOCKET": str(path)}
        env.pop("WATCHDOG_PID", None)
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        args = [sys.executable, *self.command, "run", "--config", str(self.config)]
        if self.cpus is not None:  # taskset execs the daemon: the same pid, every thread pinned
            args = ["taskset", "--cpu-list", ",".join(map(str, self.cpus)), *args]
        for key, value in self.overrides.items():
            args += ["--set", f"{key}={value}"]
        out = self.output.open("ab")
        self.started_at = time.monotonic()
        # A session of its own: Ctrl-C reaches the owner, which stops the gateway in order.
        self._proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        out.close()

    def _listen(self) -> None:
        sock = self._sock
        while sock is not None and sock.fileno() != -1:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            message = data.decode(errors="replace")
            self.notifications.append((time.monotonic(), message))
            if "READY=1" in message.split("\n"):
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Seconds from process start to READY=1; raises if it never comes."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self._proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready in {timeout}s:\n{self.log()}")
        ready_at = next(t for t, m in self.notifications if "READY=1" in m.split("\n"))
        return ready_at - self.started_at

    def messages(self) -> list[str]:
        return [m for _, m in self.notifications]

    def signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as in a power cut for the process."""
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()
        self.close()

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills after `timeout`)."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self.close()
        return code

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def log(self, tail: int | None = 6000) -> str:
        """The daemon's output (its last `tail` characters; None: all of it)."""
        try:
            text = self.output.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        except FileNotFoundError:
            return ""
