"""The settlement run (contract §1 ``settle``): two passes over the cases, memory bounded by the batch.

Pass 1 reads, validates, groups and scores the cases batch by batch (worker threads, see
:func:`dipengine.reader.map_cases`), adds each batch to the run's exact integer
:class:`~dipengine.settlement.Totals` and spills its case rows (every result column but the two
money ones) to an Arrow IPC file beside the output. The point values are then computed once,
from the exact totals (:func:`~dipengine.settlement.finish`). Pass 2 reads the spill back batch
by batch, adds the case money (:func:`~dipengine.settlement.add_case_money`) and writes
``cases.parquet``. A monthly pre-settlement knows its point values before it starts (the
budget values), so without estimate mode it writes the case results in pass 1 and spills nothing.

Estimate mode reads the input once too: the pass-1 workers also compute each case's benefit terms
(:func:`dipengine.benefits.benefit_terms`), spilled by patient partition; between the passes each
partition's admissions are walked (:class:`dipengine.benefits.BenefitSpiller`) and its payments
added to the totals; pass 2 merges the payments back into the case rows.

Memory is bounded by the batch size, the hospitals and the groups, not by the cases. Every
total is an integer sum, so the outputs do not depend on the batch size, the file split, the
thread count or the engine (:mod:`dipengine.dask_engine` runs the same batch functions).

:func:`settle_to` writes an output directory; :func:`settle` returns the results in memory.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dipengine.errors import DataError
from dipengine.io import BATCH_SIZE, sha256_file, source_files
from dipengine.policy import POOLS, Policy, load_policy
from dipengine.settlement import (
    MERGED_BENEFITS, SettlementResult, Totals, add_case_money, case_table, finish, manifest_of, merge_benefits,
    parse_period, read_monthly, resolve_benefits, write_result,
)

__all__ = ["SettleRun", "prepare", "score_batch", "settle", "settle_to", "write_result"]

SPILL_NAME = ".cases.spill.arrows"
"""The pass-1 spill inside the output's temporary directory (removed before the output appears)."""
SPILL_COMPRESSION = "lz4"
"""Arrow IPC buffer compression of the spill: a fifth of the bytes on disk, read back at memory speed."""


@dataclass
class SettleRun:
    """Everything a settlement run decides before it reads a case (checked up front).

    A bad rule set, policy, registry or monthly statement raises :class:`DataError` here, before
    anything is written. The batch functions (:func:`score_batch`) need only this object, so it
    is what the Dask engine ships to its workers.
    """

    rules: object
    policy: Policy
    hospitals: pa.Table
    period: str
    kind: str
    year: int
    monthly: dict | None
    monthly_dirs: list
    benefit_rules: object
    warnings: list
    hospital_files: list
    clearing: object = None
    """:class:`dipengine.clearing.ClearingInputs` of an annual clearing (prepayments, audit
    deductions), or None."""
    reviewed: object = None
    """:class:`dipengine.special_review.Reviewed`: the special-review decisions of an annual
    clearing (``--reviewed``), or None."""
    hosp_ids: pa.Array = field(init=False)

    def __post_init__(self):
        self.hosp_ids = self.hospitals["hospital_id"].combine_chunks()

    @property
    def with_benefits(self) -> bool:
        return self.benefit_rules is not None

    def budget_values_fen(self) -> np.ndarray:
        """Fen per point of each pool at the budget point value (what a monthly run applies; 0 for
        a pool without one, which only an annual clearing may have)."""
        return np.array([(self.policy.budget_value[p] or 0.0) * 100.0 for p in POOLS], dtype=np.float64)

    def totals(self) -> Totals:
        """An empty :class:`Totals` for this run's registry."""
        return Totals(len(self.hosp_ids), benefits=self.with_benefits)


def prepare(rules, policy, hospitals, period, *, monthly=None, benefits=None,
            allow_out_of_period: bool = False, prepayments=None, deductions=None, reviewed=None) -> SettleRun:
    """Load and check what a run needs besides the cases (see :func:`settle` for the arguments)."""
    from dipengine.clearing import check_scores, read_clearing_inputs
    from dipengine.hospitals import read_hospitals
    from dipengine.rules import check_period, load_rules

    kind, year, _ = parse_period(period)
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    if policy.year != year:
        raise DataError(f"policy year {policy.year} does not match period {period}",
                        file=policy.path / "policy.toml", column="year", value=policy.year)
    if not hasattr(rules, "groups"):
        rules = load_rules(rules)
    warnings = []
    out_of_period = check_period(rules, period)
    if out_of_period is not None:
        if not allow_out_of_period:
            raise DataError(out_of_period + " (--allow-out-of-period settles anyway)",
                            file=Path(getattr(rules, "path", ".")) / "manifest.toml")
        warnings.append(out_of_period)
    hosp_files = source_files(hospitals) if not isinstance(hospitals, pa.Table) else []
    hosp_table = hospitals if isinstance(hospitals, pa.Table) else read_hospitals(hospitals)
    if kind == "monthly":
        policy.require_budget_value(f"the monthly pre-settlement {period}")
    if monthly and kind != "annual":
        raise DataError("--monthly applies to the annual clearing (period YYYY) only", column="period",
                        value=str(period))
    monthly_sums = read_monthly(monthly, year) if monthly else None
    if (prepayments is not None or deductions is not None) and kind != "annual":
        raise DataError("--prepayments and --deductions apply to the annual clearing (period YYYY) only",
                        column="period", value=str(period))
    clearing = read_clearing_inputs(hosp_table, prepayments=prepayments, deductions=deductions)
    if reviewed is not None and kind != "annual":
        raise DataError("--reviewed applies to the annual clearing (period YYYY) only", column="period",
                        value=str(period))
    if reviewed is not None:
        from dipengine.special_review import read_reviewed

        reviewed = read_reviewed(reviewed)
    if kind == "annual" and policy.deposit_release == "by_score":
        check_scores(hosp_table, monthly_sums, hosp_files)
    return SettleRun(rules=rules, policy=policy, hospitals=hosp_table, period=str(period), kind=kind, year=year,
                     monthly=monthly_sums, monthly_dirs=list(monthly or []),
                     benefit_rules=resolve_benefits(benefits, policy), warnings=warnings,
                     hospital_files=hosp_files, clearing=clearing, reviewed=reviewed)


def score_batch(cases: pa.Table, run: SettleRun) -> pa.Table:
    """Group and score one batch of normalised cases: ``case_points`` output (contract §6.2
    columns up to ``points_e4``). Pure: depends on the batch and the run only."""
    from dipengine.grouper import group_batch
    from dipengine.scoring import case_points

    grouped, _ = group_batch(cases, run.rules, n_threads=1)
    scored = case_points(cases, grouped, run.hospitals, run.policy, groups=run.rules.groups)
    return scored if run.reviewed is None else run.reviewed.apply(scored)


def settle_batch(cases: pa.Table, run: SettleRun) -> tuple[pa.Table, Totals]:
    """One batch through pass 1 (no estimate mode): its :func:`case_table` rows and Totals."""
    scored = score_batch(cases, run)
    return case_table(scored, cases), run.totals().add(scored, cases, run.hosp_ids)


# --------------------------------------------------------------------------- case sources

def _is_normalised(obj) -> bool:
    return isinstance(obj, pa.Table) and {"total_cost_fen", "reason"} <= set(obj.column_names)


def _input_files(cases, schema) -> list:
    """The files behind a case source (for the manifest's sha256): none for in-memory tables;
    the tables of a nested 4101 folder (``schema="nhsa"``); else :func:`io.source_files`."""
    if isinstance(cases, (pa.Table, pa.RecordBatch)) or type(cases).__name__ == "DataFrame":
        return []
    if schema is not None and isinstance(cases, (str, Path)):
        from dipengine.schemas import load_schema, nested_files

        nested = nested_files(cases, load_schema(schema))
        if nested is not None:
            return sorted(str(f) for f in nested.values())
    return source_files(cases)


def _normalised_batches(cases, run: SettleRun, fn, *, batch_size, workers, progress, layout):
    """``fn(normalised batch as a Table)`` for each batch of ``cases``, in input order."""
    if _is_normalised(cases):
        def tables():
            for b in cases.to_batches(max_chunksize=batch_size):
                if progress is not None:
                    progress(b.num_rows, cases.num_rows)
                yield fn(pa.Table.from_batches([b]))
        return tables()
    from dipengine.reader import map_cases

    return map_cases(cases, lambda b: fn(pa.Table.from_batches([b])), run.hospitals, period=run.period,
                     progress=progress, batch_size=batch_size, workers=workers, **layout)


_LABEL, _POOL = "__dipengine_label__", "__dipengine_pool__"
_KEEP = ("patient_paid_fen", _LABEL, _POOL)
"""What estimate mode spills with each case's benefit terms for its payment totals."""


def _pass1(cases, run: SettleRun, totals: Totals, *, batch_size, workers, progress, layout):
    """Yield the :func:`case_table` rows of pass 1 in input order, adding every batch to ``totals``."""
    stream = _normalised_batches(cases, run, lambda t: settle_batch(t, run), batch_size=batch_size,
                                 workers=workers, progress=progress, layout=layout)
    for table, part in stream:
        totals.merge(part)
        yield table


def _pass1_estimate(cases, run: SettleRun, totals: Totals, spiller, *, batch_size, workers, progress, layout):
    """Pass 1 of estimate mode: as :func:`_pass1`, with the cases' recorded payments (their totals
    wait for the benefits), and each batch's benefit terms handed to ``spiller`` in row order.

    The payments of a case depend on its patient's other admissions, which later batches may
    hold: the workers compute everything a case decides alone (grouping, scoring,
    :func:`dipengine.benefits.benefit_terms`); the admissions are walked per patient partition
    once every case has been read (:meth:`dipengine.benefits.BenefitSpiller.finish`).
    """
    from dipengine.settlement import payment_labels

    def work(t):
        scored = score_batch(t, run)
        part = run.totals().add(scored, t, run.hosp_ids, payments=False)
        label, pool = payment_labels(scored, run.hosp_ids)
        keep = t.append_column(_LABEL, pa.array(label)).append_column(_POOL, pa.array(pool))
        return case_table(scored, t), part, spiller.prepare(keep)

    stream = _normalised_batches(cases, run, work, batch_size=batch_size, workers=workers, progress=progress,
                                 layout=layout)
    for table, part, prepared in stream:
        totals.merge(part)
        spiller.write(prepared)
        yield table


def _payment_totals(run: SettleRun):
    """``summarise`` of a benefit partition: the Totals of its payments (estimate mode applied)."""
    def summarise(terms: pa.Table, result: pa.Table) -> Totals:
        recorded = pa.table({"patient_paid_fen": terms["patient_paid_fen"], "fund_paid_fen": terms["fund_paid_fen"]})
        merged = merge_benefits(recorded, result)
        return run.totals().add_payments(merged, terms[_LABEL].to_numpy(), terms[_POOL].to_numpy())
    return summarise


def _merged(tables, benefits):
    """Pass-1 case tables with the estimate mode's payments (``benefits.read`` in row order)."""
    at = 0
    for t in tables:
        yield merge_benefits(t, benefits.read(at, t.num_rows))
        at += t.num_rows


class _Spill:
    """Pass-1 case tables in an Arrow IPC stream file (lz4), read back batch by batch in order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = 0

    def write_all(self, tables) -> None:
        writer = sink = schema = None
        try:
            for t in tables:
                if writer is None:
                    schema = t.schema
                    sink = pa.OSFile(str(self.path), "wb")
                    writer = pa.ipc.new_stream(sink, schema,
                                               options=pa.ipc.IpcWriteOptions(compression=SPILL_COMPRESSION))
                elif t.schema != schema:
                    t = t.cast(schema)
                writer.write_table(t)
                self.rows += t.num_rows
        finally:
            if writer is not None:
                writer.close()
            if sink is not None:
                sink.close()

    def tables(self):
        if not self.path.exists():
            return
        with pa.OSFile(str(self.path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            for batch in reader:
                yield pa.Table.from_batches([batch])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _prefetched(tables, depth: int = 2):
    from dipengine.grouper import _prefetch

    return _prefetch(iter(tables), depth)


class _Progress:
    """Rows done over both passes (annual: 2 × cases), reported as ``progress(done, total)``."""

    def __init__(self, progress, passes: int):
        self.progress, self.passes = progress, passes
        self.n = None
        self.offset = 0
        self.lock = threading.Lock()

    def pass1(self, done, total):
        with self.lock:
            self.n = total
            self.done = done
        if self.progress is not None:
            self.progress(done, None if total is None else total * self.passes)

    def pass2(self, rows):
        self.offset += rows
        if self.progress is not None and self.n is not None:
            self.progress(self.n + self.offset, self.n * self.passes)


class _Run:
    """The passes of one run over ``cases``: iterate :meth:`tables` (the case results with their
    money, in input order) to the end, then read :attr:`totals`, :attr:`values` (``PointValues``),
    :attr:`standard` (Σ case standard per pool, fen) and :attr:`due` (Σ case fund due, fen)."""

    def __init__(self, cases, run: SettleRun, *, spill_dir, batch_size, workers, progress, layout):
        self.cases, self.run, self.spill_dir = cases, run, spill_dir
        self.kw = dict(batch_size=batch_size, workers=workers, layout=layout)
        self.totals = run.totals()
        self.values = None
        self.standard = np.zeros(len(POOLS), np.int64)
        self.due = 0
        self.rows = None  # cases in the run, once known (fixes the output's row groups)
        self.monthly = run.kind == "monthly"
        self.one_pass = self.monthly and not run.with_benefits
        self.progress = _Progress(progress, 1 if self.one_pass else 2)

    def _with_money(self, tables, values_fen):
        for t in tables:
            out, per_pool = add_case_money(t, values_fen)
            self.standard += per_pool
            self.due += int(out["fund_due_fen"].to_numpy().sum())
            if not self.one_pass:
                self.progress.pass2(out.num_rows)
            yield out

    def _read_back(self, spill: "_Spill", benefits, values_fen):
        """Pass 2: the spill read back (with the estimate mode's payments) and given its money in
        a background thread, while the caller writes the previous batch."""
        tables = spill.tables() if benefits is None else _merged(spill.tables(), benefits)
        return _prefetched(self._with_money(tables, values_fen))

    def _finish(self):
        r = self.run
        if r.reviewed is not None:  # every decision found its case: before anything is written
            r.reviewed.check(self.totals.review_found)
        self.values = finish(self.totals, r.hospitals, r.policy, r.period, monthly=r.monthly, clearing=r.clearing)
        return self.values

    def _benefits(self, spiller):
        """Between the passes of estimate mode: walk the benefit partitions and add their payments."""
        ben, parts = spiller.finish(workers=self.kw["workers"], summarise=_payment_totals(self.run))
        for part in parts:
            self.totals.merge(part)
        return ben

    def tables(self):
        r = self.run
        spiller = None
        try:
            if r.with_benefits:
                from dipengine.benefits import BenefitSpiller

                spiller = BenefitSpiller(r.benefit_rules, r.hospitals, spill_dir=self.spill_dir, keep=_KEEP,
                                         columns=MERGED_BENEFITS)
                first = _pass1_estimate(self.cases, r, self.totals, spiller, progress=self.progress.pass1, **self.kw)
            else:
                first = _pass1(self.cases, r, self.totals, progress=self.progress.pass1, **self.kw)
            if self.one_pass:  # monthly, no estimate mode: the budget point values are known
                yield from self._with_money(first, r.budget_values_fen())
                self._finish()
                return
            if self.spill_dir is None:  # in memory: the pass-1 tables are the spill
                kept = list(first)
                self.rows = sum(t.num_rows for t in kept)
                ben = self._benefits(spiller) if spiller is not None else None
                values_fen = self._values_fen()
                yield from self._with_money(kept if ben is None else _merged(kept, ben), values_fen)
                return
            spill = _Spill(Path(self.spill_dir) / SPILL_NAME)
            try:
                spill.write_all(first)
                self.rows = spill.rows
                ben = self._benefits(spiller) if spiller is not None else None
                yield from self._read_back(spill, ben, self._values_fen())
            finally:
                spill.remove()
        finally:
            if spiller is not None:
                spiller.abort()

    def _values_fen(self):
        """Fen per point of each pool for the case money (point values computed here)."""
        values = self._finish()
        return self.run.budget_values_fen() if self.monthly else values.case_value_fen

    def total_rows(self):
        """Cases in the run when known (else None): where the output's last row group starts."""
        return self.progress.n if self.one_pass else self.rows


def _empty_cases(cases, run: SettleRun, layout) -> pa.Table:
    """The (empty) case results of an input without rows, with the columns a full run has."""
    from dipengine.reader import read_cases

    normalised = cases if _is_normalised(cases) else read_cases(cases, run.hospitals, period=run.period, **layout)
    if run.with_benefits:
        from dipengine.settlement import apply_benefits

        normalised = apply_benefits(normalised, run.benefit_rules, run.hospitals)
    scored = score_batch(normalised, run)
    return add_case_money(case_table(scored, normalised), run.budget_values_fen())[0]


def _manifest(run: SettleRun, passes: "_Run", *, input_files, layout) -> dict:
    m = manifest_of(passes.totals, passes.values, run.policy, run.period, passes.standard, passes.due)
    schema = layout.get("schema")
    rules = run.rules
    br = run.benefit_rules
    m["parameters"] = {
        "period": run.period,
        "rules": str(getattr(rules, "path", "")),
        "pricing": str(getattr(run.policy, "path", "")),
        "hospitals": [str(f) for f in run.hospital_files],
        "input": [str(f) for f in input_files],
        "monthly": [str(d) for d in run.monthly_dirs],
        "benefits": None if br is None else sorted(br.files),
        "schema": None if schema is None else getattr(schema, "name", str(schema)),
        "encoding": layout.get("encoding"),
        "sheet": layout.get("sheet"),
    }
    for kind, f in (run.clearing.files.items() if run.clearing is not None else ()):
        m["parameters"][kind] = str(f)  # prepayments, deductions: only when given
        m["sha256"][kind] = {str(f): sha256_file(f)}
    if run.reviewed is not None:
        m["parameters"]["reviewed"] = run.reviewed.file
        m["sha256"]["reviewed"] = {run.reviewed.file: sha256_file(run.reviewed.file)}
        m["special_review"]["reviewed"] = run.reviewed.summary()
    if run.warnings:
        m["warnings"] = list(run.warnings)
    m["sha256"]["inputs"] = {str(f): sha256_file(f) for f in input_files}
    m["sha256"]["hospitals"] = {str(f): sha256_file(f) for f in run.hospital_files}
    m["sha256"]["monthly"] = {str(Path(d) / "hospitals.parquet"): sha256_file(Path(d) / "hospitals.parquet")
                              for d in run.monthly_dirs}
    m["sha256"]["rules"] = dict(getattr(rules, "sha256", {}) or {})
    if br is not None:
        m["sha256"]["benefits"] = dict(sorted(br.files.items()))
    if schema is not None:
        from dipengine.schemas import load_schema

        m["sha256"]["schema"] = dict(load_schema(schema).files)
    m["rules"] = {"name": getattr(rules, "name", None), "version": getattr(rules, "version", None)}
    return m


def _one_source(cases):
    if isinstance(cases, (list, tuple)) and len(cases) == 1:
        return cases[0]  # one path (a nested 4101 folder is recognised only as a single source)
    return cases


def settle(cases, rules, policy, hospitals, period, *, monthly=None, progress=None, n_threads=None,
           benefits=None, schema=None, encoding=None, sheet=None, allow_out_of_period: bool = False,
           batch_size: int = BATCH_SIZE, prepayments=None, deductions=None, reviewed=None) -> SettlementResult:
    """Read, group, score and settle a period, results in memory (contract §1 ``settle``).

    Parameters
    ----------
    cases : path, list of paths, or table
        Raw case input (contract §2), or an already normalised table (``read_cases`` output).
    rules : RuleSet or path
        A rule set (``dipengine.rules.load_rules``).
    policy : Policy or path
        The pricing directory (``load_policy``).
    hospitals : path or table
        The registry.
    period : str
        ``YYYY-MM`` monthly pre-settlement, ``YYYY`` annual clearing.
    monthly : list of paths, optional
        Monthly output directories whose payments the annual clearing nets off.
    progress : callable(done, total), optional
        Rows done over the run's passes (an annual run reads every case twice: total = 2 × cases).
    n_threads : int, optional
        Worker threads (default: all CPUs, at most 8). Results never depend on it.
    benefits : None, False, path(s) or BenefitRules
        Estimate mode (:func:`dipengine.settlement.apply_benefits`, tables chosen by
        :func:`dipengine.settlement.resolve_benefits`): by default the pricing dir's
        ``benefits.csv`` when it has one; ``False`` turns it off; paths add the tables of other
        insured regions. Cases without recorded payments are then settled on the computed
        patient share and fund benefit.
    schema : str, path or InputSchema, optional
        Input layout (:func:`dipengine.schemas.load_schema`): ``"contract"`` (default),
        ``"nhsa"`` or a schema folder. Passed to :func:`dipengine.reader.map_cases`.
    encoding : str, optional
        Text encoding of CSV inputs (``utf-8``, ``gbk``, ``gb18030``); default: detected.
    sheet : str or int, optional
        Sheet of an .xlsx input: name or 0-based index; default: the first.
    allow_out_of_period : bool
        Settle even when the rule set's effective dates do not cover the period (the reason is
        then in the manifest's ``warnings``); by default that is a :class:`DataError`.
    batch_size : int
        Rows per batch. Results never depend on it.
    prepayments, deductions : path or table, optional
        Annual clearing only: the prepayments (预付金) offset in the final transfer and the
        audit deductions (审核扣款) taken off due' before the bands, each a file of
        ``hospital_id, amount`` (yuan) [, ``pool``] [, ``note`` / ``reason``]
        (:mod:`dipengine.clearing`, docs/settlement.md "Clearing workflow").
    reviewed : path or table, optional
        Annual clearing only: the special-review decisions (``case_id, decision,
        approved_points | approved_amount``; :func:`dipengine.special_review.read_reviewed`,
        docs/settlement.md "Special review").

    Returns
    -------
    SettlementResult
        Case results (contract §6.2), hospital statements (§6.3) and the manifest (§6.4).
        For inputs too large for memory use :func:`settle_to`, which streams to a directory.
    """
    run = prepare(rules, policy, hospitals, period, monthly=monthly, benefits=benefits,
                  allow_out_of_period=allow_out_of_period, prepayments=prepayments, deductions=deductions,
                  reviewed=reviewed)
    cases = _one_source(cases)
    layout = dict(schema=schema, encoding=encoding, sheet=sheet)
    input_files = _input_files(cases, schema)
    passes = _Run(cases, run, spill_dir=None, batch_size=batch_size, workers=_workers(n_threads),
                  progress=progress, layout=layout)
    kept = list(passes.tables())
    table = pa.concat_tables(kept) if kept else _empty_cases(cases, run, layout)
    m = _manifest(run, passes, input_files=input_files, layout=layout)
    return SettlementResult(cases=table, hospitals=passes.values.statements, manifest=m,
                            special_review=passes.values.special_review)


def _workers(n_threads):
    from dipengine.reader import worker_count

    return worker_count(n_threads)


def settle_to(out_dir, cases, rules, policy, hospitals, period, *, monthly=None, progress=None, n_threads=None,
              benefits=None, schema=None, encoding=None, sheet=None, allow_out_of_period: bool = False,
              batch_size: int = BATCH_SIZE, on_prepared=None, prepayments=None, deductions=None,
              reviewed=None) -> SettlementResult:
    """Settle a period streaming, into the output directory ``out_dir`` (what the CLI runs).

    The arguments are those of :func:`settle`. ``out_dir`` gets ``cases.parquet``,
    ``hospitals.parquet``, ``hospitals.csv``, ``special_review.parquet`` and ``manifest.json`` atomically; the pass-1 spill
    lives in its temporary directory (on the output's file system) and is gone before the output
    appears. ``on_prepared(run)`` is called once everything but the cases has been checked.

    Returns
    -------
    SettlementResult
        With ``cases=None`` (they are in ``out_dir/cases.parquet``), the statements and the
        manifest.
    """
    run = prepare(rules, policy, hospitals, period, monthly=monthly, benefits=benefits,
                  allow_out_of_period=allow_out_of_period, prepayments=prepayments, deductions=deductions,
                  reviewed=reviewed)
    if on_prepared is not None:
        on_prepared(run)
    cases = _one_source(cases)
    layout = dict(schema=schema, encoding=encoding, sheet=sheet)
    input_files = _input_files(cases, schema)
    holder = {}

    def case_tables(tmp):
        holder["run"] = _Run(cases, run, spill_dir=tmp, batch_size=batch_size, workers=_workers(n_threads),
                             progress=progress, layout=layout)
        return holder["run"].tables()

    def statements():
        return holder["run"].values.statements

    def manifest():
        holder["manifest"] = _manifest(run, holder["run"], input_files=input_files, layout=layout)
        return holder["manifest"]

    write_result(out_dir, case_tables, statements, manifest, total_rows=lambda: holder["run"].total_rows(),
                 empty=lambda: _empty_cases(cases, run, layout),
                 special_review=lambda: holder["run"].values.special_review)
    return SettlementResult(cases=None, hospitals=holder["run"].values.statements, manifest=holder["manifest"],
                            special_review=holder["run"].values.special_review)
