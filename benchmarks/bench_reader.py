"""Benchmark of the case reader/validator (``dipengine.reader.read_cases``).

asv-style (``setup`` / ``time_*`` / ``peakmem_*``) and runnable as a script::

    python benchmarks/bench_reader.py [--rows 1000000]

which prints rows per second for an in-memory table, a Parquet file and a CSV file. The
input is generated here with vectorised numpy (no dependency on ``dipengine.synth``): realistic
shapes (thousands of diagnosis codes, a few hundred hospitals, text amounts in CSV) with about
1% defective rows.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_reader.py): this directory is on sys.path
    import common

N_ROWS = int(os.environ.get("DIPENGINE_BENCH_ROWS", 1_000_000))


def make_cases(n: int, seed: int = 42) -> pa.Table:
    """A synthetic case table of ``n`` rows in the contract §2 input schema (vectorised)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ABCDEIJKMNRS"))
    n_dx = 4000
    dx_vocab = np.char.add(
        np.char.add(letters[rng.integers(0, len(letters), n_dx)], np.char.zfill(rng.integers(0, 100, n_dx).astype(str), 2)),
        np.char.add(".", np.char.zfill(rng.integers(0, 1000, n_dx).astype(str), 3)),
    )
    dx_vocab[::3] = np.char.add(dx_vocab[::3], "x001")
    n_proc = 1500
    proc_vocab = np.char.add(np.char.zfill(rng.integers(0, 100, n_proc).astype(str), 2),
                             np.char.add(".", np.char.zfill(rng.integers(0, 10000, n_proc).astype(str), 4)))
    dx = pa.array(dx_vocab)
    proc = pa.array(proc_vocab)
    dx_idx = pa.array(rng.zipf(1.3, n) % n_dx)
    admit = rng.integers(20454, 20454 + 365, n)  # 2026-01-01 + days
    los = rng.integers(1, 30, n)
    total = rng.lognormal(9, 1, n)
    fund = total * 0.7
    ids = pa.array(np.arange(n)).cast(pa.string())
    case_id = pc.binary_join_element_wise("C", ids, "")
    bad = rng.random(n) < 0.01
    case_id_np = np.asarray(case_id.to_numpy(zero_copy_only=False), dtype=object)
    case_id_np[bad] = case_id_np[np.flatnonzero(bad) // 2]  # some duplicates
    other = pc.binary_join_element_wise(dx.take(pa.array(rng.integers(0, n_dx, n))), dx.take(pa.array(rng.integers(0, n_dx, n))), "|")
    has_proc = rng.random(n) < 0.5
    main_proc = proc.take(pa.array(rng.integers(0, n_proc, n), mask=~has_proc))
    return pa.table({
        "case_id": pa.array(case_id_np, pa.string()),
        "hospital_id": pc.binary_join_element_wise("H", pa.array(rng.integers(0, 300, n)).cast(pa.string()), ""),
        "patient_id": pc.binary_join_element_wise("P", pa.array(rng.integers(0, n // 2 + 1, n)).cast(pa.string()), ""),
        "insurance_type": pa.array(np.where(rng.random(n) < 0.6, "employee", "resident")),
        "person_type": pa.array(np.array(["in_service", "retired", "student", "child", "other"])[rng.integers(0, 5, n)]),
        "insured_region": pa.array(np.where(rng.random(n) < 0.9, "440200", "440300")),
        "sex": pa.array(np.where(rng.random(n) < 0.5, "M", "F")),
        "age": pa.array(np.where(bad, -1, rng.integers(0, 100, n))).cast(pa.string()),
        "admit_date": pa.array(admit.astype(np.int32)).cast(pa.date32()).cast(pa.string()),
        "discharge_date": pa.array((admit + los).astype(np.int32)).cast(pa.date32()).cast(pa.string()),
        "discharge_mode": pa.array(rng.choice([1, 1, 1, 1, 2, 5, 9], n)).cast(pa.string()),
        "main_dx": dx.take(dx_idx),
        "other_dx": other,
        "main_proc": main_proc,
        "other_procs": pa.nulls(n, pa.string()),
        "total_cost": pa.array(np.round(total, 2)).cast(pa.string()),
        "fund_paid": pa.array(np.round(fund, 2)).cast(pa.string()),
        "patient_paid": pa.array(np.round(total, 2) - np.round(fund, 2)).cast(pa.string()),
    })


class ReadCases:
    """read_cases on an in-memory table, a Parquet file and a CSV file (inputs cached on disk)."""

    params = [common.pick([100_000], [1_000_000])]
    param_names = ["n_rows"]
    timeout = 600

    def setup(self, n_rows):
        self.parquet = str(common.cached_table("reader", lambda: make_cases(n_rows), n=n_rows, s=42))
        self.csv = str(common.cached(common.cache_path("reader", ".csv", n=n_rows, s=42),
                                     lambda tmp: pcsv.write_csv(pq.read_table(self.parquet), tmp)))
        self.table = pq.read_table(self.parquet)

    def time_read_table(self, n_rows):
        from dipengine.reader import read_cases

        read_cases(self.table)

    def time_read_parquet(self, n_rows):
        from dipengine.reader import read_cases

        read_cases(self.parquet)

    def time_read_csv(self, n_rows):
        from dipengine.reader import read_cases

        read_cases(self.csv)

    def peakmem_read_parquet(self, n_rows):
        from dipengine.reader import read_cases

        read_cases(self.parquet)

    def track_rejected(self, n_rows):
        """Rows given a reason (about 1% are planted defects; correctness track)."""
        from dipengine.reader import read_cases

        out = read_cases(self.table)
        return out.num_rows - out["reason"].null_count

    track_rejected.unit = "rows"


def _best(fn, repeat=3):
    """Best wall time and the CPU time of that run (CPU time is steadier on a busy machine)."""
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def main(argv=None) -> None:
    import argparse

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
    from dipengine.reader import read_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=N_ROWS)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    table = make_cases(args.rows)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.2f} s")
    with tempfile.TemporaryDirectory(prefix="dipengine-bench-") as tmp:
        parquet = os.path.join(tmp, "cases.parquet")
        csv = os.path.join(tmp, "cases.csv")
        pq.write_table(table, parquet)
        pcsv.write_csv(table, csv)
        out = read_cases(table)
        rejected = len(out) - out["reason"].null_count
        print(f"rejected {rejected:,} rows ({rejected / len(out):.2%})")
        for name, src in (("in-memory table", table), ("parquet file", parquet), ("csv file", csv)):
            best, cpu = _best(lambda: read_cases(src), args.repeat)
            print(f"{name:>16}: {best:6.2f} s  {args.rows / best:12,.0f} rows/s  (CPU {cpu:.2f} s)")


if __name__ == "__main__":
    main()
