"""``dipengine audit``: per-case audit flags, hospital indicators and the auditors' worklist."""
from __future__ import annotations

import click

from dipengine.cli._common import MultiValueCommand, echo_counts, input_layout_options, progress_bar


@click.command("audit", cls=MultiValueCommand, multi_value=("--input", "--history"))
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False),
              help="Rule-set directory, or a shipped set's name (demo).")
@click.option("--pricing", "pricing_dir", required=True, type=click.Path(),
              help="Pricing directory (policy.toml with an optional [audit] table, same_level_avg.csv), or REGION/YEAR.")
@click.option("--hospitals", "hospitals_path", required=True, type=click.Path(exists=True),
              help="Hospital registry (hospitals.csv).")
@click.option("--input", "inputs", required=True, multiple=True, help="Case file(s), as for settle.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (flags.parquet, indicators.parquet/.csv, worklist.csv, manifest.json).")
@click.option("--period", default=None, help="Year of the cases (default: the policy's year).")
@click.option("--readmit-days", type=click.IntRange(min=0), default=None,
              help="Readmission window in days (default 15, or the policy's [audit] readmit_days).")
@click.option("--readmit-hospital", type=click.Choice(["same", "any"]), default=None,
              help="Readmissions at the same hospital only (default) or at any hospital.")
@click.option("--readmit-group", type=click.Choice(["category", "group", "any"]), default=None,
              help="Readmissions with the same main-diagnosis category (default), the same DIP group, or any.")
@click.option("--history", "history", multiple=True,
              help="An earlier year's cases: the year-on-year rise of the auxiliary-subtype share signals up-coding.")
@click.option("--threads", "n_threads", type=int, default=None, help="Worker threads (default: all).")
@click.option("--force", is_flag=True, help="Replace --out even when it is not a dipengine output.")
@input_layout_options
def command(rules_dir, pricing_dir, hospitals_path, inputs, out_dir, period, readmit_days, readmit_hospital,
            readmit_group, history, n_threads, force, schema, encoding, sheet):
    """Flag the cases of a year (readmissions, low-standard admissions, over-long stays, deaths in
    low-risk groups, coding inconsistencies) and rank the hospitals on indicators against their
    level's peers (CMI, deviation shares, readmission rate, time and cost indices, up-coding)."""
    from dipengine.audit import audit, options_from, write_audit
    from dipengine.io import check_output, replace_allowed
    from dipengine.policy import load_policy, resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir

    rules_dir, pricing_dir = resolve_rules_dir(rules_dir), resolve_pricing_dir(pricing_dir)
    check_output(out_dir, [*inputs, *history, rules_dir, pricing_dir, hospitals_path], directory=True, force=force)
    policy = load_policy(pricing_dir)
    opt = options_from(policy, readmit_days=readmit_days, readmit_hospital=readmit_hospital,
                       readmit_group=readmit_group)
    callback, close = progress_bar(None, "auditing")
    try:
        result = audit(list(inputs), rules_dir, policy, hospitals_path, options=opt, n_threads=n_threads,
                       progress=callback, schema=schema, encoding=encoding, sheet=sheet, period=period,
                       history=list(history) or None)
    finally:
        close()
    from dipengine.hospitals import read_hospitals

    with replace_allowed(force):
        write_audit(result, out_dir, read_hospitals(hospitals_path))
    c = result.manifest["counts"]
    click.echo(f"audit {result.manifest['period']}: {c['cases']:,} cases, {c['scored']:,} grouped, "
               f"{c['flagged']:,} flagged")
    echo_counts("flags:", {k: c[k] for k in ("readmission", "transfer_readmission", "low_standard", "over_long_stay",
                                             "low_risk_death", "inconsistent_coding")})
    up = result.manifest["hospitals"]["upcoding"]
    click.echo(f"hospitals: {result.manifest['hospitals']['n']:,}, up-coding signal: {', '.join(up) or 'none'}")
    top = result.indicators.slice(0, 5).to_pylist()
    if top:
        click.echo("worklist (top 5): " + ", ".join(f"{r['rank']}. {r['hospital_id']}" for r in top))
    click.echo(f"wrote {out_dir}")
