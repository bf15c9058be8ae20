"""``dipengine benefits`` end to end: wall time and peak RSS of the command, fresh process.

asv: ``BenefitsCLI`` (100k cases; ``DIPENGINE_BENCH_PROFILE=large``: 1M and 5M).
Script: ``python benchmarks/bench_benefits.py [--cases 1000000 5000000] [--repeat 1]``
generates the synthetic inputs once (``common.synth_cases``: ``synth_region`` of year 2026,
the 60-hospital registry of ``common.hospitals_csv``, cached under ``DIPENGINE_BENCH_DIR``),
then runs ``dipengine benefits --pricing pricing_tables/440200/2026`` on each size in a child
process (``python -m dipengine``) and prints the wall time, cases per second and the peak RSS
(``ru_maxrss`` of the child, ``os.wait4``), best of ``--repeat``; last, whether the peak memory
is flat (within 10 %) from the smallest to the largest size. The command partitions the cases
by patient and spills them to disk (``benefits.spill_benefits``), so its memory should not
grow with the input.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_benefits.py): this directory is on sys.path
    import common

REPO = Path(__file__).resolve().parents[1]
PRICING = REPO / "pricing_tables" / "440200" / "2026"
SIZES = common.pick([100_000], [1_000_000, 5_000_000])
FLAT = 0.10
"""Peak memory is called flat when the largest size's peak is within 10 % of the smallest's."""


def inputs(n: int) -> tuple[Path, Path]:
    """The cached case file (``n`` cases, year 2026) and registry of the benchmark."""
    return common.synth_cases(n, 2026), common.hospitals_csv()


def run_benefits(n: int, out: Path) -> dict:
    """``dipengine benefits`` on the ``n``-case input in a child process: ``seconds``,
    ``peak_mib`` (ru_maxrss), ``stdout`` (see :func:`common.run_process`)."""
    cases, hospitals = inputs(n)
    cmd = [sys.executable, "-m", "dipengine", "benefits", "--pricing", str(PRICING),
           "--hospitals", str(hospitals), "--input", str(cases), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return common.run_process(cmd, env=env, what="dipengine benefits")


class BenefitsCLI:
    """asv: ``dipengine benefits`` as a whole process (time, and peak RSS as a track)."""

    params = [SIZES]
    param_names = ["n_cases"]
    timeout = common.pick(300, 1800)

    def setup(self, n):
        inputs(n)
        self.tmp = tempfile.TemporaryDirectory(prefix="dipengine-bench-benefits-")
        self.out = Path(self.tmp.name) / "benefits.parquet"

    def teardown(self, n):
        self.tmp.cleanup()

    def time_benefits_cli(self, n):
        run_benefits(n, self.out)

    def track_peak_rss(self, n):
        """Peak RSS of the command (MiB): should not grow with ``n``."""
        return run_benefits(n, self.out)["peak_mib"]

    track_peak_rss.unit = "MiB"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; the best time and lowest peak are kept")
    ap.add_argument("--out", default=None, help="output directory (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="dipengine-bench-benefits-") as tmp:
        out_dir = Path(args.out or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for n in args.cases:
            inputs(n)  # generated (once) outside the timing
            runs = [run_benefits(n, out_dir / f"benefits_{n}.parquet") for _ in range(max(1, args.repeat))]
            secs = min(r["seconds"] for r in runs)
            peak = min(r["peak_mib"] for r in runs)
            peaks[n] = peak
            print(f"dipengine benefits {n:>11,} cases: {secs:7.1f} s ({n / secs:>10,.0f} cases/s), "
                  f"peak RSS {peak:8,.0f} MiB", flush=True)
    if len(peaks) > 1:
        lo, hi = min(peaks), max(peaks)
        ratio = peaks[hi] / peaks[lo]
        verdict = "flat" if abs(ratio - 1) <= FLAT else "NOT flat"
        print(f"peak RSS {hi:,} vs {lo:,} cases: x{ratio:.2f} ({verdict}, tolerance +-{FLAT:.0%})")


if __name__ == "__main__":
    main()
