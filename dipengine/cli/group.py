"""``dipengine group``: group cases into DIP groups (contract §1, §6.1)."""
from __future__ import annotations

from collections import Counter

import click


@click.command("group")
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False), help="Rule-set directory.")
@click.option("--input", "input_", required=True, help="Cases: Parquet, CSV, Arrow IPC, directory or glob.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output (Parquet, or CSV if *.csv).")
@click.option("--hospitals", type=click.Path(dir_okay=False), help="Hospital registry (flags unknown hospitals).")
@click.option("--explain", "explain_id", metavar="CASE_ID", help="Print the candidates considered for this case.")
@click.option("--threads", type=int, default=None, help="Kernel threads (default: all available).")
def command(rules_dir, input_, out, hospitals, explain_id, threads):
    """Group cases: one output row per input row, in order; rejected rows keep their reason."""
    from dipengine.grouper import group, prepare_cases
    from dipengine.io import write_table
    from dipengine.reader import read_cases
    from dipengine.rules import load_rules

    rs = load_rules(rules_dir)
    cases = read_cases(input_, hospitals)
    result = group(cases, rs, n_threads=threads)
    write_table(result, out)
    click.echo(f"grouped {result.num_rows:,} cases with rules {rs.name} {rs.version} -> {out}")
    paths = Counter(result["match_path"].to_pylist())
    click.echo("by match_path: " + ", ".join(f"{k} {paths[k]:,}" for k in
                                             ("core", "basic", "comprehensive", "blank", "excluded", "rejected")))
    reasons = Counter(r for r in result["reason"].to_pylist() if r)
    if reasons:
        click.echo("by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items())))
    if explain_id is not None:
        import pyarrow.compute as pc

        from dipengine.reference import group_case

        hit = cases.filter(pc.equal(cases["case_id"], explain_id))
        if hit.num_rows == 0:
            click.echo(f"--explain: case_id {explain_id!r} not in the input", err=True)
            raise click.exceptions.Exit(1)
        case = prepare_cases(hit.slice(0, 1)).to_pylist()[0]
        res = group_case(case, rs)
        click.echo(f"explain {explain_id}: {res['match_path']} {res['dip_code'] or res['reason']}")
        for line in res["trace"]:
            click.echo("  " + line)
