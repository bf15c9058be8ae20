"""Single-case estimates for hospitals at discharge time (contract §1 ``estimate``).

:class:`Estimator` loads the rule set, the pricing policy, the benefits tables and the hospital
registry once, then answers one case at a time with plain Python (no Arrow batch machinery
on the grouping, scoring and benefit steps): group (the pure-Python reference grouper, which
also gives the trace), case points (:func:`dipengine.scoring.points_one`), payment standard at
the budget point value, patient share and fund benefit (:func:`dipengine.benefits.benefit_case`)
and the hospital's fund due (standard − patient share, dip-rules §6.6).

Two optional, non-contract case fields let a hospital account for earlier admissions of the
patient in the year: ``admission_no`` (1 = first, default) and ``annual_fund_used`` (yuan of fund
benefit already received this year, default 0).
"""
from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa

from dipengine.benefits import BenefitRules, benefit_case, load_benefits, locality_of
from dipengine.errors import DataError

SCORED_PATHS = ("core", "basic", "comprehensive", "blank")
_REMOTE_ALLOWED = {"none": ("local",), "in_province": ("local", "in_province"),
                   "all": ("local", "in_province", "cross_province")}
_GROUP_KEYS = ("dip_code", "dip_name", "match_path", "group_type", "treat_class", "base_score",
               "aux_subtype", "aux_coef")


def _yuan_fen(value) -> int | None:
    """Exact yuan (number or text) -> fen, half up; None when absent or malformed."""
    if value is None or value == "":
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not d.is_finite() or d < 0:
        return None
    return int((d * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP"))


class Estimator:
    """Estimate single cases against one rule set, policy and registry, loaded once.

    Parameters
    ----------
    rules : path or RuleSet
        Rule-set dir (:func:`dipengine.rules.load_rules`) or a loaded rule set.
    pricing : path or Policy
        Pricing dir (:func:`dipengine.policy.load_policy`) or a loaded policy.
    hospitals : path or pa.Table
        The registry (:func:`dipengine.hospitals.read_hospitals`).
    point_value : float, optional
        Yuan per point; default the policy's budget point value of the case's pool.
    benefits : path, list of paths or BenefitRules, optional
        Benefits tables; default ``benefits.csv`` of the pricing dir (pass more dirs for the
        policies of remote insured regions).

    Raises
    ------
    DataError
        A bad rule set, policy, registry or benefits table.
    """

    def __init__(self, rules, pricing, hospitals, *, point_value=None, benefits=None):
        from dipengine.hospitals import read_hospitals
        from dipengine.policy import load_policy
        from dipengine.reference import group_case
        from dipengine.rules import load_rules

        self._group_case = group_case
        self.rules = rules if not isinstance(rules, (str, Path)) else load_rules(rules)
        self.policy = pricing if not isinstance(pricing, (str, Path)) else load_policy(pricing)
        if benefits is None:
            benefits = self.policy.path
        self.benefits = benefits if isinstance(benefits, BenefitRules) else load_benefits(benefits)
        if point_value is not None and not (isinstance(point_value, (int, float)) and point_value > 0):
            raise DataError("point value must be a positive number of yuan per point", value=point_value)
        self.point_value = None if point_value is None else float(point_value)
        self.hospitals = hospitals if isinstance(hospitals, pa.Table) and "assessment_coef" in \
            hospitals.column_names else read_hospitals(hospitals)
        self._registry = {r["hospital_id"]: r for r in self.hospitals.to_pylist()}
        self._same_level = {(r["dip_code"], r["level"]): r["avg_cost_fen"]
                            for r in self.policy.same_level_avg.to_pylist()}
        self._group_avg = {}
        for r in self.rules.groups.to_pylist():
            fen = math.floor(r["avg_cost"] * 100.0 + 0.5) if r["avg_cost"] is not None else 0
            self._group_avg[r["dip_code"]] = max(fen, 0)

    # ------------------------------------------------------------------ steps

    def normalise(self, case: dict) -> dict:
        """The case as one row of the normalised case table (reason set when it is bad)."""
        from dipengine.reader import REQUIRED, read_cases_reference as read_cases

        # an absent optional field and a null one mean the same for one case: leave it out
        row = {k: case.get(k) for k in REQUIRED}
        row.update((k, v) for k, v in case.items() if v is not None and v != "")
        cols = {}
        for k, v in row.items():
            if isinstance(v, (list, tuple)):
                cols[k] = pa.array([list(v)], pa.list_(pa.string()))
            elif v is None or isinstance(v, (str, bool, int, float)):
                cols[k] = pa.array([None if v is None else str(v)], pa.string())
            else:  # dates, decimals: their text form
                cols[k] = pa.array([str(v)], pa.string())
        return read_cases(pa.table(cols), self.hospitals).to_pylist()[0]

    def _level_coef(self, group_type: str, hosp: dict) -> float:
        if group_type == "basic":
            return self.policy.basic_group_coef
        coef = hosp.get("coefficient")
        if coef is not None and not math.isnan(coef):
            return coef
        return self.policy.level_coef[hosp["level"]]

    def estimate(self, case: dict) -> dict:
        """Estimate one case.

        Parameters
        ----------
        case : dict
            Contract §2 fields (yuan amounts, ISO dates, codes in any case and spacing);
            optionally ``admission_no`` and ``annual_fund_used`` (yuan).

        Returns
        -------
        dict
            JSON-serialisable: ``case_id, hospital_id, level, locality, pool, in_pool, dip_code,
            dip_name, match_path, group_type, treat_class, base_score, aux_subtype, aux_coef,
            level_coef, ref_source, ratio, deviation, case_points, point_value`` (yuan per point),
            ``standard_fen, policy_scope_fen, deductible_fen, patient_share_fen,
            fund_benefit_fen, fund_due_fen`` (standard − patient share; int fen),
            ``cap_reached, benefit_note, reason, reason_detail, trace`` (list of str). A bad case
            answers with its ``reason`` and null figures; it never raises.
        """
        from dipengine.scoring import points_one

        c = self.normalise(case)
        out = {"case_id": c.get("case_id"), "hospital_id": c.get("hospital_id"), "level": None,
               "locality": None, "pool": None, "in_pool": False,
               **{k: None for k in _GROUP_KEYS}, "level_coef": None, "ref_source": None, "ratio": None,
               "deviation": None, "case_points": 0.0, "point_value": None, "standard_fen": None,
               "policy_scope_fen": None, "deductible_fen": None, "patient_share_fen": None,
               "fund_benefit_fen": None, "fund_due_fen": None, "cap_reached": None, "benefit_note": None,
               "reason": c.get("reason"), "reason_detail": c.get("reason_detail"), "trace": []}
        trace = out["trace"]
        if c.get("reason"):
            out["match_path"] = "rejected"
            trace.append(f"rejected by the reader: {c['reason']} ({c.get('reason_detail')})")
            return out

        g = self._group_case(c, self.rules)
        trace.extend(g.get("trace") or [])
        for k in _GROUP_KEYS:
            out[k] = g.get(k)
        out["reason"] = g.get("reason")
        out["reason_detail"] = g.get("reason_detail") or c.get("reason_detail")

        hosp = self._registry[c["hospital_id"]]  # the reader rejected unknown hospitals
        level = int(hosp["level"])
        locality = locality_of(c.get("insured_region"), hosp["region"])
        pool = c.get("insurance_type")
        out.update(level=level, locality=locality, pool=pool,
                   in_pool=locality in _REMOTE_ALLOWED[self.policy.include_remote])

        scored = out["match_path"] in SCORED_PATHS
        if scored:
            coef = self._level_coef(out["group_type"], hosp)
            ref = self._same_level.get((out["dip_code"], level), 0)
            source = "same_level"
            if ref <= 0:
                ref = self._group_avg.get(out["dip_code"], 0)
                source = "group_avg" if ref > 0 else "none"
            kind = "blank" if "blank" in (out["match_path"], out["group_type"]) else "group"
            ratio, deviation, pe4 = points_one(
                kind=kind, base_score=out["base_score"] or 0.0,
                aux_coef=1.0 if out["aux_coef"] is None else out["aux_coef"], level_coef=coef,
                total_cost_fen=c["total_cost_fen"], ref_fen=ref, level=level, policy=self.policy)
            pv = self.point_value if self.point_value is not None else self.policy.budget_value[pool]
            standard = math.floor(pe4 * (pv * 100.0) / 10000.0 + 0.5)
            out.update(level_coef=coef, ref_source=source, ratio=None if math.isnan(ratio) else ratio,
                       deviation=deviation, case_points=pe4 / 10000.0, point_value=pv, standard_fen=standard)
            trace.append(f"points: {pe4 / 10000.0:.4f} ({deviation}; ratio "
                         f"{'n/a' if math.isnan(ratio) else f'{ratio:.4f}'} against {source} cost "
                         f"{ref / 100:.2f}; level coefficient {coef})")
            trace.append(f"payment standard: {pe4 / 10000.0:.4f} points x {pv} yuan = {standard / 100:.2f} yuan")
            if deviation == "extreme":
                trace.append("extreme cost deviation: a candidate for special review (特例单议)")
        else:
            trace.append(f"no points: match_path {out['match_path']}")
        if not out["in_pool"]:
            trace.append(f"{locality} case outside the pool under include_remote="
                         f"{self.policy.include_remote}: settled per item, not by points")

        admission_no = case.get("admission_no") or 1
        try:
            admission_no = int(admission_no)
        except (TypeError, ValueError):
            admission_no = 1
        used = _yuan_fen(case.get("annual_fund_used")) or 0
        b = benefit_case(c, self.benefits, level, hosp["region"], admission_no=admission_no, cap_used_fen=used)
        trace.extend(b["trace"])
        out.update(policy_scope_fen=b["policy_scope_fen"], deductible_fen=b["deductible_fen"],
                   patient_share_fen=b["patient_share_fen"], fund_benefit_fen=b["fund_benefit_fen"],
                   cap_reached=b["cap_reached"], benefit_note=b["benefit_note"])
        if out["standard_fen"] is not None:
            out["fund_due_fen"] = out["standard_fen"] - b["patient_share_fen"]
            trace.append(f"fund due: standard {out['standard_fen'] / 100:.2f} - patient share "
                         f"{b['patient_share_fen'] / 100:.2f} = {out['fund_due_fen'] / 100:.2f} yuan")
        return out
