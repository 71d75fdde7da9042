"""POS lanes over MQTT: basket, loyalty scan, total (a coupon), coupon redemption.

- `pos/{lane}/basket` replaces the lane's basket (categories, for the decision's features);
- `pos/{lane}/loyalty` identifies the customer for this basket (hashed at once, kept in memory);
- the lane's `pos.transaction` event (accepted means committed, see device events) is the total:
  the checkout moment decides and prints a coupon on the lane's printer, then the lane's
  session is cleared;
- a `pos.redemption` event naming a `coupon` marks it used once and for all and joins the reward
  to the decision that printed it; the answer goes to `pos/{lane}/coupon` (a second use is
  refused there with `already_redeemed`);
- a `pos.receipt` event after a total is an e-receipt for the customer scanned at the lane, or
  gets a claim code printed for the app (`receipts`).
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from gateway.codecs.identity import IdentityResolver
from gateway.codecs.ids import uuid7
from gateway.codecs.payloads import PayloadError, decode, encode_coupon_reply, validate
from gateway.codecs.topics import Topics
from gateway.decision.rewards import RewardJoiner
from gateway.flows.device_events import Commit, DeviceEvent
from gateway.flows.printing import ClaimSlip, new_claim_code, normalise_code
from gateway.moments.moment import CheckoutMoment, Moment, Publisher
from gateway.pos import checkout, coupons, receipts
from gateway.pos.receipts import Visit
from gateway.runtime.clock import Clock
from gateway.runtime.config import LaneConfig
from gateway.store import AsyncStore, PrintJobRow

__all__ = ["PosLanes"]

log = structlog.get_logger("gateway.pos")

_SESSION_IDLE_S = 1800.0  # a basket untouched this long is forgotten (an abandoned lane)
_MAX_PREPARED = 1000  # checkouts, receipts between acceptance and commit (a commit: milliseconds)
_MAX_TOTALS = 10_000  # recent totals remembered (re-sends come within seconds or minutes)


@dataclass(slots=True)
class _Session:
    basket: tuple[str, ...] = ()
    basket_id: str | None = None
    customer_ref: str | None = None
    touched: float = 0.0


class PosLanes:
    def __init__(
        self,
        *,
        topics: Topics,
        lanes: Mapping[str, LaneConfig],
        identity: IdentityResolver,
        submit: Callable[[Moment], bool],
        db: AsyncStore,
        publisher: Publisher,
        clock: Clock,
        rewards: RewardJoiner | None = None,
        on_print_job: Callable[[str], None] = lambda _printer: None,
        on_e_receipt: Callable[[Sequence[str]], None] = lambda _decisions: None,
    ) -> None:
        """on_e_receipt(decision ids): a receipt went to a customer's account (a follow-up)."""
        self._topics = topics
        self._store_id = topics.store_id
        self._on_print_job = on_print_job
        self._on_e_receipt = on_e_receipt
        self._e_receipts: dict[str, tuple[str, ...]] = {}  # event id -> decisions, until commit
        self._lanes = lanes
        self._identity = identity
        self._submit = submit
        self._db = db
        self._publisher = publisher
        self._clock = clock
        self._rewards = rewards
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # event id -> its checkout, from the total's acceptance to its commit (a commit that
        # fails leaves one behind until the lane re-sends: bounded all the same).
        self._checkouts: OrderedDict[str, CheckoutMoment] = OrderedDict()
        # The totals taken since the start, and what their visit left for the receipt: a lane
        # re-sends a total whose acknowledgement it missed, and that must not end the next
        # customer's session.
        self._totals: OrderedDict[str, Visit] = OrderedDict()
        self._slips: dict[str, str] = {}  # receipt event id -> printer, until its commit

    def _lane(self, topic: str) -> str:
        lane = self._topics.device_id(topic, "pos")
        if lane is None or lane not in self._lanes:
            raise PayloadError(f"unknown lane: declare it under [lanes.{lane or '<id>'}]")
        return lane

    def _session(self, lane: str) -> _Session:
        now = self._clock.monotonic()
        session = self._sessions.get(lane)
        if session is None or now - session.touched > _SESSION_IDLE_S:
            session = self._sessions[lane] = _Session()
        session.touched = now
        return session

    def on_basket(self, topic: str, payload: bytes) -> None:
        lane = self._lane(topic)
        data = decode("pos-basket", payload)
        session = self._session(lane)
        basket_id = data.get("id")
        if basket_id is not None and session.basket_id not in (None, basket_id):
            # Another basket on this lane: the last customer's scan must not carry over.
            session = self._sessions[lane] = _Session(touched=session.touched)
        session.basket_id = basket_id
        session.basket = tuple(dict.fromkeys(data["categories"]))

    def on_loyalty(self, topic: str, payload: bytes) -> None:
        """The raw value goes no further than this function: only its keyed hash is kept."""
        lane = self._lane(topic)
        data = decode("pos-loyalty", payload)
        ref, problem = self._identity.resolve(data["method"], data["value"])
        if problem is not None:
            raise PayloadError(problem)
        self._session(lane).customer_ref = ref

    def before_commit(self, event: DeviceEvent) -> Commit | None:
        """DeviceEvents hook, before the commit: a total on a lane with a printer becomes a
        pending checkout (lane, customer, basket) committed with the total itself; a receipt
        its rows, and what goes up."""
        lane = self._lanes.get(event.device)
        if event.kind != "pos" or lane is None:
            return None
        if event.type == "pos.receipt":
            return self._receipt(event, lane.printer, lane.claim_valid_days)
        if event.type == "pos.transaction":
            return self._on_total(event, lane.printer)
        return None

    def _on_total(self, event: DeviceEvent, printer: str) -> Commit | None:
        """A total ends the lane's visit; on a lane with a printer its checkout commits with it."""
        if event.id in self._totals:  # a re-sent total: it ended its visit already
            moment = self._checkouts.get(event.id)  # unless its first commit failed (full)
            return None if moment is None else self._commit_checkout(event.id, moment)
        session = self._session(event.device)  # an idle one is fresh: not this customer's basket
        del self._sessions[event.device]  # the total ends the visit
        self._totals[event.id] = Visit(session.customer_ref)
        while len(self._totals) > _MAX_TOTALS:
            self._totals.popitem(last=False)
        if not printer:
            return None
        moment = self._checkout(event.device, session.customer_ref, session.basket, event.id,
                                _total(event.data.get("total")))  # fmt: skip
        self._checkouts[event.id] = moment
        while len(self._checkouts) > _MAX_PREPARED:
            self._checkouts.popitem(last=False)
        return self._commit_checkout(event.id, moment)

    def _commit_checkout(self, total_id: str, moment: CheckoutMoment) -> Commit:
        """The pending checkout, committed with its total; decided once the total commits,
        not once it is durable: the coupon's own commit is durable (and makes the total so)
        before it prints, and saves one fsync in turn."""
        return Commit(
            write=checkout.pending_write(moment, self._clock.now()),
            committed=functools.partial(self._decide_checkout, total_id),
        )

    def _decide_checkout(self, total_id: str) -> None:
        moment = self._checkouts.pop(total_id, None)
        if moment is not None:
            self._submit(moment)  # a full queue logs it; the total stays pending

    def checked_out(self, total_id: str, decision_id: str, coupon: str | None) -> None:
        """The journey decided a total's checkout (and printed `coupon`): its receipt names
        them."""
        visit = self._totals.get(total_id)
        if visit is not None:
            self._totals[total_id] = Visit(visit.customer_ref, (decision_id,), coupon)

    def _receipt(self, event: DeviceEvent, printer: str, claim_days: int) -> Commit:
        """An identified customer's receipt goes to their account; anyone else's gets a claim
        code, printed on the lane's printer (a lane without one: the receipt goes up alone).
        A total the gateway did not see (sent before a restart) counts as anonymous."""
        validate("pos-receipt", event.data)
        now = self._clock.now()
        visit = self._totals.get(event.data["transaction"], Visit())
        slip = job = None
        if visit.customer_ref is None and printer:
            slip = ClaimSlip(new_claim_code(), self._store_id, now, claim_days)
            job = PrintJobRow(uuid7(int(now * 1000)), event.device, printer, slip.code,
                              slip.to_json(), copy=False, attempts=0)  # fmt: skip
            self._slips[event.id] = printer
        elif visit.customer_ref is not None:
            self._e_receipts[event.id] = (*visit.decision_ids, *event.data.get("decision_ids", ()))
        for prepared in (self._slips, self._e_receipts):  # a commit that failed leaves one
            while len(prepared) > _MAX_PREPARED:
                del prepared[next(iter(prepared))]
        uplink = receipts.drapi(event.data, receipt_id=event.id, store_id=self._store_id,
                                lane=event.device, ts=now, visit=visit,
                                claim_code=slip.code if slip else None)  # fmt: skip
        write = receipts.commit_write(receipt_id=event.id, lane=event.device, data=event.data,
                                      visit=visit, slip=slip, job=job, now=now)  # fmt: skip
        return Commit(write=write, uplink=uplink)

    def _checkout(
        self,
        lane: str,
        ref: str | None,
        basket: tuple[str, ...],
        event_id: str,
        total: float | None = None,
    ) -> CheckoutMoment:
        config = self._lanes[lane]
        return CheckoutMoment(
            touchpoint=lane,
            customer_ref=ref,
            request_id=event_id,
            received=self._clock.monotonic(),
            basket=basket,
            printer=config.printer,
            coupon_valid_days=config.coupon_valid_days,
            total=total,
        )

    async def pending(self) -> list[Moment]:
        """Totals acknowledged before a stop or a crash whose coupon was not decided yet."""
        moments: list[Moment] = []
        for event_id, data in await self._db.call(checkout.pending):
            lane_id = str(data["lane"])
            lane = self._lanes.get(lane_id)
            if lane is None or not lane.printer:  # the lane lost its printer since
                await self._db.call(checkout.settle_now, event_id)
                continue
            basket = tuple(map(str, data["basket"]))  # type: ignore[call-overload]
            ref = data.get("customer_ref")
            moments.append(self._checkout(lane_id, ref if isinstance(ref, str) else None, basket,
                                          event_id, _total(data.get("total"))))  # fmt: skip
        return moments

    def after_commit(self, event: DeviceEvent) -> None:
        """DeviceEvents hook: a lane's event is committed (and acknowledged)."""
        if event.kind != "pos" or event.device not in self._lanes:
            return
        if event.type == "pos.receipt":
            printer = self._slips.pop(event.id, None)
            if printer is not None:
                self._on_print_job(printer)
                log.info("receipt claim code printed", lane=event.device)
            else:
                log.info("e-receipt sent", lane=event.device)
            decisions = self._e_receipts.pop(event.id, None)
            if decisions:
                self._on_e_receipt(decisions)
        elif event.type == "pos.redemption" and isinstance(event.data.get("coupon"), str):
            code = str(event.data["coupon"])
            task = asyncio.create_task(self._redeem(event.device, code, event.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _redeem(self, lane: str, code: str, event_id: str) -> None:
        status, decision_id, first = await self._db.call(
            coupons.redeem, normalise_code(code), lane, self._clock.now(), event_id
        )
        message = {
            "redeemed": "accepted: first use",
            "already_redeemed": "refused: this coupon was already redeemed",
            "unknown": "refused: not a coupon this store issued",
        }[status]
        body = encode_coupon_reply(code, status, event_id, message)
        self._publisher.post(self._topics.pos_coupon(lane), body)
        log.info("coupon redemption", lane=lane, status=status, decision=decision_id)
        if first and decision_id is not None and self._rewards is not None:
            self._rewards.join_soon(decision_id, "pos.redemption")


def _total(value: object) -> float | None:
    """A lane's total, if it sent a usable one (the readout's in-store revenue)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None
