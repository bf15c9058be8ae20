"""Benchmark of the catalogue build (``dipengine catalog build``).

asv-style class (sizes from ``benchmarks/common.py`` profiles); also runnable as a script::

    python benchmarks/bench_catalog.py [--total 1000000,5000000] [--cases N] [--years 3]
                                       [--dir /tmp/dipbench_catalog] [--pythonpath DIR] [--json]

which writes synthetic history years with ``dipengine synth`` (raw contract §2 Parquet, one
shared hospital registry; reused when present), then runs ``dipengine catalog build --history
... --hospitals ... --out ... --pricing-out ...`` — reading and validating included — as a
child process and prints its wall time and its peak resident memory (``ru_maxrss`` of the
child, from ``os.wait4``). ``--total`` gives whole-history sizes, split as evenly as possible
over ``--years`` files; ``--cases`` gives cases per year instead. ``--pythonpath`` puts another
copy of the package first on the child's path (to measure a tree before a change against one
after). The goal: 3 years x 3M cases in under 60 s with peak memory under 4 GiB; peak memory
should not grow with the number of history cases (it grows with batch size, groups and years).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_catalog.py): this directory is on sys.path
    import common

LAST_YEAR = 2026
SEED = 42


def _synth(out: Path, year: int, n: int, hospitals: Path | None, env: dict) -> None:
    """``dipengine synth`` into ``out`` (written to a temporary name, then renamed)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [sys.executable, "-m", "dipengine", "synth", "--year", str(year), "--cases", str(n),
           "--seed", str(SEED), "--out", str(tmp)]
    if hospitals is not None:
        cmd += ["--hospitals", str(hospitals)]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    os.replace(tmp, out)


def make_history(directory, sizes: list[int], env: dict | None = None) -> tuple[list[str], str]:
    """History files (oldest first, one per entry of ``sizes``) and hospitals.csv, via ``dipengine synth``.

    Parameters
    ----------
    directory : path
        Cache folder; a year already there (same size, year and seed) is reused.
    sizes : list of int
        Cases per history year, oldest first; the last year is 2026.
    env : dict, optional
        Environment of the ``dipengine synth`` processes.

    Returns
    -------
    (list of str, str)
        The ``cases.parquet`` paths and the ``hospitals.csv`` path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) if env is None else env
    hosp_dir = directory / f"hospitals_s{SEED}"
    if not hosp_dir.exists():
        _synth(hosp_dir, LAST_YEAR, 0, None, env)
    hosp = hosp_dir / "hospitals.csv"
    paths = []
    first = LAST_YEAR - len(sizes) + 1
    for i, n in enumerate(sizes):
        d = directory / f"synth_y{first + i}_n{n}_s{SEED}"
        if not d.exists():
            _synth(d, first + i, n, hosp, env)
        paths.append(str(d / "cases.parquet"))
    return paths, str(hosp)


def split(total: int, years: int) -> list[int]:
    """``total`` cases over ``years`` files, as evenly as possible (the newest get the extra ones)."""
    q, r = divmod(total, years)
    return [q + (1 if i >= years - r else 0) for i in range(years)]


def run_build(paths: list[str], hospitals: str, out: Path, env: dict) -> dict:
    """Run ``dipengine catalog build`` as a child process; wall seconds and peak RSS (MiB)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dipengine", "catalog", "build", "--history", *paths,
           "--hospitals", hospitals, "--out", str(out / "rules"), "--pricing-out", str(out / "pricing")]
    r = common.run_process(cmd, env=env, what="catalog build")
    groups = {}
    for line in r["stdout"].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("core", "basic", "comprehensive", "blank"):
            groups[parts[0]] = int(parts[1].replace(",", ""))
    return {"seconds": round(r["seconds"], 2), "peak_mib": round(r["peak_mib"]), "groups": groups}


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


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", default=None, help="whole-history sizes, comma-separated [default: 1000000,5000000]")
    ap.add_argument("--cases", default=None, help="cases per history year instead (comma-separated sizes)")
    ap.add_argument("--years", type=int, default=3, help="history files per build")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "dipbench_catalog"))
    ap.add_argument("--pythonpath", default=None, help="directory put first on the child's PYTHONPATH")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per build")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.pythonpath, env.get("PYTHONPATH")) if p)
    if args.cases is not None:
        runs = [[n] * args.years for n in _ints(args.cases)]
    else:
        runs = [split(n, args.years) for n in _ints(args.total or "1000000,5000000")]
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)  # children run here: `python -m` puts the working directory first on their path
    for sizes in runs:
        paths, hosp = make_history(root, sizes, env)
        r = run_build(paths, hosp, root / "out", env)
        total = sum(sizes)
        print(f"{args.years} years, {total:,} history cases: built in {r['seconds']} s, "
              f"peak RSS {r['peak_mib']:,} MiB (groups {r['groups']})", flush=True)
        if args.json:
            print(json.dumps({"history_cases": total, "years": args.years, **r}), flush=True)


if __name__ == "__main__":
    main()
