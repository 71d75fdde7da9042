"""The readout's identified decisions as numpy columns (`Rows`), and the visits they make
(`Visits`): a customer's decisions on one (UTC) day, with the touchpoints they took part in and
their revenue in store and online. Every sum adds its terms in the order of the rows (see
report.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.decision.report_figures import TOUCHPOINT_OF, Revenue, Sums, lift_of

__all__ = [
    "TOUCHPOINTS",
    "WHERES",
    "Floats",
    "Ints",
    "Rows",
    "Visits",
    "in_order",
    "sum_by",
    "sums_of",
]

TOUCHPOINTS = tuple(sorted(set(TOUCHPOINT_OF.values())))
WHERES = ("overall", *TOUCHPOINTS)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Rows:
    """The identified decisions as columns, in the order SQLite read them."""

    ids: Mapping[str, int]  # customer -> index, in the order they appeared
    customer: Ints
    day: Ints
    touchpoint: Ints  # index in TOUCHPOINTS
    policy: Ints  # 0 other, 1 holdout, 2 the model
    propensity: Floats
    reward: Floats  # nan: open
    total: Floats  # the lane's total (checkouts), else 0

    @classmethod
    def read(cls, cursor: sqlite3.Cursor, chunk: int = 65_536) -> Rows:
        """The rows of `_IDENTIFIED`, a chunk at a time: the columns are arrays, each customer
        an index (a million rows as tuples would hold some 300 MB at once)."""
        ids: dict[str, int] = {}
        chunks: list[list[npt.NDArray[Any]]] = []
        while rows := cursor.fetchmany(chunk):
            code = _column(rows, 2, np.int64)
            if (code < 0).any():  # moments of no touchpoint are not in the readout
                rows = [row for row in rows if row[2] >= 0]
                code = code[code >= 0]
            refs = list(map(itemgetter(0), rows))
            for ref in dict.fromkeys(refs):
                ids.setdefault(ref, len(ids))
            customer = np.fromiter(map(ids.__getitem__, refs), np.int64, len(refs))
            columns = [_column(rows, i, np.float64) for i in (3, 4, 5)]
            chunks.append([customer, code, _column(rows, 1, np.int64), *columns])
        customer, code, day, propensity, reward, total = (
            np.concatenate([c[i] for c in chunks]) if chunks else np.zeros(0, dtype)
            for i, dtype in enumerate((np.int64, np.int64, np.int64, *(np.float64,) * 3))
        )
        return cls(
            ids=ids,
            customer=customer,
            day=day,
            touchpoint=code // 3,
            policy=code % 3,
            propensity=propensity,
            reward=reward,
            total=np.where(np.isnan(total), 0.0, total),
        )


def _column(rows: Sequence[Any], i: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.fromiter(map(itemgetter(i), rows), dtype, len(rows))  # None: nan


def in_order(keys: Ints) -> tuple[Ints, Ints]:
    """The distinct keys in the order they first appear, and each row's index among them."""
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return distinct[order], rank[inverse.reshape(-1)]


def sum_by(index: Ints, weights: Floats, size: int) -> Floats:
    """Per index, its weights' sum in row order (np.bincount adds them one by one)."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64)


def sums_of(y: Floats, n: Floats) -> Sums:
    """The sums of units (y_i, n_i), added one by one in their order (np.cumsum)."""
    s = Sums()
    s.k = len(y)
    if s.k:
        s.y, s.n = float(np.cumsum(y)[-1]), float(np.cumsum(n)[-1])
        s.yy, s.yn = float(np.cumsum(y * y)[-1]), float(np.cumsum(y * n)[-1])
        s.nn = float(np.cumsum(n * n)[-1])
    return s


class Visits:
    """The identified visits (a customer's decisions on one day), in the order they appeared:
    the touchpoints each took part in, its revenue in store (the lanes' totals logged with its
    checkout decisions, then `store` outcomes) and online."""

    def __init__(self, rows: Rows) -> None:
        self.ids = rows.ids
        self.holdout = np.zeros(len(rows.ids), dtype=np.bool_)  # per customer: any holdout
        self.holdout[rows.customer[rows.policy == 1]] = True
        day = rows.day
        self.first_day = int(day.min()) if len(day) else 0
        self.span = int(day.max()) - self.first_day + 1 if len(day) else 1
        keys, of_row = in_order(rows.customer * self.span + (day - self.first_day))
        self.customer = keys // self.span
        self.by_key = np.argsort(keys, kind="stable")  # for look-ups: keys[by_key] ascends
        self.sorted_keys = keys[self.by_key]
        self.touches = []
        for k in range(len(TOUCHPOINTS)):
            touched = np.zeros(len(keys), dtype=np.bool_)
            touched[of_row[rows.touchpoint == k]] = True
            self.touches.append(touched)
        self.in_store = sum_by(of_row, rows.total, len(keys))
        self.online = np.zeros(len(keys))

    def add_outcomes(self, rows: Sequence[tuple[str, int, bool, float]]) -> None:
        """Outcomes per visit: (customer, day, in store?, amount); a visit without an
        identified decision in the period has none."""
        if not rows or not len(self.sorted_keys):
            return
        refs, days, in_store, amounts = zip(*rows, strict=True)
        customer = np.fromiter((self.ids.get(r, -1) for r in refs), np.int64, len(refs))
        offset = np.array(days, dtype=np.int64) - self.first_day
        key = customer * self.span + offset
        ok = (customer >= 0) & (offset >= 0) & (offset < self.span)
        at = np.minimum(np.searchsorted(self.sorted_keys, key), len(self.sorted_keys) - 1)
        ok &= self.sorted_keys[at] == key
        visit = self.by_key[at]
        store = np.array(in_store, dtype=np.bool_)
        amount = np.array(amounts, dtype=np.float64)
        np.add.at(self.in_store, visit[ok & store], amount[ok & store])
        np.add.at(self.online, visit[ok & ~store], amount[ok & ~store])

    def revenue(self) -> dict[str, Revenue]:
        """Per touchpoint and overall: each customer's visits and revenue (in store, online),
        then the per-visit revenue of each arm; a customer is in the holdout if any decision
        was. A touchpoint's customers are added in the order of their first visit there."""
        out = {}
        everywhere = np.ones(len(self.customer), dtype=np.bool_)
        for where, touched in zip(WHERES, (everywhere, *self.touches), strict=True):
            customer = self.customer[touched]
            size = len(self.ids)
            present, _ = in_order(customer)
            n = np.bincount(customer, minlength=size)[present].astype(np.float64)
            in_store = sum_by(customer, self.in_store[touched], size)[present]
            online = sum_by(customer, self.online[touched], size)[present]
            held = self.holdout[present]
            sums = {}
            for arm, m in (("t", ~held), ("c", held)):
                sums[(arm, "in")] = sums_of(in_store[m], n[m])
                sums[(arm, "on")] = sums_of(online[m], n[m])
                sums[(arm, "all")] = sums_of(in_store[m] + online[m], n[m])
            t_all, c_all = sums[("t", "all")], sums[("c", "all")]
            if not t_all.k or not c_all.k or (t_all.y == 0 and c_all.y == 0):
                continue
            lift, low, high = lift_of(t_all, c_all)
            out[where] = Revenue(
                visits=(int(t_all.n), int(c_all.n)),
                customers=(t_all.k, c_all.k),
                in_store=(sums[("t", "in")].ratio, sums[("c", "in")].ratio),
                online=(sums[("t", "on")].ratio, sums[("c", "on")].ratio),
                together=(t_all.ratio, c_all.ratio),
                lift=lift,
                low=low,
                high=high,
                in_store_lift=lift_of(sums[("t", "in")], sums[("c", "in")])[0],
                online_lift=lift_of(sums[("t", "on")], sums[("c", "on")])[0],
            )
        return out
