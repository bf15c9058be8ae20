"""``dipengine report``: the statements workbook and the HTML report of a settlement."""
from __future__ import annotations

import click

from dipengine.cli._common import MultiValueCommand


@click.command("report", cls=MultiValueCommand, multi_value=("--monthly",))
@click.argument("settle_dir", metavar="SETTLE_DIR", type=click.Path(file_okay=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (statements.xlsx, report.html, manifest.json); replaced whole if it is a "
                   "dipengine output (see --force).")
@click.option("--monthly", "monthly_dirs", multiple=True, type=click.Path(),
              help="Output directories of the monthly runs whose point values are plotted (default: those the "
                   "annual manifest lists); several may follow one flag.")
@click.option("--audit", "audit_dir", type=click.Path(), default=None,
              help="A `dipengine audit --out` directory: its indicators.parquet is plotted by hospital.")
@click.option("--force", is_flag=True,
              help="Replace --out even when it is not a dipengine output (everything in it is deleted).")
def command(settle_dir, out_dir, monthly_dirs, audit_dir, force):
    """Excel statements (a summary sheet and one sheet per hospital: headline figures, the band
    computation, the case list) and a self-contained HTML report with plots, from a
    `settle --out` directory SETTLE_DIR."""
    import time

    from dipengine.io import replace_allowed
    from dipengine.report import write_report

    t = time.perf_counter()
    with replace_allowed(force):
        r = write_report(settle_dir, out_dir, monthly=list(monthly_dirs) or None, audit=audit_dir)
    what = "annual clearing" if r.kind == "annual" else "monthly pre-settlement"
    click.echo(f"dipengine report: {what} {r.period}, written to {r.out}/")
    click.echo(f"  {r.workbook.name}: summary + {r.n_hospitals:,} hospital sheets "
               f"({r.n_statements:,} statements, {r.n_case_rows:,} case rows)")
    months = f"{len(r.months)} months" if r.months else "no monthly runs"
    click.echo(f"  {r.html.name}: {len(r.charts)} charts ({', '.join(r.charts)}); point values of {months}"
               + ("; audit indicators" if r.audit else ""))
    click.echo(f"  done in {time.perf_counter() - t:.1f} s")
