"""The pure-Python reference grouper: plain, slow and readable, straight from dip-rules §2-3.

It is the oracle for the Cython grouper (:mod:`dipengine.grouper`): written separately, on
plain dicts and lists, sharing only code normalisation (:mod:`dipengine.codes`, used through
:func:`dipengine.grouper.prepare_cases`) and :func:`dipengine.rules.parse_proc_expr`. It also
produces the human trace behind ``dipengine group --explain``.
"""
from __future__ import annotations

import functools
import re

import pyarrow as pa

from dipengine import codes
from dipengine.grouper import OUTPUT_COLUMNS, prepare_cases
from dipengine.money import yuan_float_to_fen
from dipengine.rules import parse_proc_expr

CLASSES = ["conservative", "diagnostic", "therapeutic", "surgery"]  # ascending
DX_RE = re.compile(codes.DX_PATTERN)
EXTENSION_RE = re.compile(r"^([0-9]{2}\.[0-9A-Zx]{4})x[0-9]+$")

# dip-rules §2.5: the first kind with a candidate wins (the default; a rule set's
# [options] tier_order may give another order).
PRIORITY_ORDER = [
    ("core", "surgery"), ("basic", "surgery"), ("core", "therapeutic"), ("basic", "therapeutic"),
    ("core", "diagnostic"), ("basic", "diagnostic"),
    ("comprehensive", "surgery"), ("comprehensive", "therapeutic"), ("comprehensive", "diagnostic"),
    ("core", "conservative"), ("basic", "conservative"), ("comprehensive", "conservative"),
    ("blank", None),
]


def priority_order(options) -> list:
    """``(group_type, treat_class)`` kinds, first wins: the rule set's ``tier_order``, then blank."""
    return [tuple(k.split(":")) for k in options["tier_order"]] + [("blank", None)]


def base_code(proc: str) -> str:
    """A procedure code without its 医保版 extension (``51.2300x001`` -> ``51.2300``)."""
    m = EXTENSION_RE.match(proc)
    return m.group(1) if m else proc


@functools.lru_cache(maxsize=100_000)
def heuristic_class(proc: str) -> str:
    """Treatment class of a procedure not in ``procedures.csv`` (``codes.proc_class_heuristic``)."""
    return codes.proc_class_heuristic(pa.array([proc], pa.string()))[0].as_py() or "conservative"


def longest_prefix_match(code: str, prefixes):
    """The longest of ``prefixes`` that ``code`` starts with, or None."""
    best = None
    for p in prefixes:
        if code.startswith(p) and (best is None or len(p) > len(best)):
            best = p
    return best


def age_band_limits(text: str):
    """``"1_6:1:6"`` -> (``"age_1_6"``, low, high) in age keys (see ``age_key``)."""
    name, lo, hi = text.split(":")

    def key(v):
        return int(v[:-1]) if v.endswith("d") else 365 * int(v)

    return "age_" + name, key(lo), (key(hi) if hi else 2**31 - 1)


def age_key(age, age_days):
    """Age in days under one year (when known), else 365 × years; None when unknown."""
    if age is None or age < 0:
        return None
    if age == 0:
        return age_days if age_days is not None and age_days >= 0 else None
    return 365 * age


class _Index:
    """Plain lookups over one rule set, built once."""

    def __init__(self, rs):
        self.rs = rs
        self.groups = rs.groups.to_pylist()
        for row, g in enumerate(self.groups):
            g["row"] = row
            g["terms"] = parse_proc_expr(g["proc_expr"])
        self.by_sub = {}
        for g in self.groups:
            if g["group_type"] in ("core", "basic"):
                self.by_sub.setdefault(g["dx_key"], []).append(g)
        self.comprehensive = [g for g in self.groups if g["group_type"] == "comprehensive"]
        self.blank = next((g for g in self.groups if g["group_type"] == "blank"), None)
        self.procedures = {r["code"]: (r["class"], r["level"]) for r in rs.procedures.to_pylist()}
        self.excluded_dx = [r["code"] for r in rs.excluded_dx.to_pylist()]
        self.excluded_proc = [r["code"] for r in rs.excluded_proc.to_pylist()]
        self.aux = {}
        for r in rs.aux_coefficients.to_pylist():
            self.aux.setdefault(r["dip_code"], []).append((r["subtype"], r["coefficient"]))
        self.cci = {r["dx_prefix"]: (r["weight"], r["category"] or r["dx_prefix"]) for r in rs.cci_weights.to_pylist()}
        self.severity = {r["dx_prefix"]: r["level"] for r in rs.severity_dx.to_pylist()}
        self.options = rs.options
        self.bands = [age_band_limits(b) for b in rs.options["age_bands"]]
        self.subtype_order = ["death", "severity_III", "severity_II", "cci_3", "cci_2", "cci_1"] + [
            b[0] for b in self.bands]


_INDEX: dict[int, tuple] = {}


def _index(rs) -> _Index:
    hit = _INDEX.get(id(rs))
    if hit is None or hit[0] is not rs:
        hit = (rs, _Index(rs))
        _INDEX[id(rs)] = hit
    return hit[1]


def _result(case, trace, **kw):
    out = {
        "case_id": case.get("case_id"), "dip_code": None, "dip_name": None, "group_type": None,
        "match_path": "rejected", "treat_class": None, "base_score": 0.0, "aux_subtype": None, "aux_coef": 1.0,
        "reason": None, "reason_detail": case.get("reason_detail"), "group_index": -1, "trace": trace,
    }
    out.update(kw)
    return out


def _add_detail(case, text):
    old = case.get("reason_detail")
    return text if not old else f"{old}; {text}"


def group_case(case: dict, rule_set) -> dict:
    """Group one case, given as a dict of the normalised case columns.

    Returns the output columns of ``grouper.group`` plus ``group_index`` (row of
    ``rule_set.groups``, -1 none) and ``trace`` (list of lines: every candidate considered
    and why it was taken or refused).
    """
    ix = _index(rule_set)
    opts = ix.options
    trace = []

    # 0. rows the reader rejected keep their reason
    if case.get("reason"):
        trace.append(f"rejected by the reader: {case['reason']}")
        return _result(case, trace, reason=case["reason"])
    main_dx = case.get("main_dx")
    if not main_dx:
        trace.append("main_dx is empty: MISSING_FIELD")
        return _result(case, trace, reason="MISSING_FIELD", reason_detail=_add_detail(case, "main_dx is empty"))
    if not DX_RE.match(main_dx):
        text = f"main_dx {main_dx!r} is not a well-formed ICD-10 医保版 code"
        trace.append(text + ": INVALID_DX")
        return _result(case, trace, reason="INVALID_DX", reason_detail=_add_detail(case, text))

    # 1. normalise: the code before a dagger "+" is the main one; 亚目 = first 5 characters
    main = main_dx.split("+")[0]
    sub = main[:5]
    category = main[:3]
    trace.append(f"main_dx {main_dx}: main code {main}, subcategory {sub}, category {category}")

    # 2. excluded main diagnosis
    hit = longest_prefix_match(main, ix.excluded_dx)
    if hit is not None:
        text = f"main_dx {main_dx!r} is on the not-groupable list (excluded_dx.csv {hit!r})"
        trace.append(text + ": EXCLUDED_DX")
        return _result(case, trace, match_path="excluded", reason="EXCLUDED_DX", reason_detail=_add_detail(case, text))

    # 3. procedures: main first, drop the not-counted ones
    listed = []
    if case.get("main_proc"):
        listed.append((case["main_proc"], True))
    for p in case.get("other_procs") or []:
        if p:
            listed.append((p, False))
    counted = []
    main_proc = None
    for p, is_main in listed:
        drop = longest_prefix_match(p, ix.excluded_proc)
        if drop is not None:
            trace.append(f"procedure {p} not counted for grouping (excluded_proc.csv {drop!r})")
            continue
        counted.append(p)
        if is_main:
            main_proc = p
    case_rank = 0
    max_level = 0
    for p in counted:
        cls, level = ix.procedures.get(p) or ix.procedures.get(base_code(p)) or (heuristic_class(p), 0)
        case_rank = max(case_rank, CLASSES.index(cls))
        max_level = max(max_level, level)
    case_class = CLASSES[case_rank]
    conservative_equivalent = (case_rank <= CLASSES.index(opts["conservative_max_class"])
                               and max_level <= opts["conservative_max_level"])
    trace.append(f"procedures counted: {counted or 'none'}; treatment class {case_class}; "
                 f"conservative-equivalent: {'yes' if conservative_equivalent else 'no'}")

    def matches(p, code):
        if opts["proc_prefix"]:  # expression codes are prefixes
            return p.startswith(code)
        return p == code or base_code(p) == code

    def present(code):
        return any(matches(p, code) for p in counted)

    order = priority_order(opts)

    # 4. core and basic candidates of the subcategory
    candidates = []  # (priority, sort key, group)
    for g in ix.by_sub.get(sub, []):
        kind = (g["group_type"], g["treat_class"])
        if not g["terms"]:
            if not conservative_equivalent:
                trace.append(f"  refuse {g['dip_code']} (conservative): the case is not conservative-equivalent")
                continue
            keyed_on_main, n_matched = 0, 0
        else:
            ok = True
            n_matched = 0
            for term in g["terms"]:
                found = [c for c in term if present(c)]
                n_matched += len(found)
                if not found:
                    ok = False
                    trace.append(f"  refuse {g['dip_code']} ({g['proc_expr']}): none of {'/'.join(term)} performed")
                    break
                if opts["match_mode"] == "all_listed" and len(found) < len(term):
                    ok = False
                    trace.append(f"  refuse {g['dip_code']} ({g['proc_expr']}): not all of {'/'.join(term)} performed")
                    break
            if not ok:
                continue
            main_terms = g["terms"] if opts["plus_main_term"] == "any" else g["terms"][:1]
            keyed_on_main = int(main_proc is not None and any(
                matches(main_proc, c) for t in main_terms for c in t))
        avg_fen = yuan_float_to_fen(g["avg_cost"])  # exact, half up, as the compiled rules
        distance = abs(avg_fen - case.get("total_cost_fen", 0))
        # rank, then the tie-breaks in the rule set's order (each: smaller wins), then row
        crit = {"main": -keyed_on_main, "terms": -len(g["terms"]), "matched": -n_matched, "cost": distance}
        ties = (["main"] if opts["main_procedure_first"] else []) + list(opts["tie_break"])
        key = (order.index(kind), *[crit[t] for t in ties], g["row"])
        trace.append(f"  candidate {g['dip_code']} ({g['group_type']} {g['treat_class']}, proc_expr "
                     f"{g['proc_expr'] or '-'}): main procedure {'yes' if keyed_on_main else 'no'}, "
                     f"{len(g['terms'])} terms, {n_matched} codes matched, |avg - cost| = {distance} fen")
        candidates.append((key, g))

    # 5. comprehensive fallback: same class, longest prefix, then the narrowest range
    comp = None
    for length in (3, 2, 1):
        for g in ix.comprehensive:
            if g["treat_class"] == case_class and g["dx_key"] == category[:length]:
                comp = g
                break
        if comp:
            break
    if comp is None:
        ranges = []
        for g in ix.comprehensive:
            if g["treat_class"] == case_class and "-" in g["dx_key"]:
                lo, hi = g["dx_key"].split("-")
                if lo <= category <= hi:
                    width = (ord(hi[0]) * 100 + int(hi[1:])) - (ord(lo[0]) * 100 + int(lo[1:]))
                    ranges.append((width, g["row"], g))
        if ranges:
            comp = min(ranges, key=lambda r: (r[0], r[1]))[2]
    if comp is not None:
        trace.append(f"  candidate {comp['dip_code']} (comprehensive {case_class}, dx_key {comp['dx_key']})")
        candidates.append(((order.index(("comprehensive", case_class)),), comp))
    else:
        trace.append(f"  no comprehensive group for category {category} and class {case_class}")

    # 6. the winner; else the blank group; else NO_GROUP
    if candidates:
        candidates.sort(key=lambda c: c[0])
        chosen = candidates[0][1]
        for _key, g in candidates[1:]:
            trace.append(f"  not chosen: {g['dip_code']} (lower priority or lost a tie-break)")
    elif ix.blank is not None:
        chosen = ix.blank
        trace.append(f"  nothing matched: blank group {chosen['dip_code']}")
    else:
        text = f"main_dx {main_dx!r}: no group matched and the rule set has no blank group"
        trace.append(text + ": NO_GROUP")
        return _result(case, trace, reason="NO_GROUP", reason_detail=_add_detail(case, text))
    trace.append(f"group {chosen['dip_code']} ({chosen['group_type']})")

    # 7. auxiliary subtype: the highest coefficient among the subtypes the case qualifies for
    subtype, coef = None, 1.0
    offered = ix.aux.get(chosen["dip_code"], [])
    if offered:
        los = case.get("los")
        severity = 0
        cci_by_category = {}
        for d in case.get("other_dx") or []:
            if not d:
                continue
            code = d.split("+")[0]
            p = longest_prefix_match(code, ix.severity)
            if p is not None:
                severity = max(severity, ix.severity[p])
            p = longest_prefix_match(code, ix.cci)
            if p is not None:
                weight, cat = ix.cci[p]
                cci_by_category[cat] = max(cci_by_category.get(cat, 0), weight)
        if los is None or los < opts["severity_min_los"]:
            severity = 0
        cci = sum(cci_by_category.values())
        c1, c2, c3 = opts["cci_levels"]
        cci_level = 3 if cci >= c3 else 2 if cci >= c2 else 1 if cci >= c1 else 0
        key = age_key(case.get("age"), case.get("age_days"))
        qualifies = {
            "death": case.get("discharge_mode") == opts["death_discharge_mode"],
            "severity_III": severity >= 3,
            "severity_II": severity >= 2,
            "cci_3": cci_level >= 3,
            "cci_2": cci_level >= 2,
            "cci_1": cci_level >= 1,
        }
        for name, lo, hi in ix.bands:
            qualifies[name] = key is not None and lo <= key <= hi
        trace.append(f"auxiliary: severity level {severity}, CCI score {cci} (level {cci_level}), age key {key}")
        best = None
        for st, c in offered:
            if not qualifies[st]:
                trace.append(f"  subtype {st} ({c}): does not apply")
                continue
            rank = (-c, ix.subtype_order.index(st))
            trace.append(f"  subtype {st} ({c}): applies")
            if best is None or rank < best[0]:
                best = (rank, st, c)
        if best is not None:
            subtype, coef = best[1], best[2]
            trace.append(f"auxiliary subtype {subtype}, coefficient {coef}")

    if chosen["group_type"] == "blank":
        treat_class = case_class
    else:
        treat_class = chosen["treat_class"] or None
    return _result(
        case, trace, dip_code=chosen["dip_code"], dip_name=chosen["dip_name"], group_type=chosen["group_type"],
        match_path=chosen["group_type"], treat_class=treat_class, base_score=chosen["score"],
        aux_subtype=subtype, aux_coef=coef, group_index=chosen["row"],
    )


def group_table(table, rule_set) -> pa.Table:
    """Group a case table one case at a time; same columns as ``grouper.group``."""
    rows = prepare_cases(table).to_pylist()
    results = [group_case(case, rule_set) for case in rows]
    types = {"base_score": pa.float64(), "aux_coef": pa.float64()}
    return pa.table({c: pa.array([r[c] for r in results], types.get(c, pa.string())) for c in OUTPUT_COLUMNS})
