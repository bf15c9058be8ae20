"""Streaming runs from a case file to an output file, batch by batch, memory flat.

:func:`group_file` is what ``dipengine group`` runs: read (``reader.map_cases``, lean), validate
and group each batch in a worker thread (``grouper.group_batch``), write the results in input
order (``io.write_batches``). Results do not depend on the batch size or the thread count.
"""
from __future__ import annotations

import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.grouper import MATCH_PATHS, group_batch, output_schema
from dipengine.io import BATCH_SIZE, ROW_GROUP_BATCHES, write_batches
from dipengine.io import row_groups as _row_groups
from dipengine.parquet_source import ParquetPrefetch, prefetch
from dipengine.reader import LEAN_COLUMNS, map_cases, worker_count
from dipengine.rules import RuleSet, load_rules, resolve_rules_dir

__all__ = ["GroupRun", "group_file", "prefetch"]

@dataclass
class GroupRun:
    """What :func:`group_file` did.

    rows : cases written (one per input row); rules : the rule set used;
    by_match_path : cases per ``match_path`` (every path, zeros included);
    by_reason : cases per ``reason`` (only reasons that occur, sorted);
    explain : the lean batch rows (``reader.LEAN_SCHEMA``) whose ``case_id`` is ``explain_id``.
    """

    rows: int
    rules: RuleSet
    by_match_path: dict[str, int]
    by_reason: dict[str, int]
    explain: pa.Table | None = field(default=None)


def group_file(source, rules, out, *, hospitals=None, threads: int | None = None, explain_id: str | None = None,
               batch_size: int = BATCH_SIZE, progress=None, schema=None, encoding: str | None = None,
               sheet=None) -> GroupRun:
    """Group the cases of ``source`` into ``out`` (contract §6.1), streaming.

    Parameters
    ----------
    source : path, glob, directory, table or :func:`prefetch` result
        The cases (contract §2); anything ``reader.map_cases`` reads.
    rules : RuleSet or path
        The rule set (loaded in a background thread while the first batches are validated; a bad
        rule set stops the run before anything is written).
    out : path
        Output file: Parquet, or CSV when it ends in ``.csv``; written atomically. Columns: the
        §6.1 columns (text columns as dictionaries), then the input's extra columns.
    hospitals : path, optional
        Hospital registry (flags UNKNOWN_HOSPITAL).
    threads : int, optional
        Worker threads, each validating and grouping whole batches (default: all CPUs).
    explain_id : str, optional
        Keep the rows of this ``case_id`` (in :attr:`GroupRun.explain`).
    batch_size : int
        Rows per batch (must match a :func:`prefetch` source's).
    progress : callable, optional
        ``progress(done, total)`` after each batch.
    schema, encoding, sheet : optional
        The input's layout (``"nhsa"``, a schema folder), CSV encoding and .xlsx sheet, as for
        :func:`dipengine.reader.read_cases`.
    """
    return _group_file(source, rules, out, hospitals, threads, explain_id, batch_size, progress,
                       dict(schema=schema, encoding=encoding, sheet=sheet))


def _group_file(source, rules, out, hospitals, threads, explain_id, batch_size, progress, layout) -> GroupRun:
    if isinstance(rules, RuleSet):
        rules_future: Future = Future()
        rules_future.set_result(rules)
    else:  # loads (mostly Python) while the first batches are read and validated
        try:
            rules_dir = resolve_rules_dir(rules)
        except BaseException:
            if isinstance(source, ParquetPrefetch):  # map_cases would have closed it
                source.close()
            raise
        loader = ThreadPoolExecutor(1, thread_name_prefix="dipengine-rules")
        rules_future = loader.submit(load_rules, rules_dir)
        loader.shutdown(wait=False)
    paths = np.zeros(len(MATCH_PATHS), np.int64)
    reasons: dict[str, int] = {}
    hits = []
    n_lean = len(LEAN_COLUMNS)

    def work(batch):  # in a worker thread, after validation: group one lean batch, carry its extras
        result, res = group_batch(batch, rules_future.result(), n_threads=1, dictionary=True, normalised=True)
        for k in range(n_lean, batch.num_columns):
            result = result.append_column(batch.schema.field(k), pa.chunked_array([batch.column(k)]))
        counts = np.bincount(res.match_path, minlength=len(MATCH_PATHS))
        by_reason = pc.value_counts(result["reason"].combine_chunks().drop_null()).to_pylist()
        hit = None
        if explain_id is not None:
            hit = batch.filter(pc.equal(batch.column(0), explain_id))
        return result, counts, by_reason, hit

    def outputs(items):
        for result, counts, by_reason, hit in items:
            paths[:] += counts
            for row in by_reason:
                reasons[row["values"]] = reasons.get(row["values"], 0) + row["counts"]
            if hit is not None and hit.num_rows:
                hits.append(hit)
            yield result

    seen = [0, None]  # rows done, total rows (None until known)

    def track(done, total):
        seen[:] = [done, total]
        if progress is not None:
            progress(done, total)

    n_workers = worker_count(threads)
    # results queued ahead of this thread: enough for the workers to run on while it writes a
    # row group (else they wait for it)
    depth = ROW_GROUP_BATCHES + n_workers + 1
    stream = outputs(map_cases(source, work, hospitals, batch_size=batch_size, workers=n_workers, lean=True,
                               progress=track, depth=depth, **layout))
    first = next(stream, None)
    rs = rules_future.result()  # a bad rule set stops the run here, before anything is written
    schema = output_schema(dictionary=True) if first is None else first.schema
    # min/max statistics of the dictionary text columns would cost a third of the write (they are
    # computed on decoded values) and prune nothing: every row group holds most groups
    stats = [f.name for f in schema if not pa.types.is_dictionary(f.type)]
    groups = _row_groups(itertools.chain([] if first is None else [first], stream), total=lambda: seen[1])
    n = write_batches(groups, out, schema, write_statistics=stats)
    return GroupRun(
        rows=n, rules=rs,
        by_match_path={k: int(v) for k, v in zip(MATCH_PATHS, paths)},
        by_reason=dict(sorted(reasons.items())),
        explain=pa.Table.from_batches(hits) if hits else None,
    )

