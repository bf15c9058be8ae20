"""``dipengine group``: group cases into DIP groups (contract §1, §6.1)."""
from __future__ import annotations

import click

BATCH_SIZE = 262_144  # rows per streamed batch: fewer per-batch costs, memory still flat


@click.command("group")
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False), help="Rule-set directory.")
@click.option("--input", "input_", required=True, help="Cases: Parquet, CSV, Arrow IPC, directory or glob.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output (Parquet, or CSV if *.csv).")
@click.option("--hospitals", type=click.Path(dir_okay=False), help="Hospital registry (flags unknown hospitals).")
@click.option("--explain", "explain_id", metavar="CASE_ID", help="Print the candidates considered for this case.")
@click.option("--threads", type=int, default=None, help="Kernel threads (default: all available).")
def command(rules_dir, input_, out, hospitals, explain_id, threads):
    """Group cases: one output row per input row, in order; rejected rows keep their reason."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from dipengine.grouper import MATCH_PATHS, group_stream, output_schema, prepare_cases
    from dipengine.io import write_batches
    from dipengine.reader import iter_cases
    from dipengine.rules import load_rules, resolve_rules_dir

    rs = load_rules(resolve_rules_dir(rules_dir))
    # Streamed batch by batch (memory stays flat); the file appears only once complete.
    paths = np.zeros(len(MATCH_PATHS), np.int64)
    reasons: dict[str, int] = {}
    hits = []

    def outputs():
        for batch, result, res in group_stream(iter_cases(input_, hospitals, batch_size=BATCH_SIZE), rs,
                                               n_threads=threads, dictionary=True, prefetch=1):
            paths[:] += np.bincount(res.match_path, minlength=len(MATCH_PATHS))
            for row in pc.value_counts(result["reason"].combine_chunks().drop_null()).to_pylist():
                reasons[row["values"]] = reasons.get(row["values"], 0) + row["counts"]
            if explain_id is not None:
                hit = batch.filter(pc.equal(batch.column("case_id"), explain_id))
                if hit.num_rows:
                    hits.append(hit)
            yield result

    n = write_batches(outputs(), out, output_schema(dictionary=True))
    click.echo(f"grouped {n:,} cases with rules {rs.name} {rs.version} -> {out}")
    click.echo("by match_path: " + ", ".join(f"{k} {int(v):,}" for k, v in zip(MATCH_PATHS, paths)))
    if reasons:
        click.echo("by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())))
    if explain_id is not None:
        from dipengine.reference import group_case

        if not hits:
            click.echo(f"--explain: case_id {explain_id!r} not in the input", err=True)
            raise click.exceptions.Exit(1)
        case = prepare_cases(pa.Table.from_batches(hits[:1]).slice(0, 1)).to_pylist()[0]
        res = group_case(case, rs)
        click.echo(f"explain {explain_id}: {res['match_path']} {res['dip_code'] or res['reason']}")
        for line in res["trace"]:
            click.echo("  " + line)
