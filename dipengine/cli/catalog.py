"""``dipengine catalog build``: a local catalogue (rule set) and pricing skeleton from history."""
from __future__ import annotations

import click

from dipengine.cli._common import echo_counts, input_layout_options, progress_bar


def _floats(text: str, what: str, n=None) -> tuple:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{what}: comma-separated numbers expected, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise click.BadParameter(f"{what}: {n} numbers expected, got {text!r}")
    return vals


def _ints(text: str, what: str) -> list:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{what}: comma-separated integers expected, got {text!r}") from None


@click.group(name="catalog")
def command():
    """Local DIP catalogues built from history (dip-rules §4.3)."""


@command.command(name="build")
@click.option("--history", "history", multiple=True, metavar="FILE...",
              help="History case files, one per year, OLDEST FIRST: '--history Y1 Y2 Y3' "
                   "(or --history repeated). Parquet/CSV/Arrow files, directories or globs; "
                   "raw (contract §2) or already-normalised case tables.")
@click.argument("more_history", nargs=-1, metavar="[FILE]...")
@click.option("--hospitals", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Hospital registry (hospitals.csv, contract §3).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Rule-set directory to write (contract §4); an existing one is replaced atomically "
                   "if it is a dipengine output (see --force).")
@click.option("--pricing-out", type=click.Path(file_okay=False), default=None,
              help="Also write a pricing skeleton here: same_level_avg.csv, policy.toml (with the "
                   "budget point value), manifest.toml.")
@click.option("--weights", default=None,
              help="Year weights, oldest first, one per history file  [default: 1,2,7; with fewer "
                   "than 3 files the newest of them, e.g. 2,7].")
@click.option("--threshold", default=15.0, show_default=True, type=float,
              help="Weighted average annual cases that make a combination a core group "
                   "(and, unless --comprehensive-threshold is given, a comprehensive or range pool a group).")
@click.option("--comprehensive-threshold", default=None, type=float,
              help="Weighted average annual cases that make a comprehensive (category x treatment class) or "
                   "range (chapter x class) pool a group, and let the blank group be scored from its own "
                   "cases  [default: --threshold].")
@click.option("--scale", default=1000.0, show_default=True, type=float,
              help="Score scale K: score = group average / overall average x K.")
@click.option("--trim", default="0.025,0.975", show_default=True,
              help="Quantiles kept per group and year ('lo,hi'), or 'none'.")
@click.option("--min-trim-group", default=25, show_default=True, type=int,
              help="Cases a group needs in a year before that year is trimmed.")
@click.option("--related-min-gain", default=0.2, show_default=True, type=float,
              help="Relative cost difference that makes main + related procedure its own group.")
@click.option("--basic-share", default=0.5, show_default=True, type=float,
              help="Basic groups: minimum share of (weighted) cases treated at level-1 hospitals.")
@click.option("--basic-cv", default=0.7, show_default=True, type=float,
              help="Basic groups: maximum within-group coefficient of variation of cost.")
@click.option("--aux-min-cases", default=15.0, show_default=True, type=float,
              help="Weighted cases an auxiliary subtype needs for a coefficient.")
@click.option("--aux-min-diff", default=0.1, show_default=True, type=float,
              help="Minimum |coefficient - 1| for an auxiliary subtype to be written.")
@click.option("--diagnostic-as-conservative", is_flag=True,
              help="Ignore diagnostic procedures when forming groups (such cases are conservative).")
@click.option("--cci-levels", default=None, metavar="C1,C2,C3",
              help="CCI score cut points of the subtypes cci_1, cci_2, cci_3; written to the rule set's "
                   "[options] cci_levels  [default: 1,3,5].")
@click.option("--severity-min-los", default=None, type=int,
              help="Days of stay the severity subtypes need; [options] severity_min_los  [default: 3].")
@click.option("--death-discharge-mode", default=None, type=int,
              help="discharge_mode value of death (subtype death); [options] death_discharge_mode  [default: 5].")
@click.option("--age-bands", default=None, metavar="BANDS",
              help="Age bands 'name:low:high' separated by commas ('Nd' = days, else years; empty high = open), "
                   "or 'none'; [options] age_bands  [default: 0_28d:0d:28d,29d_1y:29d:364d,1_6:1:6,7_17:7:17,"
                   "65_69:65:69,70_79:70:79,80p:80:].")
@click.option("--procedures", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Procedure classes (code,class[,level]); default: the shipped vocabulary, "
                   "then the ICD-9-CM-3 chapter heuristic.")
@click.option("--name", default="local", show_default=True, help="Rule-set name (manifest).")
@click.option("--rules-version", default=None, help="Rule-set version (default '<next year>.1').")
@click.option("--force", is_flag=True,
              help="Replace --out / --pricing-out even when they are not dipengine outputs "
                   "(everything in them is deleted).")
@input_layout_options
def build(history, more_history, hospitals, out, pricing_out, weights, threshold, comprehensive_threshold, scale,
          trim, min_trim_group, related_min_gain, basic_share, basic_cv, aux_min_cases, aux_min_diff,
          diagnostic_as_conservative, cci_levels, severity_min_los, death_discharge_mode, age_bands, procedures,
          name, rules_version, force, schema, encoding, sheet):
    """Build a rule set from history years; with --pricing-out also the pricing skeleton.

    FILE... are further history files: everything after --history up to the next option.

    Example: dipengine catalog build --history h2024.parquet h2025.parquet h2026.parquet
    --hospitals hospitals.csv --out rules/ --pricing-out pricing/
    """
    from dipengine.catalog import DEFAULT_WEIGHTS, build_catalog, check_params

    files = list(history) + list(more_history)
    if not files:
        raise click.UsageError("give the history files with --history Y1 Y2 ...")
    w = DEFAULT_WEIGHTS if weights is None else _floats(weights, "--weights", len(files))
    trim_q = None if trim.strip().lower() == "none" else _floats(trim, "--trim", 2)
    options = {}
    if cci_levels is not None:
        options["cci_levels"] = _ints(cci_levels, "--cci-levels")
    if severity_min_los is not None:
        options["severity_min_los"] = severity_min_los
    if death_discharge_mode is not None:
        options["death_discharge_mode"] = death_discharge_mode
    if age_bands is not None:
        options["age_bands"] = [] if age_bands.strip().lower() == "none" else \
            [b.strip() for b in age_bands.split(",")]
    try:
        check_params(len(files), weights=w, threshold=threshold, scale=scale, trim=trim_q,
                     min_trim_group=min_trim_group, basic_share=basic_share, basic_cv=basic_cv,
                     comprehensive_threshold=comprehensive_threshold, options=options)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    import os

    from dipengine.errors import DataError
    from dipengine.io import check_output, replace_allowed

    inputs = files + [hospitals, procedures]
    real_out = check_output(out, inputs, directory=True, force=force)
    if pricing_out:
        real_pricing = check_output(pricing_out, inputs, directory=True, force=force)
        a, b = str(real_out), str(real_pricing)
        if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
            raise DataError(f"--out {out} and --pricing-out {pricing_out} must be two separate directories",
                            file=pricing_out)
    callback, close = progress_bar(None, "history")
    try:
        with replace_allowed(force):
            res = build_catalog(
                files, hospitals, out, pricing_out, weights=w, threshold=threshold,
                comprehensive_threshold=comprehensive_threshold, options=options, scale=scale, trim=trim_q,
                min_trim_group=min_trim_group, related_min_gain=related_min_gain, basic_share=basic_share,
                basic_cv=basic_cv, aux_min_cases=aux_min_cases, aux_min_diff=aux_min_diff,
                diagnostic_as_conservative=diagnostic_as_conservative, name=name, version=rules_version,
                procedures=procedures, progress=callback, schema=schema, encoding=encoding, sheet=sheet,
            )
    finally:
        close()
    echo_counts("groups by type", res.counts)
    echo_counts("cases used per year", {str(y): n for y, n in zip(res.years, res.cases_used)})
    click.echo(f"auxiliary coefficients  {res.aux.num_rows:,}")
    click.echo(f"overall average cost    {res.overall_avg_cost:,.2f} yuan")
    click.echo(f"budget point value      {res.budget_point_value:.4f} yuan/point")
    click.echo(f"rule set written to     {out}")
    if pricing_out:
        click.echo(f"pricing skeleton in     {pricing_out} (review policy.toml before settling)")
