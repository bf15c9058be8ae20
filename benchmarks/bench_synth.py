"""Benchmark of the synthetic region generator (``dipengine.synth.synth_region``).

asv-style (``setup`` / ``time_*`` / ``peakmem_*`` / ``track_*``) and runnable as a script::

    python benchmarks/bench_synth.py [--cases 1000000] [--repeat 3]

which prints the best wall time of generating the cases (goal: 1M cases in under 10 s on
a 2-core machine) and of writing them to Parquet.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow.compute as pc

from dipengine.synth import synth_region, write_region

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_synth.py): this directory is on sys.path
    import common

SIZES = common.pick([100_000], [1_000_000])


class SynthRegion:
    params = (SIZES, [0.0, 0.01])
    param_names = ["n_cases", "bad_rows"]
    timeout = 300

    def setup(self, n_cases, bad_rows):
        synth_region(2026, 1000, seed=42)  # load vocabularies, warm caches

    def time_synth(self, n_cases, bad_rows):
        synth_region(2026, n_cases, seed=42, bad_rows=bad_rows)

    def peakmem_synth(self, n_cases, bad_rows):
        synth_region(2026, n_cases, seed=42, bad_rows=bad_rows)

    def track_planted_rows(self, n_cases, bad_rows):
        cases, _ = synth_region(2026, n_cases, seed=42, bad_rows=bad_rows)
        return len(cases) - cases["planted_defect"].null_count

    track_planted_rows.unit = "rows"


class WriteRegion:
    params = [SIZES]
    param_names = ["n_cases"]
    timeout = 300

    def setup(self, n_cases):
        self.cases, self.hospitals = synth_region(2026, n_cases, seed=42)
        self.tmp = tempfile.TemporaryDirectory()

    def teardown(self, n_cases):
        self.tmp.cleanup()

    def time_write(self, n_cases):
        write_region(self.cases, self.hospitals, self.tmp.name)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bad-rows", type=float, default=0.01)
    args = ap.parse_args(argv)
    synth_region(2026, 1000, seed=42)
    result = {}

    def run():
        result["t"] = synth_region(2026, args.cases, seed=42, bad_rows=args.bad_rows)

    t = _best(run, args.repeat)
    cases, hospitals = result["t"]
    print(f"synth_region: {args.cases:,} cases in {t:.2f} s ({args.cases / t:,.0f} cases/s), "
          f"bad_rows={args.bad_rows}, total cost {pc.sum(cases['total_cost']).as_py():,} yuan")
    with tempfile.TemporaryDirectory() as tmp:
        w = _best(lambda: write_region(cases, hospitals, tmp), 1)
        size = os.path.getsize(os.path.join(tmp, "cases.parquet"))
    print(f"write_region: {w:.2f} s, cases.parquet {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
