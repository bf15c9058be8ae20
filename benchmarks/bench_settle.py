"""Annual settlement end to end from Parquet (read -> validate -> group -> score -> settle).

asv: ``TimeSettle`` and ``SettleResult`` (in memory, ``settle``), ``SettleStreaming`` (``pipeline.settle_to``,
what the CLI runs) and ``SettleDask`` (the Dask engine on a 2-worker local cluster); 50k cases,
``DIPENGINE_BENCH_PROFILE=large``: 5M. Engine vs pandas vs the I/O floor: ``benchmarks/compare.py``.
Script: ``python benchmarks/bench_settle.py [--cases 5000000] [--dir /tmp/dipengine-bench]``
generates the input once (vectorised, cached), then times ``settle`` in a fresh process and
prints the wall time, cases per second and peak RSS.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_settle.py): this directory is on sys.path
    import common

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "grouper_rules" / "demo"
N_HOSPITALS = 200



def _groups():
    import pyarrow.csv as pcsv

    g = pcsv.read_csv(RULES / "groups.csv", convert_options=pcsv.ConvertOptions(
        column_types={"dx_key": pa.string(), "proc_expr": pa.string()}, strings_can_be_null=False))
    rows = [r for r in g.to_pylist()
            if r["group_type"] in ("core", "basic") and "+" not in (r["proc_expr"] or "")]
    return rows


def make_region(directory: Path, n: int, seed: int = 42) -> dict:
    """Write ``cases.parquet`` (n cases, contract §2), ``hospitals.csv`` and a pricing dir."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = _groups()
    gi = rng.integers(0, len(groups), n)
    dx = pa.array([r["dx_key"] + "00" for r in groups]).take(pa.array(gi))
    proc_vals = [(r["proc_expr"] or "").split("/")[0] or None for r in groups]
    proc = pa.array(proc_vals, pa.string()).take(pa.array(gi))
    avg = np.array([r["avg_cost"] for r in groups])[gi]
    cost_fen = np.maximum(100, np.round(avg * rng.lognormal(0.0, 0.45, n) * 100)).astype(np.int64)
    fund_fen = (cost_fen * rng.uniform(0.55, 0.8, n)).astype(np.int64)
    patient_fen = cost_fen - fund_fen
    hid = rng.integers(0, N_HOSPITALS, n)
    admit = np.datetime64("2027-01-01") + rng.integers(0, 340, n).astype("timedelta64[D]")
    los = rng.integers(1, 20, n)
    ids = pc.binary_join_element_wise("C", pc.cast(pa.array(np.arange(n)), pa.string()), "")
    region = np.array(["440200", "440300", "110100"])[rng.choice(3, n, p=[0.9, 0.07, 0.03])]

    def yuan(fen):
        """Exact decimal128(18, 2) yuan whose unscaled value is the fen amount."""
        words = np.empty((len(fen), 2), dtype=np.int64)
        words[:, 0] = fen
        words[:, 1] = fen >> 63
        return pa.Array.from_buffers(pa.decimal128(18, 2), len(fen), [None, pa.py_buffer(words)])

    table = pa.table({
        "case_id": ids,
        "hospital_id": pc.binary_join_element_wise("H", pc.cast(pa.array(hid), pa.string()), ""),
        "insurance_type": pa.array(np.array(["employee", "resident"])[rng.choice(2, n, p=[0.6, 0.4])]),
        "insured_region": pa.array(region),
        "age": pa.array(rng.integers(1, 95, n).astype(np.int32)),
        "admit_date": pa.array(admit),
        "discharge_date": pa.array(admit + los.astype("timedelta64[D]")),
        "main_dx": dx,
        "main_proc": proc,
        "total_cost": yuan(cost_fen),
        "fund_paid": yuan(fund_fen),
        "patient_paid": yuan(patient_fen),
    })
    pq.write_table(table, directory / "cases.parquet", row_group_size=1 << 20)
    levels = rng.integers(1, 4, N_HOSPITALS)
    with open(directory / "hospitals.csv", "w", encoding="utf-8") as f:
        f.write("hospital_id,name,level,region\n")
        for i in range(N_HOSPITALS):
            f.write(f"H{i},hospital {i},{levels[i]},440200\n")
    pricing = directory / "pricing"
    pricing.mkdir(exist_ok=True)
    emp = int(fund_fen[table["insurance_type"].to_numpy(zero_copy_only=False) == "employee"].sum() // 100)
    res = int(fund_fen.sum() // 100) - emp
    (pricing / "policy.toml").write_text(common.policy_toml(emp, res, 8.0), encoding="utf-8")
    with open(pricing / "same_level_avg.csv", "w", encoding="utf-8") as f:
        f.write("dip_code,level,avg_cost\n")
        for r in groups:
            for lvl, k in ((1, 0.8), (2, 0.9), (3, 1.0)):
                f.write(f"{r['dip_code']},{lvl},{r['avg_cost'] * k:.2f}\n")
    return {"cases": directory / "cases.parquet", "hospitals": directory / "hospitals.csv", "pricing": pricing}


def run_settle(directory: Path, out: Path | None = None, n_threads: int | None = None):
    from dipengine.settlement import settle

    # the shipped demo rule set is effective in 2026; these 2027 cases are settled with it anyway
    # (the work is the same), so the effective-dates check is waived
    res = settle(directory / "cases.parquet", RULES, directory / "pricing", directory / "hospitals.csv", "2027",
                 n_threads=n_threads, allow_out_of_period=True)
    if out is not None:
        res.write(out)
    return res


SIZES = common.pick([50_000], [5_000_000])


def region_dir(n: int, seed: int = 42) -> Path:
    """The cached input directory of :func:`make_region` for ``n`` cases and ``seed``."""
    return common.cached(common.cache_path("settle", n=n, s=seed), lambda tmp: make_region(tmp, n, seed))


class TimeSettle:
    """asv benchmark: annual settlement end to end, by grouping threads."""

    params = [SIZES, common.THREADS]
    param_names = ["n_cases", "n_threads"]
    timeout = common.pick(300, 1800)

    def setup_cache(self):
        return {n: str(region_dir(n)) for n in SIZES}

    def time_settle_annual(self, dirs, n, n_threads):
        run_settle(Path(dirs[n]), n_threads=n_threads)


class SettleResult:
    """asv: peak memory of the settlement and correctness tracks of its manifest."""

    params = [SIZES]
    param_names = ["n_cases"]
    timeout = common.pick(300, 1800)

    def setup_cache(self):
        return {n: str(region_dir(n)) for n in SIZES}

    def peakmem_settle_annual(self, dirs, n):
        run_settle(Path(dirs[n]))

    def track_total_points(self, dirs, n):
        """Total points of the period (changes only when grouping or scoring changes)."""
        return run_settle(Path(dirs[n])).manifest["total_points"]

    track_total_points.unit = "points"


def run_settle_to(directory: Path, out: Path, n_threads: int | None = None, engine: str = "local", client=None):
    """The streaming run the CLI makes (``pipeline.settle_to``, or the Dask engine), into ``out``."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    args = (out, directory / "cases.parquet", RULES, directory / "pricing", directory / "hospitals.csv", "2027")
    if engine == "dask":
        from dipengine.dask_engine import settle_to

        return settle_to(*args, allow_out_of_period=True, client=client)
    from dipengine.pipeline import settle_to

    return settle_to(*args, n_threads=n_threads, allow_out_of_period=True)


class SettleStreaming:
    """asv: the streaming two-pass run (what ``dipengine settle`` runs): time by threads, peak memory."""

    params = [SIZES, common.THREADS]
    param_names = ["n_cases", "n_threads"]
    timeout = common.pick(300, 1800)

    def setup_cache(self):
        return {n: str(region_dir(n)) for n in SIZES}

    def setup(self, dirs, n, n_threads):
        import tempfile

        self.tmp = tempfile.mkdtemp(prefix="dipengine-bench-settle-")

    def teardown(self, dirs, n, n_threads):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_settle_to(self, dirs, n, n_threads):
        run_settle_to(Path(dirs[n]), Path(self.tmp) / "out", n_threads)

    def peakmem_settle_to(self, dirs, n, n_threads):
        run_settle_to(Path(dirs[n]), Path(self.tmp) / "out", n_threads)


class SettleDask:
    """asv: the Dask engine on a local cluster of 2 worker processes (started in setup, not timed)."""

    params = [SIZES]
    param_names = ["n_cases"]
    timeout = common.pick(300, 1800)

    def setup_cache(self):
        return {n: str(region_dir(n)) for n in SIZES}

    def setup(self, dirs, n):
        import tempfile

        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise NotImplementedError("distributed is not installed (pip install dipengine[dask])")
        self.tmp = tempfile.mkdtemp(prefix="dipengine-bench-dask-")
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        self.client = Client(self.cluster)

    def teardown(self, dirs, n):
        import shutil

        self.client.close()
        self.cluster.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_settle_dask(self, dirs, n):
        run_settle_to(Path(dirs[n]), Path(self.tmp) / "out", engine="dask", client=self.client)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=5_000_000)
    ap.add_argument("--dir", default="/tmp/dipengine-bench")
    ap.add_argument("--only-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = Path(args.dir) / f"n{args.cases}"
    if args.only_run:
        t0 = time.perf_counter()
        res = run_settle(d, out=d / "annual")
        dt = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        m = res.manifest
        print(f"settled {args.cases:,} cases in {dt:.1f} s ({args.cases / dt:,.0f} cases/s), "
              f"peak RSS {peak:,.0f} MiB")
        for pool, info in m["pools"].items():
            print(f"  {pool}: {info['n_cases']:,} cases, point value {info['point_value_yuan']}, "
                  f"reconciled {info['reconciled_to_budget']}")
        print(f"  match_path: {m['counts']['match_path']}")
        return
    if not (d / "cases.parquet").exists():
        t0 = time.perf_counter()
        make_region(d, args.cases)
        print(f"generated {args.cases:,} cases in {time.perf_counter() - t0:.1f} s -> {d}")
    # time in a fresh process so the peak RSS is the settlement's own
    subprocess.run([sys.executable, __file__, "--cases", str(args.cases), "--dir", args.dir, "--only-run"],
                   check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


if __name__ == "__main__":
    main()
