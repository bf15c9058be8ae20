"""Benchmark of the catalogue build (``dipengine catalog build``).

asv-style class (sizes from ``benchmarks/common.py`` profiles); also runnable as a script::

    python benchmarks/bench_catalog.py [--cases 3000000] [--years 3] [--dir /tmp/dipbench]

which writes ``--years`` synthetic history years of ``--cases`` cases each as Parquet (raw
contract §2 input, made by :func:`dipengine.synth.synth_region`; reused when present), then
builds the catalogue from the files — reading and validating included — in a fresh process and
prints the wall time and the peak resident memory. The goal: 3 years x 3M cases in under 60 s
with peak memory under 4 GiB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_catalog.py): this directory is on sys.path
    import common

YEARS = (2024, 2025, 2026)


def make_history(directory, n_cases: int, n_years: int = 3, seed: int = 42) -> tuple[list[str], str]:
    """Write history Parquet files and hospitals.csv (skipped when already there)."""
    from dipengine.synth import synth_hospitals, synth_region

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hosp_path = directory / "hospitals.csv"
    if not hosp_path.exists():
        pcsv.write_csv(synth_hospitals(seed=seed), hosp_path)
    from dipengine.hospitals import read_hospitals

    hosp = read_hospitals(hosp_path)
    paths = []
    for year in range(YEARS[-1] - n_years + 1, YEARS[-1] + 1):
        p = directory / f"history_{year}_{n_cases}.parquet"
        if not p.exists():
            cases, _ = synth_region(year, n_cases, seed=seed, hospitals=hosp)
            pq.write_table(cases, p)
            del cases
        paths.append(str(p))
    return paths, str(hosp_path)


def build_once(paths, hospitals, out) -> dict:
    """Build from files in this process; wall time and peak RSS (MiB)."""
    from dipengine.catalog import build_catalog

    t = time.perf_counter()
    res = build_catalog(paths, hospitals, Path(out) / "rules", Path(out) / "pricing")
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(secs, 2), "peak_mib": round(peak), "cases": sum(res.cases_used),
            "groups": res.counts, "budget_point_value": res.budget_point_value}


class CatalogBuild:
    """asv: build a catalogue from three synthetic history years (Parquet, cached on disk)."""

    params = [common.pick([50_000], [3_000_000])]
    param_names = ["cases_per_year"]
    timeout = common.pick(300, 1800)

    def setup(self, n):
        self.paths = [str(p) for p in common.history(n)]
        self.hosp = str(common.hospitals_csv())

    def time_build(self, n):
        from dipengine.catalog import build_catalog

        build_catalog(self.paths, self.hosp, None)

    def peakmem_build(self, n):
        from dipengine.catalog import build_catalog

        build_catalog(self.paths, self.hosp, None)

    def track_groups(self, n):
        """Groups in the built catalogue (all group types)."""
        from dipengine.catalog import build_catalog

        return sum(build_catalog(self.paths, self.hosp, None).counts.values())

    track_groups.unit = "groups"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3_000_000, help="cases per history year")
    ap.add_argument("--years", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "dipbench_catalog"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    paths, hosp = make_history(args.dir, args.cases, args.years)
    if args.child:
        print(json.dumps(build_once(paths, hosp, Path(args.dir) / "out")))
        return
    # a fresh process, so that peak memory is the build's alone
    out = subprocess.run([sys.executable, __file__, "--child", "--cases", str(args.cases), "--years",
                          str(args.years), "--dir", args.dir], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.years} years x {args.cases:,} cases: built in {r['seconds']} s, peak RSS {r['peak_mib']:,} MiB "
          f"({r['cases']:,} cases used; groups {r['groups']}; budget point value {r['budget_point_value']:.4f})")


if __name__ == "__main__":
    main()
