"""The annual clearing three ways on the same generated region: the engine, plain pandas, the I/O floor.

    python benchmarks/compare.py [--cases 1000000] [--seed 0] [--dir /tmp/dipengine-bench] [--repeat 1]

(a) ``engine``  ``dipengine settle --rules demo --pricing 440200/2026 --period YYYY`` end to end, the
    console program in a fresh process: read + validate, group, score, settle, write the outputs
    (``cases.parquet``, ``hospitals.parquet``/``.csv``, ``manifest.json``). The shipped pricing dir has a
    ``benefits.csv``, so the run is in estimate mode as a user's would be: it also computes every case's
    patient-side benefits to compare them with the recorded payments (``--no-benefits`` here passes
    ``--no-benefits`` on, to time the settlement without that work).
(b) ``pandas``  ``benchmarks/pandas_settle.py``: the same annual settlement written as an analyst would in
    vectorised pandas (validation, grouping by merges, auxiliary subtypes, scoring, groupby sums, point
    values, hospital standards, band rules), in a fresh ``python`` process; writes its case results and
    statements too. Its statements are compared with the engine's ``hospitals.parquet`` (below).
(c) ``floor``   pyarrow alone, in a fresh process: stream the cases Parquet file through a
    ``pyarrow.dataset`` scanner in batches and stream-write a case-results Parquet file with the schema
    (same columns and types) and row count of (a)'s ``cases.parquet``: the input's columns where the
    output carries them, and placeholders of the right type for the result columns (a low-cardinality
    input text column for text, the total cost for money and numbers, nulls where (a)'s column is all
    null), nothing else.

Each measurement runs in a fresh driver process that starts the measured program and reports its wall
time and ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the measured program's peak RSS alone).
Wall times are whole processes (interpreter start and imports included) for all three; the ``work``
column is the time (b) and (c) report for their work after their imports. The printed ratios:
``engine / floor`` (how far the engine is from only reading and writing the data) and ``pandas /
engine`` (how many times longer the pandas version takes). ``--repeat R`` runs the three R times,
interleaved, and reports the fastest run of each.

Data: ``dipengine synth --year YEAR --cases N --seed S`` (the synthetic region the shipped ``demo`` rule set
and ``440200/2026`` pricing were built for, with ``--seed 0`` the demo's own), generated once into
``DIR/compare_n<N>_s<S>_y<YEAR>/`` and reused by later runs. Outputs go to a temporary directory (``--keep
DIR`` keeps them there).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RULES = "demo"
PRICING = "440200/2026"
BATCH_ROWS = 131_072

# The driver: starts the measured command, waits for it, prints its wall time, peak RSS and the last
# line of its stdout. It imports nothing but the standard library, so its own RSS (which a child
# inherits as a floor of its ru_maxrss) stays small.
_DRIVER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.perf_counter() - t
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
out = p.stdout.decode(errors="replace")
print(json.dumps({"rc": p.returncode, "seconds": wall, "peak_mib": peak_kib / 1024, "stdout": out,
                  "stderr": p.stderr.decode(errors="replace")[-4000:]}))
"""


def measure(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh driver process: ``{"seconds", "peak_mib", "stdout"}`` (+ the JSON object the
    command printed last, if any, under ``"report"``); raises RuntimeError if the command fails."""
    p = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps([str(c) for c in cmd])],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"driver for {what} failed: {p.stderr.decode(errors='replace').strip()}")
    res = json.loads(p.stdout)
    if res["rc"] != 0:
        raise RuntimeError(f"{what} failed ({res['rc']}): {res['stderr'].strip()}")
    lines = res["stdout"].strip().splitlines()
    try:
        res["report"] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        res["report"] = {}
    return res


def child_env() -> dict:
    """This environment, with the repository root first on PYTHONPATH (a source checkout runs)."""
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def engine_program() -> list[str]:
    """The ``dipengine`` console program of this environment (``python -m dipengine`` without one)."""
    script = Path(sys.executable).with_name("dipengine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dipengine"]


# --------------------------------------------------------------------------- data (cached)


def region(root, n: int, seed: int = 0, year: int = 2026, *, quiet: bool = False) -> Path:
    """``root/compare_n<n>_s<seed>_y<year>/`` with ``cases.parquet`` and ``hospitals.csv`` from
    ``dipengine synth``; generated once (into a temporary name, then renamed)."""
    root = Path(root)
    d = root / f"compare_n{n}_s{seed}_y{year}"
    if (d / "cases.parquet").exists() and (d / "hospitals.csv").exists():
        return d
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{d.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(engine_program() + ["synth", "--year", str(year), "--cases", str(n), "--seed", str(seed),
                                       "--out", str(tmp)], check=True, env=child_env(),
                   stdout=subprocess.DEVNULL if quiet else None)
    try:
        os.replace(tmp, d)
    except OSError:  # another run won the race
        if not (d / "cases.parquet").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"generated {n:,} cases in {time.perf_counter() - t:.1f} s -> {d}")
    return d


def shipped_dirs() -> tuple[Path, Path]:
    """The directories ``--rules demo`` and ``--pricing 440200/2026`` resolve to (for pandas)."""
    from dipengine.policy import resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir

    return resolve_rules_dir(RULES), resolve_pricing_dir(PRICING)


# --------------------------------------------------------------------------- the three commands


def engine_cmd(data: Path, out: Path, period: str, no_benefits: bool = False) -> list[str]:
    cmd = engine_program() + ["settle", "--rules", RULES, "--pricing", PRICING, "--hospitals",
                              str(data / "hospitals.csv"), "--input", str(data / "cases.parquet"),
                              "--period", period, "--out", str(out)]
    return cmd + (["--no-benefits"] if no_benefits else [])


def pandas_cmd(data: Path, out: Path, period: str, rules: Path, pricing: Path) -> list[str]:
    return [sys.executable, str(HERE / "pandas_settle.py"), "--input", str(data / "cases.parquet"),
            "--rules", str(rules), "--pricing", str(pricing), "--hospitals", str(data / "hospitals.csv"),
            "--period", period, "--out", str(out)]


def floor_cmd(data: Path, template: Path, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", "floor", "--input", str(data / "cases.parquet"),
            "--template", str(template), "--out", str(out)]


def io_floor(source, template, out, batch_rows: int = BATCH_ROWS) -> int:
    """(c): stream ``source`` (Parquet) in batches and stream-write ``out`` with the schema of the
    engine's case output ``template`` (only its footer is read); returns the rows written.

    An output column the input has with the same type is the input's; another is a placeholder of
    its type: text = the input's ``main_dx`` (about as many distinct values as a group code), int64
    = the total cost in fen, float64 = the total cost in yuan, bool = main procedure absent, int8 =
    the discharge mode; a column that is all null in ``template`` is written as nulls.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(template).metadata
    schema = pq.read_schema(template).remove_metadata()
    all_null = set()
    for i, name in enumerate(schema.names):
        stats = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
        if meta.num_rows and all(s is not None and s.has_null_count for s in stats) and \
                sum(s.null_count for s in stats) == meta.num_rows:
            all_null.add(name)

    rows = 0
    scanner = ds.dataset(str(source), format="parquet").scanner(batch_size=batch_rows)
    with pq.ParquetWriter(str(out), schema) as w:
        for b in scanner.to_batches():
            n = b.num_rows
            donors = {}

            def donor(t, b=b):
                if t not in donors:
                    if t == pa.string():
                        donors[t] = b.column("main_dx").cast(pa.string())
                    elif t == pa.float64():
                        donors[t] = b.column("total_cost").cast(pa.float64())
                    elif t == pa.int64():
                        donors[t] = pc.round(pc.multiply(donor(pa.float64()), 100.0)).cast(pa.int64())
                    elif t == pa.bool_():
                        donors[t] = pc.is_null(b.column("main_proc"))
                    elif t == pa.int8():
                        donors[t] = b.column("discharge_mode").cast(pa.int8())
                    else:
                        donors[t] = pa.nulls(n, t)
                return donors[t]

            arrays = []
            for f in schema:
                if f.name in all_null:
                    arrays.append(pa.nulls(n, f.type))
                elif f.name in b.schema.names and b.schema.field(f.name).type == f.type:
                    arrays.append(b.column(f.name))
                else:
                    arrays.append(donor(f.type))
            w.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += n
    return rows


# --------------------------------------------------------------------------- agreement


def agreement(engine_dir: Path, pandas_dir: Path, tolerance: float = 0.001) -> dict:
    """How far the pandas statements (and cases) agree with the engine's."""
    import numpy as np
    import pandas as pd

    e = pd.read_parquet(engine_dir / "hospitals.parquet")
    p = pd.read_parquet(pandas_dir / "hospitals.parquet")
    m = e.merge(p, on=["hospital_id", "pool"], how="outer", suffixes=("_e", "_p"), indicator=True)
    both = m[m["_merge"] == "both"]
    se, sp = both["standard_fen_e"].astype(float), both["standard_fen_p"].astype(float)
    rel = (sp - se).abs() / se.abs().where(se != 0, 1.0)
    out = {
        "statements_engine": len(e), "statements_pandas": len(p), "statements_both": len(both),
        "within_tolerance": float((rel <= tolerance).mean()) if len(both) else 0.0,
        "standard_equal": float((both["standard_fen_e"] == both["standard_fen_p"]).mean()) if len(both) else 0.0,
        "clearing_equal": float((both["clearing_fen_e"] == both["clearing_fen_p"]).mean()) if len(both) else 0.0,
        "band_equal": float((both["band_e"].fillna("-") == both["band_p"].fillna("-")).mean()) if len(both) else 0.0,
        "max_rel_diff": float(rel.max()) if len(both) else float("nan"),
        "standard_engine_fen": int(e["standard_fen"].sum()), "standard_pandas_fen": int(p["standard_fen"].sum()),
        "clearing_engine_fen": int(e["clearing_fen"].sum()), "clearing_pandas_fen": int(p["clearing_fen"].sum()),
        "tolerance": tolerance,
    }
    cols = ["dip_code", "points_e4"]
    ce = pd.read_parquet(engine_dir / "cases.parquet", columns=cols)
    cp = pd.read_parquet(pandas_dir / "cases.parquet", columns=cols)
    if len(ce) == len(cp):
        a, b = ce["dip_code"].to_numpy(dtype=object), cp["dip_code"].to_numpy(dtype=object)
        same = (a == b) | (pd.isna(a) & pd.isna(b))
        out["cases_same_group"] = float(np.mean(same))
        out["cases_same_points"] = float(np.mean(ce["points_e4"].to_numpy() == cp["points_e4"].to_numpy()))
    return out


# --------------------------------------------------------------------------- the run


def _warm(path: Path) -> None:
    """Read a file once so that every measurement starts with it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 23):
            pass


def run_all(data: Path, work: Path, period: str, repeat: int = 1, no_benefits: bool = False) -> dict:
    """Measure (a), (b), (c) ``repeat`` times, interleaved; the fastest of each, and the agreement."""
    rules, pricing = shipped_dirs()
    env = child_env()
    _warm(data / "cases.parquet")
    engine_out, pandas_out, floor_out = work / "engine", work / "pandas", work / "floor.parquet"
    best: dict = {}

    def keep(name, res):
        if name not in best or res["seconds"] < best[name]["seconds"]:
            best[name] = res

    for _ in range(max(1, repeat)):
        keep("engine", measure(engine_cmd(data, engine_out, period, no_benefits), "dipengine settle", env))
        keep("pandas", measure(pandas_cmd(data, pandas_out, period, rules, pricing), "pandas_settle.py", env))
        keep("floor", measure(floor_cmd(data, engine_out / "cases.parquet", floor_out), "I/O floor", env))
    best["agreement"] = agreement(engine_out, pandas_out)
    best["sizes"] = {"input": (data / "cases.parquet").stat().st_size,
                     "engine": (engine_out / "cases.parquet").stat().st_size,
                     "floor": floor_out.stat().st_size}
    return best


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def report(n: int, res: dict, *, seed: int, year: int, data: Path) -> str:
    e, p, f, a = res["engine"], res["pandas"], res["floor"], res["agreement"]
    lines = [
        f"{n:,} cases (dipengine synth --year {year} --seed {seed}: {data}), rules {RULES}, pricing {PRICING}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "",
        f"{'measurement':<36}{'wall s':>8}{'cases/s':>12}{'peak RSS':>12}{'work s':>9}",
    ]
    for label, r in (("(a) engine: dipengine settle (CLI)", e), ("(b) pandas: pandas_settle.py", p),
                     ("(c) I/O floor: pyarrow stream", f)):
        work = r["report"].get("seconds")
        lines.append(f"{label:<36}{r['seconds']:>8.2f}{n / r['seconds']:>12,.0f}{r['peak_mib']:>8,.0f} MiB"
                     f"{'-' if work is None else f'{work:.2f}':>9}")
    lines += [
        "",
        f"engine / floor: {e['seconds'] / f['seconds']:.2f}x (whole processes)",
        f"pandas / engine: {p['seconds'] / e['seconds']:.2f}x (whole processes; pandas' work alone "
        f"{p['report'].get('seconds', float('nan')):.2f} s = {p['report'].get('seconds', float('nan')) / e['seconds']:.2f}x)",
        f"case files: input {_mib(res['sizes']['input'])}, engine cases.parquet {_mib(res['sizes']['engine'])}, "
        f"floor {_mib(res['sizes']['floor'])} (same columns, types and rows)",
        "",
        f"pandas statements vs the engine's hospitals.parquet: {a['statements_both']} of {a['statements_engine']} "
        f"hospital x pool rows matched ({a['statements_pandas']} pandas rows); standard_fen within "
        f"{a['tolerance']:.1%}: {a['within_tolerance']:.1%} (equal to the fen: {a['standard_equal']:.1%}, "
        f"largest difference {a['max_rel_diff']:.4%})",
        f"  total standard: engine {a['standard_engine_fen'] / 100:,.2f}, pandas {a['standard_pandas_fen'] / 100:,.2f} "
        f"yuan (difference {(a['standard_pandas_fen'] - a['standard_engine_fen']) / 100:,.2f} yuan, "
        f"{(a['standard_pandas_fen'] - a['standard_engine_fen']) / max(1, abs(a['standard_engine_fen'])):.4%})",
        f"  clearing equal to the fen: {a['clearing_equal']:.1%}, same band: {a['band_equal']:.1%}; total clearing "
        f"difference {(a['clearing_pandas_fen'] - a['clearing_engine_fen']) / 100:,.2f} yuan",
    ]
    if "cases_same_group" in a:
        lines.append(f"  cases: same dip_code {a['cases_same_group']:.2%}, same points_e4 {a['cases_same_points']:.2%}")
    summary = e["stdout"].strip().splitlines()
    if summary:
        lines += ["", "engine summary: " + summary[0]]
    return "\n".join(lines)


class CompareSettle:
    """asv: the three measurements of this script once per run (fresh processes), as tracked ratios.

    ``DIPENGINE_BENCH_PROFILE=small`` (CI): 50,000 cases; ``large``: 1,000,000.
    """

    timeout = 3600

    def setup_cache(self):
        try:
            from benchmarks import common
        except ImportError:
            import common
        n = common.pick(50_000, 1_000_000)
        data = region(common.CACHE_DIR, n, quiet=True)
        with tempfile.TemporaryDirectory(prefix="dipengine-compare-") as tmp:
            res = run_all(data, Path(tmp), "2026")
        return {k: res[k]["seconds"] for k in ("engine", "pandas", "floor")}

    def track_engine_over_floor(self, res):
        return res["engine"] / res["floor"]

    track_engine_over_floor.unit = "ratio"

    def track_pandas_over_engine(self, res):
        return res["pandas"] / res["engine"]

    track_pandas_over_engine.unit = "ratio"


def main(argv=None) -> None:
    try:
        from benchmarks import common
    except ImportError:  # run as a script: this directory is on sys.path
        import common

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--year", type=int, default=2026, help="year of the cases and period of the clearing")
    ap.add_argument("--dir", default=str(common.CACHE_DIR), help="where the generated data is cached")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement (fastest reported)")
    ap.add_argument("--keep", help="keep the outputs in this directory (default: a temporary one)")
    ap.add_argument("--no-benefits", action="store_true", help="run the engine with --no-benefits")
    ap.add_argument("--json", help="also write the measurements to this JSON file")
    ap.add_argument("--child", choices=["floor"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--template", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "floor":
        t = time.perf_counter()
        rows = io_floor(args.input, args.template, args.out)
        print(json.dumps({"seconds": time.perf_counter() - t, "rows": rows}))
        return

    data = region(args.dir, args.cases, args.seed, args.year)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        res = run_all(data, work, str(args.year), args.repeat, args.no_benefits)
    else:
        with tempfile.TemporaryDirectory(prefix="dipengine-compare-") as tmp:
            res = run_all(data, Path(tmp), str(args.year), args.repeat, args.no_benefits)
    print(report(args.cases, res, seed=args.seed, year=args.year, data=data))
    if args.json:
        Path(args.json).write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("stdout", "stderr")}
                                               for k, v in res.items()}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
