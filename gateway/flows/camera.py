"""The opt-in camera's purposes, in the core: a decoded QR text in, an identification out; a face
count in, a per-minute audience figure out.

No frame reaches this module: `drivers/camera` hands over only a decoded text or a count, and
nothing in the gateway writes a frame anywhere (`gateway_camera_frames_persisted` exists to be
scraped and stay 0; a test runs the pipeline with the state directory watched). Audience counts
carry no identity and no biometric template; a minute whose peak is under the k-anonymity floor
is reported as "<k".
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.runtime.clock import Clock
from gateway.runtime.config import CameraConfig
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.sync.outbox import Outbox

__all__ = ["AudienceCounter", "AudienceMinute", "CameraPurposes"]

log = structlog.get_logger("gateway.camera")

_MINUTE = 60.0
_RECENT_CODES = 256  # QR codes remembered (as hashes) for the repeat window


@dataclass(frozen=True, slots=True)
class AudienceMinute:
    screen: str
    minute: float  # start of the minute, epoch seconds
    samples: int  # frames counted in it
    peak: int | None  # None: under the k-anonymity floor
    mean: float | None
    floor: int

    def as_event(self) -> dict[str, object]:
        shown: object = self.peak if self.peak is not None else f"<{self.floor}"
        data: dict[str, object] = {
            "screen": self.screen,
            "minute": self.minute,
            "viewers_peak": shown,
            "samples": self.samples,
        }
        if self.mean is not None:
            data["viewers_mean"] = round(self.mean, 2)
        return data


class AudienceCounter:
    """Face counts per frame -> one figure per minute (peak and mean), with a k floor."""

    def __init__(self, screen: str, k: int) -> None:
        self.screen = screen
        self.k = k
        self._minute: float | None = None
        self._counts: list[int] = []

    def add(self, count: int, at: float) -> AudienceMinute | None:
        """Count one frame; returns the previous minute's figure when a new minute starts."""
        minute = at - at % _MINUTE
        done = None
        if self._minute is not None and minute != self._minute:
            done = self._close()
        self._minute = minute
        self._counts.append(count)
        return done

    def flush(self) -> AudienceMinute | None:
        return self._close() if self._counts else None

    def _close(self) -> AudienceMinute:
        counts, self._counts = self._counts, []
        minute = self._minute if self._minute is not None else 0.0
        peak = max(counts)
        hidden = peak < self.k
        return AudienceMinute(
            screen=self.screen,
            minute=minute,
            samples=len(counts),
            peak=None if hidden else peak,
            mean=None if hidden else sum(counts) / len(counts),
            floor=self.k,
        )


class CameraPurposes:
    """The driver's callbacks: what each enabled purpose does with what the camera saw. A
    component too, so the minute in progress is reported when the gateway stops."""

    name = "audience"
    requires = ("store",)

    def __init__(
        self,
        config: CameraConfig,
        *,
        on_qr_token: Callable[[str, str], None],
        clock: Clock,
        metrics: Metrics,
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self._on_qr_token = on_qr_token
        self._clock = clock
        self._metrics = metrics
        self._outbox = outbox
        self.audience = AudienceCounter(config.screen, config.k_anonymity)
        self._recent: OrderedDict[bytes, float] = OrderedDict()  # hash of a code -> last seen

    @property
    def qr(self) -> bool:
        return "qr_identify" in self.config.purposes

    @property
    def counting(self) -> bool:
        return "audience_count" in self.config.purposes

    def on_qr(self, text: str) -> None:
        """A decoded QR text: the app's signed token, checked by the journey like a kiosk's.
        (The source reads codes only when qr_identify is on, faces only for audience_count.)"""
        now = self._clock.monotonic()
        digest = hashlib.sha256(text.encode()).digest()  # the token itself is not kept
        last = self._recent.get(digest)
        self._recent[digest] = now
        self._recent.move_to_end(digest)
        while len(self._recent) > _RECENT_CODES:
            self._recent.popitem(last=False)
        if last is not None and now - last < self.config.qr_repeat_s:
            return  # the same customer still holding the phone up
        self._metrics.camera_qr_codes.inc()
        self._on_qr_token(self.config.kiosk, text)

    def on_faces(self, count: int, at: float) -> None:
        minute = self.audience.add(count, at)
        if minute is not None:
            self._report(minute)

    async def run(self, handle: Handle) -> None:
        handle.ready(", ".join(self.config.purposes))
        try:
            await asyncio.Event().wait()
        finally:  # the minute in progress, reported and committed before the stop
            minute = self.audience.flush()
            if minute is not None and (committed := self._report(minute)) is not None:
                await asyncio.shield(committed)

    def _report(self, minute: AudienceMinute) -> asyncio.Future[None] | None:
        """Gauge, telemetry and log line for one minute; the future of its commit, if any."""
        shown = minute.peak if minute.peak is not None else 0
        self._metrics.camera_audience.labels(minute.screen).set(shown)
        committed = None
        if self._outbox is not None:
            row = self._outbox.row(
                "audience.minute", "telemetry", minute.as_event(), ts=minute.minute
            )
            committed = self._outbox.submit(row)
        log.info(
            "audience minute",
            screen=minute.screen,
            viewers_peak=minute.as_event()["viewers_peak"],
            samples=minute.samples,
        )
        return committed
