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
from dipengine.io import BATCH_SIZE, write_batches
from dipengine.parquet_source import ParquetPrefetch, prefetch
from dipengine.reader import LEAN_COLUMNS, map_cases, worker_count
from dipengine.rules import RuleSet, load_rules, resolve_rules_dir

__all__ = ["GroupRun", "group_file", "prefetch"]

ROW_GROUP_BATCHES = 4
"""Batches per output row group: every row group repeats the group dictionaries (20,000 names for
a full catalogue), so four batches per row group write about 20% faster than one."""
ROW_GROUP_ROWS = ROW_GROUP_BATCHES * BATCH_SIZE
"""Rows per output row group (the last rows of a run excepted, see :func:`_row_groups`). Fixed in
rows, not batches, so that the file's bytes do not depend on ``batch_size``."""


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


def _next_cut(pos: int, rows: int, last: int, total: int | None) -> int:
    """End (a row number) of the row group that starts at row ``pos``: the next multiple of
    ``rows``; when the ``total`` is known, also the last multiple of ``last`` before the end
    (so that the run's last rows are a row group of their own) and the end itself."""
    cut = (pos // rows + 1) * rows
    if total is not None and total > pos:
        tail = (total - 1) // last * last if last else 0
        if pos < tail < cut:
            cut = tail
        cut = min(cut, total)
    return cut


def _row_groups(tables, rows: int = ROW_GROUP_ROWS, last: int = BATCH_SIZE, total=lambda: None):
    """The rows of ``tables`` (in order) cut into row groups at fixed row numbers: every ``rows``
    rows from the start and, once ``total()`` (the run's row count, None when unknown) is known,
    at the last multiple of ``last`` before the end, so that once the last batch is grouped little
    is left to write. The cuts depend on row numbers only, never on how ``tables`` were cut."""
    buf, n, pos = [], 0, 0  # buffered tables and their rows; rows yielded before them
    cache: dict = {}  # for _unique_dictionaries
    for t in tables:
        at = 0
        while at < t.num_rows:
            cut = _next_cut(pos, rows, last, total())
            if cut <= pos + n:  # a wrong total: fall back to the fixed cuts
                cut = (pos // rows + 1) * rows
            take = min(t.num_rows - at, cut - pos - n)
            buf.append(t if take == t.num_rows else t.slice(at, take))
            at += take
            n += take
            if pos + n == cut:
                yield _unique_dictionaries(pa.concat_tables(buf), cache)
                buf, pos, n = [], pos + n, 0
    if buf:
        yield _unique_dictionaries(pa.concat_tables(buf), cache)


def _unique_dictionary(chunk: pa.DictionaryArray, cache: dict) -> pa.DictionaryArray:
    """``chunk`` with a dictionary of distinct values (the same one when it has them already).
    ``cache``: dictionary buffers -> (that dictionary, kept alive; its distinct values or None;
    old -> new index), so that the rule set's group columns are looked at once per run."""
    d = chunk.dictionary
    key = (str(d.type), d.offset, len(d), tuple(0 if b is None else b.address for b in d.buffers()))
    hit = cache.get(key)
    if hit is None or hit[0] is not d and not hit[0].equals(d):
        u = pc.unique(d)
        hit = (d, None, None) if len(u) == len(d) else (d, u, pc.index_in(d, value_set=u).cast(chunk.indices.type))
        if len(d) > 64:  # small vocabularies are made per batch: checked each time, not kept
            cache[key] = hit
    if hit[1] is None:
        return chunk
    return pa.DictionaryArray.from_arrays(hit[2].take(chunk.indices), hit[1], safe=False)


def _unique_dictionaries(t: pa.Table, cache: dict) -> pa.Table:
    """``t`` with every dictionary column in the form whose Parquet bytes depend on its values only.

    Arrow's Parquet writer, given a dictionary that repeats a value (the rule set's ``group_type``
    column repeats four values 20,000 times, ``dip_name`` may repeat names), writes the dictionary
    page from a buffer sized for all the entries but fills it with the distinct ones only: the rest
    of the page (about 5 KB) is whatever memory held before, so the file differed from run to run;
    and the column fell back to plain pages. Here each dictionary is made unique (indices remapped;
    once per rule set), and a column whose chunks carry different dictionaries (where the writer
    would switch to plain pages at a place that depends on the batch size) is dictionary-encoded
    again in order of first appearance.
    """
    for i, f in enumerate(t.schema):
        col = t.column(i)
        if not pa.types.is_dictionary(f.type) or col.num_chunks == 0:
            continue
        chunks = [_unique_dictionary(c, cache) for c in col.chunks]
        first = chunks[0].dictionary
        if all(c.dictionary is first or c.dictionary.equals(first) for c in chunks[1:]):
            new = pa.chunked_array(chunks, f.type)
        else:
            dense = pa.chunked_array([c.dictionary_decode() for c in chunks], f.type.value_type).combine_chunks()
            new = pa.chunked_array([pc.dictionary_encode(dense).cast(f.type)])
        t = t.set_column(i, f, new)
    return t


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

