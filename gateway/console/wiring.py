"""The console wired to the components it shows and acts on (called by the composition root)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.codecs.topics import SECTIONS, Topics
from gateway.console.accounts import Accounts
from gateway.console.server import Actions, Activity, Console, Sources
from gateway.decision.manager import ModelManager
from gateway.flows.printing import PrintJournal, requeue_failed_print
from gateway.moments import Journey
from gateway.runtime.clock import TimeKeeper
from gateway.runtime.config import Config
from gateway.runtime.metrics import Metrics
from gateway.store import AsyncStore
from gateway.sync.outbox import Outbox

__all__ = ["build_console"]


class Link(Protocol):
    """What the console needs of the store link (drivers.mqtt.MqttLink)."""

    on_device: Callable[[tuple[str, str], bool], None]

    def retained(self, topic: str) -> bytes | None: ...

    def post(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


def build_console(
    config: Config,
    *,
    db: AsyncStore,
    link: Link,
    outbox: Outbox,
    journey: Journey,
    models: ModelManager,
    journal: PrintJournal | None,
    clock: TimeKeeper,
    metrics: Metrics,
    health: Callable[[], Mapping[str, Any]],
) -> Console:
    topics = Topics(config.store.id)
    declared = {kind: set(getattr(config, section)) for kind, section in SECTIONS.items()}
    activity = Activity(declared, clock.now)
    link.on_device = activity.seen

    async def audit(data: dict[str, Any]) -> None:
        await outbox.accept("console.action", "decision", data)

    async def reprint(job_id: str) -> bool:
        printer = await db.call(requeue_failed_print, job_id, clock.now())
        if printer is not None and journal is not None:
            journal.queued(printer)
        return printer is not None

    async def clear_screen(screen: str) -> bool:
        if screen not in config.screens:
            return False
        link.post(topics.screen_content(screen), b"", retain=True)
        return True

    async def personalisation(state: str) -> bool:
        if state not in ("pause", "resume"):
            return False
        await journey.pause_personalisation(state == "pause")
        return True

    def paused() -> bool:
        return journey.personalisation_paused

    def fallbacks() -> int:
        return models.engine.counters.fallback

    sources = Sources(
        config, topics, metrics, health, link.retained, db, activity, clock.now, paused,
        fallbacks,
    )  # fmt: skip
    accounts = Accounts(config.console.users_path(config.store.state_dir))
    actions = Actions(audit, reprint, clear_screen, personalisation)
    return Console(config.console, sources, actions, accounts)
