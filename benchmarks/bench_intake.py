"""Benchmark of reading national settlement-list extracts (``read_cases(schema="nhsa")``).

asv-style and runnable as a script::

    python benchmarks/bench_intake.py [--rows 1000000]

which reads the same cases as a contract-format and as a national-format (``nhsa``: national
field names, insurance types 310/390, sex 1/2, datetimes, patient money in two parts, 大病
money as another fund) Parquet and CSV file, in one run, and prints rows per second of each.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

try:
    from benchmarks import bench_reader, common
except ImportError:  # run as a script: this directory is on sys.path
    import bench_reader
    import common


def make_pair(n: int, seed: int = 42) -> tuple[pa.Table, pa.Table]:
    """(contract-format cases, their national-format twin): a tenth of the fund money moved to 大病."""
    from dipengine.money import yuan_to_fen
    from dipengine.money import fen_to_decimal
    from dipengine.schemas import load_schema

    t = bench_reader.make_cases(n, seed)
    fund, status = yuan_to_fen(t["fund_paid"])
    other = np.where(np.arange(n) % 10 == 0, fund // 10, 0)
    t = t.set_column(t.column_names.index("fund_paid"), "fund_paid", fen_to_decimal(fund - other).cast(pa.string()))
    t = t.append_column("other_fund_paid", fen_to_decimal(other).cast(pa.string()))
    return t, load_schema("nhsa").export(t, other_fund_part="hifmi_pay")


class ReadNational:
    """read_cases of a national-format Parquet and CSV file next to the contract format."""

    params = [common.pick([100_000], [1_000_000]), ["contract", "nhsa"], ["parquet", "csv"]]
    param_names = ["n_rows", "schema", "format"]
    timeout = 600

    def setup(self, n_rows, schema, fmt):
        def write(tmp):
            pair = make_pair(n_rows)
            table = pair[0] if schema == "contract" else pair[1]
            if fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                pcsv.write_csv(table, tmp)

        self.path = str(common.cached(common.cache_path("intake", f".{fmt}", n=n_rows, s=schema), write))

    def time_read(self, n_rows, schema, fmt):
        from dipengine.reader import read_cases

        read_cases(self.path, schema=schema)

    def track_rejected(self, n_rows, schema, fmt):
        """Rows given a reason: the same for both layouts (about 1% planted defects)."""
        from dipengine.reader import read_cases

        out = read_cases(self.path, schema=schema)
        return out.num_rows - out["reason"].null_count

    track_rejected.unit = "rows"


def main(argv=None) -> None:
    import argparse

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
    from dipengine.reader import read_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    contract, national = make_pair(args.rows)
    with tempfile.TemporaryDirectory(prefix="dipengine-bench-") as tmp:
        files = {}
        for name, table in (("contract", contract), ("nhsa", national)):
            files[name, "parquet"] = os.path.join(tmp, f"{name}.parquet")
            files[name, "csv"] = os.path.join(tmp, f"{name}.csv")
            pq.write_table(table, files[name, "parquet"])
            pcsv.write_csv(table, files[name, "csv"])
        ref = read_cases(files["contract", "parquet"])
        same = read_cases(files["nhsa", "parquet"], schema="nhsa").select(ref.column_names).equals(ref)
        print(f"{args.rows:,} cases; national and contract format read the same: {same}")
        for fmt in ("parquet", "csv"):
            for name in ("contract", "nhsa"):
                best, cpu = bench_reader._best(lambda: read_cases(files[name, fmt], schema=name), args.repeat)
                print(f"{name:>9} {fmt:<8}: {best:6.2f} s  {args.rows / best:12,.0f} cases/s  (CPU {cpu:.2f} s)")


if __name__ == "__main__":
    main()
