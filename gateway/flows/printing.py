"""Print jobs: a journal in the store, and the queue each printer's driver pulls from.

A job goes queued -> sending -> printed, confirmed by the driver's status poll after the last
byte. A fault mid-job (paper out, cover open, unplugged) sends it back to queued as a *copy*: it
prints again, marked "COPY", once the printer is back. The coupon code on it is the same, and a
code can be redeemed once, so a copy never pays twice. Jobs left 'sending' by a crash are queued
again as copies at start. Nothing queued is lost across a restart: the journal is SQLite.

The job body is the coupon as JSON; it is rendered to ESC/POS for the printer's profile when it
is sent, so a copy gets its marker and a replaced printer its own paper width.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol

import structlog

from gateway.escpos import Profile, Receipt
from gateway.runtime.clock import Clock
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Handle
from gateway.store import AsyncStore, PrintJobRow, Store, transaction

__all__ = [
    "ClaimSlip",
    "Coupon",
    "PrintJob",
    "PrintJournal",
    "PrintQueue",
    "failed_prints",
    "last_printed_coupon",
    "new_claim_code",
    "new_coupon_code",
    "normalise_code",
    "print_counts_by_printer",
    "render_coupon",
    "requeue_failed_print",
]

log = structlog.get_logger("gateway.printer")
_MAX_ATTEMPTS = 10  # a job that failed this often is given up (and counted)

# Unambiguous on paper and over a phone line: no 0/O, 1/I/L.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def new_coupon_code() -> str:
    """12 random characters (~59 bits) in three groups of four, e.g. CPN-7KQ2-M9XD-4HTA."""
    return _printed("".join(secrets.choice(_ALPHABET) for _ in range(12)))


def new_claim_code() -> str:
    """A receipt's claim code, the coupon's form under its own prefix: RCP-7KQ2-M9XD-4HTA."""
    return "RCP" + new_coupon_code()[3:]


def normalise_code(code: str) -> str:
    """A coupon code as keyed or scanned (any case, with or without hyphens or spaces) in
    the form `new_coupon_code` prints."""
    chars = "".join(c for c in code.upper() if c.isalnum())
    if chars.startswith("CPN") and len(chars) == 15:
        return _printed(chars[3:])
    return code.strip().upper()


def _printed(chars: str) -> str:
    return f"CPN-{chars[:4]}-{chars[4:8]}-{chars[8:]}"


@dataclass(frozen=True, slots=True)
class Coupon:
    code: str
    offer_id: str
    title: str
    body: str
    discount_pct: float
    store_id: str
    issued_at: float
    valid_days: int = 30

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def render_coupon(coupon: Coupon, profile: Profile, *, copy: bool) -> bytes:
    """The coupon as ESC/POS for `profile`; a reprint says so at the top."""
    until = datetime.fromtimestamp(coupon.issued_at + coupon.valid_days * 86_400)
    receipt = Receipt(profile)
    if copy:
        receipt.text("*** COPY - REPRINT ***", bold=True, align="center")
    receipt.text("Picked for you", double_width=True, double_height=True, align="center")
    receipt.text(coupon.title, bold=True, align="center")
    if coupon.body:
        receipt.text(coupon.body, align="center")
    if coupon.discount_pct:
        receipt.text(f"{coupon.discount_pct:g}% off", double_height=True, align="center")
    receipt.rule()
    if profile.qr:
        receipt.qr(coupon.code)
    if "CODE128" in profile.barcodes and receipt.fits_barcode(coupon.code, "CODE128"):
        receipt.barcode(coupon.code, "CODE128", height=60)  # its human-readable line: the code
    else:  # no barcode (58 mm paper is too narrow for this one): the code in plain text
        receipt.text(coupon.code, align="center")
    receipt.text(f"Valid until {until:%Y-%m-%d}. One use only.", align="center")
    receipt.feed(2)
    if profile.cut:
        receipt.cut()
    return receipt.build()


@dataclass(frozen=True, slots=True)
class ClaimSlip:
    """A receipt claim code for a customer who did not identify at the lane: the app scans the
    QR and the visit becomes theirs (docs/cloud.md, receipt claims)."""

    code: str
    store_id: str
    issued_at: float
    valid_days: int

    def to_json(self) -> bytes:
        return json.dumps({"claim": asdict(self)}, separators=(",", ":")).encode()


def render_claim(slip: ClaimSlip, profile: Profile, *, copy: bool) -> bytes:
    """The claim slip as ESC/POS: a QR of the code, and the code for typing it in."""
    until = datetime.fromtimestamp(slip.issued_at + slip.valid_days * 86_400)
    receipt = Receipt(profile)
    if copy:
        receipt.text("*** COPY - REPRINT ***", bold=True, align="center")
    receipt.text("Your receipt in the app", bold=True, align="center")
    if profile.qr:
        receipt.qr(slip.code)
    receipt.text(slip.code, align="center")
    receipt.text(f"Scan it in the app by {until:%Y-%m-%d}", align="center")
    receipt.text("to keep this receipt and its offers.", align="center")
    receipt.feed(2)
    if profile.cut:
        receipt.cut()
    return receipt.build()


def render_job(body: bytes, profile: Profile, *, copy: bool) -> bytes:
    """A journal job's body (a coupon, or a claim slip) as ESC/POS for `profile`."""
    data = json.loads(body)
    if "claim" in data:
        return render_claim(ClaimSlip(**data["claim"]), profile, copy=copy)
    return render_coupon(Coupon(**data), profile, copy=copy)


@dataclass(frozen=True, slots=True)
class PrintJob:
    id: str
    printer: str
    data: bytes  # the ESC/POS bytes to send (already rendered, "COPY" marked when a reprint)
    copy: bool
    attempts: int  # including this one


class PrintQueue(Protocol):
    """What a printer driver needs from the journal."""

    async def next_job(self, printer: str) -> PrintJob:
        """Wait for the oldest queued job of `printer`; it is marked 'sending'."""
        ...

    async def printed(self, job_id: str) -> None:
        """Confirmed by a status poll after the last byte."""
        ...

    async def interrupted(self, job_id: str, reason: str) -> None:
        """A fault mid-job: queued again, to print as a copy."""
        ...

    async def release(self, job_id: str) -> None:
        """Taken but not one byte sent: queued again as it was (not a copy)."""
        ...


class PrintJournal:
    """The PrintQueue over the store, and a component that recovers jobs at start."""

    name = "printing"
    requires = ("store",)

    def __init__(
        self,
        db: AsyncStore,
        profiles: Mapping[str, Profile],
        clock: Clock,
        *,
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._sending: dict[str, str] = {}  # job id -> printer, while a driver has it
        self._releasing: set[asyncio.Future[None]] = set()
        self._db = db
        self._profiles = profiles
        self._clock = clock
        self._wake: dict[str, asyncio.Event] = {p: asyncio.Event() for p in profiles}

    def queued(self, printer: str) -> None:
        """A job for `printer` was committed: wake its driver."""
        event = self._wake.get(printer)
        if event is not None:
            event.set()

    async def next_job(self, printer: str) -> PrintJob:
        wake = self._wake.setdefault(printer, asyncio.Event())
        while True:
            wake.clear()
            take = asyncio.ensure_future(self._db.call(take_print_job, printer, self._clock.now()))
            try:
                row: PrintJobRow | None = await asyncio.shield(take)
            except asyncio.CancelledError:
                # Stopped while the store was marking a job 'sending': hand it back untouched.
                take.add_done_callback(self._release_if_taken)
                raise
            if row is None:
                await wake.wait()
                continue
            if row.attempts > _MAX_ATTEMPTS:
                await self._finish(row.id, "failed", f"gave up after {row.attempts - 1} attempts")
                self._count(printer, "failed")
                log.error("print job failed", printer=printer, job=row.id)
                continue
            data = render_job(row.body, self._profiles[printer], copy=row.copy)
            self._sending[row.id] = printer
            return PrintJob(row.id, printer, data, row.copy, row.attempts)

    async def printed(self, job_id: str) -> None:
        await self._finish(job_id, "printed", None)
        self._count(self._sending.pop(job_id, "?"), "printed")

    async def interrupted(self, job_id: str, reason: str) -> None:
        await self._finish(job_id, "queued", reason)
        self._count(self._sending.pop(job_id, "?"), "interrupted")
        log.warning("print job interrupted, will print again as a copy", job=job_id, reason=reason)

    def _release_if_taken(self, take: asyncio.Future[PrintJobRow | None]) -> None:
        if take.cancelled() or take.exception() is not None or take.result() is None:
            return
        job = take.result()
        assert job is not None
        task = asyncio.ensure_future(self._db.call(release_print_job, job.id))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def release(self, job_id: str) -> None:
        await self._db.call(release_print_job, job_id)
        self._sending.pop(job_id, None)

    def _count(self, printer: str, outcome: str) -> None:
        self._metrics.print_jobs.labels(printer, outcome).inc()

    async def _finish(self, job_id: str, state: str, error: str | None) -> None:
        await self._db.call(finish_print_job, job_id, state, self._clock.now(), error)

    async def run(self, handle: Handle) -> None:
        recovered = await self._db.call(requeue_interrupted_prints, self._clock.now())
        if recovered:
            log.warning("print jobs interrupted by a restart queued again", jobs=recovered)
        counts = await self._db.call(print_counts)
        handle.ready(f"{counts.get('queued', 0)} queued, {recovered} recovered")
        for event in self._wake.values():
            event.set()
        await asyncio.Event().wait()


# The print journal's SQL, run on the store thread.


def take_print_job(store: Store, printer: str, now: float) -> PrintJobRow | None:
    """The oldest queued job of `printer`, now marked sending (attempts + 1)."""
    conn = store.conn
    with transaction(conn, durable=False):
        row = conn.execute(
            "SELECT id, lane, coupon_code, job, copy, attempts FROM print_journal"
            " WHERE printer = ? AND state = 'queued' ORDER BY created_at LIMIT 1",
            (printer,),
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE print_journal SET state = 'sending', attempts = attempts + 1,"
            " updated_at = ? WHERE id = ?",
            (now, row[0]),
        )
    return PrintJobRow(row[0], row[1], printer, row[2], bytes(row[3]), bool(row[4]), row[5] + 1)


def finish_print_job(store: Store, job_id: str, state: str, now: float, error: str | None) -> None:
    """sending -> printed, failed, or queued again as a copy (interrupted by a fault)."""
    copy = ", copy = 1" if state == "queued" else ""
    with transaction(store.conn, durable=False):
        store.conn.execute(
            f"UPDATE print_journal SET state = ?, error = ?, updated_at = ?{copy}"  # noqa: S608 - constant
            " WHERE id = ? AND state = 'sending'",
            (state, error, now, job_id),
        )


def release_print_job(store: Store, job_id: str) -> None:
    """sending -> queued, not a copy: the job was taken but not one byte was sent."""
    with transaction(store.conn, durable=False):
        store.conn.execute(
            "UPDATE print_journal SET state = 'queued', attempts = attempts - 1"
            " WHERE id = ? AND state = 'sending'",
            (job_id,),
        )


def requeue_interrupted_prints(store: Store, now: float) -> int:
    """At start: jobs left 'sending' by a crash may be half printed; queue them as copies."""
    with transaction(store.conn, durable=False):
        cursor = store.conn.execute(
            "UPDATE print_journal SET state = 'queued', copy = 1, updated_at = ?,"
            " error = 'interrupted by a restart' WHERE state = 'sending'",
            (now,),
        )
    return cursor.rowcount


def print_counts(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT state, count(*) FROM print_journal GROUP BY state")
    return {str(state): int(n) for state, n in rows.fetchall()}


def print_counts_by_printer(store: Store) -> dict[str, dict[str, int]]:
    """printer -> state -> jobs (the console's printers page)."""
    rows = store.conn.execute(
        "SELECT printer, state, count(*), sum(copy) FROM print_journal GROUP BY printer, state"
    )
    counts: dict[str, dict[str, int]] = {}
    for printer, state, n, copies in rows.fetchall():
        per = counts.setdefault(str(printer), {})
        per[str(state)] = int(n)
        if state == "printed":
            per["reprinted"] = int(copies or 0)
    return counts


def failed_prints(store: Store, limit: int = 20) -> list[tuple[str, str, str, float]]:
    """(job id, printer, error, when) of the latest failed jobs, newest first."""
    rows = store.conn.execute(
        "SELECT id, printer, coalesce(error, ''), coalesce(updated_at, created_at)"
        " FROM print_journal WHERE state = 'failed' ORDER BY updated_at DESC LIMIT ?",
        (limit,),
    )
    return [(str(a), str(b), str(c), float(d)) for a, b, c, d in rows.fetchall()]


def requeue_failed_print(store: Store, job_id: str, now: float) -> str | None:
    """Queue a failed job again, as a copy; its printer, or None if no such failed job."""
    with transaction(store.conn, durable=True):
        row = store.conn.execute(
            "SELECT printer FROM print_journal WHERE id = ? AND state = 'failed'", (job_id,)
        ).fetchone()
        if row is None:
            return None
        store.conn.execute(
            "UPDATE print_journal SET state = 'queued', copy = 1, updated_at = ?,"
            " error = 'reprint asked at the console' WHERE id = ?",
            (now, job_id),
        )
    return str(row[0])


def last_printed_coupon(store: Store) -> dict[str, object] | None:
    """What the newest printed coupon showed, for the console's preview: its printer, whether
    it was a copy, when, and the offer's title, body and discount (never the code)."""
    row = store.conn.execute(
        "SELECT p.printer, p.copy, p.updated_at, o.title, o.body, o.discount_pct"
        " FROM print_journal p JOIN coupons c ON c.code = p.coupon_code"
        " LEFT JOIN offers o ON o.id = c.offer_id"
        " WHERE p.state = 'printed' ORDER BY p.updated_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    keys = ("printer", "copy", "printed_at", "title", "body", "discount_pct")
    return dict(zip(keys, row, strict=True))
