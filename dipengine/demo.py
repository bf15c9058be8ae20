"""The demo pipeline (contract §1 ``demo``): a synthetic region settled end to end.

synthetic region (3 history years + the current year) -> local catalogue from the history ->
read and group the current year once -> 12 monthly pre-settlements -> annual clearing ->
patient-side benefits. Everything is written under one directory, atomically.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.io import atomic_dir, sha256_file, write_table
from dipengine.manifest import read_manifest, write_manifest

POOLS = ("employee", "resident")


@dataclass
class DemoSummary:
    """Headline figures of a demo run (money in fen, point values in yuan per point)."""

    out: Path
    year: int
    n_cases: int
    n_history: list
    groups_in_catalogue: int
    groups_used: int
    match_path: dict
    reasons: dict
    budget_value: dict
    settlement_value: dict
    budget_fen: dict
    clamped: dict
    standard_fen: dict
    fund_due_fen: dict
    monthly_paid_fen: int
    final_fen: int
    clearing_fen: int
    gainers: list
    losers: list
    fund_share: dict
    seconds: float
    stages: dict = field(default_factory=dict)


def _month_slices(discharge: pa.ChunkedArray, year: int):
    """Row indices of each month's discharges (vectorised; rows keep their order)."""
    month = pc.month(discharge).to_numpy(zero_copy_only=False)
    yr = pc.year(discharge).to_numpy(zero_copy_only=False)
    for m in range(1, 13):
        yield m, np.flatnonzero((yr == year) & (month == m))


def _add_benefits_table(pricing_dir: Path) -> None:
    """Copy the illustrative benefits table into the pricing dir and re-seal its manifest."""
    src = resources.files("dipengine.data") / "benefits_demo.csv"
    with resources.as_file(src) as p:
        shutil.copyfile(p, pricing_dir / "benefits.csv")
    meta = {k: v for k, v in read_manifest(pricing_dir).items() if k != "files"}
    files = sorted(f.name for f in pricing_dir.iterdir() if f.suffix in (".csv", ".toml") and f.name != "manifest.toml")
    write_manifest(pricing_dir, meta, files)


def _relative_build_paths(rules_dir: Path, root: Path) -> None:
    """Record the history and registry files in the rule manifest relative to the demo dir.

    ``build_catalog`` records the paths it was given, here inside the temporary directory that
    is renamed at the end; names relative to the demo directory stay true and make two demo
    runs differ only in the build timestamp. The tables and their sha256 are unchanged.
    """
    meta = read_manifest(rules_dir)
    build = meta.get("build")
    if not isinstance(build, dict):
        return

    def rel(f):
        path = Path(f)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else f

    if isinstance(build.get("history_files"), list):
        build["history_files"] = [rel(f) for f in build["history_files"]]
    if isinstance(build.get("hospitals_file"), str):
        build["hospitals_file"] = rel(build["hospitals_file"])
    files = sorted(meta.pop("files", {}))
    write_manifest(rules_dir, meta, files)


def run_demo(out="dip-demo", n_cases: int = 200_000, seed: int = 0, *, year: int = 2026,
             region: str = "440200", history_cases: int | None = None, bad_rows: float = 0.005,
             echo=None) -> DemoSummary:
    """Run the whole pipeline on a synthetic region and write it under ``out``.

    Parameters
    ----------
    out : path
        Output directory (replaced whole on success; untouched on failure).
    n_cases : int
        Cases in the current (settled) year; each history year gets ``history_cases`` (default
        the same number).
    seed : int
        Seed of the synthetic region; same seed, same files.
    year : int
        The settled year; the history is the three years before it.
    bad_rows : float
        Share of current-year rows with one planted defect each, to show how rejected rows are
        reported and kept (the history is clean).
    echo : callable(str), optional
        Progress lines (the CLI passes ``click.echo``).
    """
    from dipengine.benefits import compute_benefits, load_benefits
    from dipengine.catalog import build_catalog
    from dipengine.grouper import group
    from dipengine.policy import load_policy
    from dipengine.reader import read_cases
    from dipengine.rules import load_rules
    from dipengine.scoring import case_points
    from dipengine.settlement import apply_benefits, settle_scored
    from dipengine.synth import synth_region

    say = echo or (lambda s: None)
    t0 = time.perf_counter()
    stages = {}
    history_cases = n_cases if history_cases is None else history_cases
    out = Path(out)
    with atomic_dir(out) as tmp:
        t = time.perf_counter()
        say(f"[1/6] synthetic region {region}: {history_cases:,} cases a year {year - 3}-{year - 1}, "
            f"{n_cases:,} in {year}")
        current, hospitals = synth_region(year, n_cases, seed=seed, region=region, bad_rows=bad_rows)
        write_table(hospitals, tmp / "hospitals.csv")
        history_files = []
        for y in range(year - 3, year):
            hist, _ = synth_region(y, history_cases, seed=seed, hospitals=hospitals)
            path = tmp / f"history_{y}.parquet"
            write_table(hist, path)
            history_files.append(path)
        write_table(current, tmp / "cases.parquet")
        del current
        stages["synth"] = time.perf_counter() - t

        t = time.perf_counter()
        say("[2/6] local catalogue from the history (catalog build)")
        cat = build_catalog(history_files, tmp / "hospitals.csv", out=tmp / "rules",
                            pricing_out=tmp / "pricing", name="demo")
        _add_benefits_table(tmp / "pricing")
        _relative_build_paths(tmp / "rules", tmp)
        rules = load_rules(tmp / "rules")
        policy = load_policy(tmp / "pricing")
        stages["catalog"] = time.perf_counter() - t

        t = time.perf_counter()
        say(f"[3/6] read, validate and group {year}")
        hosp = hospitals
        cases = read_cases(tmp / "cases.parquet", hosp, period=str(year))
        # As `settle` does with a pricing dir holding benefits.csv (estimate mode): cases
        # without recorded payments are settled on the computed benefits.
        benefit_rules = load_benefits(tmp / "pricing")
        cases = apply_benefits(cases, benefit_rules, hosp)
        grouped = group(cases, rules)
        scored_year = case_points(cases, grouped, hosp, policy, groups=rules.groups)
        stages["group"] = time.perf_counter() - t

        # What `settle` records in every manifest (contract §6.4), with paths relative to `out`
        # so that two demo runs give the same manifests.
        provenance = {
            "inputs": {"cases.parquet": sha256_file(tmp / "cases.parquet")},
            "hospitals": {"hospitals.csv": sha256_file(tmp / "hospitals.csv")},
            "rules": dict(rules.sha256),
            "benefits": {"pricing/benefits.csv": sha256_file(tmp / "pricing" / "benefits.csv")},
        }
        run_params = {"rules": "rules", "pricing": "pricing", "hospitals": "hospitals.csv",
                      "input": ["cases.parquet"], "benefits": ["pricing/benefits.csv"]}

        def _record(res, **params):
            res.manifest["parameters"] = {**run_params, **params}
            res.manifest["sha256"].update({k: dict(v) for k, v in provenance.items()})
            res.manifest["rules"] = {"name": rules.name, "version": rules.version}

        t = time.perf_counter()
        say("[4/6] 12 monthly pre-settlements")
        monthly_dirs = []
        monthly_paid = 0
        for m, idx in _month_slices(cases["discharge_date"], year):
            period = f"{year}-{m:02d}"
            idx_arr = pa.array(idx)
            res = settle_scored(scored_year.take(idx_arr), cases.take(idx_arr), hosp, policy, period)
            _record(res, period=period, monthly=[], source="cases.parquet (discharged in month)")
            d = tmp / "monthly" / period
            res.write(d)
            monthly_dirs.append(d)
            monthly_paid += int(pc.sum(res.hospitals["monthly_paid_fen"]).as_py() or 0)
        stages["monthly"] = time.perf_counter() - t

        t = time.perf_counter()
        say("[5/6] annual clearing")
        from dipengine.settlement import read_monthly
        annual = settle_scored(scored_year, cases, hosp, policy, str(year),
                               monthly=read_monthly(monthly_dirs, year))
        _record(annual, period=str(year), monthly=[f"monthly/{d.name}" for d in monthly_dirs])
        annual.manifest["sha256"]["monthly"] = {
            f"monthly/{d.name}/hospitals.parquet": sha256_file(d / "hospitals.parquet") for d in monthly_dirs}
        annual.write(tmp / "annual")
        stages["annual"] = time.perf_counter() - t

        t = time.perf_counter()
        say("[6/6] patient-side benefits")
        ben = compute_benefits(cases, benefit_rules, hosp)
        write_table(ben, tmp / "benefits.parquet")
        ins = cases["insurance_type"]
        fund_share = {}
        for p in POOLS:
            sel = pc.and_(pc.equal(ins, p), pc.is_valid(ben["fund_benefit_fen"]))
            scope = pc.sum(pc.filter(ben["policy_scope_fen"], sel)).as_py() or 0
            fund = pc.sum(pc.filter(ben["fund_benefit_fen"], sel)).as_py() or 0
            fund_share[p] = fund / scope if scope else float("nan")
        stages["benefits"] = time.perf_counter() - t

    st = annual.hospitals
    pools = annual.manifest["pools"]
    gain = {}
    for r in st.to_pylist():
        gain[r["hospital_id"]] = gain.get(r["hospital_id"], 0) + (r["clearing_fen"] or 0) - r["recorded_fen"]
    ranked = sorted(gain.items(), key=lambda kv: (-kv[1], kv[0]))
    used = pc.count_distinct(pc.drop_null(grouped["dip_code"])).as_py()
    return DemoSummary(
        out=out, year=year, n_cases=cases.num_rows, n_history=list(cat.cases_used),
        groups_in_catalogue=rules.groups.num_rows, groups_used=int(used),
        match_path=annual.manifest["counts"]["match_path"],
        reasons={k: v for k, v in annual.manifest["counts"]["reason"].items() if k != "(none)"},
        budget_value={p: pools[p]["budget_value_yuan"] for p in POOLS},
        settlement_value={p: pools[p]["point_value_yuan"] for p in POOLS},
        budget_fen={p: pools[p].get("total_cost_budget_fen") for p in POOLS},
        clamped={p: bool(pools[p].get("clamped")) for p in POOLS},
        standard_fen={p: pools[p]["hospital_standard_fen"] for p in POOLS},
        fund_due_fen={p: int(pc.sum(pc.filter(st["fund_due_fen"], pc.equal(st["pool"], p))).as_py() or 0)
                      for p in POOLS},
        monthly_paid_fen=monthly_paid,
        final_fen=int(pc.sum(st["final_fen"]).as_py() or 0),
        clearing_fen=int(pc.sum(st["clearing_fen"]).as_py() or 0),
        gainers=ranked[:5], losers=ranked[::-1][:5], fund_share=fund_share,
        seconds=time.perf_counter() - t0, stages=stages,
    )
