"""Loading models into the engine: at start, and whenever a model bundle installs a new file.

Two places hold a model: `installed` (where model bundles from the cloud land, in the state
directory) and `configured` (`decision.model_file`, e.g. the model shipped with the package). The
installed one wins when present; the configured one serves until the cloud sends one.

A model is loaded and checked off the event loop, validated on a replay of recent decisions,
then swapped in (or put in shadow). A refused model changes nothing: the one before it, or the
rules, keep serving, and the health detail says why.

The promotion gate (`gateway.decision.promotion`, `decision.promotion_min_ess` > 0): an
installed model the gate has not passed yet runs in shadow; the manager judges it on the box's
own log at once and hourly until it is promoted (it serves; its SHA-256 is written to
`nba.onnx.promoted`, so it serves again after a restart) or refused (moved to
`nba.refused.onnx`). Each verdict but "wait" goes up as a `model.promotion` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.decision.engine import DecisionEngine
from gateway.decision.features import FeatureContext, context_from_json
from gateway.decision.log import recent_contexts
from gateway.decision.model import ModelError, Scorer
from gateway.decision.offers import load_offers
from gateway.decision.promotion import Verdict, judge_log
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, Offer
from gateway.sync.bundles import applied_body
from gateway.sync.outbox import Outbox

__all__ = ["ModelManager"]

log = structlog.get_logger("gateway.model")
_GATE_EVERY_S = 3600.0


class ModelManager:
    name = "model"
    requires = ("store",)

    def __init__(
        self,
        engine: DecisionEngine,
        installed: Path,
        configured: Path | None,
        db: AsyncStore,
        *,
        outbox: Outbox | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.installed = installed
        self.configured = configured
        self._db = db
        self._outbox = outbox
        self._now = now
        self._handle: Handle | None = None
        self._lock = asyncio.Lock()
        self.verdicts: list[Verdict] = []  # the gate's, latest last
        self.judging: asyncio.Task[str] | None = None  # the gate at work after a load

    @property
    def promoted_marker(self) -> Path:
        return self.installed.with_name(self.installed.name + ".promoted")

    @property
    def engine(self) -> DecisionEngine:
        """The engine it loads models into (its counters: decisions by the model, by the rules)."""
        return self._engine

    async def run(self, handle: Handle) -> None:
        self._handle = handle
        await self._apply_settings()
        handle.ready(await self.load())
        while True:
            await asyncio.sleep(_GATE_EVERY_S)
            if self._engine.shadow is not None and self._gated:
                await self.gate()

    @property
    def _gated(self) -> bool:
        return self._engine.config.promotion_min_ess > 0

    async def load(self) -> str:
        """(Re)load the model file; returns what is serving now, for the health detail."""
        async with self._lock:
            path = self.path
            if path is None:
                return f"no model at {self.installed}: the rules serve"
            shadow = (
                path == self.installed
                and self._gated
                and not await asyncio.to_thread(self._passed, path)
            )
            try:
                scorer = await asyncio.to_thread(Scorer.load, path)
                replay = await self._replay()
                state = await asyncio.to_thread(
                    lambda: self._engine.install(scorer, replay, shadow=shadow)
                )
            except ModelError as exc:
                current = self._engine.scorer
                serving = current.info.version if current else "the rules"
                log.error("model refused", path=str(path), reason=str(exc), serving=serving)
                return f"model refused ({exc}); {serving} serve(s)"
            log.info(
                "model loaded",
                version=scorer.info.version,
                state=state,
                replayed=len(replay),
                trained_at=scorer.info.trained_at,
            )
            detail = f"{state}: model {scorer.info.version}"
        if shadow:  # judged in the background: reading weeks of log takes a while
            self.judging = asyncio.create_task(self.gate())
            detail = f"shadow: model {scorer.info.version}, judged on the box's own log"
        if self._handle is not None:
            self._handle.ready(detail)
        return detail

    def _passed(self, path: Path) -> bool:
        """Whether the gate promoted this very file before (a restart serves it again)."""
        import hashlib

        try:
            marker = self.promoted_marker.read_text().strip()
            return marker == hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return False

    async def gate(self) -> str:
        """Judge the shadow model on the box's own log; promote it, refuse it, or wait."""
        async with self._lock:
            shadow = self._engine.shadow
            if shadow is None:
                return "no model in shadow"
            cfg = self._engine.config
            now = self._now()
            verdict = await asyncio.to_thread(
                judge_log,
                self._db.path,
                shadow.score,
                since=now - cfg.promotion_window_days * 86400,
                now=now,
                objective=cfg.objective,
                min_ess=cfg.promotion_min_ess,
                margin=cfg.promotion_margin,
            )
            self.verdicts.append(verdict)
            version = shadow.info.version
            log.info("model gate", model=version, outcome=verdict.outcome, reason=verdict.reason)
            if verdict.outcome == "promote":
                self._engine.promote_shadow()
                self.promoted_marker.write_text(shadow.info.sha256 + "\n")
                detail = f"serving: model {version} (promoted: {verdict.reason})"
            elif verdict.outcome == "refuse":
                self._engine.shadow = None
                self.installed.replace(self.installed.with_name("nba.refused.onnx"))
                serving = self._engine.scorer
                back = serving.info.version if serving else "the rules"
                detail = f"model {version} refused ({verdict.reason}); {back} serve(s)"
            else:
                detail = f"shadow: model {version} waits for evidence ({verdict.reason})"
            if verdict.outcome != "wait" and self._outbox is not None:
                await self._outbox.submit(
                    self._outbox.row("model.promotion", "telemetry", verdict.as_event(version))
                )
            if self._handle is not None:
                self._handle.ready(detail)
            return detail

    @property
    def path(self) -> Path | None:
        """The model file to serve: the cloud's if one is installed, else the configured one."""
        if self.installed.exists():
            return self.installed
        if self.configured is not None and self.configured.exists():
            return self.configured
        return None

    async def _replay(self) -> list[tuple[FeatureContext, list[Offer]]]:
        size = self._engine.config.replay_size
        if size == 0:
            return []
        contexts = await self._db.call(recent_contexts, size)
        offers = await self._db.call(load_offers)
        return [(context_from_json(json.loads(c)), offers) for c in contexts]

    async def _apply_settings(self) -> None:
        """Weather and other context the cloud sends in its latest config bundle."""
        body = await self._db.call(applied_body, "config")
        if body:
            self.apply_settings(json.loads(body).get("settings", {}))

    def apply_settings(self, settings: dict[str, object]) -> None:
        """The bundle schema checked these; a body stored by an older version may not be."""
        weather = settings.get("weather")
        if not isinstance(weather, dict):
            return
        temp_c, raining = weather.get("temp_c", 15.0), weather.get("raining", False)
        if not isinstance(temp_c, int | float) or isinstance(temp_c, bool):
            log.warning("config bundle weather ignored: temp_c is not a number")
            return
        from gateway.decision.features import Weather

        self._engine.weather = Weather(float(temp_c), bool(raining))
