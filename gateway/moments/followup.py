"""Follow-up requests: after a visit with an associate, or an e-receipt, the cloud may e-mail.

A `followup.requested` event carries the ids of the visit's decisions and what the visit was
(`after`: `associate` or `e-receipt`), never a contact detail nor a customer identifier: the
cloud finds the customer through its own record of those decisions (their `decision` events),
and only for a customer who consented to personalisation (the only ones whose decisions are
personal). Its online outcomes come back in `outcomes` bundles, keyed by the same decision ids.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from gateway.runtime.clock import Clock
from gateway.store import AsyncStore, Store
from gateway.sync.outbox import Outbox

__all__ = ["Followups", "personal_decisions", "session_decisions"]

log = structlog.get_logger("gateway.followup")
_MAX_IDS = 100  # what an outcome may name (bundle-outcomes)
_SESSION_MAX_S = 86400.0  # a serving session's decisions are looked for this far back


class Followups:
    def __init__(self, db: AsyncStore, outbox: Outbox, clock: Clock) -> None:
        self._db = db
        self._outbox = outbox
        self._clock = clock
        self._tasks: set[asyncio.Task[str | None]] = set()

    async def request(self, decision_ids: Sequence[str], after: str) -> str | None:
        """Commit one `followup.requested` event; its id, or None with no decision to follow."""
        ids = list(dict.fromkeys(decision_ids))[:_MAX_IDS]
        if not ids:
            return None
        event_id = await self._outbox.accept(
            "followup.requested", "decision", {"decision_ids": ids, "after": after}
        )
        log.info("follow-up requested", after=after, decisions=len(ids))
        return event_id

    async def after_session(self, tablet: str, session: str) -> str | None:
        """An associate's serving session ended: its personal decisions, if any, are followed."""
        since = self._clock.now() - _SESSION_MAX_S
        ids = await self._db.call(session_decisions, tablet, session, since)
        return await self.request(ids, "associate")

    def session_ended(self, tablet: str, session: str) -> None:
        """From a synchronous callback (the tablet's close, an idle session swept)."""
        self._spawn(self.after_session(tablet, session))

    async def after_receipt(self, decision_ids: Sequence[str]) -> str | None:
        """An e-receipt went to a customer's account: the visit's personal decisions."""
        ids = await self._db.call(personal_decisions, decision_ids)
        return await self.request(ids, "e-receipt")

    def receipt_sent(self, decision_ids: Sequence[str]) -> None:
        """From a synchronous callback (the lane's receipt, committed)."""
        self._spawn(self.after_receipt(decision_ids))

    def _spawn(self, work: Coroutine[Any, Any, str | None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def personal_decisions(store: Store, ids: Sequence[str]) -> list[str]:
    """Of `ids`, the personal decisions with an offer (consenting customers, not the holdout),
    oldest first."""
    rows = store.conn.execute(
        "SELECT id FROM decisions WHERE id IN (SELECT value FROM json_each(?))"
        " AND customer_ref IS NOT NULL AND policy <> 'holdout' AND offer_id IS NOT NULL"
        " ORDER BY ts, id",
        (json.dumps(list(ids)),),
    )
    return [str(r[0]) for r in rows.fetchall()]


def session_decisions(store: Store, tablet: str, session: str, since: float) -> list[str]:
    """The personal decisions of one serving session, oldest first: consenting customers, not
    in the holdout (a follow-up is personalisation; the holdout gets none)."""
    rows = store.conn.execute(
        "SELECT id FROM decisions WHERE touchpoint = ? AND moment = 'tablet_serve'"
        " AND customer_ref IS NOT NULL AND policy <> 'holdout'"
        " AND json_extract(context, '$.session') = ?"
        " AND offer_id IS NOT NULL AND ts >= ? ORDER BY ts, id",
        (tablet, session, since),
    )
    return [str(r[0]) for r in rows]
