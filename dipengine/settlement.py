"""Point values and settlement: monthly pre-settlement and annual clearing (dip-rules §5, §7).

:func:`settle` reads and groups the cases, scores them (:mod:`dipengine.scoring`) and hands over
to :func:`settle_scored`, which works on already scored tables (and is what the tests drive by
hand). Money is int64 fen; case points are exact integers of 1/10,000 point; each amount takes
one half-up rounding step, and in a floating-value annual run the hospital standards of a pool
are reconciled to the pool's total-cost budget by largest remainder. See ``docs/settlement.md``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine._libs.scoring import count_by_label, sum_by_label
from dipengine.clearing import (
    ClearingInputs, deposit_summary, registry_scores, release_share, released_fen, split_whole,
)
from dipengine.errors import DataError
from dipengine.special_review import SPECIAL_REVIEW_SCHEMA, candidate_rows, found_rows, rank_within_quota
from dipengine.io import atomic_dir, read_table, row_groups, write_batches, write_table
from dipengine.money import largest_remainder, round_half_up
from dipengine.policy import POOLS, Policy
from dipengine.scoring import SCORED_PATHS, _as_table, _codes, _np

MONEY_CASE_COLUMNS = ("standard_fen", "patient_paid_fen", "other_fund_paid_fen", "fund_due_fen", "fund_paid_fen")
MONEY_HOSPITAL_COLUMNS = ("standard_fen", "patient_paid_fen", "other_fund_paid_fen", "fund_due_fen",
                          "fund_due_assessed_fen",
                          "recorded_fen", "clearing_fen", "monthly_paid_fen", "deposit_fen", "final_fen")
# Columns of the normalised case table (docs/architecture.md); anything else is carried through.
NORMALISED_COLUMNS = frozenset((
    "case_id", "hospital_id", "patient_id", "insurance_type", "person_type", "insured_region",
    "remote_filing", "sex", "age", "age_days", "los", "admit_date", "discharge_date",
    "discharge_mode", "main_dx", "main_proc", "other_dx", "other_procs", "total_cost_fen",
    "fund_paid_fen", "patient_paid_fen", "out_of_catalogue_cost_fen", "class_b_cost_fen",
    "other_fund_paid_fen", "reason", "reason_detail",
))

BENEFIT_CASE_COLUMNS = ("paid_source", "fund_benefit_fen", "fund_diff_fen", "benefit_note")
"""Case columns of the estimate mode (:func:`apply_benefits`), after ``fund_paid_fen``."""
PAID_SOURCES = ("recorded", "estimated", "none")

HOSPITAL_SCHEMA = pa.schema([
    ("hospital_id", pa.string()), ("pool", pa.string()), ("level", pa.int8()),
    ("n_cases", pa.int64()), ("points", pa.float64()), ("points_e4", pa.int64()),
    ("standard_fen", pa.int64()), ("patient_paid_fen", pa.int64()), ("other_fund_paid_fen", pa.int64()),
    ("fund_due_fen", pa.int64()),
    ("assessment_coef", pa.float64()), ("fund_due_assessed_fen", pa.int64()),
    ("recorded_fen", pa.int64()), ("ratio_R", pa.float64()), ("band", pa.string()),
    ("clearing_fen", pa.int64()), ("monthly_paid_fen", pa.int64()), ("deposit_fen", pa.int64()),
    ("final_fen", pa.int64()), ("n_rejected", pa.int64()), ("n_out_of_pool", pa.int64()),
])
CLEARING_MONEY_COLUMNS = ("deduction_fen", "fund_due_net_fen", "deposit_release_fen", "prepayment_fen")
"""Money columns the clearing workflow adds to the annual statements (:func:`statement_schema`)."""


REVIEW_STATEMENT_COLUMNS = ("n_special_review", "n_review_approved", "review_amount_fen")
"""Statement columns of an annual clearing with special-review decisions (``--reviewed``)."""


def statement_schema(*, deductions: bool = False, release: bool = False, prepayments: bool = False,
                     reviewed: bool = False) -> pa.Schema:
    """The hospital statements' schema: :data:`HOSPITAL_SCHEMA`, plus the clearing workflow's
    columns of an annual run that has them (docs/settlement.md "Clearing workflow"):
    ``deduction_fen``, ``fund_due_net_fen`` after ``fund_due_assessed_fen`` (audit deductions);
    ``assessment_score``, ``deposit_release_fen`` after ``deposit_fen`` (``deposit_release =
    "by_score"``); ``prepayment_fen`` before ``final_fen`` (prepayments); with special-review
    decisions, :data:`REVIEW_STATEMENT_COLUMNS` after ``points_e4``."""
    fields = []
    for f in HOSPITAL_SCHEMA:
        if f.name == "final_fen" and prepayments:
            fields.append(pa.field("prepayment_fen", pa.int64()))
        fields.append(f)
        if f.name == "fund_due_assessed_fen" and deductions:
            fields += [pa.field("deduction_fen", pa.int64()), pa.field("fund_due_net_fen", pa.int64())]
        if f.name == "deposit_fen" and release:
            fields += [pa.field("assessment_score", pa.float64()), pa.field("deposit_release_fen", pa.int64())]
        if f.name == "points_e4" and reviewed:
            fields += [pa.field(c, pa.int64()) for c in REVIEW_STATEMENT_COLUMNS]
    return pa.schema(fields)


def _per_statement(amounts, hid: str, rows: list) -> list:
    """What ``amounts`` (prepayments or deductions) gives each of a hospital's statements
    ``rows`` (int fen, in row order): the rows naming its pool, plus its whole-hospital rows
    split over its statements (:func:`dipengine.clearing.split_whole`)."""
    if amounts is None:
        return [0] * len(rows)
    out = [amounts.by_pool.get((hid, r["pool"]), 0) for r in rows]
    whole = amounts.whole.get(hid, 0)
    if whole:
        if not rows:
            raise DataError(f"hospital {hid} has no statement in this clearing (no case, no monthly payment): "
                            "name the pool of its amount", file=amounts.file or amounts.kind,
                            row=amounts.first_row.get(hid), column="pool", value=hid)
        parts = split_whole(whole, [r["recorded_fen"] for r in rows], [r["n_cases"] for r in rows])
        out = [a + b for a, b in zip(out, parts)]
    return out


def parse_period(period) -> tuple[str, int, int | None]:
    """``"YYYY"`` -> ``("annual", year, None)``; ``"YYYY-MM"`` -> ``("monthly", year, month)``."""
    m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", str(period).strip())
    if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 12):
        raise DataError("period must be YYYY (annual clearing) or YYYY-MM (monthly)", column="period",
                        value=str(period))
    year = int(m.group(1))
    return ("monthly", year, int(m.group(2))) if m.group(2) else ("annual", year, None)


def _dec(x) -> Decimal:
    return Decimal(x) if isinstance(x, int) else Decimal(repr(float(x)))


def _half_up(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def total_cost_budget_fen(method: str, fund_available_fen: int, patient_paid_fen: int,
                          fund_paid_fen: int, total_cost_fen: int, other_fund_paid_fen: int = 0) -> int:
    """A pool's budget in total-cost terms (fen), dip-rules §5.3.

    ``fund_plus_personal``: fund available + personal payments + other funds' payments (大额,
    大病, 公务员补助, 医疗救助, ...) of the pool's cases: the payment standard covers the whole
    bill (standard = pooled-fund due + patient + other funds), so everything the pooled fund
    does not pay is added to its budget. ``fund_over_share``: fund available / (Σ pooled fund
    paid / Σ total cost), half up, in exact integers (the other funds are in the total cost).
    """
    if method == "fund_plus_personal":
        return int(fund_available_fen) + int(patient_paid_fen) + int(other_fund_paid_fen)
    if fund_paid_fen <= 0:
        raise DataError("fund_over_share needs recorded fund payments in the pool, found none",
                        column="fund_paid")
    num, den = int(fund_available_fen) * int(total_cost_fen), int(fund_paid_fen)
    return (2 * num + den) // (2 * den)


def point_value_fen(total_cost_budget: int, points_e4: int) -> float:
    """Settlement point value in fen per point: budget (fen) / Σ points (from 1/10,000 units)."""
    if points_e4 <= 0:
        return float("nan")
    return total_cost_budget * 10000.0 / points_e4


def clearing_amount(due_assessed_fen: int, recorded_fen: int, bands) -> tuple[int, float | None, str | None]:
    """The band rule of contract §5 for one hospital and pool.

    Returns ``(clearing_fen, R, band rule)``; ``R = recorded / due'``. When ``due' <= 0`` and
    nothing was recorded, R is undefined and the clearing is ``due'`` (band ``None``).
    ``due_assessed_fen`` is the banded due: ``fund_due_net_fen`` (due' less the audit
    deductions) when the clearing has deductions. Rule ``retain_share_of_due`` (an extension)
    pays recorded + share × due'.
    """
    due, rec = int(due_assessed_fen), int(recorded_fen)
    if due > 0:
        ratio = rec / due
        r_dec = Decimal(rec) / Decimal(due)
    elif rec > 0:
        ratio, r_dec = float("inf"), None
    else:
        return due, None, None
    band = bands[-1]
    for b in bands:
        if b.upper is None or (r_dec is not None and r_dec <= _dec(b.upper)):
            band = b
            break
    D, Rc = Decimal(due), Decimal(rec)
    if band.rule == "partial_retention":
        amount = Rc + _dec(band.share) * (D - Rc)
    elif band.rule == "pay_due":
        amount = D
    elif band.rule == "share_overspend":
        amount = D + _dec(band.fund_share) * (Rc - D)
    elif band.rule == "retain_share_of_due":  # surplus kept up to share × due'
        amount = Rc + _dec(band.share) * D
    else:  # cap
        amount = D + _dec(band.fund_share) * _dec(band.cap_over) * D
    return _half_up(amount), ratio, band.rule


def monthly_payment(standard_fen: int, patient_paid_fen: int, recorded_fen: int,
                    policy: Policy, *, other_fund_paid_fen: int = 0) -> tuple[int, int]:
    """Monthly pre-settlement of one hospital and pool: ``(paid_fen, deposit_fen)``.

    ``points``: gross = standard − patient payments − other funds' payments (dip-rules §7.2);
    the quality deposit (half up, only on a positive gross) is withheld. ``recorded_advance``:
    recorded × advance rate is paid and the rest of the recorded amount is held for the clearing.
    """
    if policy.monthly_method == "points":
        gross = int(standard_fen) - int(patient_paid_fen) - int(other_fund_paid_fen)
        deposit = _half_up(Decimal(gross) * _dec(policy.quality_deposit)) if gross > 0 else 0
        return gross - deposit, deposit
    paid = _half_up(Decimal(int(recorded_fen)) * _dec(policy.monthly_advance_rate))
    return paid, int(recorded_fen) - paid


def read_monthly(dirs, year: int) -> dict:
    """Sum the monthly statements of ``year``: ``{(hospital_id, pool): (paid_fen, deposit_fen)}``.

    Each directory is a monthly ``settle --out``; its ``manifest.json`` must name a month of
    ``year`` and no month may appear twice.
    """
    sums: dict = {}
    seen = {}
    for d in dirs:
        d = Path(d)
        mpath = d / "manifest.json"
        if not mpath.exists():
            raise DataError("not a settlement output (manifest.json missing)", file=d)
        try:
            period = json.loads(mpath.read_text(encoding="utf-8")).get("period")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"malformed JSON ({e})", file=mpath) from None
        kind, y, m = parse_period(period) if period else ("?", None, None)
        if kind != "monthly" or y != year:
            raise DataError(f"not a monthly statement of {year}", file=mpath, column="period", value=period)
        if period in seen:
            raise DataError(f"month given twice (also in {seen[period]})", file=mpath, column="period",
                            value=period)
        seen[period] = str(d)
        t = read_table(d / "hospitals.parquet") if (d / "hospitals.parquet").exists() else None
        if t is None:
            raise DataError("monthly statement missing", file=d / "hospitals.parquet")
        for col in ("hospital_id", "pool", "monthly_paid_fen", "deposit_fen"):
            if col not in t.column_names:
                raise DataError("required column missing", file=d / "hospitals.parquet", column=col)
        for r in t.select(["hospital_id", "pool", "monthly_paid_fen", "deposit_fen"]).to_pylist():
            key = (r["hospital_id"], r["pool"])
            paid, dep = sums.get(key, (0, 0))
            sums[key] = (paid + (r["monthly_paid_fen"] or 0), dep + (r["deposit_fen"] or 0))
    return sums


@dataclass
class SettlementResult:
    """Case results (contract §6.2), hospital statements (§6.3) and the manifest (§6.4)."""

    cases: pa.Table
    hospitals: pa.Table
    manifest: dict
    special_review: pa.Table = None

    def write(self, out_dir) -> Path:
        """Write ``cases.parquet``, ``hospitals.parquet``, ``hospitals.csv``,
        ``special_review.parquet``, ``manifest.json`` into ``out_dir`` atomically (the whole directory appears at once, or not at all), byte
        for byte as :func:`dipengine.pipeline.settle_to` writes them."""
        if self.cases is None:
            raise ValueError("the case results of this run were written by settle_to, not kept")
        cases = self.cases
        return write_result(out_dir, [cases] if cases.num_rows else [], self.hospitals, lambda: self.manifest,
                            total_rows=lambda: cases.num_rows, empty=lambda: cases,
                            special_review=self.special_review)


def write_result(out_dir, case_tables, hospitals, manifest_fn, *, total_rows=None, empty=None,
                 special_review=None) -> Path:
    """Write a settlement output directory atomically.

    ``cases.parquet`` from ``case_tables`` (an iterable of tables in row order, or a callable
    taking the temporary directory and returning one), cut into row groups at fixed row numbers
    (:func:`dipengine.io.row_groups`, ``total_rows()`` the run's row count when known), so the
    bytes depend on the rows only; then ``hospitals.parquet``, ``hospitals.csv`` (``hospitals``:
    the statements, or a callable giving them once the cases are written),
    ``special_review.parquet`` (``special_review``: a table or a callable; None: no flagged case)
    and ``manifest.json`` (``manifest_fn()``, called last). ``empty()``: the empty case table when
    there are no rows.
    """
    import itertools

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        tables = case_tables(tmp) if callable(case_tables) else case_tables
        it = iter(tables)
        first = next(it, None)
        if first is None:
            write_table(empty(), tmp / "cases.parquet")
        else:
            write_batches(row_groups(itertools.chain([first], it), total=total_rows or (lambda: None)),
                          tmp / "cases.parquet", first.schema, use_dictionary=dictionary_columns(first.schema))
        statements = hospitals() if callable(hospitals) else hospitals
        review = special_review() if callable(special_review) else special_review
        manifest = manifest_fn()
        write_table(statements, tmp / "hospitals.parquet")
        write_table(statements, tmp / "hospitals.csv")
        write_table(SPECIAL_REVIEW_SCHEMA.empty_table() if review is None else review,
                    tmp / "special_review.parquet")
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


PLAIN_COLUMNS = frozenset(("case_id", "ratio", "case_points", "points_e4"))
"""Case-result columns written without a Parquet dictionary, as are all money columns (``*_fen``):
nearly one value per case, so a dictionary is built and then dropped for plain encoding (a
third of the writing time of ``cases.parquet``)."""


def dictionary_columns(schema: pa.Schema) -> list:
    """Columns of a case-result schema that Parquet dictionary-encodes (codes, names, flags,
    coefficients and extra input columns): all but :data:`PLAIN_COLUMNS` and ``*_fen``."""
    return [n for n in schema.names if n not in PLAIN_COLUMNS and not n.endswith("_fen")]


LABEL_SUMS = ("units", "patient", "other", "fund", "total", "n", "rejected", "out", "flagged", "approved",
              "review_amount")
"""Per hospital and pool sums of :class:`Totals` (int64): points (1/10,000), patient, other funds,
recorded fund and total cost (fen) and cases of the in-pool rows; rejected and out-of-pool rows;
in-pool cases flagged for special review, approved by it, and the amounts it approved (fen)."""
COUNTED = ("match_path", "deviation", "reason", "locality")
CASE_SUMS = ("patient_paid_fen", "other_fund_paid_fen", "fund_paid_fen", "fund_benefit_fen", "fund_diff_fen")


def _merge_counts(into: dict, col) -> None:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    for d in pc.value_counts(col).to_pylist():
        key = "(none)" if d["values"] is None else str(d["values"])
        into[key] = into.get(key, 0) + d["counts"]


def _other_column(cases: pa.Table):
    """``other_fund_paid_fen`` of ``cases`` (all nulls when the column is absent)."""
    if "other_fund_paid_fen" in cases.column_names:
        return cases["other_fund_paid_fen"]
    return pa.nulls(cases.num_rows, pa.int64())


def _labels(scored: pa.Table, hosp_ids: pa.Array):
    """``(label, pool, in_pool, scored, ok)`` per row: label ``2 * hospital + pool`` (-1 when
    either is unknown, ``ok`` False), pool code (-1 unknown), in-pool and scored-path masks."""
    h = _codes(scored["hospital_id"], hosp_ids)
    pool = _codes(scored["pool"], pa.array(POOLS))
    in_pool = _np(scored["in_pool"], np.bool_, False)
    scored_mask = _np(pc.is_in(scored["match_path"], pa.array(SCORED_PATHS)), np.bool_, False)
    ok = (h >= 0) & (pool >= 0)
    return np.where(ok, h * 2 + pool, -1), pool, in_pool, scored_mask, ok


def payment_labels(scored: pa.Table, hosp_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(label, pool)`` (int32) under which :meth:`Totals.add_payments` sums a row's payments:
    its hospital × pool label and its pool code for in-pool rows, -1 for the others."""
    label, pool, in_pool, _, ok = _labels(scored, hosp_ids)
    return (np.where(in_pool & ok, label, -1).astype(np.int32), np.where(in_pool, pool, -1).astype(np.int32))


class Totals:
    """Exact integer sums of the scored cases of a run, or of any part of it.

    What the point values and the statements need, accumulated batch by batch (:meth:`add`)
    and combined across batches, files or workers (:meth:`merge`): integer sums only, so the
    result never depends on how the cases were split (contract §8.3, §8.5). Per hospital and
    pool (label ``2 * hospital + pool``, hospitals in registry order), the arrays of
    :data:`LABEL_SUMS`; per run, case counts, value counts of :data:`COUNTED` columns and the
    case money sums of :data:`CASE_SUMS` (fen).
    """

    def __init__(self, n_hospitals: int, benefits: bool = False):
        self.n_hospitals = int(n_hospitals)
        self.labels = {k: np.zeros(2 * self.n_hospitals, dtype=np.int64) for k in LABEL_SUMS}
        self.cases = self.in_pool = self.special_review = self.without_statement = 0
        self.benefits = bool(benefits)
        self.counts = {k: {} for k in COUNTED + (("paid_source",) if benefits else ())}
        self.case_sums = {k: 0 for k in CASE_SUMS}
        self.n_paid_estimated = np.zeros(len(POOLS), dtype=np.int64)
        self.reviewed = False               # a batch carried special-review decisions
        self.review_counts: dict = {}       # review kind -> cases
        self.candidates: list = []          # flagged in-pool rows (special_review.candidate_rows)
        self.review_found: list = []        # rows carrying a decision (special_review.found_rows)

    def add(self, scored: pa.Table, cases: pa.Table, hosp_ids: pa.Array, *, payments: bool = True) -> "Totals":
        """Add the rows of a scored batch (``case_points`` output) and its normalised cases.

        ``payments=False`` leaves out what the estimate mode decides later (patient and fund
        payments, ``paid_source``): :meth:`add_payments` adds them, e.g. per benefit partition.
        """
        n_labels = 2 * self.n_hospitals
        if len(hosp_ids) != self.n_hospitals:
            raise ValueError(f"{len(hosp_ids)} hospitals, Totals was made for {self.n_hospitals}")
        label, pool, in_pool, scored_mask, ok = _labels(scored, hosp_ids)
        other_col = _other_column(cases)
        values = {
            "units": _np(scored["points_e4"], np.int64, 0),
            "other": _np(other_col, np.int64, 0),  # other funds (大额, 大病, 公务员补助, 医疗救助): null = 0
            "total": _np(cases["total_cost_fen"], np.int64, 0),
        }
        base = np.where(ok, label, -1).astype(np.int32)
        flagged = in_pool & _np(scored["special_review"], np.bool_, False)
        sums = [("units", in_pool, values["units"]), ("other", in_pool, values["other"]),
                ("total", in_pool, values["total"]), ("n", in_pool, None), ("rejected", ~scored_mask, None),
                ("out", scored_mask & ~in_pool, None), ("flagged", flagged, None)]
        if "review" in scored.column_names:  # special-review decisions (special_review.Reviewed.apply)
            self.reviewed = True
            approved = _np(pc.is_in(scored["review"], pa.array(["approved_points", "approved_amount"])),
                           np.bool_, False)
            sums += [("approved", in_pool & approved, None),
                     ("review_amount", in_pool, _np(scored["review_amount_fen"], np.int64, 0))]
            _merge_counts(self.review_counts, pc.drop_null(scored["review"]))
            self.review_found.append(found_rows(scored))
        for key, mask, vals in sums:
            self._label_sum(key, np.where(mask, base, -1).astype(np.int32), vals, n_labels)
        part = candidate_rows(scored, cases)
        if part is not None:
            self.candidates.append(part)
        self.cases += scored.num_rows
        self.in_pool += int(in_pool.sum())
        self.special_review += int(_np(scored["special_review"], np.bool_, False).sum())
        self.without_statement += int((~ok).sum())
        for k in COUNTED:
            _merge_counts(self.counts[k], scored[k])
        self.case_sums["other_fund_paid_fen"] += int(pc.sum(other_col).as_py() or 0)
        if payments:
            self.add_payments(cases, *payment_labels(scored, hosp_ids))
        return self

    def _label_sum(self, key, lab: np.ndarray, vals, n_labels: int) -> None:
        out = np.zeros(n_labels, dtype=np.int64)
        if vals is None:
            count_by_label(lab, out)
        else:
            sum_by_label(lab, np.ascontiguousarray(vals, dtype=np.int64), out)
        self.labels[key] += out

    def add_payments(self, cases: pa.Table, label: np.ndarray, pool: np.ndarray) -> "Totals":
        """Add the payments of rows whose other sums :meth:`add` took with ``payments=False``.

        ``cases``: ``patient_paid_fen`` and ``fund_paid_fen`` (and, in estimate mode,
        ``paid_source``, ``fund_benefit_fen``, ``fund_diff_fen``) of the rows; ``label`` and
        ``pool`` (int32): :func:`payment_labels` of the same rows, in any order or split.
        """
        n_labels = 2 * self.n_hospitals
        label = np.ascontiguousarray(label, dtype=np.int32)
        if len(label) != cases.num_rows or len(pool) != cases.num_rows:
            raise ValueError(f"add_payments: {cases.num_rows} rows but {len(label)} labels and {len(pool)} pools")
        if len(label) and (label.max() >= n_labels or label.min() < -1):
            raise ValueError(f"add_payments: labels must lie in [-1, {n_labels})")
        self._label_sum("patient", label, _np(cases["patient_paid_fen"], np.int64, 0), n_labels)
        self._label_sum("fund", label, _np(cases["fund_paid_fen"], np.int64, 0), n_labels)
        names = ["patient_paid_fen", "fund_paid_fen"]
        if self.benefits:
            _merge_counts(self.counts["paid_source"], cases["paid_source"])
            names += ["fund_benefit_fen", "fund_diff_fen"]
            estimated = _np(pc.equal(cases["paid_source"], "estimated"), np.bool_, False)
            for pi in range(len(POOLS)):
                self.n_paid_estimated[pi] += int(((pool == pi) & estimated).sum())
        for c in names:
            self.case_sums[c] += int(pc.sum(cases[c]).as_py() or 0)
        return self

    def merge(self, other: "Totals") -> "Totals":
        """Add ``other`` (of the same registry) into this one; returns self."""
        if other.n_hospitals != self.n_hospitals or other.benefits != self.benefits:
            raise ValueError("Totals of different registries or modes cannot be merged")
        for k in LABEL_SUMS:
            self.labels[k] += other.labels[k]
        for k in ("cases", "in_pool", "special_review", "without_statement"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, d in other.counts.items():
            mine = self.counts[k]
            for value, c in d.items():
                mine[value] = mine.get(value, 0) + c
        for k, v in other.case_sums.items():
            self.case_sums[k] += v
        self.n_paid_estimated += other.n_paid_estimated
        self.reviewed = self.reviewed or other.reviewed
        for value, c in other.review_counts.items():
            self.review_counts[value] = self.review_counts.get(value, 0) + c
        self.candidates.extend(other.candidates)
        self.review_found.extend(other.review_found)
        return self


@dataclass
class PointValues:
    """What :func:`finish` decides for a run: the point value per pool and the statements.

    ``case_value_fen`` : float64[2], fen per point applied to each pool's cases (0 when none);
    ``pools`` : the manifest's per-pool entries; ``statements`` : the hospital table (§6.3);
    ``clearing`` : the manifest's ``clearing`` entry (prepayments, deductions, deposit release),
    None when the run has none of them; ``special_review`` : the flagged in-pool cases ranked
    within their hospitals' quotas (``special_review.parquet``).
    """

    case_value_fen: np.ndarray
    pools: dict
    statements: pa.Table
    h_standard: np.ndarray
    clearing: dict | None = None
    special_review: pa.Table = None


def finish(totals: Totals, hospitals: pa.Table, policy: Policy, period, *, monthly: dict | None = None,
           clearing: ClearingInputs | None = None) -> PointValues:
    """Point values (dip-rules §5) and hospital statements (§7) from a run's exact totals.

    Monthly: the budget point value. Annual: the settlement point value of each pool from its
    total-cost budget and Σ points (clamped to the policy's band when it has one); when it
    floats, the hospital standards are reconciled to the budget by largest remainder.
    ``monthly``: ``{(hospital_id, pool): (paid_fen, deposit_fen)}`` (:func:`read_monthly`).
    ``clearing``: the annual clearing's prepayments and audit deductions
    (:func:`dipengine.clearing.read_clearing_inputs`); with the policy's ``deposit_release``
    they add the statement columns of :func:`statement_schema` (docs/settlement.md "Clearing
    workflow"). Without them (and with ``deposit_release = "full"``) the statements are as before.
    """
    kind, year, _ = parse_period(period)
    if kind == "monthly" and clearing is not None:
        raise DataError("prepayments and audit deductions apply to the annual clearing (period YYYY) only",
                        column="period", value=str(period))
    hosp_ids = hospitals["hospital_id"].combine_chunks()
    n_labels = 2 * len(hosp_ids)
    if totals.n_hospitals != len(hosp_ids):
        raise ValueError(f"totals of {totals.n_hospitals} hospitals, registry of {len(hosp_ids)}")
    L = totals.labels
    h_units, h_patient, h_other, h_fund, h_total, h_n = (L[k] for k in ("units", "patient", "other", "fund",
                                                                       "total", "n"))
    h_rejected, h_out = L["rejected"], L["out"]
    h_review = L["review_amount"]  # special review: approved amounts paid per item, outside the points
    if totals.reviewed and kind == "monthly":
        raise DataError("special-review decisions apply to the annual clearing (period YYYY) only",
                        column="period", value=str(period))
    bv_fen = {p: None if policy.budget_value[p] is None else policy.budget_value[p] * 100.0 for p in POOLS}
    if kind == "monthly" or policy.band is not None:
        policy.require_budget_value("a monthly pre-settlement" if kind == "monthly" else "the point value band")
    pool_info = {}
    pv_case = np.zeros(2, dtype=np.float64)
    h_standard = np.zeros(n_labels, dtype=np.int64)
    rank = np.argsort(np.argsort(np.asarray(hosp_ids.to_pylist(), dtype=object), kind="stable"))
    for pi, p in enumerate(POOLS):
        sl = slice(pi, n_labels, 2)
        U = int(h_units[sl].sum())
        P, Fp, C = int(h_patient[sl].sum()), int(h_fund[sl].sum()), int(h_total[sl].sum())
        O = int(h_other[sl].sum())
        A = int(h_review[sl].sum())
        info = {"budget_value_yuan": policy.budget_value[p], "points": U / 10000.0, "points_e4": U,
                "patient_paid_fen": P, "other_fund_paid_fen": O, "recorded_fen": Fp, "total_cost_fen": C,
                "n_cases": int(h_n[sl].sum())}
        if totals.reviewed:
            info["review_amount_fen"] = A
        floating = False
        if kind == "monthly":
            pv = bv_fen[p]
            info.update(point_value_used="budget")
        else:
            F = policy.fund_available_fen(p)
            info.update(fund_budget_fen=policy.budget_fen[p], fund_available_fen=F,
                        settlement_method=policy.settlement_method)
            if U > 0:
                T = total_cost_budget_fen(policy.settlement_method, F, P, Fp, C, O)
                # approved special-review amounts are paid out of the same budget, per item
                raw = point_value_fen(T - A, U)
                pv = raw
                clamped = False
                if policy.band is not None:
                    lo, hi = policy.band[0] * bv_fen[p], policy.band[1] * bv_fen[p]
                    if raw < lo or raw > hi:
                        pv, clamped = min(max(raw, lo), hi), True
                floating = not clamped
                info.update(total_cost_budget_fen=T, settlement_value_raw_yuan=raw / 100.0,
                            clamped=clamped, point_value_used="settlement")
                if totals.reviewed:
                    info["points_budget_fen"] = T - A
            else:
                pv = float("nan")
                info.update(total_cost_budget_fen=None, settlement_value_raw_yuan=None, clamped=False,
                            point_value_used="none (no points in the pool)")
        info["point_value_yuan"] = None if np.isnan(pv) else pv / 100.0
        info["reconciled_to_budget"] = floating
        pv_case[pi] = 0.0 if np.isnan(pv) else pv
        if floating:
            h_standard[sl] = largest_remainder(h_units[sl].astype(np.float64), info["total_cost_budget_fen"] - A,
                                               keys=rank)
        elif not np.isnan(pv):
            h_standard[sl] = round_half_up(h_units[sl] * pv / 10000.0)
        h_standard[sl] += h_review[sl]
        if totals.benefits:
            info["n_paid_estimated"] = int(totals.n_paid_estimated[pi])
        info["hospital_standard_fen"] = int(h_standard[sl].sum())
        pool_info[p] = info

    # statements: the pooled fund's due is what the patients and the other funds did not pay
    h_due = h_standard - h_patient - h_other
    assess = _np(hospitals["assessment_coef"], np.float64, 1.0)
    h_level = _np(hospitals["level"], np.int8, 0)
    monthly = monthly or {}
    annual = kind == "annual"
    deductions = clearing.deductions if annual and clearing is not None else None
    prepayments = clearing.prepayments if annual and clearing is not None else None
    by_score = annual and policy.deposit_release == "by_score"
    scores = registry_scores(hospitals) if by_score else None
    # a pool a prepayment or deduction names gets a statement even without a case in it
    listed = {k for a in (deductions, prepayments) if a is not None for k, fen in a.by_pool.items() if fen}
    order = np.argsort(np.asarray(hosp_ids.to_pylist(), dtype=object), kind="stable")
    rows = []
    known = set()
    for hi_ in order:
        hid = hosp_ids[int(hi_)].as_py()
        mine = []
        for pi, p in enumerate(POOLS):
            lab = int(hi_) * 2 + pi
            if not (h_n[lab] or h_rejected[lab] or h_out[lab] or (hid, p) in monthly or (hid, p) in listed):
                continue
            known.add((hid, p))
            mine.append(dict(hospital_id=hid, pool=p, level=int(h_level[hi_]), n_cases=int(h_n[lab]),
                             points=h_units[lab] / 10000.0, points_e4=int(h_units[lab]),
                             standard_fen=int(h_standard[lab]), patient_paid_fen=int(h_patient[lab]),
                             other_fund_paid_fen=int(h_other[lab]), fund_due_fen=int(h_due[lab]),
                             assessment_coef=float(assess[hi_]),
                             recorded_fen=int(h_fund[lab]), n_rejected=int(h_rejected[lab]),
                             n_out_of_pool=int(h_out[lab]), n_special_review=int(L["flagged"][lab]),
                             n_review_approved=int(L["approved"][lab]), review_amount_fen=int(h_review[lab])))
        if kind == "monthly":
            for row in mine:
                paid, dep = monthly_payment(row["standard_fen"], row["patient_paid_fen"],
                                            row["recorded_fen"], policy,
                                            other_fund_paid_fen=row["other_fund_paid_fen"])
                row.update(fund_due_assessed_fen=None, ratio_R=None, band=None, clearing_fen=None,
                           monthly_paid_fen=paid, deposit_fen=dep, final_fen=paid)
            rows.extend(mine)
            continue
        ded = _per_statement(deductions, hid, mine)
        pre = _per_statement(prepayments, hid, mine)
        for row, ded_fen, pre_fen in zip(mine, ded, pre):
            m_paid, m_dep = monthly.get((hid, row["pool"]), (0, 0))
            due_a = _half_up(Decimal(row["fund_due_fen"]) * _dec(row["assessment_coef"]))
            due_net = due_a - ded_fen  # audit deductions come off due' before the bands (dip-rules §7.4)
            clearing_fen, ratio, band = clearing_amount(due_net, row["recorded_fen"], policy.bands)
            release = int(m_dep)
            if by_score:
                score = scores[int(hi_)]
                if score is None and m_dep:
                    raise DataError(f"no assessment_score for hospital {hid}, which has a quality deposit to "
                                    'release ([settlement] deposit_release = "by_score")', file="hospitals",
                                    column="assessment_score", value=hid)
                row["assessment_score"] = score
                release = 0 if not m_dep else released_fen(int(m_dep),
                                                           release_share(score, policy.deposit_release_scores))
                row["deposit_release_fen"] = release
            if deductions is not None:
                row.update(deduction_fen=ded_fen, fund_due_net_fen=due_net)
            if prepayments is not None:
                row["prepayment_fen"] = pre_fen
            # final = clearing − Σ monthly gross + deposit release − prepayment offset (dip-rules §7.3)
            row.update(fund_due_assessed_fen=due_a, ratio_R=ratio, band=band, clearing_fen=clearing_fen,
                       monthly_paid_fen=int(m_paid), deposit_fen=int(m_dep),
                       final_fen=clearing_fen - int(m_paid) - (int(m_dep) - release) - pre_fen)
        rows.extend(mine)
    unknown_monthly = sorted(k for k in monthly if k not in known)
    if unknown_monthly:
        raise DataError("monthly statement names a hospital/pool not in the registry",
                        column="hospital_id", value=f"{unknown_monthly[0][0]}/{unknown_monthly[0][1]}")
    schema = statement_schema(deductions=deductions is not None, release=by_score,
                              prepayments=prepayments is not None, reviewed=totals.reviewed)
    statements = pa.Table.from_pylist(rows, schema=schema)
    info = None
    if annual and (deductions is not None or prepayments is not None or by_score):
        info = {a.kind: a.summary() for a in (prepayments, deductions) if a is not None}
        if by_score:
            info["deposit_release"] = {"rule": "by_score", "scores": list(policy.deposit_release_scores),
                                       **deposit_summary(statements)}
    in_pool_cases = {}
    for hi_, hid in enumerate(hosp_ids.to_pylist()):
        in_pool_cases[hid] = int(h_n[2 * hi_] + h_n[2 * hi_ + 1])
    review = rank_within_quota(totals.candidates, in_pool_cases, policy.review_quota)
    return PointValues(case_value_fen=pv_case, pools=pool_info, statements=statements, h_standard=h_standard,
                       clearing=info, special_review=review)


def case_table(scored: pa.Table, cases: pa.Table) -> pa.Table:
    """The case results of a batch without their two money columns (see :func:`add_case_money`).

    Columns: the scored columns, ``patient_paid_fen``, ``other_fund_paid_fen``,
    ``fund_paid_fen``, the estimate-mode columns when present, then the extra input columns.
    """
    cols = {name: scored[name] for name in scored.column_names}
    cols["patient_paid_fen"] = cases["patient_paid_fen"]
    cols["other_fund_paid_fen"] = _other_column(cases)
    cols["fund_paid_fen"] = cases["fund_paid_fen"]
    if "paid_source" in cases.column_names:
        for name in BENEFIT_CASE_COLUMNS:
            cols[name] = cases[name]
    for name in cases.column_names:
        if name not in NORMALISED_COLUMNS and name not in cols:
            cols[name] = cases[name]
    return pa.table(cols)


def case_money(table: pa.Table, case_value_fen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(standard_fen, fund_due_fen)`` (int64) of each row of a :func:`case_table` batch.

    standard = case points × the pool's point value, half up (plus the approved amount of a case
    special review pays per item, ``review_amount_fen``); fund due = standard − patient
    payments − other funds' payments; both 0 off the pools.
    """
    pool = _codes(table["pool"], pa.array(POOLS))
    in_pool = _np(table["in_pool"], np.bool_, False)
    pe4 = _np(table["points_e4"], np.int64, 0)
    patient = _np(table["patient_paid_fen"], np.int64, 0)
    other = _np(table["other_fund_paid_fen"], np.int64, 0)
    pv_rows = np.where(in_pool, np.asarray(case_value_fen, dtype=np.float64)[np.where(pool >= 0, pool, 0)], 0.0)
    standard = np.where(in_pool, round_half_up(pe4 * pv_rows / 10000.0), 0).astype(np.int64)
    if "review_amount_fen" in table.column_names:
        standard += np.where(in_pool, _np(table["review_amount_fen"], np.int64, 0), 0)
    due = np.where(in_pool, standard - patient - other, 0).astype(np.int64)
    return standard, due


def add_case_money(table: pa.Table, case_value_fen: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """A :func:`case_table` batch with ``standard_fen`` and ``fund_due_fen`` in their places
    (contract §6.2), and the batch's Σ standard per pool (int64[2], in-pool rows)."""
    standard, due = case_money(table, case_value_fen)
    at = table.schema.get_field_index("patient_paid_fen")
    out = table.add_column(at, "standard_fen", pa.array(standard))
    out = out.add_column(out.schema.get_field_index("fund_paid_fen"), "fund_due_fen", pa.array(due))
    pool = _codes(table["pool"], pa.array(POOLS))
    per_pool = np.array([int(standard[pool == pi].sum()) for pi in range(len(POOLS))], dtype=np.int64)
    return out, per_pool


def manifest_of(totals: Totals, values: PointValues, policy: Policy, period, case_standard: np.ndarray,
                case_fund_due: int) -> dict:
    """The settlement manifest (contract §6.4) of a finished run (without its parameters and
    input hashes, which the drivers add). ``case_standard``: Σ case standard per pool (fen)."""
    kind, _, _ = parse_period(period)
    pool_info = {p: dict(info) for p, info in values.pools.items()}
    for pi, p in enumerate(POOLS):
        pool_info[p]["case_standard_fen"] = int(case_standard[pi])
        pool_info[p]["case_minus_hospital_standard_fen"] = (
            pool_info[p]["case_standard_fen"] - pool_info[p]["hospital_standard_fen"])
    case_sums = {"standard_fen": int(np.sum(case_standard)), "patient_paid_fen": totals.case_sums["patient_paid_fen"],
                 "other_fund_paid_fen": totals.case_sums["other_fund_paid_fen"], "fund_due_fen": int(case_fund_due),
                 "fund_paid_fen": totals.case_sums["fund_paid_fen"]}
    if totals.benefits:
        case_sums.update(fund_benefit_fen=totals.case_sums["fund_benefit_fen"],
                         fund_diff_fen=totals.case_sums["fund_diff_fen"])
    statements = values.statements
    counts = {
        "cases": totals.cases,
        "in_pool": totals.in_pool,
        "special_review": totals.special_review,
        "without_statement": totals.without_statement,
        **{k: dict(sorted(totals.counts[k].items())) for k in COUNTED},
    }
    if totals.benefits:
        counts["paid_source"] = dict(sorted(totals.counts["paid_source"].items()))
    out = {
        "engine": "dipengine",
        "version": _version(),
        "command": "settle",
        "period": str(period),
        "kind": kind,
        "policy": policy.as_dict(),
        "pools": pool_info,
        "total_points": sum(i["points_e4"] for i in pool_info.values()) / 10000.0,
        "sums": {
            "cases": case_sums,
            "hospitals": {c: int(pc.sum(statements[c]).as_py() or 0) for c in MONEY_HOSPITAL_COLUMNS
                          + CLEARING_MONEY_COLUMNS if c in statements.column_names},
        },
        "counts": counts,
        "sha256": {"policy": dict(policy.sha256)},
    }
    if values.clearing is not None:
        out["clearing"] = values.clearing
    out["special_review"] = special_review_summary(values.special_review, totals, policy)
    return out


def special_review_summary(review: pa.Table, totals: Totals, policy: Policy) -> dict:
    """The manifest's ``special_review`` entry: quota, flagged in-pool cases, how many fall
    within their hospitals' quotas, and (with decisions) the decisions and approved amounts."""
    within = int(pc.sum(review["within_quota"]).as_py() or 0) if review is not None and review.num_rows else 0
    n = 0 if review is None else review.num_rows
    over = 0
    if n:
        beyond = review.filter(pc.invert(review["within_quota"]))
        over = len(set(beyond["hospital_id"].to_pylist()))
    out = {"quota": policy.review_quota, "flagged": n, "within_quota": within, "beyond_quota": n - within,
           "hospitals_beyond_quota": over}
    if totals.reviewed:
        out["decisions"] = {k: int(totals.review_counts.get(k, 0))
                            for k in ("approved_points", "approved_amount", "rejected")}
        out["review_amount_fen"] = int(totals.labels["review_amount"].sum())
    return out


def settle_scored(scored: pa.Table, cases, hospitals: pa.Table, policy: Policy, period, *,
                  monthly: dict | None = None, clearing: ClearingInputs | None = None) -> SettlementResult:
    """Settle cases already scored by :func:`dipengine.scoring.case_points`, all in memory.

    The same steps as the streaming run (:mod:`dipengine.pipeline`) on one batch:
    :class:`Totals`, :func:`finish`, :func:`case_table` and :func:`add_case_money`.

    Parameters
    ----------
    scored : pa.Table
        Output of ``case_points`` (rows in input order).
    cases : pa.Table
        The normalised cases of the same rows (money columns ``*_fen``, extra columns). The
        other funds' payments ``other_fund_paid_fen`` (optional column; null = 0) are taken off
        the fund due with the patient payments: fund due = standard − patient − other funds.
    hospitals : pa.Table
        The registry.
    policy : Policy
    period : str
        ``YYYY-MM`` (monthly pre-settlement at the budget point value) or ``YYYY`` (annual
        clearing at the settlement point value).
    monthly : dict, optional
        ``{(hospital_id, pool): (paid_fen, deposit_fen)}`` from :func:`read_monthly` (annual only).
    clearing : ClearingInputs, optional
        Prepayments and audit deductions (:func:`dipengine.clearing.read_clearing_inputs`;
        annual only), as :func:`finish` applies them.
    """
    cases = _as_table(cases)
    hosp_ids = hospitals["hospital_id"].combine_chunks()
    totals = Totals(len(hosp_ids), benefits="paid_source" in cases.column_names).add(scored, cases, hosp_ids)
    values = finish(totals, hospitals, policy, period, monthly=monthly, clearing=clearing)
    table, per_pool = add_case_money(case_table(scored, cases), values.case_value_fen)
    due = int(pc.sum(table["fund_due_fen"]).as_py() or 0)
    manifest = manifest_of(totals, values, policy, period, per_pool, due)
    return SettlementResult(cases=table, hospitals=values.statements, manifest=manifest,
                            special_review=values.special_review)


def _version() -> str:
    from dipengine import __version__
    return __version__


def apply_benefits(cases: pa.Table, benefit_rules, hospitals: pa.Table) -> pa.Table:
    """Estimate mode: fill in missing payments with the computed benefits (dip-rules §8).

    :func:`dipengine.benefits.compute_benefits` gives each case's fund benefit and patient
    share. A case is ``recorded`` when it has both ``fund_paid_fen`` and ``patient_paid_fen``:
    they stay, and the difference to the computed benefit is reported. Otherwise, when a
    benefit rule applied, it is ``estimated``: ``patient_paid_fen`` becomes the computed
    patient share and ``fund_paid_fen`` (what the fund records) the computed fund benefit, so
    both add up to the total cost with the case's other funds. Otherwise (rejected, no rule,
    unknown hospital) it is ``none`` and keeps what it had (null payments count as 0, as
    without benefits). Recorded other funds (``other_fund_paid_fen``) are always kept: the
    computed patient share is already net of them (:func:`dipengine.benefits.compute_benefits`).

    Parameters
    ----------
    cases : pa.Table
        The normalised case table (``reader.read_cases``).
    benefit_rules : BenefitRules
        From :func:`dipengine.benefits.load_benefits`.
    hospitals : pa.Table
        The registry.

    Returns
    -------
    pa.Table
        ``cases`` with ``patient_paid_fen``/``fund_paid_fen`` filled in (int64 fen) and, before the
        extra input columns, ``paid_source`` (string), ``fund_benefit_fen`` (computed fund
        benefit, int64 fen; null on rejected rows), ``fund_diff_fen`` (recorded ``fund_paid_fen``
        minus the computed benefit; null where nothing was recorded) and ``benefit_note``.
        Admissions and caps are counted within ``cases`` only (``compute_benefits``).
    """
    from dipengine.benefits import compute_benefits

    cases = _as_table(cases)
    return merge_benefits(cases, compute_benefits(cases, benefit_rules, hospitals))


MERGED_BENEFITS = ("fund_benefit_fen", "patient_share_fen", "fund_diff_fen", "benefit_note")
"""The :func:`dipengine.benefits.compute_benefits` columns :func:`merge_benefits` reads."""


def merge_benefits(cases: pa.Table, ben: pa.Table) -> pa.Table:
    """:func:`apply_benefits` with the benefits of the same rows already computed (``ben``:
    :func:`dipengine.benefits.compute_benefits` columns, at least :data:`MERGED_BENEFITS`, e.g.
    read back from a spill)."""
    cases = _as_table(cases)
    if ben.num_rows != cases.num_rows:
        raise ValueError(f"{cases.num_rows} cases but {ben.num_rows} benefit rows")
    fund_rec = cases["fund_paid_fen"].combine_chunks()
    patient_rec = cases["patient_paid_fen"].combine_chunks()
    recorded = _np(pc.and_(pc.is_valid(fund_rec), pc.is_valid(patient_rec)), np.bool_, False)
    computed = _np(pc.and_(pc.is_valid(ben["fund_benefit_fen"]), pc.is_null(ben["benefit_note"])),
                   np.bool_, False)
    estimated = ~recorded & computed
    source = np.where(recorded, 0, np.where(estimated, 1, 2))
    est = pa.array(estimated)
    added = {
        "paid_source": pa.array(PAID_SOURCES, pa.string()).take(pa.array(source)),
        "fund_benefit_fen": ben["fund_benefit_fen"],
        "fund_diff_fen": ben["fund_diff_fen"],
        "benefit_note": ben["benefit_note"],
    }
    out = cases.drop([c for c in BENEFIT_CASE_COLUMNS if c in cases.column_names])
    out = out.set_column(out.schema.get_field_index("patient_paid_fen"), "patient_paid_fen",
                         pc.if_else(est, ben["patient_share_fen"], patient_rec))
    out = out.set_column(out.schema.get_field_index("fund_paid_fen"), "fund_paid_fen",
                         pc.if_else(est, ben["fund_benefit_fen"], fund_rec))
    at = max(out.schema.get_field_index(c) for c in NORMALISED_COLUMNS if c in out.column_names) + 1
    for name, values in added.items():
        out = out.add_column(at, name, values)
        at += 1
    return out


def resolve_benefits(benefits, policy: Policy):
    """The benefit tables a settlement uses: ``BenefitRules`` or None (estimate mode off).

    ``benefits``: None = the pricing dir's ``benefits.csv`` when it has one (else off); False =
    off; a path or list of paths (pricing dirs or CSV files) = those tables plus the pricing
    dir's own; a loaded ``BenefitRules`` as is.
    """
    from dipengine.benefits import BenefitRules, load_benefits

    if benefits is False:
        return None
    if isinstance(benefits, BenefitRules):
        return benefits
    extra = [] if benefits is None else [benefits] if isinstance(benefits, (str, Path)) else list(benefits)
    own = Path(policy.path) / "benefits.csv" if getattr(policy, "path", None) is not None else None
    dirs = [own] if own is not None and own.exists() else []
    for d in extra:  # the pricing dir itself may be among them: read each table once
        f = Path(d) / "benefits.csv" if Path(d).is_dir() else Path(d)
        if all(f.resolve() != Path(x).resolve() for x in dirs):
            dirs.append(f)
    return load_benefits(dirs) if dirs else None


def settle(cases, rules, policy, hospitals, period, **options) -> SettlementResult:
    """Read, group, score and settle a period in memory: :func:`dipengine.pipeline.settle`."""
    from dipengine.pipeline import settle as run

    return run(cases, rules, policy, hospitals, period, **options)
