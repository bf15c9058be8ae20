"""``dipengine group``: group cases into DIP groups (contract §1, §6.1)."""
from __future__ import annotations

import click

from dipengine.cli._common import input_layout_options


@click.command("group")
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False), help="Rule-set directory.")
@click.option("--input", "input_", required=True, help="Cases: Parquet, CSV, Arrow IPC, directory or glob.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output (Parquet, or CSV if *.csv).")
@click.option("--hospitals", type=click.Path(dir_okay=False), help="Hospital registry (flags unknown hospitals).")
@click.option("--explain", "explain_id", metavar="CASE_ID", help="Print the candidates considered for this case.")
@click.option("--threads", type=int, default=None,
              help="Worker threads, each validating and grouping whole batches (default: all available).")
@input_layout_options
def command(rules_dir, input_, out, hospitals, explain_id, threads, schema, encoding, sheet):
    """Group cases: one output row per input row, in order; rejected rows keep their reason.

    The output has the grouping columns (contract §6.1), then the input's extra columns.
    """
    import sys

    from dipengine.cli._common import progress_bar
    from dipengine.io import check_output

    check_output(out, [input_, rules_dir, hospitals])  # before anything is read
    from dipengine.stream import group_file

    # a bar on a terminal only (not even tqdm's import otherwise)
    callback, close = progress_bar(None, "group") if sys.stderr.isatty() else (None, lambda: None)
    try:
        run = group_file(input_, rules_dir, out, hospitals=hospitals, threads=threads, explain_id=explain_id,
                         progress=callback, schema=schema, encoding=encoding, sheet=sheet)
    finally:
        close()
    rs = run.rules
    click.echo(f"grouped {run.rows:,} cases with rules {rs.name} {rs.version} -> {out}")
    click.echo("by match_path: " + ", ".join(f"{k} {v:,}" for k, v in run.by_match_path.items()))
    if run.by_reason:
        click.echo("by reason: " + ", ".join(f"{k} {v:,}" for k, v in run.by_reason.items()))
    if explain_id is not None:
        from dipengine.grouper import prepare_cases
        from dipengine.reference import group_case

        if run.explain is None:
            click.echo(f"--explain: case_id {explain_id!r} not in the input", err=True)
            raise click.exceptions.Exit(1)
        case = prepare_cases(run.explain.slice(0, 1), normalised=True).to_pylist()[0]
        res = group_case(case, rs)
        click.echo(f"explain {explain_id}: {res['match_path']} {res['dip_code'] or res['reason']}")
        for line in res["trace"]:
            click.echo("  " + line)
