"""Benchmarks of grouping (issue 3, item 8): kernel, CLI end to end, pandas baseline, I/O floor.

asv-style classes (``setup`` / ``time_*`` / ``peakmem_*`` / ``track_*``, small sizes) and a script::

    python benchmarks/bench_group.py [--cases 2000000] [--repeat 3]

which runs the four measurements once each (best of ``--repeat``) and prints a table:

(a) ``kernel``  the Cython core (``grouper.run_kernel``) on already-encoded arrays, one thread,
    against a catalogue of more than 10,000 groups;
(b) ``cli``     ``python -m dipengine group`` end to end, Parquet to Parquet, in a fresh process
    (wall time of the whole process, interpreter start included; peak RSS from ``os.wait4``);
(c) ``pandas``  a straightforward merge-based pandas grouping, as an analyst would write it, on the
    same file with the same output columns (no validation, no auxiliary subtypes, exact codes only);
(d) ``floor``   pyarrow alone: read the columns (b) reads and write (b)'s output table (same columns
    and types, the input's extra columns included, loaded before the clock starts; same writer
    statistics settings as (b); the faster of pyarrow's default memory pool and jemalloc).

(c) and (d) run in their own subprocess too (for their peak RSS) and time their work inside it.
(d') is (d) measured as (b) is: the wall time of a fresh ``python`` process that imports pyarrow
alone, reads and writes, minus the time it spends loading the output's content before writing
it. (b) is a whole process; (d') puts the floor on the same footing, (d) is the stricter one.

The catalogue is built with :func:`dipengine.catalog.build_catalog` (threshold 2) from one
synthetic history year of 600,000 cases drawn from the full official code lists
(``/work/shared/data/icd10_yb2.tsv``, ``icd9cm3_yb2.tsv``, 4,000 subcategories): about 20,000
groups. The cases are a later year of the same synthetic region (1% planted bad rows). Inputs are
cached under ``/tmp/dipengine-bench/`` keyed by size and seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

try:
    from benchmarks import common
except ImportError:  # run as a script (python benchmarks/bench_group.py): this directory is on sys.path
    import common

ROOT = Path(__file__).resolve().parent.parent
CACHE = common.CACHE_DIR  # DIPENGINE_BENCH_DIR, default <tmp>/dipengine-bench
CODES_DIR = Path(os.environ.get("DIPENGINE_CODES_DIR", "/work/shared/data"))
ICD10 = CODES_DIR / "icd10_yb2.tsv"
ICD9 = CODES_DIR / "icd9cm3_yb2.tsv"
SEED = 42
HISTORY_CASES = 600_000
N_SUBCATEGORIES = 4000


# --------------------------------------------------------------------------- inputs (cached)


def _params():
    from dipengine.synth import DEFAULT_PARAMS

    return dataclasses.replace(DEFAULT_PARAMS, n_subcategories=N_SUBCATEGORIES)


def _code_lists() -> dict:
    if not (ICD10.exists() and ICD9.exists()):
        raise SystemExit(f"the official code lists are needed in {CODES_DIR} (icd10_yb2.tsv, icd9cm3_yb2.tsv)")
    return {"codes_icd10": str(ICD10), "codes_icd9": str(ICD9)}


def make_catalogue(seed: int = SEED) -> tuple[Path, Path]:
    """Rule-set directory (>= 10,000 groups) and hospitals.csv, built once and cached."""
    import pyarrow.csv as pcsv

    from dipengine.catalog import build_catalog
    from dipengine.synth import synth_region

    base = CACHE / f"catalog_s{seed}_h{HISTORY_CASES}_sub{N_SUBCATEGORIES}"
    rules, hosp = base / "rules", base / "hospitals.csv"
    if not (rules / "manifest.toml").exists():
        base.mkdir(parents=True, exist_ok=True)
        cases, reg = synth_region(2025, HISTORY_CASES, seed=seed, params=_params(), **_code_lists())
        pcsv.write_csv(reg, hosp)
        build_catalog([cases], reg, rules, threshold=2)
    return rules, hosp


def make_cases(n: int, seed: int = SEED) -> Path:
    """Parquet file of ``n`` raw (contract §2) cases of the catalogue's region, cached."""
    from dipengine.synth import synth_region

    _, hosp = make_catalogue(seed)
    path = CACHE / f"cases_s{seed}_n{n}_sub{N_SUBCATEGORIES}.parquet"
    if not path.exists():
        cases, _ = synth_region(2026, n, seed=seed, hospitals=str(hosp), bad_rows=0.01, params=_params(),
                                **_code_lists())
        tmp = path.with_suffix(".tmp")
        pq.write_table(cases, tmp)
        os.replace(tmp, path)
    return path


def cli_columns(path) -> list[str]:
    """The input columns ``dipengine group`` reads from ``path`` (the floor must read the same)."""
    schema = pq.read_schema(path)
    try:
        from dipengine.grouper import input_columns
    except ImportError:  # older versions read every column
        return schema.names
    return input_columns(schema)


# --------------------------------------------------------------------------- (a) kernel


def encoded(path, rules):
    """(rule set, encoded case arrays) for the kernel benchmark; encoding is not timed."""
    from dipengine.grouper import encode, prepare_cases
    from dipengine.reader import read_cases
    from dipengine.rules import load_rules

    rs = load_rules(rules)
    return rs, encode(prepare_cases(read_cases(path)), rs)


def kernel_seconds(rs, enc, n_threads: int = 1) -> float:
    """Wall seconds of one ``run_kernel`` call (not named ``time_*``: asv would collect it)."""
    from dipengine.grouper import run_kernel

    t = time.perf_counter()
    run_kernel(enc, rs, n_threads)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- (b) the real CLI


def run_cli(path, rules, out, threads=None) -> dict:
    """``python -m dipengine group`` in a fresh process: wall seconds and peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "dipengine", "group", "--rules", str(rules), "--input", str(path), "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    return common.run_process(cmd, _env(), "dipengine group")


# --------------------------------------------------------------------------- (c) pandas baseline

_CLASS_RANK = {"conservative": 0, "diagnostic": 1, "therapeutic": 2, "surgery": 3}
_RANK_CLASS = {v: k for k, v in _CLASS_RANK.items()}


def pandas_group(path, rules, out) -> None:
    """Merge-based grouping with pandas, written the way an analyst would.

    Cuts corners the real grouper may not: no validation (every row is grouped), procedures matched
    on the exact code only, comprehensive groups only keyed on the 3-character category, no
    excluded lists, no auxiliary subtypes (``aux_coef`` 1.0), ties by number of terms only.
    """
    import pandas as pd

    rules = Path(rules)
    df = pd.read_parquet(path, columns=["case_id", "main_dx", "main_proc", "other_procs"])
    groups = pd.read_csv(rules / "groups.csv", dtype=str, keep_default_na=False)
    groups["score"] = groups["score"].astype(float)
    groups["gid"] = np.arange(len(groups))
    procs = pd.read_csv(rules / "procedures.csv", dtype=str, keep_default_na=False)[["code", "class"]]

    df["row"] = np.arange(len(df))
    dx = df["main_dx"].str.split("+").str[0]
    df["sub"] = dx.str[:5]
    df["cat"] = dx.str[:3]

    # procedures, long: one row per (case, code)
    other = df[["row", "other_procs"]].explode("other_procs").rename(columns={"other_procs": "code"})
    long = pd.concat([df[["row", "main_proc"]].rename(columns={"main_proc": "code"}), other])
    long = long[long["code"].notna() & (long["code"] != "")]
    long = long.merge(procs, on="code", how="left")
    long["rank"] = long["class"].map(_CLASS_RANK).fillna(0).astype(int)
    case_rank = long.groupby("row")["rank"].max().reindex(df["row"], fill_value=0).to_numpy()
    df["cls"] = case_rank

    # core/basic groups, long: one row per (group, term, code)
    cb = groups[groups["group_type"].isin(["core", "basic"])].copy()
    cb["prio"] = [_prio(t, c) for t, c in zip(cb["group_type"], cb["treat_class"])]
    with_proc = cb[cb["proc_expr"] != ""].copy()
    with_proc["terms"] = with_proc["proc_expr"].str.split("+")
    with_proc["nterms"] = with_proc["terms"].str.len()
    gt = with_proc[["gid", "dx_key", "terms"]].explode("terms")
    gt["term"] = gt.groupby("gid").cumcount()
    gt["code"] = gt["terms"].str.split("/")
    gt = gt.explode("code")[["gid", "dx_key", "term", "code"]]

    lp = long[["row", "code"]].merge(df[["row", "sub"]], on="row")
    hits = lp.merge(gt, left_on=["sub", "code"], right_on=["dx_key", "code"])
    matched = hits.groupby(["row", "gid"])["term"].nunique().rename("hit").reset_index()
    matched = matched.merge(with_proc[["gid", "nterms", "prio"]], on="gid")
    matched = matched[matched["hit"] == matched["nterms"]]

    conservative = cb[cb["proc_expr"] == ""][["gid", "dx_key", "prio"]]
    cons = df.loc[df["cls"] == 0, ["row", "sub"]].merge(conservative, left_on="sub", right_on="dx_key")
    cons["nterms"] = 0
    cand = pd.concat([matched[["row", "gid", "prio", "nterms"]], cons[["row", "gid", "prio", "nterms"]]])
    best = cand.sort_values(["row", "prio", "nterms", "gid"], ascending=[True, True, False, True])
    best = best.drop_duplicates("row").set_index("row")
    df["gid"] = best["gid"].reindex(df["row"]).to_numpy()
    df["prio"] = best["prio"].reindex(df["row"]).to_numpy()

    # comprehensive fallback on category + the case's class, when it ranks better
    comp = groups[groups["group_type"] == "comprehensive"].copy()
    comp["cls"] = comp["treat_class"].map(_CLASS_RANK)
    comp["cprio"] = [_prio("comprehensive", c) for c in comp["treat_class"]]
    cm = df[["row", "cat", "cls"]].merge(comp[["dx_key", "cls", "gid", "cprio"]].drop_duplicates(["dx_key", "cls"]),
                                        left_on=["cat", "cls"], right_on=["dx_key", "cls"], how="left")
    cm = cm.set_index("row").reindex(df["row"])
    use_comp = cm["gid"].notna().to_numpy() & ~(df["prio"].to_numpy() < cm["cprio"].to_numpy())
    df.loc[use_comp, "gid"] = cm["gid"].to_numpy()[use_comp]

    # blank group for the rest
    blank = groups.loc[groups["group_type"] == "blank", "gid"]
    if len(blank):
        df["gid"] = df["gid"].fillna(blank.iloc[0])
    g = groups.set_index("gid").reindex(df["gid"].to_numpy())
    path_ = g["group_type"].fillna("rejected").to_numpy()
    treat = np.where(path_ == "blank", df["cls"].map(_RANK_CLASS).to_numpy(), g["treat_class"].to_numpy())
    res = pd.DataFrame({
        "case_id": df["case_id"].to_numpy(),
        "dip_code": g["dip_code"].to_numpy(),
        "dip_name": g["dip_name"].to_numpy(),
        "group_type": g["group_type"].to_numpy(),
        "match_path": path_,
        "treat_class": treat,
        "base_score": g["score"].fillna(0.0).to_numpy(),
        "aux_subtype": pd.Series([None] * len(df), dtype=object),
        "aux_coef": 1.0,
        "reason": pd.Series([None] * len(df), dtype=object),
        "reason_detail": pd.Series([None] * len(df), dtype=object),
    })
    res.to_parquet(out, index=False)


def _prio(group_type: str, treat_class: str) -> int:
    from dipengine.rules import PRIORITY

    return PRIORITY[(group_type, treat_class)]


# --------------------------------------------------------------------------- (d) the I/O floor


def _cli_output_schema() -> pa.Schema:
    try:
        from dipengine.grouper import output_schema
    except ImportError:  # older versions wrote plain strings
        return pa.schema([])
    return output_schema(dictionary=True)


def io_floor(path, columns, template: pa.Table, out) -> None:
    """pyarrow alone: read ``columns`` of the input, write ``template`` (the CLI's output table,
    extra input columns included) with the CLI's writer settings (no min/max statistics for the
    dictionary text columns)."""
    pq.read_table(path, columns=columns)
    stats = [f.name for f in template.schema if not pa.types.is_dictionary(f.type)]
    pq.write_table(template, out, write_statistics=stats)


_FLOOR_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
import pyarrow as pa
import pyarrow.parquet as pq
path, template, out, spec = sys.argv[1:5]
spec = json.loads(spec)
if spec["pool"] == "jemalloc":
    pa.set_memory_pool(pa.jemalloc_memory_pool())
t1 = time.perf_counter()
tmpl = pq.read_table(template, read_dictionary=spec["dictionary"])  # the output's content: not the floor
load = time.perf_counter() - t1
pq.read_table(path, columns=spec["columns"])
pq.write_table(tmpl, out, write_statistics=spec["statistics"])
print(json.dumps({"load": load}))
"""


def floor_pools() -> list[str]:
    """Memory pools the floor is measured with: pyarrow's default and, when built in, jemalloc;
    the floor is the faster of them."""
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return ["default"]
    return ["default", "jemalloc"]


def run_floor_process(path, template, out, pool: str = "default") -> dict:
    """(d') the floor as a program, measured like (b): a fresh ``python`` that imports pyarrow
    alone, reads the columns (b) reads and writes (b)'s output. Wall seconds of the whole process
    minus the time it spends loading that output's content (``template``) before writing it."""
    dict_cols = [f.name for f in _cli_output_schema() if pa.types.is_dictionary(f.type)]
    schema = pq.read_schema(template)
    spec = {"columns": cli_columns(path), "dictionary": dict_cols,
            "statistics": [n for n in schema.names if n not in dict_cols], "pool": pool}
    cmd = [sys.executable, "-c", _FLOOR_PROCESS, str(path), str(template), str(out), json.dumps(spec)]
    res = common.run_process(cmd, None, "floor process")
    load = json.loads(res["stdout"].strip().splitlines()[-1])["load"]
    return {"seconds": res["seconds"] - load, "peak_mib": res["peak_mib"], "pool": pool}


# --------------------------------------------------------------------------- subprocess children


def _child(kind: str, path: str, rules: str, out: str, template: str | None) -> None:
    """Run (c) or (d) once in this fresh process; print ``{"seconds": ...}``."""
    if kind == "prepare":
        make_cases(int(template))
        print(json.dumps({"seconds": 0.0}))
        return
    if kind == "kernel":
        rs, enc = encoded(path, rules)
        kernel_seconds(rs, enc, 1)  # first call: page faults
        k1 = min(kernel_seconds(rs, enc, 1) for _ in range(3))
        k2 = min(kernel_seconds(rs, enc, 2) for _ in range(3))
        print(json.dumps({"seconds": k1, "seconds_2": k2, "groups": rs.groups.num_rows}))
        return
    if kind == "floor":
        if os.environ.get("DIPENGINE_BENCH_POOL") == "jemalloc":
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        # not timed: the floor's output content, with the Arrow types the CLI hands to its writer
        dict_cols = [f.name for f in _cli_output_schema() if pa.types.is_dictionary(f.type)]
        tmpl = pq.read_table(template, read_dictionary=dict_cols)
        cols = cli_columns(path)
        t = time.perf_counter()
        io_floor(path, cols, tmpl, out)
    else:
        import pandas  # noqa: F401  (import not timed, as for a notebook)

        t = time.perf_counter()
        pandas_group(path, rules, out)
    print(json.dumps({"seconds": time.perf_counter() - t}))


def run_child(kind: str, path, rules, out, template=None, pool: str = "default") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(path), "--rules", str(rules), "--out", str(out)]
    if template:
        cmd += ["--template", str(template)]
    res = common.run_process(cmd, dict(_env(), DIPENGINE_BENCH_POOL=pool), kind)
    return dict(json.loads(res["stdout"].strip().splitlines()[-1]), peak_mib=res["peak_mib"], pool=pool)


# --------------------------------------------------------------------------- asv classes
#
# Sizes come from benchmarks/common.py: the small profile (default, CI) groups synthetic cases
# drawn from the packaged vocabularies against a catalogue built from 3 x 50,000 history cases
# (about 600 groups); DIPENGINE_BENCH_PROFILE=large uses the script's inputs above (2M cases,
# official code lists, about 20,000 groups).

ASV_CASES = common.pick([100_000], [2_000_000])


def asv_inputs(n_cases: int) -> tuple[Path, Path]:
    """(rule-set directory, raw case Parquet with 1% planted bad rows) for the active profile."""
    if common.LARGE:
        return make_catalogue()[0], make_cases(n_cases)
    return common.local_catalogue(50_000), common.synth_cases(n_cases, bad_rows=0.01)


class GroupKernel:
    """(a) The Cython core on encoded arrays (encoding not timed)."""

    params = [ASV_CASES, common.THREADS]
    param_names = ["n_cases", "n_threads"]
    timeout = 600

    def setup(self, n_cases, n_threads):
        rules, path = asv_inputs(n_cases)
        self.rs, self.enc = encoded(path, rules)

    def time_kernel(self, n_cases, n_threads):
        from dipengine.grouper import run_kernel

        run_kernel(self.enc, self.rs, n_threads)

    def track_groups(self, n_cases, n_threads):
        """Size of the catalogue the kernel searches."""
        return self.rs.groups.num_rows

    track_groups.unit = "groups"


class GroupInProcess:
    """``read_cases`` -> ``group`` -> ``write_table`` in this process, Parquet to Parquet."""

    params = [ASV_CASES, common.THREADS]
    param_names = ["n_cases", "n_threads"]
    timeout = 900

    def setup(self, n_cases, n_threads):
        from dipengine.rules import load_rules

        rules, self.path = asv_inputs(n_cases)
        self.rs = load_rules(rules)
        self.tmp = tempfile.mkdtemp(prefix="dipengine-bench-")
        self.out = os.path.join(self.tmp, "grouped.parquet")

    def teardown(self, n_cases, n_threads):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self, n_threads):
        from dipengine.grouper import group
        from dipengine.reader import read_cases

        return group(read_cases(self.path), self.rs, n_threads=n_threads)

    def time_group(self, n_cases, n_threads):
        from dipengine.io import write_table

        write_table(self._run(n_threads), self.out)

    def peakmem_group(self, n_cases, n_threads):
        self._run(n_threads)

    def track_grouped_cases(self, n_cases, n_threads):
        """Cases given a DIP group (correctness: must not depend on the thread count)."""
        out = self._run(n_threads)
        return out.num_rows - out["dip_code"].null_count

    track_grouped_cases.unit = "cases"


class GroupEndToEnd:
    """(b) ``dipengine group`` Parquet to Parquet, (c) the pandas baseline, (d) the I/O floor."""

    params = [ASV_CASES]
    param_names = ["n_cases"]
    timeout = 900

    def setup(self, n_cases):
        self.rules, self.path = asv_inputs(n_cases)
        self.tmp = tempfile.mkdtemp(prefix="dipengine-bench-")
        self.out = os.path.join(self.tmp, "grouped.parquet")
        run_cli(self.path, self.rules, self.out)
        dict_cols = [f.name for f in _cli_output_schema() if pa.types.is_dictionary(f.type)]
        self.template = pq.read_table(self.out, read_dictionary=dict_cols)
        self.columns = cli_columns(self.path)

    def teardown(self, n_cases):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_cli(self, n_cases):
        run_cli(self.path, self.rules, self.out)

    def track_cli_peak_mib(self, n_cases):
        return run_cli(self.path, self.rules, self.out)["peak_mib"]

    track_cli_peak_mib.unit = "MiB"

    def track_cli_over_floor_process(self, n_cases):
        """(b) / (d'): the CLI against the floor measured the same way (both whole processes)."""
        out = self.out + ".floor_p"
        floor = min(run_floor_process(self.path, self.out, out, p)["seconds"] for p in floor_pools())
        return run_cli(self.path, self.rules, self.out)["seconds"] / floor

    track_cli_over_floor_process.unit = "ratio"

    def time_pandas(self, n_cases):
        pandas_group(self.path, self.rules, self.out + ".pandas")

    def time_io_floor(self, n_cases):
        io_floor(self.path, self.columns, self.template, self.out + ".floor")

    def track_pandas_agreement(self, n_cases):
        """Share of cases where the pandas baseline picks the same dip_code (corners cut)."""
        pandas_group(self.path, self.rules, self.out + ".pandas")
        a = pq.read_table(self.out, columns=["dip_code"])["dip_code"].to_numpy(zero_copy_only=False)
        b = pq.read_table(self.out + ".pandas", columns=["dip_code"])["dip_code"].to_numpy(zero_copy_only=False)
        return float(np.mean(a == b))


# --------------------------------------------------------------------------- script


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="--threads for the CLI (default: all)")
    ap.add_argument("--child", choices=["prepare", "kernel", "floor", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--rules", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--template", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        _child(args.child, args.input, args.rules, args.out, args.template)
        return

    # An installed package is byte-compiled (pip does it); a source checkout run with
    # PYTHONDONTWRITEBYTECODE=1 would compile dipengine's modules again in every (b) process.
    import compileall

    compileall.compile_dir(str(ROOT / "dipengine"), quiet=1)
    # Everything big runs in child processes: a child's peak RSS would otherwise include the
    # parent's (Linux keeps maxrss across fork + exec).
    n = args.cases
    t = time.perf_counter()
    run_child("prepare", "-", "-", "-", str(n))
    rules, _ = make_catalogue()
    path = make_cases(n)
    print(f"inputs ready in {time.perf_counter() - t:.1f} s: {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
    kern = run_child("kernel", path, rules, "-")
    k1, k2, n_groups = kern["seconds"], kern["seconds_2"], kern["groups"]
    print(f"catalogue: {n_groups:,} groups ({rules})")

    with tempfile.TemporaryDirectory(prefix="dipengine-bench-") as tmp:
        out = os.path.join(tmp, "grouped.parquet")
        cli = min((run_cli(path, rules, out, args.threads) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        summary = cli["stdout"].strip().splitlines()
        pools = floor_pools()  # the floor is the faster of pyarrow's pools
        floor = min((run_child("floor", path, rules, os.path.join(tmp, "floor.parquet"), out, pool=p)
                     for _ in range(args.repeat) for p in pools), key=lambda r: r["seconds"])
        floor_p = min((run_floor_process(path, out, os.path.join(tmp, "floor_p.parquet"), p)
                       for _ in range(args.repeat) for p in pools), key=lambda r: r["seconds"])
        pdo = os.path.join(tmp, "pandas.parquet")
        pand = run_child("pandas", path, rules, pdo)
        a = pq.read_table(out, columns=["dip_code"])["dip_code"].to_numpy(zero_copy_only=False)
        b = pq.read_table(pdo, columns=["dip_code"])["dip_code"].to_numpy(zero_copy_only=False)
        agree = float(np.mean(a == b))
        start = min(_startup() for _ in range(3))

    rows = [
        ("(a) kernel, 1 thread", k1, None, "-"),
        ("(a) kernel, 2 threads", k2, None, "-"),
        ("(b) dipengine group (CLI)", cli["seconds"], cli["peak_mib"], f"{cli['seconds'] / floor['seconds']:.2f}x"),
        ("(c) pandas baseline", pand["seconds"], pand["peak_mib"], f"{pand['seconds'] / floor['seconds']:.2f}x"),
        ("(d) I/O floor (pyarrow)", floor["seconds"], floor["peak_mib"], "1.00x"),
        ("(d') floor as a process", floor_p["seconds"], floor_p["peak_mib"],
         f"{floor_p['seconds'] / floor['seconds']:.2f}x"),
    ]
    print(f"\n{n:,} cases; {n_groups:,} groups; CLI output: {summary[0] if summary else ''}")
    print(f"{'measurement':<28}{'seconds':>9}{'cases/s':>14}{'peak RSS':>11}{'vs floor':>10}")
    for name, secs, peak, ratio in rows:
        mem = f"{peak:,.0f} MiB" if peak else "-"
        print(f"{name:<28}{secs:>9.3f}{n / secs:>14,.0f}{mem:>11}{ratio:>10}")
    print(f"(b) vs (c): pandas takes {pand['seconds'] / cli['seconds']:.2f}x the CLI's time; "
          f"pandas picks the same dip_code for {agree:.1%} of cases")
    print(f"interpreter + CLI start-up (python -m dipengine --help): {start:.3f} s, included in (b)")
    print(f"(b) vs (d'), both whole processes: {cli['seconds'] / floor_p['seconds']:.2f}x")
    print(f"floor memory pools tried: {', '.join(pools)}; fastest (d): {floor['pool']}, (d'): {floor_p['pool']}")
    ok = {
        "(a) >= 10M cases/s, 1 thread": n / k1 >= 10e6,
        "(b) >= 1M cases/s": n / cli["seconds"] >= 1e6,
        "(b) peak RSS < 1.5 GiB": cli["peak_mib"] < 1536,
        "(b) <= 1.5x floor (d), timed after its imports": cli["seconds"] <= 1.5 * floor["seconds"],
        "(b) <= 1.5x floor (d'), both whole processes": cli["seconds"] <= 1.5 * floor_p["seconds"],
        "(b) >= 3x faster than (c)": pand["seconds"] >= 3 * cli["seconds"],
    }
    for k, v in ok.items():
        print(f"  {'met ' if v else 'MISS'}  {k}")


def _startup() -> float:
    return common.run_process([sys.executable, "-m", "dipengine", "group", "--help"], _env(), "--help")["seconds"]


def _env() -> dict:
    """This environment, with the repository root first on PYTHONPATH (a source checkout runs)."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


if __name__ == "__main__":
    main()
