"""Loading models into the engine: at start, and whenever a model bundle installs a new file.

Two places hold a model: `installed` (where model bundles from the cloud land, in the state
directory) and `configured` (`decision.model_file`, e.g. the model shipped with the package). The
installed one wins when present; the configured one serves until the cloud sends one.

A model is loaded and checked off the event loop, validated on a replay of recent decisions,
then swapped in (or put in shadow). A refused model changes nothing: the one before it, or the
rules, keep serving, and the health detail says why.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import structlog

from gateway.decision.engine import DecisionEngine
from gateway.decision.features import FeatureContext, context_from_json
from gateway.decision.model import ModelError, Scorer
from gateway.store import AsyncStore, Offer, Store
from gateway.supervisor import Handle
from gateway.sync.bundles import applied_body

__all__ = ["ModelManager"]

log = structlog.get_logger("gateway.model")


class ModelManager:
    name = "model"
    requires = ("store",)

    def __init__(
        self, engine: DecisionEngine, installed: Path, configured: Path | None, db: AsyncStore
    ) -> None:
        self._engine = engine
        self.installed = installed
        self.configured = configured
        self._db = db
        self._handle: Handle | None = None
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> DecisionEngine:
        """The engine it loads models into (its counters: decisions by the model, by the rules)."""
        return self._engine

    async def run(self, handle: Handle) -> None:
        self._handle = handle
        await self._apply_settings()
        handle.ready(await self.load())
        await asyncio.Event().wait()

    async def load(self) -> str:
        """(Re)load the model file; returns what is serving now, for the health detail."""
        async with self._lock:
            path = self.path
            if path is None:
                return f"no model at {self.installed}: the rules serve"
            try:
                scorer = await asyncio.to_thread(Scorer.load, path)
                replay = await self._replay()
                state = await asyncio.to_thread(self._engine.install, scorer, replay)
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
        contexts = await self._db.call(Store.recent_contexts, size)
        offers = await self._db.call(Store.offers)
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
