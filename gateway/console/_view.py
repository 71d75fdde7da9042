"""What the console shows: each page's <main> as HTML, from the gateway's own state.

Every value is escaped; nothing here names a customer or a device address: devices are named by
their config ids, screens by what they show (an offer, personal or anonymous, never for whom),
zones by counts under the k-anonymity floor shown as "<5".
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Counter, Enum, Gauge

from gateway.codecs.payloads import decode_content
from gateway.console.sources import Sources
from gateway.console.status import duration
from gateway.flows.printing import failed_prints, last_printed_coupon, print_counts_by_printer
from gateway.sync.outbox import backlog_by_rank

__all__ = ["PAGES", "render_main"]

PAGES = {
    "overview": "Overview",
    "floor": "Floor",
    "devices": "Screens, kiosks, tablets, lanes",
    "printers": "Printers",
    "camera": "Camera",
}
K_FLOOR = 5  # the camera's and the readout's k-anonymity floor: fewer shows as "<5"
ACTIVE_S = 300.0  # a device heard from within this is shown active
_RANKS = {0: "transactions, rewards, consents", 1: "decisions", 2: "telemetry"}


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _total(metric: Counter | Gauge, **labels: str) -> float:
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created", "_info")):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _by_label(metric: Counter | Gauge | Enum, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.labels.get(label)
            if key is not None:
                found[key] = found.get(key, 0.0) + sample.value
    return found


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _state(state: str) -> str:
    return f'<span class="state {e(state)}">{e(state)}</span>'


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


async def _safely(call: Awaitable[Any], default: Any) -> Any:
    try:
        return await call
    except Exception:  # noqa: BLE001 - the store may be closed or restarting: show "unknown"
        return default


async def _overview(src: Sources, form: Callable[..., str]) -> str:
    body = src.health()
    m = src.metrics
    components = body.get("components", {})
    status = str(body.get("status", "unknown"))
    degraded = body.get("degraded", [])
    why = f" ({e(', '.join(degraded))})" if degraded else ""
    parts = [f"<section><h2>Gateway {_state(status)}{why}</h2>"]
    parts.append(
        f"<p>Store {e(body.get('store_id', ''))}, version {e(body.get('version', ''))},"
        f" up {e(duration(float(body.get('uptime_s', 0))))}</p>"
    )
    rows = [
        [e(name), _state(str(c["state"])), e(c["detail"]), e(duration(float(c["for_s"])))]
        for name, c in components.items()
    ]
    parts.append(_table(["component", "state", "why", "for"], rows, "no components"))
    parts.append("</section>")

    mqtt = components.get("mqtt", {})
    cloud = components.get("cloud")
    links = [
        ["store broker", _state(str(mqtt.get("state", "unknown"))), e(mqtt.get("detail", ""))],
        [
            "cloud",
            _state(str(cloud["state"])) if cloud else _state("off"),
            e(cloud["detail"]) if cloud else "not configured: events wait on the box",
        ],
    ]
    parts.append("<section><h2>Links</h2>")
    parts.append(_table(["link", "state", "detail"], links, ""))
    parts.append("</section>")

    backlog: dict[int, int] = await _safely(src.db.call(backlog_by_rank), {})
    waiting = sum(backlog.values())
    sent_per_min = src.activity.per_minute("uplink", _total(m.uplink_events))
    if waiting == 0:
        drain = "nothing waiting"
    elif not sent_per_min:
        drain = "not draining now (the cloud is away or not configured)"
    else:
        drain = f"about {duration(waiting / sent_per_min * 60)} at the last minute's pace"
    rows = [[e(_RANKS.get(r, f"rank {r}")), e(f"{n:,}")] for r, n in sorted(backlog.items())]
    parts.append(f"<section><h2>Outbox: {waiting:,} events waiting</h2>")
    parts.append(_table(["priority", "events"], rows, "empty"))
    parts.append(f'<p class="drain">Drain: {e(drain)}</p></section>')

    model = components.get("model", {})
    decisions = _total(m.decisions)
    rate = src.activity.per_minute("decisions", decisions)
    personal = _total(m.decisions, audience="personal")
    parts.append("<section><h2>Decisions</h2>")
    parts.append(
        _table(
            ["model", "since", "decisions", "per minute", "personal", "by the rules"],
            [
                [
                    e(model.get("detail", "") or model.get("state", "")),
                    e(duration(float(model.get("for_s", 0))) + " ago"),
                    e(f"{decisions:,.0f}"),
                    e("…" if rate is None else f"{rate:.1f}"),
                    e(f"{personal:,.0f}"),
                    e(f"{src.fallbacks():,}"),
                ]
            ],
            "",
        )
    )
    if src.personalisation_paused():
        switch = form("/actions/personalisation", "Resume", state="resume")
        parts.append(
            f"<p>Personalisation: {_state('paused')} (every customer is served as anonymous)"
            f" {switch}</p>"
        )
    else:
        switch = form("/actions/personalisation", "Pause for the store", state="pause")
        parts.append(f"<p>Personalisation: {_state('on')} {switch}</p>")
    parts.append(
        "<p>By the rules: decisions the rules took instead of the model (no model loaded, or"
        " a switchback slot of the rules).</p>"
        "<p>The experiment readout (personalised vs holdout, with intervals):"
        " <code>store-gateway report</code> on the box.</p></section>"
    )
    return "".join(parts)


def _content_of(src: Sources, topic: str) -> str:
    payload = src.retained(topic)
    if not payload:
        return '<span class="muted">blank</span>'
    try:
        content = decode_content(payload)
    except ValueError:
        return '<span class="muted">unreadable</span>'
    offer = content.offer.title if content.offer is not None else "no offer"
    return f'{e(offer)} <span class="audience {e(content.audience)}">{e(content.audience)}</span>'


async def _devices(src: Sources, form: Callable[..., str]) -> str:
    config, now = src.config, src.clock()
    activity = src.activity
    parts = []

    def row(kind: str, device_id: str, *extra: str) -> list[str]:
        seen = activity.last_seen.get((kind, device_id))
        active = seen is not None and now - seen < ACTIVE_S
        return [
            e(device_id),
            _state("active" if active else "quiet"),
            e(_ago(seen, now)),
            e(activity.errors_last_hour((kind, device_id))),
            *extra,
        ]

    head = ["id", "state", "last heard", "refusals (1 h)"]
    screens = []
    for sid, screen in config.screens.items():
        clear = form("/actions/clear-screen", "Clear", screen=sid)
        screens.append(
            [
                *row("screen", sid),
                e(screen.zone),
                f'<span class="content" data-screen="{e(sid)}">'
                f"{_content_of(src, src.topics.screen_content(sid))}</span>",
                clear,
            ]
        )
    parts.append("<section><h2>Screens</h2>")
    parts.append(_table([*head, "zone", "showing now", ""], screens, "no screens configured"))
    kiosks = [
        [
            *row("kiosk", kid),
            e(kiosk.zone),
            f'<span class="content" data-kiosk="{e(kid)}">'
            f"{_content_of(src, src.topics.kiosk_content(kid))}</span>",
        ]
        for kid, kiosk in config.kiosks.items()
    ]
    parts.append("</section><section><h2>Kiosks</h2>")
    parts.append(_table([*head, "zone", "showing now"], kiosks, "no kiosks configured"))
    tablets = [[*row("tablet", tid)] for tid in config.tablets]
    parts.append("</section><section><h2>Tablets</h2>")
    parts.append(_table(head, tablets, "no tablets configured"))
    lanes = [[*row("pos", lid)] for lid in config.lanes]
    parts.append("</section><section><h2>POS lanes</h2>")
    parts.append(_table(head, lanes, "no lanes configured"))
    parts.append("</section>")
    return "".join(parts)


async def _printers(src: Sources, form: Callable[..., str]) -> str:
    config, m = src.config, src.metrics
    if not config.printers:
        return '<section><p class="empty">No printers configured.</p></section>'
    states: dict[str, str] = {}
    for family in m.printer_state.collect():
        for sample in family.samples:
            if sample.value == 1:
                states[sample.labels["printer"]] = sample.labels["gateway_printer_state"]
    counts: dict[str, dict[str, int]] = await _safely(src.db.call(print_counts_by_printer), {})
    failed: list[tuple[str, str, str, float]] = await _safely(src.db.call(failed_prints), [])
    rows = []
    for pid, printer in config.printers.items():
        per = counts.get(pid, {})
        link = printer.effective_link()
        rows.append(
            [
                e(pid),
                f'<span class="printer-state" data-printer="{e(pid)}">'
                f"{_state(states.get(pid, 'starting'))}</span>",
                e(link.kind),
                e(per.get("queued", 0) + per.get("sending", 0)),
                e(per.get("printed", 0)),
                e(per.get("reprinted", 0)),
                e(per.get("failed", 0)),
            ]
        )
    parts = ["<section><h2>Printers</h2>"]
    parts.append(
        _table(["printer", "state", "link", "queue", "printed", "reprinted", "failed"], rows, "")
    )
    now = src.clock()
    failed_rows = [
        [
            e(job_id[-8:]),
            e(pid),
            e(error),
            e(_ago(when, now)),
            form("/actions/reprint", "Reprint", job=job_id),
        ]
        for job_id, pid, error, when in failed
    ]
    last = await _safely(src.db.call(last_printed_coupon), None)
    parts.append("</section><section><h2>Last coupon printed</h2>")
    parts.append(_coupon_preview(last, now))
    parts.append("</section><section><h2>Failed jobs</h2>")
    parts.append(_table(["job", "printer", "why", "when", ""], failed_rows, "none"))
    parts.append("</section>")
    return "".join(parts)


def _coupon_preview(last: Mapping[str, Any] | None, now: float) -> str:
    """The coupon's layout as printed (gateway.printing.render_coupon), its code masked."""
    if last is None:
        return '<p class="empty">none yet</p>'
    lines = []
    if last["copy"]:
        lines.append('<p class="b">*** COPY - REPRINT ***</p>')
    lines.append('<p class="big">Picked for you</p>')
    lines.append(f'<p class="b">{e(last["title"] or "(offer no longer in the catalog)")}</p>')
    if last["body"]:
        lines.append(f"<p>{e(last['body'])}</p>")
    if last["discount_pct"]:
        lines.append(f'<p class="tall">{float(last["discount_pct"]):g}% off</p>')
    lines.append('<hr><div class="qr" aria-label="QR code, masked"></div>')
    lines.append('<p class="code">CPN-####-####-####</p><p>One use only.</p>')
    when = f"{e(last['printer'])}, {e(_ago(float(last['printed_at']), now))}"
    return f'<div class="paper">{"".join(lines)}</div><p class="muted">{when}</p>'


async def _floor(src: Sources, _form: Callable[..., str]) -> str:
    config, m = src.config, src.metrics
    zones: list[str] = []
    for zone in [s.zone for s in config.screens.values()] + [
        k.zone for k in config.kiosks.values()
    ]:
        if zone and zone not in zones:
            zones.append(zone)
    occupancy = _by_label(m.ble_zone_occupancy, "zone")
    columns = 3
    width, height, gap = 200, 120, 16
    rows_n = max(1, -(-len(zones) // columns))
    svg = [
        f'<svg class="plan" viewBox="0 0 {columns * (width + gap) + gap}'
        f' {rows_n * (height + gap) + gap}" role="img" aria-label="store plan">'
    ]
    for i, zone in enumerate(zones):
        x = gap + (i % columns) * (width + gap)
        y = gap + (i // columns) * (height + gap)
        count = int(occupancy.get(zone, 0))
        shown = f"<{K_FLOOR}" if count < K_FLOOR else str(count)
        screens = [sid for sid, s in config.screens.items() if s.zone == zone]
        svg.append(
            f'<g class="zone" data-zone="{e(zone)}"><rect x="{x}" y="{y}" width="{width}"'
            f' height="{height}" rx="8"/><text x="{x + 10}" y="{y + 24}" class="name">'
            f'{e(zone)}</text><text x="{x + 10}" y="{y + 70}" class="count">{e(shown)}</text>'
            f'<text x="{x + 10}" y="{y + 100}" class="screens">{e(", ".join(screens))}</text></g>'
        )
    svg.append("</svg>")
    if not zones:
        svg = ['<p class="empty">No zones in the configuration (screens and kiosks name them).</p>']
    note = (
        f"<p>Visitors per zone now, from BLE presence; fewer than {K_FLOOR} show as"
        f' "&lt;{K_FLOOR}". No device or customer is ever named.</p>'
    )
    presence = "on" if config.ble.enabled else "off: counts stay 0"
    return f"<section><h2>Floor</h2><p>Presence {e(presence)}.</p>{''.join(svg)}{note}</section>"


async def _camera(src: Sources, _form: Callable[..., str]) -> str:
    config, m = src.config, src.metrics
    camera = config.camera
    if not camera.enabled:
        return '<section><p class="empty">The camera is off (camera.enabled).</p></section>'
    purposes = list(camera.purposes) or ["none"]
    component = src.health().get("components", {}).get("camera", {})
    audience = _by_label(m.camera_audience, "screen")
    rows = [
        ["purposes", e(", ".join(purposes))],
        ["state", _state(str(component.get("state", "off")))],
        ["QR codes read", e(f"{_total(m.camera_qr_codes):,.0f}")],
        ["frames persisted", e(f"{_total(m.camera_frames_persisted):,.0f}")],
        [
            "audience, last full minute (peak viewers)",
            e(", ".join(f"{s}: {int(v)}" for s, v in audience.items()) or "none yet"),
        ],
    ]
    return "<section><h2>Camera</h2>" + _table(["", ""], rows, "") + "</section>"


_RENDER: dict[str, Callable[[Sources, Callable[..., str]], Awaitable[str]]] = {
    "overview": _overview,
    "floor": _floor,
    "devices": _devices,
    "printers": _printers,
    "camera": _camera,
}


async def render_main(page: str, src: Sources, form: Callable[..., str]) -> str:
    """The page's <main> content; `form(action, label, **fields)` draws an action's button."""
    return await _RENDER[page](src, form)
