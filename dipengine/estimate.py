"""Single-case estimates for hospitals at discharge time (contract §1 ``estimate``).

:class:`Estimator` loads the rule set, the pricing policy, the benefits tables and the hospital
registry once, then answers one case at a time in plain Python, with no Arrow call per case:
normalise and validate (:func:`dipengine.case.normalise_case`, the reader's rules for one
row), group (the pure-Python reference grouper, which also gives the trace), case points
(:func:`dipengine.scoring.points_one`), payment standard at the budget point value, patient
share and fund benefit (:func:`dipengine.benefits.benefit_case`) and the hospital's fund due
(standard − patient share − other funds, dip-rules §6.6). About 15,000 calls/s with the trace on
the 2-core test machine (``benchmarks/bench_estimate.py``; docs/benefits.md).

Without a benefits table (no ``benefits.csv`` in the pricing dir, none given) the estimate still
gives the group, points and payment standard; the patient/fund split is null, with a ``note``
saying why, and the fund due is given from the case's recorded ``patient_paid`` (and
``other_fund_paid``) when it has them.

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
from dipengine.money import yuan_float_to_fen
from dipengine.case import normalise_case
from dipengine.scoring import points_one

SCORED_PATHS = ("core", "basic", "comprehensive", "blank")
_REMOTE_ALLOWED = {"none": ("local",), "in_province": ("local", "in_province"),
                   "all": ("local", "in_province", "cross_province")}
_GROUP_KEYS = ("dip_code", "dip_name", "match_path", "group_type", "treat_class", "base_score",
               "aux_subtype", "aux_coef")
_EMPTY = {"case_id": None, "hospital_id": None, "level": None, "locality": None, "pool": None, "in_pool": False,
          **{k: None for k in _GROUP_KEYS}, "level_coef": None, "ref_source": None, "ratio": None,
          "deviation": None, "case_points": 0.0, "point_value": None, "standard_fen": None,
          "policy_scope_fen": None, "deductible_fen": None, "patient_share_fen": None,
          "fund_benefit_fen": None, "patient_paid_fen": None, "other_fund_paid_fen": None,
          "fund_due_fen": None, "cap_reached": None, "benefit_note": None, "note": None,
          "reason": None, "reason_detail": None, "trace": None}
"""The answer's keys, in order, with the values of a case that carries no figures."""

NO_BENEFITS_NOTE = "no benefits table was given, so the patient/fund split is omitted"
"""``note`` of an estimate made without benefits tables."""


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
    benefits : path, list of paths, BenefitRules or False, optional
        Benefits tables: by default ``benefits.csv`` of the pricing dir when it has one; paths
        are exactly the tables used (give the pricing dir too, with the dirs of remote insured
        regions); ``False``: none. Without tables the patient/fund split is omitted
        (:data:`NO_BENEFITS_NOTE`), the rest of the estimate is unchanged.
    schema : str, path or InputSchema, optional
        The layout of the case dicts (:func:`dipengine.schemas.load_schema`): ``"contract"``
        (default), ``"nhsa"`` (national settlement-list field names such as ``setl_id``,
        ``fixmedins_code``, ``hifp_pay``), or a schema folder. Code values (``310`` ->
        ``employee``, sex ``1`` -> ``M``) are mapped whatever the layout.

    Raises
    ------
    DataError
        A bad rule set, policy, registry or benefits table.
    """

    def __init__(self, rules, pricing, hospitals, *, point_value=None, benefits=None, schema=None):
        from dipengine.hospitals import read_hospitals
        from dipengine.policy import load_policy
        from dipengine.reference import group_case
        from dipengine.rules import load_rules
        from dipengine.schemas import load_schema

        self._group_case = group_case
        self.schema = load_schema(schema)
        self._values = self.schema.values
        self.rules = rules if not isinstance(rules, (str, Path)) else load_rules(rules)
        self.policy = pricing if not isinstance(pricing, (str, Path)) else load_policy(pricing)
        if benefits is None:
            own = None if getattr(self.policy, "path", None) is None else Path(self.policy.path) / "benefits.csv"
            benefits = own if own is not None and own.exists() else False
        if benefits is False:
            self.benefits = None
        else:
            self.benefits = benefits if isinstance(benefits, BenefitRules) else load_benefits(benefits)
        if point_value is not None and not (isinstance(point_value, (int, float)) and point_value > 0):
            raise DataError("point value must be a positive number of yuan per point", value=point_value)
        self.point_value = None if point_value is None else float(point_value)
        self.hospitals = hospitals if isinstance(hospitals, pa.Table) and "assessment_coef" in \
            hospitals.column_names else read_hospitals(hospitals)
        self._registry = {r["hospital_id"]: r for r in self.hospitals.to_pylist()}
        self._hospital_ids = frozenset(self._registry)
        self._allowed = frozenset(_REMOTE_ALLOWED[self.policy.include_remote])
        self._by_pool = self.policy.deviation.reference_by == "level_pool"
        self._same_level = {(r["dip_code"], r["level"], r["pool"] if self._by_pool else None): r["avg_cost_fen"]
                            for r in self.policy.same_level_avg.to_pylist()}
        self._group_avg = {}
        for r in self.rules.groups.to_pylist():
            fen = yuan_float_to_fen(r["avg_cost"]) if r["avg_cost"] is not None else 0
            self._group_avg[r["dip_code"]] = max(fen, 0)

    # ------------------------------------------------------------------ steps

    def normalise(self, case: dict) -> dict:
        """The case as one row of the normalised case table (``reason`` set when it is bad).

        :func:`dipengine.case.normalise_case` in plain Python (no Arrow per call): a case
        gives what :func:`dipengine.reader.read_cases` gives for a one-row table holding the
        same values (text, integers, floats, lists of codes). A boolean is read as its text
        (no contract field is a boolean). There is no duplicate-``case_id`` check: one
        estimate knows nothing of the others. With a ``schema``, the case's field names are
        mapped to the contract's first (:meth:`dipengine.schemas.InputSchema.apply_row`).
        """
        row = case
        for v in case.values():
            if type(v) is bool:
                row = {k: str(v) if type(v) is bool else v for k, v in case.items()}
                break
        if not self.schema.identity:
            row = self.schema.apply_row(row)
        return normalise_case(row, hospital_ids=self._hospital_ids, values=self._values)

    def _level_coef(self, group_type: str, hosp: dict) -> float:
        if group_type == "basic":
            return self.policy.basic_group_coef
        coef = hosp.get("coefficient")
        if coef is not None and not math.isnan(coef):
            return coef
        return self.policy.level_coef[hosp["level"]]

    def _earlier_admissions(self, case: dict, warn: list) -> tuple[int, int]:
        """``(admission_no, annual_fund_used_fen)`` from the optional case fields (defaults 1, 0)."""
        admission_no, used = 1, 0
        raw = case.get("admission_no")
        if raw is not None and raw != "":
            try:
                admission_no = int(str(raw).strip())
                if admission_no < 1:
                    raise ValueError
            except ValueError:
                admission_no = 1
                warn.append(f"warning: admission_no: '{raw}' is not a positive integer (taken as 1)")
        raw = case.get("annual_fund_used")
        if raw is not None and raw != "":
            fen = _yuan_fen(raw)
            if fen is None:
                warn.append(f"warning: annual_fund_used: '{raw}' is not an amount in yuan (taken as 0)")
            else:
                used = fen
        return admission_no, used

    # ------------------------------------------------------------------ the call

    def estimate(self, case: dict, *, trace: bool = True) -> dict:
        """Estimate one case.

        Parameters
        ----------
        case : dict
            Contract §2 fields (yuan amounts, ISO dates, codes in any case and spacing);
            optionally ``admission_no`` and ``annual_fund_used`` (yuan).
        trace : bool, default True
            Build the human trace (the CLI prints it, contract §1). ``False`` saves the
            text formatting for callers that need only the figures; ``trace`` is then None.

        Returns
        -------
        dict
            JSON-serialisable: ``case_id, hospital_id, level, locality, pool, in_pool, dip_code,
            dip_name, match_path, group_type, treat_class, base_score, aux_subtype, aux_coef,
            level_coef, ref_source, ratio, deviation, case_points, point_value`` (yuan per point),
            ``standard_fen, policy_scope_fen, deductible_fen, patient_share_fen,
            fund_benefit_fen, patient_paid_fen, other_fund_paid_fen`` (the case's recorded
            payments, null when absent), ``fund_due_fen`` (standard − patient share − other
            funds; without benefits tables standard − recorded patient_paid − other funds, null
            when patient_paid is not recorded; int fen), ``cap_reached, benefit_note, note``
            (null, or :data:`NO_BENEFITS_NOTE`), ``reason, reason_detail, trace`` (list of
            str, or None). A bad case answers with its ``reason`` and null figures; it never
            raises.
        """
        c = self.normalise(case)
        out = dict(_EMPTY)
        out["case_id"] = c["case_id"]
        out["hospital_id"] = c["hospital_id"]
        out["reason"] = reason = c["reason"]
        out["reason_detail"] = c["reason_detail"]
        if self.benefits is None:
            out["note"] = NO_BENEFITS_NOTE
        lines = out["trace"] = [] if trace else None
        if reason:
            out["match_path"] = "rejected"
            if trace:
                lines.append(f"rejected by the reader: {reason} ({c['reason_detail']})")
            return out

        g = self._group_case(c, self.rules)
        if trace:
            lines.extend(g["trace"])
        for k in _GROUP_KEYS:
            out[k] = g[k]
        out["reason"] = g["reason"]
        out["reason_detail"] = g["reason_detail"] or c["reason_detail"]

        hosp = self._registry[c["hospital_id"]]  # the reader rejected unknown hospitals
        level = hosp["level"]
        locality = locality_of(c["insured_region"], hosp["region"])
        pool = c["insurance_type"]
        in_pool = locality in self._allowed
        out["level"], out["locality"], out["pool"], out["in_pool"] = level, locality, pool, in_pool

        if out["match_path"] in SCORED_PATHS:
            coef = self._level_coef(out["group_type"], hosp)
            dip_code = out["dip_code"]
            ref = self._same_level.get((dip_code, level, pool if self._by_pool else None), 0)
            source = "same_level"
            if ref <= 0:
                ref = self._group_avg.get(dip_code, 0)
                source = "group_avg" if ref > 0 else "none"
            kind = "blank" if "blank" in (out["match_path"], out["group_type"]) else "group"
            ratio, deviation, pe4 = points_one(
                kind=kind, base_score=out["base_score"] or 0.0,
                aux_coef=1.0 if out["aux_coef"] is None else out["aux_coef"], level_coef=coef,
                total_cost_fen=c["total_cost_fen"], ref_fen=ref, level=level, policy=self.policy)
            pv = self.point_value if self.point_value is not None else self.policy.budget_value[pool]
            if pv is None:
                self.policy.require_budget_value("an estimate without --point-value")
            standard = math.floor(pe4 * (pv * 100.0) / 10000.0 + 0.5)
            out.update(level_coef=coef, ref_source=source, ratio=None if math.isnan(ratio) else ratio,
                       deviation=deviation, case_points=pe4 / 10000.0, point_value=pv, standard_fen=standard)
            if trace:
                lines.append(f"points: {pe4 / 10000.0:.4f} ({deviation}; ratio "
                             f"{'n/a' if math.isnan(ratio) else f'{ratio:.4f}'} against {source} cost "
                             f"{ref / 100:.2f}; level coefficient {coef})")
                lines.append(f"payment standard: {pe4 / 10000.0:.4f} points x {pv} yuan = {standard / 100:.2f} yuan")
                if deviation == "extreme":
                    lines.append("extreme cost deviation: a candidate for special review (特例单议)")
        elif trace:
            lines.append(f"no points: match_path {out['match_path']}")
        if trace and not in_pool:
            lines.append(f"{locality} case outside the pool under include_remote="
                         f"{self.policy.include_remote}: settled per item, not by points")

        other = c["other_fund_paid_fen"]
        out["patient_paid_fen"], out["other_fund_paid_fen"] = c["patient_paid_fen"], other
        other = other or 0
        other_text = f" - other funds {other / 100:.2f}" if other else ""
        if self.benefits is None:
            patient = c["patient_paid_fen"]
            if trace:
                lines.append(f"benefits: {NO_BENEFITS_NOTE}")
            if out["standard_fen"] is not None and patient is not None:
                out["fund_due_fen"] = out["standard_fen"] - patient - other
                if trace:
                    lines.append(f"fund due: standard {out['standard_fen'] / 100:.2f} - recorded patient_paid "
                                 f"{patient / 100:.2f}{other_text} = {out['fund_due_fen'] / 100:.2f} yuan")
            elif trace and out["standard_fen"] is not None:
                lines.append("fund due: not given (no benefits table, and the case records no patient_paid)")
            return out

        warn: list = []
        admission_no, used = (1, 0) if "admission_no" not in case and "annual_fund_used" not in case \
            else self._earlier_admissions(case, warn)
        if warn:
            out["reason_detail"] = "; ".join(([out["reason_detail"]] if out["reason_detail"] else []) + warn)
        b = benefit_case(c, self.benefits, level, hosp["region"], admission_no=admission_no, cap_used_fen=used)
        if trace:
            lines.extend(b["trace"])
        patient = b["patient_share_fen"]
        out.update(policy_scope_fen=b["policy_scope_fen"], deductible_fen=b["deductible_fen"],
                   patient_share_fen=patient, fund_benefit_fen=b["fund_benefit_fen"],
                   cap_reached=b["cap_reached"], benefit_note=b["benefit_note"])
        if out["standard_fen"] is not None:
            out["fund_due_fen"] = out["standard_fen"] - patient - other
            if trace:
                lines.append(f"fund due: standard {out['standard_fen'] / 100:.2f} - patient share "
                             f"{patient / 100:.2f}{other_text} = {out['fund_due_fen'] / 100:.2f} yuan")
        return out
