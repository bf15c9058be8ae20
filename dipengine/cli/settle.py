"""``dipengine settle``: monthly pre-settlement or annual clearing of a pooling region."""
from __future__ import annotations

import click

from dipengine.cli._common import MultiValueCommand, echo_counts, input_layout_options, progress_bar


def _yuan(fen) -> str:
    if fen is None:
        return "-"
    sign = "-" if fen < 0 else ""
    fen = abs(int(fen))
    return f"{sign}{fen // 100:,}.{fen % 100:02d}"


@click.command("settle", cls=MultiValueCommand, multi_value=("--input", "--monthly", "--benefits"))
@click.option("--rules", "rules_dir", required=True, type=click.Path(file_okay=False),
              help="Rule-set directory (groups.csv, manifest.toml, ...), or a shipped set's name (demo).")
@click.option("--pricing", "pricing_dir", required=True, type=click.Path(),
              help="Pricing directory: policy.toml and same_level_avg.csv (+ manifest.toml), or shipped "
                   "tables as REGION/YEAR (440200/2026).")
@click.option("--hospitals", "hospitals_path", required=True, type=click.Path(exists=True),
              help="Hospital registry (hospitals.csv).")
@click.option("--input", "inputs", required=True, multiple=True,
              help="Case file(s): Parquet, CSV, Arrow IPC, a directory or glob; several may follow one flag.")
@click.option("--period", required=True,
              help="YYYY-MM for a monthly pre-settlement, YYYY for the annual clearing.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (cases.parquet, hospitals.parquet/.csv, special_review.parquet, manifest.json); "
                   "replaced whole if it "
                   "is a dipengine output (see --force).")
@click.option("--monthly", "monthly_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Annual only: output directories of the monthly runs, whose payments are netted off.")
@click.option("--prepayments", "prepayments_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Annual only: prepayments (预付金) to offset in the final transfer, a table of hospital_id, amount "
                   "(yuan) [, pool] [, note].")
@click.option("--deductions", "deductions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Annual only: audit deductions (审核扣款/拒付), taken off the assessed fund due before the bands; "
                   "a table of hospital_id, amount (yuan) [, pool] [, reason].")
@click.option("--reviewed", "reviewed_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Annual only: special-review decisions (特例单议), a table of case_id, decision (approved | "
                   "rejected), approved_points or approved_amount (yuan) [, note].")
@click.option("--threads", "n_threads", type=int, default=None, help="Grouping threads (default: all).")
@click.option("--benefits", "benefit_dirs", multiple=True, type=click.Path(exists=True),
              help="Estimate mode: pricing dirs (or benefits.csv files) of other insured regions, used with the "
                   "pricing dir's own benefits.csv; repeatable.")
@click.option("--allow-out-of-period", is_flag=True,
              help="Settle even when the rule set's effective dates do not cover PERIOD (a warning then).")
@click.option("--force", is_flag=True,
              help="Replace --out even when it is not a dipengine output (everything in it is deleted).")
@click.option("--no-benefits", is_flag=True,
              help="Do not estimate missing fund_paid/patient_paid from benefits.csv (they count as 0).")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="local: this process, streaming; dask: tasks on a Dask cluster (pip install "
                   "\"dipengine[dask]\"; contract-layout Parquet input). Same output files either way.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="With --engine dask: the scheduler to use (tcp://HOST:8786); default: a local cluster.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="With --engine dask and no --scheduler: worker processes of the local cluster (default: CPUs).")
@input_layout_options
def command(rules_dir, pricing_dir, hospitals_path, inputs, period, out_dir, monthly_dirs, prepayments_path,
            deductions_path, reviewed_path, n_threads, benefit_dirs, allow_out_of_period, force, no_benefits, engine, scheduler,
            n_workers, schema, encoding, sheet):
    """Group, score and settle the cases of PERIOD; write case results and hospital statements.

    Estimate mode: when the pricing dir has a benefits.csv (or --benefits is given), cases
    without recorded fund_paid/patient_paid are settled on the computed fund benefit and
    patient share (case column paid_source); recorded ones get the difference (fund_diff_fen).

    Annual clearing workflow: --prepayments FILE (预付金, offset in the final transfer) and
    --deductions FILE (审核扣款, taken off the assessed fund due before the bands), each a table
    of hospital_id, amount (yuan) [, pool] [, note | reason]; the policy's [settlement]
    deposit_release releases the quality deposit by the registry's assessment_score.

    Special review: special_review.parquet lists the cases flagged for special review, ranked
    by ratio within each hospital's quota ([special_review] quota); --reviewed FILE pays the
    experts' decisions (approved points, or an approved amount per item).
    """
    from dipengine.policy import resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir
    from dipengine.pipeline import settle_to  # the Dask engine is imported only when asked for
    from dipengine.settlement import parse_period

    if no_benefits and benefit_dirs:
        raise click.UsageError("--benefits and --no-benefits exclude each other")
    rules_dir, pricing_dir = resolve_rules_dir(rules_dir), resolve_pricing_dir(pricing_dir)
    from dipengine.io import check_output, replace_allowed

    clearing_files = [f for f in (prepayments_path, deductions_path, reviewed_path) if f is not None]
    check_output(out_dir, [*inputs, rules_dir, pricing_dir, hospitals_path, *monthly_dirs, *benefit_dirs,
                           *clearing_files], directory=True, force=force)

    kind, _, _ = parse_period(period)
    callback, close = progress_bar(None, "settling (rows over both passes)" if kind == "annual" else "settling")

    def prepared(run):
        for warning in run.warnings:
            click.echo(f"warning: {warning}", err=True)

    if engine == "local" and (scheduler or n_workers):
        raise click.UsageError("--scheduler and --workers go with --engine dask")
    if engine == "dask" and (encoding or sheet):
        raise click.UsageError("--engine dask reads Parquet: --encoding and --sheet do not apply")
    common = dict(monthly=list(monthly_dirs) or None, progress=callback,
                  benefits=False if no_benefits else (list(benefit_dirs) or None), schema=schema,
                  allow_out_of_period=allow_out_of_period, on_prepared=prepared, prepayments=prepayments_path,
                  deductions=deductions_path, reviewed=reviewed_path)
    try:
        with replace_allowed(force):
            if engine == "dask":
                from dipengine.dask_engine import settle_to as dask_settle_to

                result = dask_settle_to(out_dir, list(inputs), rules_dir, pricing_dir, hospitals_path, period,
                                        scheduler=scheduler, n_workers=n_workers, **common)
            else:
                result = settle_to(out_dir, list(inputs), rules_dir, pricing_dir, hospitals_path, period,
                                   n_threads=n_threads, encoding=encoding, sheet=sheet, **common)
    finally:
        close()
    m = result.manifest
    title = "monthly pre-settlement" if kind == "monthly" else "annual clearing"
    click.echo(f"{title} {period}: {m['counts']['cases']:,} cases, {m['counts']['in_pool']:,} in the pools, "
               f"{m['counts']['special_review']:,} flagged for special review")
    sr = m["special_review"]
    line = (f"special review: {sr['flagged']:,} flagged in the pools, {sr['within_quota']:,} within the quota "
            f"({sr['quota'] * 1000:g} ‰ of each hospital's cases)")
    if "decisions" in sr:
        d = sr["decisions"]
        line += (f"; decisions: {d['approved_points']:,} new points, {d['approved_amount']:,} paid per item "
                 f"({_yuan(sr['review_amount_fen'])} yuan), {d['rejected']:,} rejected")
    click.echo(line)
    echo_counts("cases by match path:", m["counts"]["match_path"])
    if "paid_source" in m["counts"]:
        echo_counts("payments by source (estimate mode):", m["counts"]["paid_source"])
        click.echo(f"recorded fund minus computed benefit: {_yuan(m['sums']['cases']['fund_diff_fen'])} yuan")
    for pool, info in m["pools"].items():
        pv = info["point_value_yuan"]
        line = (f"{pool}: {info['n_cases']:,} cases, {info['points']:,.4f} points, "
                f"budget value {info['budget_value_yuan']:.4f}")
        if kind == "annual":
            raw = info.get("settlement_value_raw_yuan")
            line += f", settlement value {'-' if pv is None else f'{pv:.4f}'}"
            if info.get("clamped"):
                line += f" (clamped from {raw:.4f})"
        click.echo(line + " yuan/point")
        if kind == "annual" and info.get("total_cost_budget_fen") is not None:
            status = "reconciled to the fen" if info["reconciled_to_budget"] else "not reconciled (clamped)"
            click.echo(f"  total-cost budget {_yuan(info['total_cost_budget_fen'])}, "
                       f"standard {_yuan(info['hospital_standard_fen'])}: {status}")
    sums = m["sums"]["hospitals"]
    other = f", other funds {_yuan(sums['other_fund_paid_fen'])}" if sums.get("other_fund_paid_fen") else ""
    click.echo(f"standard {_yuan(sums['standard_fen'])}, fund due {_yuan(sums['fund_due_fen'])}{other}, "
               f"recorded {_yuan(sums['recorded_fen'])} yuan")
    if kind == "annual":
        if "deduction_fen" in sums:
            click.echo(f"audit deductions {_yuan(sums['deduction_fen'])} yuan off the assessed fund due before the "
                       f"bands: banded due {_yuan(sums['fund_due_net_fen'])}")
        extra = ""
        if "deposit_release_fen" in sums:
            extra += (f", deposit released {_yuan(sums['deposit_release_fen'])} of {_yuan(sums['deposit_fen'])} "
                      f"(by assessment score)")
        if "prepayment_fen" in sums:
            extra += f", prepayments offset {_yuan(sums['prepayment_fen'])}"
        click.echo(f"clearing {_yuan(sums['clearing_fen'])}, paid monthly {_yuan(sums['monthly_paid_fen'])}{extra}, "
                   f"final transfers {_yuan(sums['final_fen'])} yuan")
        from dipengine.demo import clearing_summary

        click.echo("clearing vs fund budget (yuan):")
        for line in clearing_summary(result.hospitals, m):
            click.echo("  " + line)
    else:
        click.echo(f"paid now {_yuan(sums['monthly_paid_fen'])}, deposit withheld {_yuan(sums['deposit_fen'])} yuan")
    click.echo(f"wrote {out_dir}")
