"""A private NATS server with MQTT and JetStream: a clustered-engine stand-in for the cloud broker.

A drop-in for `simulators.broker.Mosquitto` (same `start()` / `stop()` / `port` / `running`),
used by the integration tier (`pytest -m integration`) to run the uplink against an engine that is
not Mosquitto. Debian's package: `apt-get install -y nats-server` (2.9.10 in bookworm).

What NATS' MQTT listener does, measured here through aiomqtt / paho-mqtt (docs/cloud.md):

- MQTT 3.1.1 only; QoS 0 and 1 (a QoS 2 subscription is granted QoS 1; a QoS 2 publish is refused).
- Needs JetStream and a `server_name`: sessions, retained messages and QoS 1 messages are kept in
  JetStream streams (`$MQTT_sess`, `$MQTT_rmsgs`, `$MQTT_msgs`), in `store_dir`, so they survive a
  restart of the server.
- Retained messages, persistent sessions (clean_session=False: the subscription survives, and QoS 1
  messages published while the client was away are delivered when it comes back), and wills work.
- A message is bounded by `max_payload` (1 MB by default); we set 8 MB so 128 KiB batches and
  multi-megabyte bundles pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from simulators.broker import ServerProcess, free_port

__all__ = ["INSTALL_HINT", "NatsMissing", "NatsMqtt", "find_nats_server"]

INSTALL_HINT = "sudo apt-get install -y nats-server"
MAX_PAYLOAD = 8 * 1024 * 1024


class NatsMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(f"no nats-server binary found; install it with: {INSTALL_HINT}")


def find_nats_server() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


class NatsMqtt(ServerProcess):
    """`nats-server` with JetStream and an MQTT listener on `port` (loopback).

    `stop()` then `start()` reuses the ports and the JetStream store, as a broker restart would.
    """

    name = "nats-server"

    def __init__(
        self, workdir: Path, port: int | None = None, *, tls: tuple[Path, Path, Path] | None = None
    ) -> None:
        """`tls`: (CA file, server certificate, server key) to demand TLS with a client
        certificate signed by that CA on the MQTT listener."""
        binary = find_nats_server()
        if binary is None:
            raise NatsMissing
        self.binary = binary
        self.workdir = workdir
        self.tls = tls
        self.port = port or free_port()  # MQTT
        self.nats_port = free_port()  # the NATS protocol itself (unused by the gateway)
        self.log_path = workdir / "nats-server.log"
        self.conf_path = workdir / "nats-server.conf"

    def config_text(self) -> str:
        store = self.workdir / "jetstream"
        return (
            f'server_name: "cloud-sim-{self.port}"\n'
            f"listen: 127.0.0.1:{self.nats_port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"mqtt {{\n  listen: 127.0.0.1:{self.port}\n{self._tls_block()}}}\n"
        )

    def _tls_block(self) -> str:
        if self.tls is None:
            return ""
        ca, cert, key = self.tls
        return (
            "  tls {\n"
            f'    ca_file: "{ca}"\n    cert_file: "{cert}"\n    key_file: "{key}"\n'
            "    verify: true\n    timeout: 5\n  }\n"
        )

    def start(self, timeout: float = 15.0) -> None:
        super().start(timeout)
