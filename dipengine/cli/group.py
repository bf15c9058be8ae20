"""``dipengine group``: group cases into DIP groups (contract §1, §6.1)."""
from __future__ import annotations

import contextlib

import click

BATCH_SIZE = 131_072  # rows per batch: small enough for two workers to share a row group, memory flat
PREFETCH_DEPTH = 6  # batches decoded ahead: the decoder runs on while the imports hold the GIL
ROW_GROUP_ROWS = 4 * BATCH_SIZE
"""Rows per output row group: every row group repeats the group dictionaries (20,000 names for a
full catalogue), so four batches per row group write about 20% faster than one."""


def _row_groups(tables, rows: int = ROW_GROUP_ROWS):
    """Consecutive tables concatenated into tables of at least ``rows`` rows (the last may be
    shorter); order kept."""
    import pyarrow as pa

    buf, n = [], 0
    for t in tables:
        buf.append(t)
        n += t.num_rows
        if n >= rows:
            yield pa.concat_tables(buf)
            buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


@click.command("group")
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False), help="Rule-set directory.")
@click.option("--input", "input_", required=True, help="Cases: Parquet, CSV, Arrow IPC, directory or glob.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output (Parquet, or CSV if *.csv).")
@click.option("--hospitals", type=click.Path(dir_okay=False), help="Hospital registry (flags unknown hospitals).")
@click.option("--explain", "explain_id", metavar="CASE_ID", help="Print the candidates considered for this case.")
@click.option("--threads", type=int, default=None,
              help="Worker threads, each validating and grouping whole batches (default: all available).")
def command(rules_dir, input_, out, hospitals, explain_id, threads):
    """Group cases: one output row per input row, in order; rejected rows keep their reason.

    The output has the grouping columns (contract §6.1), then the input's extra columns.
    """
    import os

    from dipengine.reader import ParquetPrefetch

    # Decoding starts now, on the other core, while the rest is imported; map_cases then takes
    # the batches from it.
    source = input_
    if os.path.isfile(input_) and input_.lower().endswith((".parquet", ".pq")):
        source = ParquetPrefetch(input_, BATCH_SIZE, lean=True, depth=PREFETCH_DEPTH)
    # pyarrow imports pandas on its first conversion to numpy (0.2-0.4 s of one core, holding
    # the GIL): done here, while the first batches decode, not inside the first batch's work.
    with contextlib.suppress(ImportError):
        import pandas  # noqa: F401

    import itertools
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from dipengine.grouper import MATCH_PATHS, group_batch, output_schema, prepare_cases
    from dipengine.io import write_batches
    from dipengine.reader import LEAN_COLUMNS, map_cases
    from dipengine.rules import load_rules, resolve_rules_dir

    # Workers hand the GIL back and forth around every Arrow call; a shorter switch interval
    # keeps the ordered duplicate pass and the writer (main thread) from waiting 5 ms each time.
    sys.setswitchinterval(0.001)
    # The rule set loads (mostly Python) while the first batches are read and validated.
    loader = ThreadPoolExecutor(1, thread_name_prefix="dipengine-rules")
    rules_future = loader.submit(load_rules, resolve_rules_dir(rules_dir))
    loader.shutdown(wait=False)
    # Streamed batch by batch (memory stays flat); the file appears only once complete.
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

    stream = outputs(map_cases(source, work, hospitals, batch_size=BATCH_SIZE, workers=threads, lean=True))
    first = next(stream, None)
    rs = rules_future.result()  # a bad rule set stops the run here, before anything is written
    schema = output_schema(dictionary=True) if first is None else first.schema
    # min/max statistics of the dictionary text columns would cost a third of the write (they are
    # computed on decoded values) and prune nothing: every row group holds most groups
    stats = [f.name for f in schema if not pa.types.is_dictionary(f.type)]
    n = write_batches(_row_groups(itertools.chain([] if first is None else [first], stream)), out, schema,
                      write_statistics=stats)
    click.echo(f"grouped {n:,} cases with rules {rs.name} {rs.version} -> {out}")
    click.echo("by match_path: " + ", ".join(f"{k} {int(v):,}" for k, v in zip(MATCH_PATHS, paths)))
    if reasons:
        click.echo("by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())))
    if explain_id is not None:
        from dipengine.reference import group_case

        if not hits:
            click.echo(f"--explain: case_id {explain_id!r} not in the input", err=True)
            raise click.exceptions.Exit(1)
        case = prepare_cases(pa.Table.from_batches(hits[:1]).slice(0, 1), normalised=True).to_pylist()[0]
        res = group_case(case, rs)
        click.echo(f"explain {explain_id}: {res['match_path']} {res['dip_code'] or res['reason']}")
        for line in res["trace"]:
            click.echo("  " + line)
