"""``dipengine validate``: read and check cases without grouping (contract §1)."""
from __future__ import annotations

import click
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.cli._common import echo_counts, input_layout_options, progress_bar


def _period(ctx, param, value):
    if value is None:
        return None
    from dipengine.reader import parse_period

    try:
        parse_period(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def with_yuan_columns(table: pa.Table) -> pa.Table:
    """Add the contract's yuan columns (decimal128, 2 places) just before their ``*_fen`` twins."""
    from dipengine.money import fen_to_decimal
    from dipengine.reader import MONEY

    for name in MONEY:
        fen_name = f"{name}_fen"
        i = table.column_names.index(fen_name)
        table = table.add_column(i, name, fen_to_decimal(table[fen_name]))
    return table


@click.command("validate")
@click.option("--input", "input_", required=True, help="Cases: Parquet, CSV, Arrow IPC, directory or glob.")
@click.option("--hospitals", type=click.Path(dir_okay=False), help="Hospital registry (unknown ids are flagged).")
@click.option("--period", callback=_period, help="YYYY or YYYY-MM: discharges outside it are BAD_DATES.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the normalised table here (Parquet; CSV when the name ends in .csv).")
@click.option("--codes-icd10", type=click.Path(dir_okay=False), help="Allowed diagnoses (TSV code<TAB>name).")
@click.option("--codes-icd9", type=click.Path(dir_okay=False), help="Allowed procedures (TSV code<TAB>name).")
@input_layout_options
def command(input_, hospitals, period, out, codes_icd10, codes_icd9, schema, encoding, sheet):
    """Read and check cases without grouping; print counts by reason code.

    Rejected rows are a report, not an error: the exit status is 0 unless a file itself is
    unusable (1, with a one-line message naming file and column).
    """
    from dipengine.io import check_output, write_table
    from dipengine.reader import read_cases

    if out:
        check_output(out, [input_, hospitals, codes_icd10, codes_icd9])

    code_lists = {"dx": codes_icd10, "proc": codes_icd9}
    callback, close = progress_bar(None, "validate")
    try:
        table = read_cases(input_, hospitals, period=period, code_lists=code_lists, progress=callback,
                           schema=schema, encoding=encoding, sheet=sheet)
    finally:
        close()
    n = table.num_rows
    reason = table["reason"]
    n_ok = reason.null_count
    warned = pc.sum(pc.and_(pc.is_null(reason), pc.is_valid(table["reason_detail"]))).as_py() or 0
    click.echo(f"rows read  {n:>12,}")
    click.echo(f"rows OK    {n_ok:>12,}")
    if warned:
        click.echo(f"  with warnings {warned:,} (see reason_detail)")
    if n - n_ok:
        counts = {d["values"]: d["counts"] for d in pc.value_counts(pc.drop_null(reason)).to_pylist()}
        from dipengine.reasons import NAMES

        echo_counts("rejected by reason:", {k: counts[k] for k in NAMES if k in counts})
    if out:
        write_table(with_yuan_columns(table), out)
        click.echo(f"wrote {out}")
