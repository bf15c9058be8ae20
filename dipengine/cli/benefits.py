"""``dipengine benefits``: patient-side benefits of every case of a file (contract §1)."""
from __future__ import annotations

import click
import numpy as np
import pyarrow.compute as pc

from dipengine.cli._common import MultiValueCommand, echo_counts, input_layout_options, progress_bar


@click.command("benefits", cls=MultiValueCommand, multi_value=("--pricing",))
@click.option("--pricing", "pricing", multiple=True, required=True, type=click.Path(),
              metavar="PRICING_DIR...",
              help="Pricing dir(s) holding benefits.csv: '--pricing A B' (or --pricing repeated) for "
                   "the policies of several insured regions.")
@click.option("--hospitals", required=True, type=click.Path(), help="Hospital registry (hospitals.csv).")
@click.option("--input", "input_", required=True, type=click.Path(), help="Cases (Parquet, CSV, Arrow IPC or a dataset).")
@click.option("--out", required=True, type=click.Path(), help="Output file (Parquet, or CSV when it ends in .csv).")
@click.option("--period", default=None, help="Optional YYYY or YYYY-MM: cases discharged outside it are rejected.")
@input_layout_options
def command(pricing, hospitals, input_, out, period, schema, encoding, sheet):
    """Fund benefit and patient share per case (dip-rules §8).

    Caps and repeat-admission deductibles accumulate per patient_id over the year in discharge
    order. Money columns are integer fen. Other funds a case records (other_fund_paid) are
    taken off the patient share (column other_fund_fen), never off the fund benefit.
    """
    from dipengine.benefits import compute_benefits, load_benefits
    from dipengine.hospitals import read_hospitals
    from dipengine.io import check_output, write_table
    from dipengine.policy import resolve_pricing_dir
    from dipengine.reader import read_cases

    pricing_dirs = [resolve_pricing_dir(p) for p in pricing]
    check_output(out, [input_, hospitals, *pricing_dirs])  # before any work: never over an input
    rules = load_benefits(pricing_dirs)
    registry = read_hospitals(hospitals)
    callback, close = progress_bar(None, "reading")
    try:
        cases = read_cases(input_, registry, period=period, progress=callback, schema=schema, encoding=encoding,
                           sheet=sheet)
    finally:
        close()
    result = compute_benefits(cases, rules, registry)
    write_table(result, out)

    n = result.num_rows
    note = result["benefit_note"]
    click.echo(f"cases {n:,}; benefits computed {int(pc.sum(pc.is_null(note)).as_py() or 0):,}; "
               f"cap reached {int(pc.sum(pc.fill_null(result['cap_reached'], False)).as_py() or 0):,}")
    counts = {k["values"]: k["counts"] for k in pc.value_counts(note.drop_null()).to_pylist()}
    if counts:
        echo_counts("not computed, by note:", dict(sorted(counts.items())))
    ins = cases["insurance_type"].to_numpy(zero_copy_only=False)
    fund = result["fund_benefit_fen"].fill_null(0).to_numpy()
    scope = result["policy_scope_fen"]
    scope_np = scope.fill_null(0).to_numpy()
    computed = ~np.asarray(pc.is_null(scope))
    click.echo("realised fund share of policy-scope cost:")
    for kind in ("employee", "resident"):
        m = computed & (ins == kind)
        s, f = int(scope_np[m].sum()), int(fund[m].sum())
        share = f"{f / s:.1%}" if s else "-"
        click.echo(f"  {kind:<9} {int(m.sum()):>10,} cases  fund {f / 100:>16,.2f}  "
                   f"of policy scope {s / 100:>16,.2f}  = {share}")
    other = result["other_fund_fen"]
    n_other = int(pc.sum(pc.greater(other, 0)).as_py() or 0)
    if n_other:
        click.echo(f"other funds taken off the patient share: {int(pc.sum(other).as_py()) / 100:,.2f} yuan "
                   f"over {n_other:,} cases")
    diff = result["fund_diff_fen"]
    if diff.null_count < n:
        click.echo(f"recorded fund_paid minus computed benefit: {int(pc.sum(diff).as_py()) / 100:,.2f} yuan "
                   f"over {n - diff.null_count:,} cases")
    click.echo(f"written {out}")
