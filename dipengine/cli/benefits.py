"""``dipengine benefits``: patient-side benefits of every case of a file (contract §1).

Streams in bounded memory: the cases are read batch by batch (``reader.map_cases``), partitioned
by patient and spilled to temporary files (``benefits.spill_benefits``; admissions and caps still
follow each patient over the whole file), and the result is written in fixed row groups
(``io.write_batches``), so the file's bytes depend on the cases only.
"""
from __future__ import annotations

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.cli._common import MultiValueCommand, echo_counts, input_layout_options, progress_bar
from dipengine.parquet_source import BATCH_SIZE

OUT_ROWS = 1 << 20
"""Rows per output row group (Parquet; the last one is what is left). Fixed in rows, never in
input batches, so the output's bytes do not depend on ``BATCH_SIZE``; the row groups of a whole
table written by ``pyarrow.parquet.write_table``."""


class _Summary:
    """What the command prints, added up output batch by output batch (exact integer sums)."""

    def __init__(self):
        self.rows = self.computed = self.cap_reached = 0
        self.notes: dict = {}
        self.by_type = {kind: [0, 0, 0] for kind in ("employee", "resident")}  # cases, fund, scope (fen)
        self.other_rows = self.other_fen = 0
        self.diff_rows = self.diff_fen = 0

    def add(self, t: pa.Table) -> None:
        n = t.num_rows
        note = t["benefit_note"]
        self.rows += n
        self.computed += int(pc.sum(pc.is_null(note)).as_py() or 0)
        self.cap_reached += int(pc.sum(pc.fill_null(t["cap_reached"], False)).as_py() or 0)
        for k in pc.value_counts(note.drop_null()).to_pylist():
            self.notes[k["values"]] = self.notes.get(k["values"], 0) + k["counts"]
        ins = t["insurance_type"].to_numpy(zero_copy_only=False)
        fund = t["fund_benefit_fen"].fill_null(0).to_numpy()
        scope = t["policy_scope_fen"]
        scope_np = scope.fill_null(0).to_numpy()
        computed = ~np.asarray(pc.is_null(scope))
        for kind, acc in self.by_type.items():
            m = computed & (ins == kind)
            acc[0] += int(m.sum())
            acc[1] += int(fund[m].sum())
            acc[2] += int(scope_np[m].sum())
        other = t["other_fund_fen"]
        self.other_rows += int(pc.sum(pc.greater(other, 0)).as_py() or 0)
        self.other_fen += int(pc.sum(other).as_py() or 0)
        diff = t["fund_diff_fen"]
        self.diff_rows += n - diff.null_count
        self.diff_fen += int(pc.sum(diff).as_py() or 0)

    def echo(self, out) -> None:
        click.echo(f"cases {self.rows:,}; benefits computed {self.computed:,}; cap reached {self.cap_reached:,}")
        if self.notes:
            echo_counts("not computed, by note:", dict(sorted(self.notes.items())))
        click.echo("realised fund share of policy-scope cost:")
        for kind, (m, f, s) in self.by_type.items():
            share = f"{f / s:.1%}" if s else "-"
            click.echo(f"  {kind:<9} {m:>10,} cases  fund {f / 100:>16,.2f}  "
                       f"of policy scope {s / 100:>16,.2f}  = {share}")
        if self.other_rows:
            click.echo(f"other funds taken off the patient share: {self.other_fen / 100:,.2f} yuan "
                       f"over {self.other_rows:,} cases")
        if self.diff_rows:
            click.echo(f"recorded fund_paid minus computed benefit: {self.diff_fen / 100:,.2f} yuan "
                       f"over {self.diff_rows:,} cases")
        click.echo(f"written {out}")


def _benefit_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The columns the benefits read (in the reader's worker threads: less to hold in the queue)."""
    from dipengine.benefits import BENEFIT_COLUMNS

    return batch.select([c for c in BENEFIT_COLUMNS if c in batch.schema.names])


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
    taken off the patient share (column other_fund_fen), never off the fund benefit. Memory
    stays bounded: the cases are partitioned by patient into temporary files (in TMPDIR).
    """
    from dipengine.benefits import load_benefits, spill_benefits
    from dipengine.hospitals import read_hospitals
    from dipengine.io import check_output, write_batches
    from dipengine.policy import resolve_pricing_dir
    from dipengine.reader import map_cases

    pricing_dirs = [resolve_pricing_dir(p) for p in pricing]
    check_output(out, [input_, hospitals, *pricing_dirs])  # before any work: never over an input
    rules = load_benefits(pricing_dirs)
    registry = read_hospitals(hospitals)
    read_progress, close_read = progress_bar(None, "reading")
    compute_progress, close_compute = progress_bar(None, "benefits")
    cases = map_cases(input_, _benefit_columns, registry, period=period, progress=read_progress,
                      batch_size=BATCH_SIZE, workers=None, schema=schema, encoding=encoding, sheet=sheet)
    try:
        spill = spill_benefits(cases, rules, registry, carry=("insurance_type",), progress=compute_progress)
    finally:
        cases.close()  # stops the reader's threads on an error
        close_read()
        close_compute()
    summary = _Summary()
    with spill:
        names = spill.schema.names[:-1]  # the benefit columns, without the carried insurance_type
        write_progress, close_write = progress_bar(spill.n_rows, "writing")

        def output():
            for t in spill.batches(OUT_ROWS):
                summary.add(t)
                write_progress(spill.position)
                yield t.select(names)

        try:
            write_batches(output(), out, pa.schema([spill.schema.field(c) for c in names]))
        finally:
            close_write()
    summary.echo(out)
