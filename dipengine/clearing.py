"""The clearing workflow's own inputs (dip-rules §7.1, §7.3, §7.4; docs/settlement.md "Clearing workflow").

- **Prepayments** (预付金, ``settle --prepayments FILE``): what the fund advanced to each hospital
  at the start of the year; offset in the final transfer of the annual clearing.
- **Audit deductions** (审核扣款 / 拒付 / 追回, ``settle --deductions FILE``): sums the audit took
  off each hospital; they reduce the assessed fund due ``due'`` **before** the bands.
- **Deposit release by assessment score** (``[settlement] deposit_release = "by_score"``): the
  quality deposit withheld by the monthly runs is released in proportion to the hospital's
  assessment score (registry column ``assessment_score``).

Both files have the columns ``hospital_id``, ``amount`` (yuan, at most 2 decimals, >= 0) and,
optionally, ``pool`` (``employee``/``resident``; empty = the hospital as a whole) and a text column
(``note`` for prepayments, ``reason`` for deductions). They are read strictly (:func:`read_amounts`):
an unknown column, an empty or malformed value, a negative amount or a hospital not in the
registry stops the run before anything is written, with one line naming the file, row, column
and value. Amounts are exact integer fen; every split is exact in integers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError
from dipengine.money import yuan_value_to_fen

POOLS = ("employee", "resident")
KINDS = {"prepayments": "note", "deductions": "reason"}
"""Each clearing input file and the name of its optional text column."""
NO_REASON = "(none)"
"""The ``by_reason`` key of deductions given without a reason."""


@dataclass(frozen=True)
class Amounts:
    """One clearing input file, read and checked (:func:`read_amounts`). Money in int fen.

    ``by_pool``: ``{(hospital_id, pool): fen}`` of the rows that name a pool; ``whole``:
    ``{hospital_id: fen}`` of the rows that do not (split over the hospital's statements,
    :func:`split_whole`); ``first_row``: the file row of each ``whole`` entry (for messages);
    ``by_reason``: ``{text: fen}`` of the optional text column (deductions).
    """

    kind: str
    file: str | None
    rows: int
    by_pool: dict = field(default_factory=dict)
    whole: dict = field(default_factory=dict)
    first_row: dict = field(default_factory=dict)
    by_reason: dict = field(default_factory=dict)

    @property
    def total_fen(self) -> int:
        return sum(self.by_pool.values()) + sum(self.whole.values())

    @property
    def hospitals(self) -> int:
        return len({h for h, _ in self.by_pool} | set(self.whole))

    def summary(self) -> dict:
        """The manifest's entry for this file (``clearing.<kind>``)."""
        out = {"rows": self.rows, "hospitals": self.hospitals, "amount_fen": self.total_fen,
               "by_pool_fen": sum(self.by_pool.values()), "whole_hospital_fen": sum(self.whole.values())}
        if self.kind == "deductions":
            out["by_reason_fen"] = dict(sorted(self.by_reason.items()))
        return out


@dataclass(frozen=True)
class ClearingInputs:
    """The clearing workflow's inputs of a run (``None``: not given)."""

    prepayments: Amounts | None = None
    deductions: Amounts | None = None

    @property
    def files(self) -> dict:
        """``{kind: path}`` of the files read (for the manifest's parameters and sha256)."""
        return {a.kind: a.file for a in (self.prepayments, self.deductions) if a is not None and a.file}


def _text(table: pa.Table, name: str) -> list:
    col = table[name]
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return [None if v is None or not str(v).strip() else str(v).strip() for v in col.to_pylist()]


def read_amounts(source, kind: str, hospitals: pa.Table) -> Amounts:
    """Read a prepayments or deductions file (``kind``) strictly against the registry.

    Rows of the same hospital (and pool) add up: several audit findings, or tranches of a
    prepayment. ``source``: a path (CSV, Parquet, .xlsx, ...) or a table.

    Raises
    ------
    DataError
        A missing, unknown or malformed column or value, a negative amount, more than 2
        decimals, a pool other than ``employee``/``resident``, a hospital not in the registry;
        the message names the file, row (CSV line), column and value.
    """
    from dipengine.io import read_table

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    text_col = KINDS[kind]
    name = f"{kind} table" if isinstance(source, pa.Table) else str(source)
    if not isinstance(source, pa.Table):
        p = Path(source)
        if not p.is_file():
            raise DataError("not a file" if p.exists() else "file not found", file=name)
    table = read_table(source)
    allowed = ("hospital_id", "amount", "pool", text_col)
    for col in ("hospital_id", "amount"):
        if col not in table.column_names:
            raise DataError(f"required column missing (columns: hospital_id, amount[, pool][, {text_col}])",
                            file=name, column=col)
    for col in table.column_names:
        if col not in allowed:
            raise DataError(f"unknown column (columns: hospital_id, amount[, pool][, {text_col}])",
                            file=name, column=col)
    known = set(hospitals["hospital_id"].to_pylist())
    hids = _text(table, "hospital_id")
    amounts = table["amount"].to_pylist()
    pools = _text(table, "pool") if "pool" in table.column_names else [None] * table.num_rows
    notes = _text(table, text_col) if text_col in table.column_names else [None] * table.num_rows
    out = Amounts(kind=kind, file=None if isinstance(source, pa.Table) else str(source), rows=table.num_rows)
    for i, (hid, raw, pool, note) in enumerate(zip(hids, amounts, pools, notes)):
        row = i + 2  # the CSV line: the header is line 1
        if hid is None:
            raise DataError("empty value", file=name, row=row, column="hospital_id")
        if hid not in known:
            raise DataError("hospital not in the registry", file=name, row=row, column="hospital_id", value=hid)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise DataError("empty value", file=name, row=row, column="amount")
        try:
            fen = yuan_value_to_fen(raw.strip() if isinstance(raw, str) else raw, max_decimals=2)
        except ValueError as e:
            raise DataError(f"not an amount in yuan with at most 2 decimals ({e})", file=name, row=row,
                            column="amount", value=raw) from None
        if fen < 0:
            raise DataError("amount must not be negative", file=name, row=row, column="amount", value=raw)
        if pool is not None and pool not in POOLS:
            raise DataError("pool must be employee, resident or empty (the hospital as a whole)", file=name,
                            row=row, column="pool", value=pool)
        if pool is None:
            out.whole[hid] = out.whole.get(hid, 0) + fen
            out.first_row.setdefault(hid, row)
        else:
            out.by_pool[(hid, pool)] = out.by_pool.get((hid, pool), 0) + fen
        if kind == "deductions":
            key = note if note is not None else NO_REASON
            out.by_reason[key] = out.by_reason.get(key, 0) + fen
    return out


def read_clearing_inputs(hospitals: pa.Table, *, prepayments=None, deductions=None) -> ClearingInputs | None:
    """Both files of a run (each optional); ``None`` when neither is given."""
    if prepayments is None and deductions is None:
        return None
    return ClearingInputs(
        prepayments=None if prepayments is None else read_amounts(prepayments, "prepayments", hospitals),
        deductions=None if deductions is None else read_amounts(deductions, "deductions", hospitals))


def split_whole(amount_fen: int, recorded_fen: list, n_cases: list) -> list:
    """Split a whole-hospital amount over the hospital's statements (one per pool, in pool order).

    In proportion to each statement's ``recorded_fen`` (the fund's recorded payments of the year,
    the basis of a prepayment and of what an audit refuses; negatives count 0); when they are all
    0, to ``n_cases``; when those are all 0, equally. Exact integers: each part is floored, the
    fen left over go one each to the largest remainders, ties to the earlier pool; the parts add
    up to ``amount_fen``.
    """
    weights = [max(int(r), 0) for r in recorded_fen]
    if sum(weights) == 0:
        weights = [max(int(n), 0) for n in n_cases]
    if sum(weights) == 0:
        weights = [1] * len(recorded_fen)
    total = sum(weights)
    parts = [amount_fen * w // total for w in weights]
    rem = [amount_fen * w % total for w in weights]
    left = amount_fen - sum(parts)
    for i in sorted(range(len(parts)), key=lambda k: (-rem[k], k))[:left]:
        parts[i] += 1
    return parts


def release_share(score: float, scores: tuple) -> Fraction:
    """Share of the quality deposit released at ``score`` (``deposit_release = "by_score"``):
    ``(score − lo) / (hi − lo)`` clamped to [0, 1], with ``scores = (lo, hi)``; exact, from the
    decimal text of each number."""
    lo, hi = (Fraction(Decimal(repr(float(x)))) for x in scores)
    s = Fraction(Decimal(repr(float(score))))
    return min(Fraction(1), max(Fraction(0), (s - lo) / (hi - lo)))


def released_fen(deposit_fen: int, share: Fraction) -> int:
    """half-up(deposit × share) in exact integers (half away from zero below 0)."""
    x = deposit_fen * share
    sign = -1 if x < 0 else 1
    x = abs(x)
    return sign * int((x.numerator * 2 + x.denominator) // (2 * x.denominator))


def registry_scores(hospitals: pa.Table) -> list:
    """The registry's ``assessment_score`` per hospital (None where empty or without the column)."""
    if "assessment_score" not in hospitals.column_names:
        return [None] * hospitals.num_rows
    col = hospitals["assessment_score"]
    return [None if v is None or v != v else float(v) for v in col.to_pylist()]


def check_scores(hospitals: pa.Table, monthly: dict | None, hospital_files=()) -> None:
    """``deposit_release = "by_score"``: every hospital with a deposit to release (a monthly
    statement with ``deposit_fen`` > 0) must have an ``assessment_score`` in the registry."""
    if not monthly:
        return
    scores = dict(zip(hospitals["hospital_id"].to_pylist(), registry_scores(hospitals)))
    for (hid, pool), (_, dep) in sorted(monthly.items()):
        if dep and scores.get(hid) is None:
            file = hospital_files[0] if hospital_files else "hospitals"
            raise DataError(f"no assessment_score for hospital {hid}, which has a quality deposit to release "
                            f"([settlement] deposit_release = \"by_score\")", file=file,
                            column="assessment_score", value=hid)


def deposit_summary(statements: pa.Table) -> dict:
    """Σ deposit, released and forfeited (fen) of an annual clearing's statements."""
    dep = int(pc.sum(statements["deposit_fen"]).as_py() or 0)
    rel = int(pc.sum(statements["deposit_release_fen"]).as_py() or 0)
    return {"deposit_fen": dep, "released_fen": rel, "forfeited_fen": dep - rel}
