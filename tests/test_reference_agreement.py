"""The Cython grouper and the pure-Python reference agree on every field (contract §8.2).

Two sources of cases: Hypothesis (small adversarial rule sets and cases: ties, empty
procedure lists, unknown codes, dagger forms, ranges, both matching modes) and a vectorised
cohort generator over the feature rule set ``tests/data/rules_features`` (>= 100,000 cases in
one test).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipengine.grouper import OUTPUT_COLUMNS, group
from dipengine.reference import group_table
from dipengine.rules import load_rules, write_rule_set


def assert_same(fast: pa.Table, slow: pa.Table):
    assert fast.column_names == list(OUTPUT_COLUMNS)
    assert fast.num_rows == slow.num_rows
    for col in OUTPUT_COLUMNS:
        a, b = fast[col].to_pylist(), slow[col].to_pylist()
        if a != b:
            i = next(k for k in range(len(a)) if a[k] != b[k])
            raise AssertionError(f"column {col} differs at row {i}: cython {a[i]!r} vs reference {b[i]!r}")


# --------------------------------------------------------------------------- cohorts


def cohort(rs, n: int, seed: int) -> pa.Table:
    """``n`` cases over the rule set's own codes plus unknown, excluded, dagger, invalid ones.

    Half the cases take a procedure of a group of their own subcategory, so core matching,
    tie-breaks and conservative fallbacks are all exercised. Vectorised (numpy).
    """
    rng = np.random.default_rng(seed)
    g = rs.groups.to_pydict()
    pairs = []  # (diagnosis, procedure) drawn from core/basic groups
    for dx, expr, gtype in zip(g["dx_key"], g["proc_expr"], g["group_type"]):
        if gtype in ("core", "basic"):
            for term in (expr.split("+") if expr else [""]):
                for code in term.split("/"):
                    pairs.append((dx + "00", code or None))
                    pairs.append((dx + "01x002+J17.0*", code + "x001" if code else None))
    cats = sorted({k for k, t in zip(g["dx_key"], g["group_type"]) if t == "comprehensive" and len(k) == 3})
    dx_pool = [p[0] for p in pairs] + [c + ".900" for c in cats] + [
        "A01.000x005+J17.0*", "B20.000", "C77.000", "D50.000", "E78.500", "F32.900", "H40.100", "M54.500",
        "O20.000", "S42.200", "T14.000", "Z51.100", "Z00.000", "K80.000x002", "Q99.900", "I99.x00", "k35.800X001 ",
        "bad", None, ""]
    procs = rs.compiled.proc_vocab.to_pylist()
    proc_pool = procs + [p + "x001" for p in procs] + rs.excluded_proc["code"].to_pylist() + [
        "12.3400", "45.1300", "88.0100", "01.0900", "92.2400", "00.1000", "17.91100", None, ""]
    sec_pool = ["A41.900", "R57.100", "J96.000", "J96.100", "N17.900", "J18.900", "N39.000", "E87.100", "I21.000",
                "I50.900", "E11.900", "E11.200", "E11.500", "C78.000", "C34.100", "B20.000", "K74.600", "G81.900",
                "A41.900+R57.1*", "K21.000", None]
    pairs_dx = np.array([p[0] for p in pairs], dtype=object)
    pairs_proc = np.array([p[1] for p in pairs], dtype=object)
    pick = rng.integers(0, len(pairs), n)
    use_pair = rng.random(n) < 0.5
    dx = np.where(use_pair, pairs_dx[pick], np.array(dx_pool, dtype=object)[rng.integers(0, len(dx_pool), n)])
    mp = np.where(use_pair, pairs_proc[pick], np.array(proc_pool, dtype=object)[rng.integers(0, len(proc_pool), n)])
    mp[rng.random(n) < 0.25] = None
    n_other = rng.choice([0, 0, 1, 2, 3], n)
    off = np.zeros(n + 1, np.int32)
    np.cumsum(n_other, out=off[1:])
    others = np.array(proc_pool + [p for p in pairs_proc if p], dtype=object)
    others = others[rng.integers(0, len(others), off[-1])]
    n_sec = rng.integers(0, 5, n)
    soff = np.zeros(n + 1, np.int32)
    np.cumsum(n_sec, out=soff[1:])
    secs = np.array(sec_pool, dtype=object)[rng.integers(0, len(sec_pool), soff[-1])]
    avg_fen = (np.array(g["avg_cost"]) * 100).round().astype(np.int64)
    cost = np.where(rng.random(n) < 0.3, avg_fen[rng.integers(0, len(avg_fen), n)], rng.integers(0, 10_000_000, n))
    age = rng.integers(0, 100, n).astype(np.int32)
    age[rng.random(n) < 0.1] = 0
    age_days = rng.integers(0, 365, n).astype(np.int32)
    return pa.table({
        "case_id": pa.array(np.char.add("c", np.arange(n).astype(str))),
        "main_dx": pa.array(dx, pa.string()),
        "main_proc": pa.array(mp, pa.string()),
        "other_procs": pa.ListArray.from_arrays(pa.array(off), pa.array(others, pa.string())),
        "other_dx": pa.ListArray.from_arrays(pa.array(soff), pa.array(secs, pa.string())),
        "total_cost_fen": pa.array(cost.astype(np.int64)),
        "discharge_mode": pa.array(rng.choice([1, 1, 1, 2, 5], n).astype(np.int8)),
        "los": pa.array(rng.integers(0, 12, n).astype(np.int32), mask=rng.random(n) < 0.05),
        "age": pa.array(age),
        "age_days": pa.array(age_days, mask=(age != 0) | (rng.random(n) < 0.2)),
        "reason": pa.array(np.where(rng.random(n) < 0.03, "BAD_DATES", None).astype(object), pa.string()),
        "reason_detail": pa.array(np.where(rng.random(n) < 0.05, "other_dx 'X' unknown", None).astype(object),
                                  pa.string()),
    })


@pytest.fixture(scope="module")
def demo(rules_features):
    return load_rules(rules_features)


def test_cohort_covers_every_path(demo):
    out = group(cohort(demo, 5000, 3), demo)
    paths = set(out["match_path"].to_pylist())
    assert paths == {"core", "basic", "comprehensive", "blank", "excluded", "rejected"}
    reasons = set(out["reason"].to_pylist())
    assert {"EXCLUDED_DX", "INVALID_DX", "MISSING_FIELD", "BAD_DATES"} <= reasons
    assert len(set(out["aux_subtype"].to_pylist())) >= 8


def test_agreement_100k_cases(demo):
    """Invariant 2 on 100,000 generated cases (every field)."""
    cases = cohort(demo, 100_000, 2027)
    assert_same(group(cases, demo, n_threads=2), group_table(cases, demo))


def test_agreement_without_blank_group(tmp_path, demo):
    tables = {f: getattr(demo, f[:-4]) for f in (
        "procedures.csv", "excluded_dx.csv", "excluded_proc.csv", "cci_weights.csv", "severity_dx.csv")}
    groups = demo.groups.filter(pa.compute.not_equal(demo.groups["group_type"], "blank"))
    tables["groups.csv"] = groups
    aux = demo.aux_coefficients
    tables["aux_coefficients.csv"] = aux.filter(pa.compute.is_in(aux["dip_code"], groups["dip_code"]))
    tables["severity_dx.csv"] = pa.table({"dx_prefix": demo.severity_dx["dx_prefix"],
                                          "level": pa.array(["II" if v == 2 else "III"
                                                             for v in demo.severity_dx["level"].to_pylist()])})
    rs = load_rules(write_rule_set(tmp_path / "noblank", tables, {
        "name": "noblank", "version": "1", "options": {"match_mode": "all_listed"}}))
    cases = cohort(rs, 20_000, 5)
    fast = group(cases, rs)
    assert "NO_GROUP" in fast["reason"].to_pylist()
    assert_same(fast, group_table(cases, rs))


# --------------------------------------------------------------------------- hypothesis

PROCS = ["47.0100", "47.0900", "51.2300", "51.2200", "45.1300", "88.5700", "99.2500", "13.4100"]
SUBS = ["K35.8", "K35.3", "K80.1", "A01.0"]
COMP_KEYS = ["K35", "K3", "K", "K80", "A00-B99", "A00-K99", "K30-K39"]
CLASSES = ["conservative", "diagnostic", "therapeutic", "surgery"]

PREFIXES = ["47", "47.0", "51.2", "51.23", "88"]  # prefix codes (only with proc_prefix = true)
TIERS = ["core:surgery", "basic:surgery", "core:therapeutic", "basic:therapeutic", "core:diagnostic",
         "basic:diagnostic", "comprehensive:surgery", "comprehensive:therapeutic", "comprehensive:diagnostic",
         "core:conservative", "basic:conservative", "comprehensive:conservative"]
term = st.lists(st.sampled_from(PROCS + PREFIXES), min_size=1, max_size=2, unique=True)
core_row = st.tuples(st.sampled_from(["core", "basic"]), st.sampled_from(SUBS),
                     st.lists(term, min_size=0, max_size=2), st.sampled_from(CLASSES[1:]),
                     st.sampled_from([5000.0, 6000.0, 6000.004]))
comp_row = st.tuples(st.sampled_from(COMP_KEYS), st.sampled_from(CLASSES), st.sampled_from([4000.0, 9000.0]))


@st.composite
def rule_sets(draw):
    rows, seen_codes, keys = [], set(), set()
    prefix = draw(st.booleans())
    for gtype, sub, terms, cls, cost in draw(st.lists(core_row, max_size=10)):
        flat = [c for t in terms for c in t]
        if len(flat) != len(set(flat)) or (not prefix and set(flat) & set(PREFIXES)):
            continue
        expr = "+".join("/".join(t) for t in terms)
        key = (sub, "+".join(sorted("/".join(sorted(t)) for t in terms)))  # duplicates in every option set
        if key in keys:
            continue
        keys.add(key)
        rows.append(dict(dip_code=f"G{len(rows)}", dip_name="", group_type=gtype, dx_key=sub, proc_expr=expr,
                         treat_class=cls if terms else "conservative", score=float(len(rows) + 1), avg_cost=cost,
                         n_cases=1))
    for key, cls, cost in draw(st.lists(comp_row, max_size=8)):
        if (key, cls) in keys:
            continue
        keys.add((key, cls))
        rows.append(dict(dip_code=f"G{len(rows)}", dip_name="", group_type="comprehensive", dx_key=key,
                         proc_expr="", treat_class=cls, score=float(len(rows) + 1), avg_cost=cost, n_cases=1))
    if draw(st.booleans()):
        rows.append(dict(dip_code="BLANK", dip_name="", group_type="blank", dx_key="", proc_expr="",
                         treat_class="", score=1.0, avg_cost=1.0, n_cases=1))
    if not rows:
        rows.append(dict(dip_code="G0", dip_name="", group_type="core", dx_key="K35.8", proc_expr="",
                         treat_class="conservative", score=1.0, avg_cost=1.0, n_cases=1))
    subtypes = ["death", "severity_III", "severity_II", "cci_1", "cci_2", "cci_3", "age_80p", "age_0_28d"]
    aux = []
    for r in rows:
        for stype in draw(st.lists(st.sampled_from(subtypes), max_size=4, unique=True)):
            aux.append(dict(dip_code=r["dip_code"], subtype=stype, coefficient=draw(st.sampled_from([0.9, 1.2, 1.5]))))
    tables = {
        "groups.csv": rows,
        "procedures.csv": [dict(code=c, **{"class": k}, level=lv) for c, k, lv in draw(st.lists(
            st.tuples(st.sampled_from(PROCS), st.sampled_from(CLASSES), st.sampled_from([1, 2, 3, 4])),
            max_size=5, unique_by=lambda x: x[0]))],
        "excluded_dx.csv": [dict(code=c) for c in draw(st.lists(st.sampled_from(["K35.800x00", "A01"]), unique=True))],
        "excluded_proc.csv": [dict(code=c) for c in draw(st.lists(st.sampled_from(["99.25", "45.1300"]), unique=True))],
        "aux_coefficients.csv": aux,
        "cci_weights.csv": [dict(dx_prefix="I21", weight=1, category="mi"), dict(dx_prefix="I22", weight=2, category="mi"),
                            dict(dx_prefix="C78", weight=6, category=""), dict(dx_prefix="E11", weight=1, category="")],
        "severity_dx.csv": [dict(dx_prefix="A41", level="III"), dict(dx_prefix="J18", level="II")],
    }
    options = {"match_mode": draw(st.sampled_from(["any_of", "all_listed"])),
               "conservative_max_class": draw(st.sampled_from(CLASSES)),
               "conservative_max_level": draw(st.sampled_from([0, 2, 4])),
               "severity_min_los": draw(st.sampled_from([0, 3])),
               "main_procedure_first": draw(st.booleans()),
               "plus_main_term": draw(st.sampled_from(["first", "any"])),
               "tie_break": draw(st.lists(st.sampled_from(["terms", "matched", "cost"]), unique=True, max_size=3)),
               "tier_order": draw(st.permutations(TIERS)),
               "proc_prefix": prefix}
    return tables, options


DXS = ["K35.800", "K35.800x001", "K35.300+J17.0*", "K80.100", "K80.000", "A01.000x005+J17.0*", "A09.900", "K31.000",
       "K99.900", "L03.100", "Z00.000", "k35.8", None]
case_row = st.fixed_dictionaries({
    "main_dx": st.sampled_from(DXS),
    "main_proc": st.sampled_from(PROCS + ["47.0100x001", "12.3400", None]),
    "other_procs": st.lists(st.sampled_from(PROCS + ["51.2300x002", "88.0100", None]), max_size=3),
    "other_dx": st.lists(st.sampled_from(["I21.000", "I22.100", "C78.000", "E11.900", "A41.900", "J18.900", None]),
                         max_size=3),
    "total_cost_fen": st.sampled_from([0, 500000, 550000, 600000, 600001, 599999]),
    "discharge_mode": st.sampled_from([1, 5]),
    "los": st.sampled_from([None, 1, 3, 10]),
    "age": st.sampled_from([0, 1, 35, 80, None]),
    "age_days": st.sampled_from([None, 3, 200]),
    "reason": st.sampled_from([None, None, None, "UNKNOWN_HOSPITAL"]),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sets(), st.lists(case_row, min_size=1, max_size=25))
def test_agreement_adversarial(spec, rows):
    tables, options = spec
    with tempfile.TemporaryDirectory() as tmp:
        rs = load_rules(write_rule_set(Path(tmp) / "rs", tables, {"name": "h", "version": "1", "options": options}))
    for i, r in enumerate(rows):
        r["case_id"] = f"c{i}"
    cases = pa.Table.from_pylist(rows, schema=pa.schema([
        ("case_id", pa.string()), ("main_dx", pa.string()), ("main_proc", pa.string()),
        ("other_procs", pa.list_(pa.string())), ("other_dx", pa.list_(pa.string())),
        ("total_cost_fen", pa.int64()), ("discharge_mode", pa.int8()), ("los", pa.int32()), ("age", pa.int32()),
        ("age_days", pa.int32()), ("reason", pa.string())]))
    assert_same(group(cases, rs, n_threads=2), group_table(cases, rs))
