"""Settlement on a Dask cluster (``pip install "dipengine[dask]"``), with the single-process answer.

The same two passes as :mod:`dipengine.pipeline`, as tasks over *pieces* of the input (runs of
consecutive Parquet row groups, each knowing its first row in the run):

1. the client finds the repeated ``case_id`` rows of the whole run (:func:`dipengine.reader.repeat_rows`,
   bounded memory) and hands each piece its own;
2. estimate mode only: each piece's benefit inputs are hash-partitioned by ``patient_id``
   (:func:`dipengine.benefits.partition_of`), each partition's benefits computed on one worker
   in row order (all admissions of a patient meet there), and split back by piece: a shuffle, so
   annual caps and repeat admissions follow each patient over the whole run;
3. pass 1 maps every piece to its exact integer :class:`~dipengine.settlement.Totals`
   (:func:`dipengine.pipeline.score_batch` on each batch), reduced on the client by integer
   addition keyed by pool and hospital;
4. the client computes the point values once (:func:`dipengine.settlement.finish`) and
   broadcasts them; pass 2 maps every piece again to its case results with their money, which
   the client writes in row order, a few pieces in flight at a time.

Every sum is an integer and every output is written by the client in row order with the row
groups of the single-process run, so each output file has the same bytes as
``dipengine.pipeline.settle_to`` writes, whatever the pieces, workers or scheduling. Workers
need the input files at the same paths (a shared file system or object store mount).
"""
from __future__ import annotations

import contextlib
import operator
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dipengine.errors import DataError
from dipengine.io import BATCH_SIZE, source_files
from dipengine.pipeline import SettleRun, prepare, score_batch
from dipengine.policy import POOLS
from dipengine.settlement import SettlementResult, Totals, add_case_money, case_table, finish, merge_benefits

__all__ = ["Piece", "pieces", "settle_to", "PIECE_ROWS"]

PIECE_ROWS = 1 << 20
"""Rows a piece is planned to hold (row groups are joined up to this; one larger row group is one piece)."""

IN_FLIGHT_PER_WORKER = 2
"""Pass-2 pieces submitted ahead per worker: bounds the case results waiting for the client's writer."""


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups of one Parquet file: rows ``[offset, offset + rows)`` of the run."""

    file: str
    row_groups: tuple
    offset: int
    rows: int


def pieces(files, piece_rows: int = PIECE_ROWS) -> list[Piece]:
    """Cut Parquet ``files`` (in run order) into pieces of about ``piece_rows`` rows, row groups whole."""
    if piece_rows < 1:
        raise ValueError("piece_rows must be at least 1")
    out, offset = [], 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read the Parquet file ({str(e).splitlines()[0]})", file=f) from None
        group, rows = [], 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if group and rows + n > piece_rows:
                out.append(Piece(str(f), tuple(group), offset, rows))
                offset += rows
                group, rows = [], 0
            group.append(g)
            rows += n
        if group and rows:
            out.append(Piece(str(f), tuple(group), offset, rows))
            offset += rows
    return out


# --------------------------------------------------------------------------- worker side

def _normalised(piece: Piece, run: SettleRun, repeats: np.ndarray, batch_size: int):
    """The piece's normalised batches (as Tables), in row order; its repeats marked as given."""
    from dipengine.reader import map_cases

    try:
        table = pq.ParquetFile(piece.file).read_row_groups(list(piece.row_groups))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read the Parquet file ({str(e).splitlines()[0]})", file=piece.file) from None
    if table.num_rows != piece.rows:
        raise DataError(f"the cases changed while being read ({table.num_rows:,} rows, {piece.rows:,} before)",
                        file=piece.file)
    return map_cases(table, lambda b: pa.Table.from_batches([b]), run.hospitals, period=run.period,
                     batch_size=batch_size, workers=1, repeats=repeats)


def _benefit_scatter(piece, run, repeats, n_parts, batch_size) -> list:
    """The piece's benefit inputs split by patient partition: ``n_parts`` tables, rows ascending."""
    from dipengine.benefits import _benefit_input, partition_of

    parts = [[] for _ in range(n_parts)]
    at = piece.offset
    schema = None
    for t in _normalised(piece, run, repeats, batch_size):
        rows = np.arange(at, at + t.num_rows, dtype=np.int64)
        at += t.num_rows
        b = _benefit_input(t, {}, rows)
        schema = b.schema
        part = partition_of(b.column("patient_id"), rows, n_parts)
        order = np.argsort(part, kind="stable")
        cuts = np.searchsorted(part[order], np.arange(n_parts + 1))
        for k in range(n_parts):
            if cuts[k + 1] > cuts[k]:
                parts[k].append(b.take(pa.array(order[cuts[k]:cuts[k + 1]])))
    if schema is None:
        from dipengine.benefits import _benefit_input as bi

        schema = bi(pa.table({}), {}, np.zeros(0, np.int64)).schema
    return [pa.Table.from_batches(p, schema=schema) for p in parts]


def _benefit_partition(run, bounds, *tables) -> list:
    """Benefits of one patient partition (its tables from every piece, in piece order), cut by piece."""
    from dipengine.benefits import _ROW, compute_benefits

    cases = pa.concat_tables(tables).combine_chunks()
    result = compute_benefits(cases, run.benefit_rules, run.hospitals)
    result = result.append_column(_ROW, cases[_ROW])
    cuts = np.searchsorted(cases[_ROW].to_numpy(), bounds)
    return [result.slice(int(cuts[i]), int(cuts[i + 1] - cuts[i])) for i in range(len(bounds) - 1)]


def _benefit_gather(*slices) -> pa.Table:
    """One piece's benefits from every partition, back in row order."""
    from dipengine.benefits import _ROW

    t = pa.concat_tables(slices)
    t = t.take(pa.array(np.argsort(t[_ROW].to_numpy(), kind="stable")))
    return t.drop_columns([_ROW]).combine_chunks()


def _scored(piece, run, repeats, benefits, batch_size):
    """``(normalised, scored)`` per batch of the piece (benefits merged in estimate mode)."""
    at = 0
    for t in _normalised(piece, run, repeats, batch_size):
        if benefits is not None:
            t = merge_benefits(t, benefits.slice(at, t.num_rows))
        at += t.num_rows
        yield t, score_batch(t, run)


def _pass1(piece, run, repeats, benefits, batch_size) -> Totals:
    """Pass 1 of one piece: its exact integer totals."""
    totals = run.totals()
    for t, scored in _scored(piece, run, repeats, benefits, batch_size):
        totals.add(scored, t, run.hosp_ids)
    return totals


def _with_money(piece, run, repeats, benefits, batch_size, values_fen, totals=None):
    """One piece's case results with their money: ``(table, Σ standard per pool, Σ fund due, totals)``."""
    tables, standard, due = [], np.zeros(len(POOLS), np.int64), 0
    for t, scored in _scored(piece, run, repeats, benefits, batch_size):
        if totals is not None:
            totals.add(scored, t, run.hosp_ids)
        out, per_pool = add_case_money(case_table(scored, t), values_fen)
        standard += per_pool
        due += int(out["fund_due_fen"].to_numpy().sum())
        tables.append(out if not tables or out.schema == tables[0].schema else out.cast(tables[0].schema))
    table = pa.concat_tables(tables) if tables else None
    return table, standard, due, totals


def _monthly_piece(piece, run, repeats, benefits, batch_size, values_fen):
    """A monthly run's single pass over one piece (its point values are the budget's)."""
    return _with_money(piece, run, repeats, benefits, batch_size, values_fen, run.totals())


# --------------------------------------------------------------------------- client side

@contextlib.contextmanager
def connect(client=None, scheduler: str | None = None, n_workers: int | None = None):
    """A ``distributed.Client``: ``client`` itself, one connected to ``scheduler`` (an address such
    as ``tcp://10.0.0.5:8786``), or a ``LocalCluster`` of ``n_workers`` processes (default: CPUs,
    one thread each) that lives as long as the block."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DataError('the Dask engine needs the optional extra: pip install "dipengine[dask]"') from None
    if client is not None:
        yield client
        return
    if scheduler:
        try:
            c = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise DataError(f"cannot reach the Dask scheduler ({e})", value=scheduler) from None
        with c:
            yield c
        return
    n = n_workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


class _Passes:
    """What :func:`dipengine.pipeline._manifest` reads of a finished run."""

    def __init__(self, totals, values, standard, due):
        self.totals, self.values, self.standard, self.due = totals, values, standard, due


def _input_pieces(cases, schema, piece_rows):
    files = source_files(cases)
    if schema not in (None, "contract"):
        raise DataError("the Dask engine reads contract-layout Parquet (contract §2); use --engine local for "
                        "other layouts", column="schema", value=str(schema))
    bad = [f for f in files if not str(f).lower().endswith((".parquet", ".pq"))]
    if bad:
        raise DataError("the Dask engine reads Parquet files only (or use --engine local)", file=bad[0])
    return files, pieces(files, piece_rows)


def _ordered(client, submit, n: int, window: int):
    """``submit(i).result()`` for i in 0..n-1, in order, with at most ``window`` futures pending."""
    pending = {}
    nxt = 0
    for i in range(n):
        while nxt < n and nxt < i + window:
            pending[nxt] = submit(nxt)
            nxt += 1
        fut = pending.pop(i)
        try:
            yield fut.result()
        finally:
            fut.release()


def settle_to(out_dir, cases, rules, policy, hospitals, period, *, monthly=None, progress=None, benefits=None,
              schema=None, allow_out_of_period: bool = False, batch_size: int = BATCH_SIZE,
              piece_rows: int = PIECE_ROWS, client=None, scheduler: str | None = None,
              n_workers: int | None = None, on_prepared=None, spill_dir=None, prepayments=None,
              deductions=None, reviewed=None) -> SettlementResult:
    """Settle a period on a Dask cluster into ``out_dir``: the files of :func:`dipengine.pipeline.settle_to`.

    Parameters
    ----------
    out_dir, cases, rules, policy, hospitals, period, monthly, progress, benefits, allow_out_of_period, batch_size
        As for :func:`dipengine.pipeline.settle_to`; ``cases`` are contract-layout Parquet
        (a file, directory, glob or list), readable by every worker at the same path.
    prepayments, deductions, reviewed : path, optional
        As for :func:`dipengine.pipeline.settle_to`: read on the client by ``prepare`` and applied
        there by :func:`dipengine.settlement.finish` (the special-review decisions on the workers,
        in :func:`dipengine.pipeline.score_batch`), as the local engine does (same outputs).
    piece_rows : int
        Rows per task (whole row groups). Results never depend on it.
    client : distributed.Client, optional
        Run on this client's cluster.
    scheduler : str, optional
        Else connect to this scheduler address; else start a ``LocalCluster`` of ``n_workers``.
    on_prepared : callable(run), optional
        Called once everything but the cases has been checked.
    spill_dir : path, optional
        Where the client's duplicate-``case_id`` pre-pass spills (default: ``TMPDIR``).

    Returns
    -------
    SettlementResult
        ``cases=None``, the statements and the manifest (the same as the local engine's).
    """
    from dipengine.pipeline import _empty_cases, _input_files, _manifest, _one_source, settle_to as local_settle_to
    from dipengine.reader import check_schema, repeat_rows
    from dipengine.settlement import write_result

    run = prepare(rules, policy, hospitals, period, monthly=monthly, benefits=benefits,
                  allow_out_of_period=allow_out_of_period, prepayments=prepayments, deductions=deductions,
                  reviewed=reviewed)
    if on_prepared is not None:
        on_prepared(run)
    cases = _one_source(cases)
    files, parts = _input_pieces(cases, schema, piece_rows)
    for f in files:
        check_schema(pq.read_schema(f), f)
    n_rows = sum(p.rows for p in parts)
    if n_rows == 0:  # nothing to distribute: the local run writes the empty result
        return local_settle_to(out_dir, cases, run.rules, run.policy, run.hospitals, period, monthly=monthly,
                               benefits=benefits, allow_out_of_period=allow_out_of_period,
                               prepayments=prepayments, deductions=deductions, reviewed=reviewed)
    layout = dict(schema=schema, encoding=None, sheet=None)
    input_files = _input_files(cases, schema)
    repeats, seen = repeat_rows(cases, n_rows=n_rows, spill_dir=spill_dir)
    if seen != n_rows:
        raise DataError(f"the cases changed while being read ({seen:,} rows, {n_rows:,} before)", file=str(cases))
    bounds = np.array([p.offset for p in parts] + [n_rows], dtype=np.int64)
    cut = np.searchsorted(repeats, bounds)
    piece_repeats = [repeats[cut[i]:cut[i + 1]] - parts[i].offset for i in range(len(parts))]
    holder = {}

    def report(done, passes):
        if progress is not None:
            progress(done, n_rows * passes)

    with connect(client, scheduler, n_workers) as c:
        workers = max(1, len(c.scheduler_info().get("workers", {})) or 1)
        run_f = c.scatter(run, broadcast=True)
        ben = [None] * len(parts)
        if run.with_benefits:
            k = len(parts)
            scattered = [c.submit(_benefit_scatter, p, run_f, piece_repeats[i], k, batch_size, pure=False)
                         for i, p in enumerate(parts)]
            by_part = [c.submit(_benefit_partition, run_f, bounds,
                                *[c.submit(operator.getitem, s, j, pure=False) for s in scattered], pure=False)
                       for j in range(k)]
            ben = [c.submit(_benefit_gather, *[c.submit(operator.getitem, b, i, pure=False) for b in by_part],
                            pure=False) for i in range(len(parts))]
            del scattered, by_part
        args = [(p, run_f, piece_repeats[i], ben[i], batch_size) for i, p in enumerate(parts)]

        first_schema = []

        def same_schema(table):  # every piece in the first one's schema, as the local spill does
            if not first_schema:
                first_schema.append(table.schema)
            return table if table.schema == first_schema[0] else table.cast(first_schema[0])

        def case_tables(tmp):
            monthly_run = run.kind == "monthly"
            totals = run.totals()
            standard, due, done = np.zeros(len(POOLS), np.int64), 0, 0
            if monthly_run:
                values_fen = run.budget_values_fen()
                results = _ordered(c, lambda i: c.submit(_monthly_piece, *args[i], values_fen, pure=False),
                                   len(parts), IN_FLIGHT_PER_WORKER * workers)
                for table, per_pool, piece_due, part in results:
                    totals.merge(part)
                    standard += per_pool
                    due += piece_due
                    done += table.num_rows
                    report(done, 1)
                    yield same_schema(table)
                values = finish(totals, run.hospitals, run.policy, run.period, monthly=run.monthly,
                                clearing=run.clearing)
            else:
                futures = [c.submit(_pass1, *a, pure=False) for a in args]
                from distributed import as_completed

                for fut in as_completed(futures):
                    part = fut.result()
                    totals.merge(part)
                    done += part.cases
                    report(done, 2)
                    fut.release()
                del futures
                if run.reviewed is not None:  # every decision found its case: before anything is written
                    run.reviewed.check(totals.review_found)
                values = finish(totals, run.hospitals, run.policy, run.period, monthly=run.monthly,
                                clearing=run.clearing)
                results = _ordered(c, lambda i: c.submit(_with_money, *args[i], values.case_value_fen, pure=False),
                                   len(parts), IN_FLIGHT_PER_WORKER * workers)
                for table, per_pool, piece_due, _ in results:
                    standard += per_pool
                    due += piece_due
                    done += table.num_rows
                    report(done, 2)
                    yield same_schema(table)
            holder["passes"] = _Passes(totals, values, standard, due)

        def manifest():
            holder["manifest"] = _manifest(run, holder["passes"], input_files=input_files, layout=layout)
            return holder["manifest"]

        write_result(out_dir, case_tables, lambda: holder["passes"].values.statements, manifest,
                     total_rows=lambda: n_rows,
                     empty=lambda: _empty_cases(cases, run, layout),
                     special_review=lambda: holder["passes"].values.special_review)
    return SettlementResult(cases=None, hospitals=holder["passes"].values.statements, manifest=holder["manifest"],
                            special_review=holder["passes"].values.special_review)
