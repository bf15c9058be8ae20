"""Special review (特例单议, dip-rules §6.5; docs/settlement.md "Special review").

The workflow a bureau runs around the cases the scoring flags (``special_review``: extreme
cost deviation):

1. ``settle`` lists the flagged in-pool cases in ``special_review.parquet``, ranked by ratio
   within each hospital, and marks those within the hospital's quota (``[special_review] quota``,
   a share of its in-pool cases, national at most 5 ‰: ``floor(quota × cases)``);
2. the experts' decisions come back as a file (``settle --reviewed FILE``, annual clearing only):
   ``case_id``, ``decision`` (``approved`` | ``rejected``) and, for an approval, either
   ``approved_points`` (new points, replacing the computed ones) or ``approved_amount`` (yuan:
   the case is paid that amount per item, outside the point pool);
3. the clearing pays approved cases as decided: new points enter the point value like any
   other; approved amounts come off the pool's total-cost budget before the point value is
   computed and are added to their hospitals' standards, so the fund due still reconciles to the
   budget exactly. Rejected cases are paid as computed.

Everything here is vectorised over a batch (``pc.index_in`` on ``case_id``); the decision file
is read once and checked strictly (:func:`read_reviewed`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError
from dipengine.money import yuan_value_to_fen

DECISIONS = ("approved", "rejected")
REVIEW_KINDS = ("approved_points", "approved_amount", "rejected")
"""Values of the case output's ``review`` column (null: not reviewed)."""

REVIEWED_COLUMNS = ("case_id", "decision", "approved_points", "approved_amount", "note")

CANDIDATE_SCHEMA = pa.schema([
    ("case_id", pa.string()), ("hospital_id", pa.string()), ("pool", pa.string()), ("dip_code", pa.string()),
    ("deviation", pa.string()), ("ratio", pa.float64()), ("case_points", pa.float64()),
    ("total_cost_fen", pa.int64()), ("review", pa.string()),
])
"""Flagged in-pool cases as :func:`candidate_rows` collects them from each scored batch."""

SPECIAL_REVIEW_SCHEMA = pa.schema([
    ("case_id", pa.string()), ("hospital_id", pa.string()), ("pool", pa.string()), ("dip_code", pa.string()),
    ("deviation", pa.string()), ("ratio", pa.float64()), ("case_points", pa.float64()),
    ("total_cost_fen", pa.int64()), ("review", pa.string()), ("hospital_rank", pa.int32()),
    ("hospital_quota", pa.int32()), ("within_quota", pa.bool_()),
])
"""``special_review.parquet``: one row per flagged in-pool case, by hospital then rank."""


def quota_cases(quota: float, n_cases: int) -> int:
    """How many of a hospital's ``n_cases`` in-pool cases may go to special review:
    ``floor(quota × n_cases)`` computed exactly on the decimal text of ``quota``."""
    from decimal import ROUND_FLOOR, Decimal

    return int((Decimal(repr(float(quota))) * n_cases).to_integral_value(rounding=ROUND_FLOOR))


def candidate_rows(scored: pa.Table, cases: pa.Table) -> pa.Table | None:
    """The flagged (``special_review``) in-pool rows of one scored batch, as
    :data:`CANDIDATE_SCHEMA` (``review``: the decision when ``scored`` has one); None when none.
    A few per thousand cases: the pass-1 totals keep them (:class:`dipengine.settlement.Totals`)."""
    keep = pc.and_(pc.fill_null(scored["special_review"], False), pc.fill_null(scored["in_pool"], False))
    idx = np.flatnonzero(np.asarray(keep.to_numpy(zero_copy_only=False), bool))
    if not len(idx):
        return None
    take = pa.array(idx)
    review = (pc.take(scored["review"], take).cast(pa.string()) if "review" in scored.column_names
              else pa.nulls(len(idx), pa.string()))
    return pa.table({
        "case_id": pc.take(scored["case_id"], take).cast(pa.string()),
        "hospital_id": pc.take(scored["hospital_id"], take).cast(pa.string()),
        "pool": pc.take(scored["pool"], take).cast(pa.string()),
        "dip_code": pc.take(scored["dip_code"], take).cast(pa.string()),
        "deviation": pc.take(scored["deviation"], take).cast(pa.string()),
        "ratio": pc.take(scored["ratio"], take),
        "case_points": pc.take(scored["case_points"], take),
        "total_cost_fen": pc.take(cases["total_cost_fen"], take).cast(pa.int64()),
        "review": review,
    }, schema=CANDIDATE_SCHEMA)


def rank_within_quota(parts: list, in_pool_cases: dict, quota: float) -> pa.Table:
    """``special_review.parquet`` from the :func:`candidate_rows` of every batch (any order):
    ranked within each hospital by ratio (highest first; ties by ``case_id``), with the
    hospital's quota (:func:`quota_cases` of its in-pool cases, ``in_pool_cases``:
    ``{hospital_id: n}``) and whether each is within it. The same rows whatever the split."""
    parts = [t for t in parts if t is not None and t.num_rows]
    if not parts:
        return SPECIAL_REVIEW_SCHEMA.empty_table()
    t = pa.concat_tables(parts)
    n = t.num_rows
    hosp = np.array(t["hospital_id"].to_pylist(), dtype=object)
    ids = np.array(t["case_id"].to_pylist(), dtype=object)
    ratio = np.asarray(pc.fill_null(t["ratio"], 0.0).to_numpy(zero_copy_only=False), np.float64)
    codes, h_idx = np.unique(hosp, return_inverse=True)
    _, id_rank = np.unique(ids, return_inverse=True)
    order = np.lexsort((id_rank, -ratio, h_idx))  # hospital, ratio descending, case_id
    first = np.r_[0, np.flatnonzero(np.diff(h_idx[order])) + 1]
    sizes = np.diff(np.r_[first, n])
    rank = np.empty(n, np.int32)
    rank[order] = (np.arange(n) - np.repeat(first, sizes) + 1).astype(np.int32)
    per_h = np.array([quota_cases(quota, int(in_pool_cases.get(h, 0))) for h in codes], np.int32)
    hq = per_h[h_idx]
    out = t.append_column("hospital_rank", pa.array(rank)).append_column("hospital_quota", pa.array(hq))
    out = out.append_column("within_quota", pa.array(rank <= hq))
    return out.take(pa.array(order)).cast(SPECIAL_REVIEW_SCHEMA)


class Reviewed:
    """The experts' decisions (``--reviewed FILE``), applied batch by batch (:meth:`apply`).

    Attributes
    ----------
    case_id : pa.Array (string)
    kind : np.ndarray (int8): 0 approved_points, 1 approved_amount, 2 rejected (:data:`REVIEW_KINDS`)
    points_e4 : np.ndarray (int64): approved points × 10,000 (half up; 0 unless kind 0)
    amount_fen : np.ndarray (int64): approved amount, fen (0 unless kind 1)
    file : str
    """

    def __init__(self, case_id: pa.Array, kind: np.ndarray, points_e4: np.ndarray, amount_fen: np.ndarray,
                 file: str):
        self.case_id = case_id
        self.kind = kind
        self.points_e4 = points_e4
        self.amount_fen = amount_fen
        self.file = file

    def __len__(self) -> int:
        return len(self.kind)

    def apply(self, scored: pa.Table) -> pa.Table:
        """``scored`` (``case_points`` output) with the decisions on its cases: approved points
        replace ``points_e4``/``case_points``; an approved amount zeroes them (the case leaves
        the point pool) and fills ``review_amount_fen``; adds ``review`` (string, null when not
        reviewed). Pure: :meth:`check` later sees which decisions found their case
        (:func:`found_rows` of each batch, kept in the pass-1 totals)."""
        hit = pc.index_in(scored["case_id"].cast(pa.string()), value_set=self.case_id)
        idx = np.asarray(pc.fill_null(hit, -1).to_numpy(zero_copy_only=False), np.int64)
        on = idx >= 0
        k = np.where(on, self.kind[np.where(on, idx, 0)] if len(self.kind) else 0, -1)
        pts = scored["points_e4"].to_numpy(zero_copy_only=False).astype(np.int64)
        safe = np.where(on, idx, 0)
        new_pts = np.where(k == 0, self.points_e4[safe] if len(self.kind) else 0, np.where(k == 1, 0, pts))
        amount = np.where(k == 1, self.amount_fen[safe] if len(self.kind) else 0, 0)
        review = pa.DictionaryArray.from_arrays(pa.array(np.where(k >= 0, k, 0).astype(np.int8), mask=k < 0),
                                                pa.array(REVIEW_KINDS, pa.string())).cast(pa.string())
        out = scored
        for name, col in (("points_e4", pa.array(new_pts, pa.int64())),
                          ("case_points", pa.array(new_pts / 10_000.0, pa.float64()))):
            out = out.set_column(out.schema.get_field_index(name), name, col)
        out = out.append_column("review", review)
        return out.append_column("review_amount_fen", pa.array(amount, pa.int64(), mask=k != 1))

    def check(self, found: list) -> None:
        """After every batch: each decision found exactly one case, settled in a pool.

        ``found``: the :func:`found_rows` tables of every batch (any order or split).

        Raises
        ------
        DataError
            Naming the file, row, the ``case_id`` column and the first case id not in the
            input, found more than once, or of a case not settled in a pool (rejected,
            excluded, or outside the pools).
        """
        n = len(self.kind)
        matched, unsettled = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for t in found:
            if t is None or not t.num_rows:
                continue
            idx = np.asarray(pc.fill_null(pc.index_in(t["case_id"], value_set=self.case_id), -1)
                             .to_numpy(zero_copy_only=False), np.int64)
            in_pool = np.asarray(t["in_pool"].to_numpy(zero_copy_only=False), bool)
            np.add.at(matched, idx[idx >= 0], 1)
            np.add.at(unsettled, idx[(idx >= 0) & ~in_pool], 1)
        bad = np.flatnonzero((matched != 1) | (unsettled > 0))
        if len(bad):
            i = int(bad[0])
            why = ("case_id not in the input" if matched[i] == 0 else
                   "case_id found more than once in the input" if matched[i] > 1 else
                   "the case is not settled in a pool (rejected, excluded or outside the pools): nothing to review")
            raise DataError(why, file=self.file, row=i + 2, column="case_id", value=self.case_id[i].as_py())

    def summary(self) -> dict:
        """The manifest's ``special_review.reviewed`` entry (counts and sums)."""
        return {
            "file": Path(self.file).name,
            "cases": int(len(self.kind)),
            "approved_points": int((self.kind == 0).sum()),
            "approved_amount": int((self.kind == 1).sum()),
            "rejected": int((self.kind == 2).sum()),
            "approved_points_e4": int(self.points_e4[self.kind == 0].sum()),
            "approved_amount_fen": int(self.amount_fen[self.kind == 1].sum()),
        }


def found_rows(scored: pa.Table) -> pa.Table | None:
    """``case_id`` and ``in_pool`` of the rows of a batch that carry a decision (``review`` not
    null, after :meth:`Reviewed.apply`); None when none. Kept by the pass-1 totals, checked by
    :meth:`Reviewed.check` once every batch is in."""
    if "review" not in scored.column_names:
        return None
    on = pc.is_valid(scored["review"])
    if not pc.any(on).as_py():
        return None
    t = scored.select(["case_id", "in_pool"]).filter(on)
    return pa.table({"case_id": t["case_id"].cast(pa.string()), "in_pool": pc.fill_null(t["in_pool"], False)})


def _number(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        return v or None
    return v


def read_reviewed(source) -> Reviewed:
    """Read the special-review decisions strictly.

    Columns: ``case_id`` and ``decision`` (``approved`` | ``rejected``) required;
    ``approved_points`` (points, >= 0) and ``approved_amount`` (yuan, >= 0, at most 2 decimals):
    an approval gives exactly one of them, a rejection neither; ``note`` (free text) optional.

    Raises
    ------
    DataError
        A missing or unknown column, an empty, malformed or duplicated value, or a decision
        whose points/amount do not fit it; naming the file, row (CSV line), column and value.
    """
    from dipengine.io import read_table

    name = "reviewed table" if isinstance(source, pa.Table) else str(source)
    if not isinstance(source, pa.Table):
        p = Path(source)
        if not p.is_file():
            raise DataError("not a file" if p.exists() else "file not found", file=name)
    table = read_table(source)
    cols = ", ".join(REVIEWED_COLUMNS)
    for col in ("case_id", "decision"):
        if col not in table.column_names:
            raise DataError(f"required column missing (columns: {cols})", file=name, column=col)
    for col in table.column_names:
        if col not in REVIEWED_COLUMNS:
            raise DataError(f"unknown column (columns: {cols})", file=name, column=col)

    def column(c):
        if c not in table.column_names:
            return [None] * table.num_rows
        return [_number(v) for v in table[c].cast(pa.string()).to_pylist()]

    ids, decisions = column("case_id"), column("decision")
    points, amounts = column("approved_points"), column("approved_amount")
    kind = np.zeros(table.num_rows, np.int8)
    pts = np.zeros(table.num_rows, np.int64)
    fen = np.zeros(table.num_rows, np.int64)
    seen: dict = {}
    for i in range(table.num_rows):
        row = i + 2
        cid, dec, pt, am = ids[i], decisions[i], points[i], amounts[i]
        if cid is None:
            raise DataError("empty value", file=name, row=row, column="case_id")
        if cid in seen:
            raise DataError(f"case_id given twice (first on row {seen[cid]})", file=name, row=row,
                            column="case_id", value=cid)
        seen[cid] = row
        if dec not in DECISIONS:
            raise DataError(f"decision must be {' or '.join(DECISIONS)}", file=name, row=row, column="decision",
                            value=dec)
        if dec == "rejected":
            if pt is not None or am is not None:
                col = "approved_points" if pt is not None else "approved_amount"
                raise DataError("a rejected case takes no approved points or amount", file=name, row=row,
                                column=col, value=pt if pt is not None else am)
            kind[i] = 2
            continue
        if (pt is None) == (am is None):
            raise DataError("an approval gives exactly one of approved_points and approved_amount", file=name,
                            row=row, column="approved_points" if pt is not None else "decision",
                            value=pt if pt is not None else dec)
        if pt is not None:
            e4 = _points_e4(pt)
            if e4 is None:
                raise DataError("not a number of points >= 0", file=name, row=row, column="approved_points", value=pt)
            kind[i], pts[i] = 0, e4
        else:
            try:
                f = yuan_value_to_fen(am, max_decimals=2)
            except ValueError:
                f = None
            if f is None or f < 0:
                raise DataError("not an amount of yuan >= 0 with at most 2 decimals", file=name, row=row,
                                column="approved_amount", value=am)
            kind[i], fen[i] = 1, f
    return Reviewed(pa.array(ids, pa.string()), kind, pts, fen, name)


def _points_e4(v) -> int | None:
    """Points text -> int 1/10,000 points, half up (as ``scoring``); None when not a number >= 0."""
    from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

    try:
        d = Decimal(str(v))
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0:
        return None
    return int((d * 10_000).to_integral_value(rounding=ROUND_HALF_UP))
