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

`NatsCluster` runs several such servers as one cluster (a full mesh of routes), the MQTT
streams replicated on every node (`mqtt { stream_replicas }`): a session, its subscriptions and
its queued messages live in the cluster, so a client may resume it on any node.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from simulators.broker import ServerProcess, free_port

__all__ = ["INSTALL_HINT", "NatsCluster", "NatsMissing", "NatsMqtt", "find_nats_server"]

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
        self,
        workdir: Path,
        port: int | None = None,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        cluster: tuple[int, Sequence[int]] | None = None,
    ) -> None:
        """`tls`: (CA file, server certificate, server key) to demand TLS with a client
        certificate signed by that CA on the MQTT listener. `cluster`: (this node's route
        port, every node's route port) to join a cluster of that many nodes."""
        binary = find_nats_server()
        if binary is None:
            raise NatsMissing
        self.binary = binary
        self.workdir = workdir
        self.tls = tls
        self.port = port or free_port()  # MQTT
        self.nats_port = free_port()  # the NATS protocol itself (unused by the gateway)
        self.cluster = cluster
        self.log_path = workdir / "nats-server.log"
        self.conf_path = workdir / "nats-server.conf"

    def config_text(self) -> str:
        store = self.workdir / "jetstream"
        return (
            f'server_name: "cloud-sim-{self.port}"\n'
            f"listen: 127.0.0.1:{self.nats_port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"{self._cluster_block()}"
            f"mqtt {{\n  listen: 127.0.0.1:{self.port}\n{self._replicas()}{self._tls_block()}}}\n"
        )

    def _cluster_block(self) -> str:
        if self.cluster is None:
            return ""
        own, every = self.cluster
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in every if p != own)
        return (
            f"cluster {{\n  name: cloud-sim\n  listen: 127.0.0.1:{own}\n  routes: [{routes}]\n}}\n"
        )

    def _replicas(self) -> str:
        # Sessions, retained and queued messages on every node (JetStream allows up to 5).
        return "" if self.cluster is None else f"  stream_replicas: {len(self.cluster[1])}\n"

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


class NatsCluster:
    """`size` nats-server nodes (`nodes`), each with MQTT on its own loopback port (`ports`),
    routed to one another, JetStream replicating the MQTT streams `size` times.

    `start()` returns once every node answers an MQTT CONNECT (the cluster has elected its
    JetStream leaders); `nodes[i].kill()` is a node's crash, `nodes[i].start()` its return.
    """

    def __init__(self, workdir: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        self.nodes = [
            NatsMqtt(workdir / f"node{i}", cluster=(routes[i], routes)) for i in range(size)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def node_on(self, port: int) -> NatsMqtt:
        return next(node for node in self.nodes if node.port == port)

    def start(self, timeout: float = 30.0) -> None:
        # Each node listens before its peers are up: start them all, then wait for the cluster.
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.stop()
            raise
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while not _accepts_mqtt(node.port):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nats cluster not serving MQTT in {timeout}s")
                time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _accepts_mqtt(port: int) -> bool:
    """An MQTT 3.1.1 CONNECT (clean session) answered by CONNACK 0: JetStream is serving."""
    body = b"\x00\x04MQTT" + bytes([4, 0x02]) + (30).to_bytes(2, "big") + b"\x00\x05probe"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            return sock.recv(4) == b"\x20\x02\x00\x00"
    except OSError:
        return False
