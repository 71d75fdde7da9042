"""A printed coupon's one and only redemption: its SQL lives here (runs on the store thread)."""

from __future__ import annotations

from gateway.store import Store, transaction

__all__ = ["redeem"]


def redeem(
    store: Store, code: str, lane: str, now: float, event_id: str
) -> tuple[str, str | None, bool]:
    """(status, decision, first): 'redeemed' the first time, and again for a re-sent copy of
    that same redemption event (first = False then); 'already_redeemed' for any other event;
    'unknown' for a code this store never issued. Fsynced before the till hears it."""
    conn = store.conn
    with transaction(conn, durable=True):
        row = conn.execute(
            "SELECT decision_id, redeemed_at, redeemed_event, redeemed_lane FROM coupons"
            " WHERE code = ?",
            (code,),
        ).fetchone()
        if row is None:
            return "unknown", None, False
        if row[1] is not None:
            repeat = row[2] == event_id and row[3] == lane  # the same till sending again
            return ("redeemed" if repeat else "already_redeemed"), row[0], False
        conn.execute(
            "UPDATE coupons SET redeemed_at = ?, redeemed_lane = ?, redeemed_event = ?"
            " WHERE code = ?",
            (now, lane, event_id, code),
        )
    return "redeemed", row[0], True
