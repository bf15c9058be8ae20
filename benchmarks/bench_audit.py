"""Audit against grouping on the same cases (issue 18 item 5: audit within 2 × group).

asv: ``TimeAudit`` (``dipengine.audit.audit`` in process; 50k synthetic cases, ``large``: 1M).
Script: ``python benchmarks/bench_audit.py [--cases 5000000] [--repeat 1]`` generates the cases
once (cached), then runs ``dipengine group`` and ``dipengine audit`` on them, each in a fresh
process, and prints wall seconds, cases per second, peak RSS and the audit/group ratio.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script: this directory is on sys.path
    import common


class TimeAudit:
    """``audit`` of a synthetic region (read, group, score, flag, indicators)."""

    params = [common.pick(50_000, 1_000_000)]
    param_names = ["n_cases"]
    timeout = 600

    def setup(self, n):
        self.cases = str(common.synth_cases(n, bad_rows=0.01))
        self.hospitals = str(common.hospitals_csv())

    def time_audit(self, n):
        from dipengine.audit import audit

        audit([self.cases], "demo", _pricing(), self.hospitals)

    def peakmem_audit(self, n):
        from dipengine.audit import audit

        audit([self.cases], "demo", _pricing(), self.hospitals)


def _pricing():
    from dipengine.policy import load_policy, resolve_pricing_dir

    return load_policy(resolve_pricing_dir("440200/2026"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    cases = str(common.synth_cases(a.cases, bad_rows=0.01))
    hospitals = str(common.hospitals_csv())
    exe = [sys.executable, "-m", "dipengine"]
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            for name, cmd in (
                ("group", exe + ["group", "--rules", "demo", "--hospitals", hospitals, "--input", cases,
                                 "--out", f"{tmp}/g.parquet"]),
                ("audit", exe + ["audit", "--rules", "demo", "--pricing", "440200/2026", "--hospitals", hospitals,
                                 "--input", cases, "--out", f"{tmp}/a"]),
            ):
                r = common.run_process(cmd, what=name)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
                shutil.rmtree(f"{tmp}/a", ignore_errors=True)
                Path(f"{tmp}/g.parquet").unlink(missing_ok=True)
    for name, r in best.items():
        print(f"{name:6s} {r['seconds']:7.2f} s  {a.cases / r['seconds'] / 1e6:5.2f} M cases/s  "
              f"peak {r['peak_mib']:,.0f} MiB")
    print(f"audit / group = {best['audit']['seconds'] / best['group']['seconds']:.2f}")


if __name__ == "__main__":
    main()
