"""``dipengine synth``: write a synthetic pooling region (cases + hospital registry)."""
from __future__ import annotations

import click


def _region(ctx, param, value):
    if value is not None and not (len(value) == 6 and value.isdigit()):
        raise click.BadParameter(f"a 6-digit pooling-region code is expected, got {value!r}")
    return value


@click.command(name="synth")
@click.option("--year", required=True, type=int, help="Settlement year; all dates lie in it.")
@click.option("--cases", "n_cases", required=True, type=click.IntRange(min=0), help="Number of case rows.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for cases.parquet, hospitals.csv and planted.arrow (the planted patterns' ground truth).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed; the years of one seed share hospitals and case mix.")
@click.option("--region", default="440200", show_default=True, callback=_region,
              help="Pooling-region code of the hospitals.")
@click.option("--hospitals-count", "n_hospitals", default=60, show_default=True, type=click.IntRange(min=1),
              help="Hospitals in the generated registry (8/60 level 3, 20/60 level 2, rest level 1).")
@click.option("--hospitals", "registry", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Reuse this registry (hospitals.csv) instead of generating one.")
@click.option("--bad-rows", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Fraction of rows with one planted defect each (column planted_defect).")
@click.option("--over-long", "over_long", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              metavar="SHARE", help="Share of cases planted as over-long stays (LOS x 3-5, cost x 1.2).")
@click.option("--upcoding-hospitals", "upcoding_hospitals", default=0.0, show_default=True,
              type=click.FloatRange(0.0, 1.0), metavar="SHARE",
              help="Share of hospitals (at least one when > 0; levels 2-3) that up-code: they add severity-III / "
                   "high-weight comorbidity secondary diagnoses.")
@click.option("--upcoding-rate", "upcoding_rate", default=0.6, show_default=True, type=click.FloatRange(0.0, 1.0),
              metavar="P", help="Probability that a case of an up-coding hospital is up-coded.")
@click.option("--codes-icd10", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Draw diagnoses from this TSV list (code<TAB>name) instead of the vocabulary.")
@click.option("--codes-icd9", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Draw procedures from this TSV list (code<TAB>name) instead of the vocabulary.")
@click.option("--schema", default="contract", show_default=True, metavar="NAME|DIR",
              help="Layout of cases.parquet: contract, or nhsa (national settlement-list field names and codes, "
                   "a bureau extract's twin; read it back with --schema nhsa).")
def command(year, n_cases, out, seed, region, n_hospitals, registry, bad_rows, over_long, upcoding_hospitals,
            upcoding_rate, codes_icd10, codes_icd9, schema):
    """Write a synthetic region: OUT/cases.parquet (contract §2), OUT/hospitals.csv (§3) and
    OUT/planted.arrow (one row per planted pattern: pattern, case_id, hospital_id).

    Example: dipengine synth --year 2026 --cases 100000 --out region/ --bad-rows 0.01 --over-long 0.02
    """
    import dataclasses
    from pathlib import Path

    from dipengine.cli._common import progress_bar
    from dipengine.io import check_output
    from dipengine.synth import DEFAULT_PARAMS, PLANTED_PATTERNS, iter_region, write_region_stream

    inputs = [registry, codes_icd10, codes_icd9]
    for name in ("cases.parquet", "hospitals.csv", "planted.arrow"):  # before any work: never over an input
        check_output(Path(out) / name, inputs)
    params = dataclasses.replace(DEFAULT_PARAMS, over_long_share=over_long, upcoding_hospitals=upcoding_hospitals,
                                 upcoding_rate=upcoding_rate)
    try:
        hospitals, chunks = iter_region(
            year, n_cases, seed=seed, region=region, n_hospitals=n_hospitals, bad_rows=bad_rows,
            codes_icd10=codes_icd10, codes_icd9=codes_icd9, hospitals=registry, params=params, planted=True,
        )
    except ValueError as e:  # e.g. up-coding hospitals asked of a registry without level 2-3 hospitals
        raise click.UsageError(str(e)) from None
    progress, close = progress_bar(n_cases, "synth")
    try:
        cases_path, hosp_path, s = write_region_stream(chunks, hospitals, out, schema=schema, progress=progress,
                                                       inputs=inputs)
    finally:
        close()
    by_level = ", ".join(f"level {lvl}: {k}" for lvl, k in sorted(s["hospitals_by_level"].items(), reverse=True))
    click.echo(f"wrote {cases_path}, {hosp_path} and {s['planted_path']}")
    click.echo(f"  cases         {s['cases']:>12,}")
    click.echo(f"  hospitals     {s['hospitals']:>12,}  ({by_level})")
    click.echo(f"  remote share  {s['remote_share']:>12.1%}")
    click.echo(f"  bad rows      {s['bad_share']:>12.1%}")
    click.echo(f"  total cost    {float(s['total_cost_yuan'] or 0):>16,.2f} yuan")
    planted = ", ".join(f"{p} {s['planted'][p]:,}" for p in PLANTED_PATTERNS if s["planted"][p])
    click.echo(f"  planted       {planted or 'none'}")
