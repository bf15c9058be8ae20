"""The demo pipeline (contract §1 ``demo``): a synthetic region settled end to end.

synthetic region (3 history years + the current year) -> local catalogue from the history ->
read and group the current year once -> 12 monthly pre-settlements -> annual clearing ->
patient-side benefits -> audit (against the last history year) -> the Excel statements and the
HTML report of the annual clearing. Everything is written under one directory, atomically.
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
from dipengine.money import format_yuan

POOLS = ("employee", "resident")
SURPLUS_RULES = ("partial_retention", "pay_due", "retain_share_of_due")
WITHHOLDING_RULES = ("partial_retention", "retain_share_of_due")
"""Surplus rules under which the fund keeps part of a hospital's surplus (due − clearing)."""
OVERSPEND_RULES = ("share_overspend", "cap")


@dataclass(frozen=True)
class ClearingBreakdown:
    """How one pool's annual clearing relates to its fund budget, from the hospital statements.

    Every amount is int fen. The bands (dip-rules §7.4) decide each hospital's clearing from its
    assessed fund due ``due'`` and what it recorded; summed over the pool::

        fund_due − assessment − deductions − withheld_surplus + shared_overspend = clearing      (exact)

    ``deductions``: Σ audit deductions (``deduction_fen``; 0 without ``--deductions``), taken off
    ``due'`` before the bands: the banded due is ``due' − deductions`` (``fund_due_net_fen``), below
    called due. ``withheld_surplus``: Σ (due − clearing) of hospitals under ``partial_retention``/
    ``retain_share_of_due`` (the fund keeps that part of their surplus); ``shared_overspend``:
    Σ (clearing − due) of hospitals under ``share_overspend``/``cap`` (the fund pays that part of
    their overspend). ``retained_surplus``: Σ (clearing − recorded) of hospitals under
    ``partial_retention``/``pay_due``/``retain_share_of_due`` (the surplus they keep);
    ``borne_overspend``: Σ (recorded − clearing) of hospitals under ``share_overspend``/``cap``
    (the overspend they bear). Hospitals under ``pay_due`` and those without a band (nothing
    due, nothing recorded) are paid exactly the banded due.

    ``fund_budget`` (before the reserve) and ``fund_available`` (after it) come from the
    settlement manifest and are None without one; Σ fund due equals ``fund_available`` to the
    fen when the pool's point value floated (settlement method ``fund_plus_personal``).
    """

    pool: str
    n_hospitals: int
    fund_due_fen: int
    due_assessed_fen: int
    recorded_fen: int
    clearing_fen: int
    withheld_surplus_fen: int
    retained_surplus_fen: int
    shared_overspend_fen: int
    borne_overspend_fen: int
    hospitals_by_band: dict
    fund_budget_fen: int | None = None
    fund_available_fen: int | None = None
    reserve_rate: float | None = None
    clamped: bool = False
    settlement_method: str | None = None
    bands: tuple = ()
    deductions_fen: int = 0
    with_deductions: bool = False

    @property
    def due_banded_fen(self) -> int:
        """Σ (due' − audit deductions): the due the bands saw."""
        return self.due_assessed_fen - self.deductions_fen

    @property
    def assessment_fen(self) -> int:
        """Σ (fund due − assessed fund due): what the assessment coefficients took off."""
        return self.fund_due_fen - self.due_assessed_fen

    @property
    def reserve_fen(self) -> int | None:
        """Fund budget − fund available: the reserve held back from the pool."""
        if self.fund_budget_fen is None or self.fund_available_fen is None:
            return None
        return self.fund_budget_fen - self.fund_available_fen

    @property
    def due_minus_available_fen(self) -> int | None:
        """Σ fund due − fund available: 0 when the point value floated, else what the clamp (or
        the ``fund_over_share`` method) moved."""
        return None if self.fund_available_fen is None else self.fund_due_fen - self.fund_available_fen


def clearing_breakdown(hospitals, manifest: dict | None = None) -> dict:
    """Per pool, how the annual clearing relates to the fund budget (:class:`ClearingBreakdown`).

    Parameters
    ----------
    hospitals : pa.Table or pandas.DataFrame
        Hospital statements of an annual clearing (``SettlementResult.hospitals`` or
        ``annual/hospitals.parquet``): ``pool``, ``band``, ``fund_due_fen``,
        ``fund_due_assessed_fen``, ``recorded_fen``, ``clearing_fen``.
    manifest : dict, optional
        The settlement manifest (``SettlementResult.manifest`` or ``manifest.json``): adds the
        fund budget, fund available, reserve rate, clamp and the band parameters.

    Returns
    -------
    dict
        Pool name -> :class:`ClearingBreakdown`, pools in manifest (else first-seen) order;
        empty for a monthly statement (no clearing).
    """
    cols = ("pool", "band", "fund_due_fen", "fund_due_assessed_fen", "recorded_fen", "clearing_fen")
    if not isinstance(hospitals, pa.Table):  # a pandas frame of the statements
        hospitals = pa.Table.from_pandas(hospitals, preserve_index=False)
    with_deductions = "deduction_fen" in hospitals.column_names
    rows = hospitals.select(list(cols) + (["deduction_fen"] if with_deductions else [])).to_pylist()
    pools_info = (manifest or {}).get("pools") or {}
    policy = (manifest or {}).get("policy") or {}
    order = list(pools_info) + [r["pool"] for r in rows if r["pool"] not in pools_info]
    out = {}
    for pool in dict.fromkeys(order):
        mine = [r for r in rows if r["pool"] == pool and r["clearing_fen"] is not None]
        if not mine:
            continue
        acc = dict(fund_due_fen=0, due_assessed_fen=0, recorded_fen=0, clearing_fen=0, withheld_surplus_fen=0,
                   retained_surplus_fen=0, shared_overspend_fen=0, borne_overspend_fen=0, deductions_fen=0)
        by_band = {}
        for r in mine:
            due_a, rec, clr = int(r["fund_due_assessed_fen"]), int(r["recorded_fen"]), int(r["clearing_fen"])
            ded = int(r.get("deduction_fen") or 0)
            due = due_a - ded  # what the bands saw
            acc["fund_due_fen"] += int(r["fund_due_fen"])
            acc["due_assessed_fen"] += due_a
            acc["deductions_fen"] += ded
            acc["recorded_fen"] += rec
            acc["clearing_fen"] += clr
            band = r["band"]
            by_band[band] = by_band.get(band, 0) + 1
            if band in SURPLUS_RULES:
                acc["retained_surplus_fen"] += clr - rec
                if band in WITHHOLDING_RULES:
                    acc["withheld_surplus_fen"] += due - clr
            elif band in OVERSPEND_RULES:
                acc["shared_overspend_fen"] += clr - due
                acc["borne_overspend_fen"] += rec - clr
        info = pools_info.get(pool, {})
        rules_order = [b.get("rule") for b in policy.get("bands", ())] + list(SURPLUS_RULES + OVERSPEND_RULES)
        rank = {rule: i for i, rule in reversed(list(enumerate(rules_order)))}
        by_band = dict(sorted(by_band.items(), key=lambda kv: (kv[0] is None, rank.get(kv[0], 99), str(kv[0]))))
        out[pool] = ClearingBreakdown(
            pool=pool, n_hospitals=len(mine), hospitals_by_band=by_band, with_deductions=with_deductions, **acc,
            fund_budget_fen=info.get("fund_budget_fen"), fund_available_fen=info.get("fund_available_fen"),
            reserve_rate=policy.get("reserve_rate"), clamped=bool(info.get("clamped")),
            settlement_method=info.get("settlement_method"), bands=tuple(policy.get("bands", ())))
    return out


def yuan(fen) -> str:
    """Int fen as yuan text with thousands separators, exact (``-1234567`` -> ``-12,345.67``);
    ``—`` for None (:func:`dipengine.money.format_yuan`)."""
    return "—" if fen is None else format_yuan(fen)


def _pct(x) -> str:
    return f"{float(x) * 100:.4g}%"


def _versus(amount: int, ref: int, name: str) -> str:
    d = amount - ref
    if d == 0:
        return f"equal to the {name} {yuan(ref)}"
    return f"{yuan(abs(d))} {'above' if d > 0 else 'below'} the {name} {yuan(ref)}"


def _band_words(rule: str, bands: tuple) -> str:
    """What a band does, in words, with the policy's numbers when the manifest gave them."""
    b = next((x for x in bands if x.get("rule") == rule), {})
    if rule == "partial_retention":
        share = _pct(b["share"]) if "share" in b else "part"
        return f"keep {share} of their surplus, the fund the rest"
    if rule == "share_overspend":
        share = _pct(b["fund_share"]) if "fund_share" in b else "part"
        return f"the fund pays {share} of their overspend"
    if rule == "retain_share_of_due":
        share = _pct(b["share"]) if "share" in b else "part"
        return f"keep their surplus up to {share} of their due, the fund the rest"
    if rule == "cap":
        if "fund_share" in b and "cap_over" in b:
            return (f"the fund pays {_pct(b['fund_share'])} × {_pct(b['cap_over'])} of their due, "
                    f"they bear the rest")
        return "the fund pays a capped part of their overspend"
    return ""


def _count(by_band: dict, rules) -> str:
    parts = [f"{by_band[r]} under {r}" for r in rules if by_band.get(r)]
    return ", ".join(parts) if parts else "no hospital"


def _under(by_band: dict, rule: str, bands: tuple) -> str:
    n = by_band.get(rule, 0)
    return f"{n} hospital{'s' if n != 1 else ''} under {rule}: {_band_words(rule, bands)}"


def clearing_summary(hospitals, manifest: dict | None = None) -> list[str]:
    """Lines saying how an annual clearing relates to the fund budget, per pool and in total.

    For the summaries of ``dipengine demo`` and ``dipengine settle`` (annual): the clearing
    against the fund budget and the fund available after the reserve, then why, as an exact
    chain in yuan (Σ fund due − assessment deductions [− audit deductions] − surplus withheld under
    ``partial_retention``/``retain_share_of_due`` + overspend shared under ``share_overspend``/``cap``
    = clearing) and
    what the hospitals kept of their surplus and bore of their overspend. See
    :func:`clearing_breakdown`; lines carry no leading indentation. Empty for a monthly run.
    """
    parts = clearing_breakdown(hospitals, manifest)
    lines = []
    for pool, b in parts.items():
        head = f"{pool}: clearing {yuan(b.clearing_fen)}"
        if b.fund_budget_fen is not None:
            head += f", {_versus(b.clearing_fen, b.fund_budget_fen, 'fund budget')}"
            reserve = (f"{_pct(b.reserve_rate)} reserve" if b.reserve_rate is not None else "reserve")
            head += (f" and {_versus(b.clearing_fen, b.fund_available_fen, 'fund available')}"
                     f" (fund budget − {reserve} {yuan(b.reserve_fen)})")
        lines.append(head + "; why:")
        if b.fund_available_fen is not None:
            gap = b.due_minus_available_fen
            if gap == 0:
                note = "= fund available, to the fen"
            else:
                why = ("the settlement point value was clamped by the policy band" if b.clamped else
                       f"settlement method {b.settlement_method}" if b.settlement_method else "")
                note = f"= fund available {'+' if gap > 0 else '−'} {yuan(abs(gap))}" + (f": {why}" if why else "")
            lines.append(f"    Σ fund due {yuan(b.fund_due_fen)} ({note})")
        else:
            lines.append(f"    Σ fund due {yuan(b.fund_due_fen)}")
        lines.append(f"  − assessment deductions {yuan(b.assessment_fen)} (fund due × each hospital's "
                     f"assessment_coef) = Σ assessed due {yuan(b.due_assessed_fen)}")
        if b.with_deductions:
            lines.append(f"  − audit deductions {yuan(b.deductions_fen)} (before the bands) = Σ banded due "
                         f"{yuan(b.due_banded_fen)}")
        retain = (f"; {_under(b.hospitals_by_band, 'retain_share_of_due', b.bands)}"
                  if b.hospitals_by_band.get("retain_share_of_due") else "")
        lines.append(f"  − surplus withheld {yuan(b.withheld_surplus_fen)} "
                     f"({_under(b.hospitals_by_band, 'partial_retention', b.bands)}{retain})")
        lines.append(f"  + overspend shared {yuan(b.shared_overspend_fen)} "
                     f"({_under(b.hospitals_by_band, 'share_overspend', b.bands)}; "
                     f"{_under(b.hospitals_by_band, 'cap', b.bands)})")
        lines.append(f"  = clearing {yuan(b.clearing_fen)} ({b.n_hospitals} statements; "
                     f"{_count(b.hospitals_by_band, ('pay_due',))} paid exactly their "
                     f"{'banded' if b.with_deductions else 'assessed'} due)")
        lines.append(f"    hospitals recorded {yuan(b.recorded_fen)}: "
                     f"retained surplus {yuan(b.retained_surplus_fen)} "
                     f"(kept by {_count(b.hospitals_by_band, SURPLUS_RULES)}), overspend borne "
                     f"{yuan(b.borne_overspend_fen)} (by {_count(b.hospitals_by_band, OVERSPEND_RULES)})")
    if len(parts) > 1:
        total = sum(b.clearing_fen for b in parts.values())
        line = f"all pools: clearing {yuan(total)}"
        if all(b.fund_budget_fen is not None for b in parts.values()):
            budget = sum(b.fund_budget_fen for b in parts.values())
            avail = sum(b.fund_available_fen for b in parts.values())
            line += (f", {_versus(total, budget, 'fund budget')} and "
                     f"{_versus(total, avail, 'fund available')}")
        withheld = sum(b.withheld_surplus_fen for b in parts.values())
        shared = sum(b.shared_overspend_fen for b in parts.values())
        assessed = sum(b.assessment_fen for b in parts.values())
        line += f"; assessment deductions {yuan(assessed)}, "
        if any(b.with_deductions for b in parts.values()):
            line += f"audit deductions {yuan(sum(b.deductions_fen for b in parts.values()))}, "
        line += f"surplus withheld {yuan(withheld)}, overspend shared {yuan(shared)}"
        lines.append(line)
    return lines


@dataclass
class DemoSummary:
    """Headline figures of a demo run (money in fen, point values in yuan per point).

    ``budget_fen`` is the total-cost budget per pool and ``standard_fen`` Σ hospital standard;
    ``fund_budget_fen`` the policy's fund budget (before the reserve), ``fund_available_fen``
    the fund budget net of the reserve and ``fund_due_fen`` Σ fund due. ``clearing`` holds one
    :class:`ClearingBreakdown` per pool (how the clearing relates to the fund budget) and
    ``clearing_lines`` their words (:func:`clearing_summary`).
    """

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
    fund_budget_fen: dict = field(default_factory=dict)
    fund_available_fen: dict = field(default_factory=dict)
    reserve_rate: float = 0.0
    settlement_value_raw: dict = field(default_factory=dict)
    clearing: dict = field(default_factory=dict)
    clearing_lines: list = field(default_factory=list)


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


def _relative_audit_paths(result, top: Path) -> None:
    """The audit manifest's input paths relative to the demo folder (two runs: the same bytes)."""
    par = result.manifest["parameters"]
    for key in ("hospitals", "input", "history"):
        if par.get(key):
            par[key] = [Path(x).relative_to(top).as_posix() if Path(x).is_relative_to(top) else x for x in par[key]]
    for key in ("rules", "pricing"):
        if par.get(key) and Path(par[key]).is_relative_to(top):
            par[key] = Path(par[key]).relative_to(top).as_posix()


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
        say(f"[1/8] synthetic region {region}: {history_cases:,} cases a year {year - 3}-{year - 1}, "
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
        say("[2/8] local catalogue from the history (catalog build)")
        cat = build_catalog(history_files, tmp / "hospitals.csv", out=tmp / "rules",
                            pricing_out=tmp / "pricing", name="demo")
        _add_benefits_table(tmp / "pricing")
        _relative_build_paths(tmp / "rules", tmp)
        rules = load_rules(tmp / "rules")
        policy = load_policy(tmp / "pricing")
        stages["catalog"] = time.perf_counter() - t

        t = time.perf_counter()
        say(f"[3/8] read, validate and group {year}")
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
        say("[4/8] 12 monthly pre-settlements")
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
        say("[5/8] annual clearing")
        from dipengine.settlement import read_monthly
        annual = settle_scored(scored_year, cases, hosp, policy, str(year),
                               monthly=read_monthly(monthly_dirs, year))
        _record(annual, period=str(year), monthly=[f"monthly/{d.name}" for d in monthly_dirs])
        annual.manifest["sha256"]["monthly"] = {
            f"monthly/{d.name}/hospitals.parquet": sha256_file(d / "hospitals.parquet") for d in monthly_dirs}
        annual.write(tmp / "annual")
        stages["annual"] = time.perf_counter() - t

        t = time.perf_counter()
        say("[6/8] patient-side benefits")
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

        t = time.perf_counter()
        say("[7/8] audit: flags, hospital indicators, worklist")
        from dipengine.audit import audit, write_audit

        checked = audit(tmp / "cases.parquet", rules, policy, hosp, history=[history_files[-1]])
        _relative_audit_paths(checked, tmp)
        write_audit(checked, tmp / "audit", hosp)
        stages["audit"] = time.perf_counter() - t

        t = time.perf_counter()
        say("[8/8] report: Excel statements and the HTML report of the annual clearing")
        from dipengine.report import write_report

        write_report(tmp / "annual", tmp / "report", audit=tmp / "audit", paths_relative_to=tmp)
        stages["report"] = time.perf_counter() - t

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
        fund_budget_fen={p: pools[p].get("fund_budget_fen") for p in POOLS},
        fund_available_fen={p: pools[p].get("fund_available_fen") for p in POOLS},
        reserve_rate=annual.manifest["policy"]["reserve_rate"],
        settlement_value_raw={p: pools[p].get("settlement_value_raw_yuan") for p in POOLS},
        clearing=clearing_breakdown(st, annual.manifest),
        clearing_lines=clearing_summary(st, annual.manifest),
    )
