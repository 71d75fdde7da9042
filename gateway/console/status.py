"""`store-gateway status`: the console's overview in a terminal, for an SSH session.

It reads what the running daemon serves on loopback (/healthz and /metrics, no account needed),
so it works with the console off. Exit 0 while the gateway serves (ok or degraded), 1 while it
cannot (starting, or the store or the broker down), 2 when no daemon answers.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["duration", "fetch", "render", "run_status"]


def run_status(host: str, port: int, *, color: bool) -> int:
    """Print the overview; the exit code says whether the gateway serves."""
    import sys

    try:
        health, metrics = fetch(host, port)
    except (OSError, ValueError) as exc:
        print(
            f"store-gateway: no gateway answers on http://{host}:{port}/healthz ({exc});"
            " is it running (systemctl status store-gateway), with health.enabled?",
            file=sys.stderr,
        )
        return 2
    print(render(health, metrics, color=color))
    return 0 if health.get("status") in ("ok", "degraded") else 1


def fetch(host: str, port: int, timeout_s: float = 3.0) -> tuple[Mapping[str, Any], str]:
    """(/healthz body, /metrics text); OSError when nothing answers."""
    bodies = []
    for path in ("/healthz", "/metrics"):
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            connection.request("GET", path)
            bodies.append(connection.getresponse().read().decode())
        finally:
            connection.close()
    return json.loads(bodies[0]), bodies[1]


def _samples(metrics: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return found


def _sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def render(health: Mapping[str, Any], metrics: str, *, color: bool = False) -> str:
    """The overview as lines of text."""
    samples = _samples(metrics)
    status = str(health.get("status", "unknown"))
    paint = {"ok": "32", "ready": "32", "degraded": "33", "starting": "33"}

    def shown(state: str) -> str:
        if not color:
            return state
        return f"\033[{paint.get(state, '31')}m{state}\033[0m"

    degraded = health.get("degraded") or []
    lines = [
        f"store {health.get('store_id', '?')}  version {health.get('version', '?')}"
        f"  up {duration(float(health.get('uptime_s', 0)))}",
        f"status {shown(status)}" + (f"  ({', '.join(degraded)})" if degraded else ""),
        "",
    ]
    components: Mapping[str, Mapping[str, Any]] = health.get("components", {})
    width = max((len(n) for n in components), default=9)
    for name, c in components.items():
        state = str(c.get("state", "?"))
        pad = " " * (9 - len(state))
        lines.append(f"  {name:<{width}}  {shown(state)}{pad} {c.get('detail', '')}")
    waiting = _sum(samples, "gateway_outbox_events")
    mib = _sum(samples, "gateway_outbox_bytes") / 1048576
    decisions = _sum(samples, "gateway_decisions_total")
    personal = sum(
        v
        for labels, v in samples.get("gateway_decisions_total", [])
        if labels.get("audience") == "personal"
    )
    refusals = _sum(samples, "gateway_refusals_total")
    lines += [
        "",
        f"outbox     {waiting:,.0f} events waiting ({mib:.1f} MiB)",
        f"decisions  {decisions:,.0f} since start ({personal:,.0f} personal)",
        f"refusals   {refusals:,.0f} since start",
    ]
    printers = [
        (labels["printer"], labels["gateway_printer_state"])
        for labels, value in samples.get("gateway_printer_state", [])
        if value == 1
    ]
    for printer, state in printers:
        lines.append(f"printer    {printer}: {shown(state)}")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
