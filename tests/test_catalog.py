"""Local catalogue building (dipengine.catalog, ``dipengine catalog build``)."""
from __future__ import annotations

import datetime as dt
import math
import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipengine import catalog
from dipengine.catalog import build_catalog
from dipengine.catalog_reference import reference_catalog
from dipengine.errors import DataError

SCHEMA = pa.schema([
    ("case_id", pa.string()),
    ("hospital_id", pa.string()),
    ("insurance_type", pa.string()),
    ("insured_region", pa.string()),
    ("age", pa.int32()),
    ("age_days", pa.int32()),
    ("los", pa.int32()),
    ("discharge_date", pa.date32()),
    ("discharge_mode", pa.int8()),
    ("main_dx", pa.string()),
    ("main_proc", pa.string()),
    ("other_dx", pa.list_(pa.string())),
    ("other_procs", pa.list_(pa.string())),
    ("total_cost_fen", pa.int64()),
    ("fund_paid_fen", pa.int64()),
    ("patient_paid_fen", pa.int64()),
    ("reason", pa.string()),
])
HOSP = pa.table({
    "hospital_id": ["H1", "H2", "H3", "H4", "H5", "H6"],
    "name": ["a", "b", "c", "d", "e", "f"],
    "level": ["1", "1", "2", "2", "3", "3"],
    "region": ["440200"] * 6,
})
LEVELS = {"H1": 1, "H2": 1, "H3": 2, "H4": 2, "H5": 3, "H6": 3}
PROCS = pa.table({
    "code": ["47.0100", "51.2300", "54.5100", "45.1300", "99.2500", "81.5100", "36.0600"],
    "class": ["surgery", "surgery", "surgery", "diagnostic", "therapeutic", "surgery", "surgery"],
    "level": ["3", "3", "2", "1", "1", "4", "3"],
})
PROC_CLASS = dict(zip(PROCS["code"].to_pylist(), PROCS["class"].to_pylist()))
YEARS = (2024, 2025, 2026)


def case(dx, proc=None, cost=1000.0, *, other=(), odx=(), h="H5", mode=1, los=5, age=40, age_days=None,
         ins="employee", region="440200", reason=None):
    fen = int(round(cost * 100))
    return dict(hospital_id=h, insurance_type=ins, insured_region=region, age=age, age_days=age_days, los=los,
                discharge_mode=mode, main_dx=dx, main_proc=proc, other_dx=list(odx), other_procs=list(other),
                total_cost_fen=fen, fund_paid_fen=fen * 7 // 10, patient_paid_fen=fen - fen * 7 // 10,
                reason=reason)


def table(rows, year):
    rows = [dict(r, case_id=f"{year}-{i}", discharge_date=dt.date(year, 6, 30)) for i, r in enumerate(rows)]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def many(n, *args, **kw):
    return [case(*args, **kw) for _ in range(n)]


def build(years_rows, out=None, pricing=None, **kw):
    kw.setdefault("procedures", PROCS)
    hist = [table(rows, YEARS[-len(years_rows):][i]) for i, rows in enumerate(years_rows)]
    return build_catalog(hist, HOSP, out, pricing, **kw)


def groups(res):
    return {r["dip_code"]: r for r in res.groups.to_pylist()}


# ---------------------------------------------------------------------------------- spec examples


@pytest.mark.parametrize("scale, shown", [(1000, 1225.27), (100, 122.53)])
def test_worked_example_of_dip_rules_4_2(scale, shown):
    # group K35.8 + 47.0100 costs 9,800 / 10,100 / 10,400; the region 8,000 / 8,200 / 8,500
    years = [many(20, "K35.800x001", "47.0100", g) + many(20, "J18.900", None, 2 * r - g)
             for g, r in ((9800, 8000), (10100, 8200), (10400, 8500))]
    res = build(years, scale=scale)
    g = groups(res)["K35.8-47.0100"]
    assert round(g["score"], 2) == shown
    assert g["score"] == round(10280 / 8390 * scale, 4)
    assert g["avg_cost"] == 10280.0 and g["group_type"] == "core" and g["proc_expr"] == "47.0100"
    assert res.overall_avg_cost == pytest.approx(8390.0)


def _known_history(seed=7):
    """Three years drawn from known groups; returns (tables, truth score by dip_code, thin combos)."""
    rng = np.random.default_rng(seed)
    subs = [f"{c}{i:02d}.{j}" for c in "IJKN" for i in (10, 20, 30) for j in (1, 2)]
    procs = [None, "47.0100", "51.2300", "81.5100"]
    specs = []
    for k, s in enumerate(subs):
        p = procs[k % 4]
        n = int(rng.integers(200, 500)) if k % 5 else 4  # every fifth combination is thin
        specs.append((s, p, n, float(rng.uniform(3000, 40000))))
    sigma = 0.12
    tables = []
    for y, year in enumerate(YEARS):
        infl = 1.03 ** y
        dx, pr, cost = [], [], []
        for s, p, n, mu in specs:
            dx += [s + "00"] * n
            pr += [p] * n
            cost.append(np.exp(rng.normal(np.log(mu * infl) - sigma ** 2 / 2, sigma, n)))
        cost = np.round(np.concatenate(cost) * 100).astype(np.int64)
        m = len(dx)
        tables.append(pa.table({
            "case_id": [f"{year}-{i}" for i in range(m)],
            "hospital_id": pa.array(np.array(["H1", "H3", "H5"])[np.arange(m) % 3]),
            "insurance_type": ["employee"] * m,
            "insured_region": ["440200"] * m,
            "discharge_date": pa.array([dt.date(year, 3, 1)] * m, pa.date32()),
            "main_dx": dx, "main_proc": pa.array(pr, pa.string()),
            "other_procs": pa.array([[]] * m, pa.list_(pa.string())),
            "total_cost_fen": cost, "fund_paid_fen": cost // 2,
            "reason": pa.nulls(m, pa.string()),
        }))
    total_n = sum(n for _, _, n, _ in specs)
    M = sum(n * mu for _, _, n, mu in specs) / total_n
    truth = {f"{s[:5]}-{p or 'C'}": mu / M * 1000 for s, p, n, mu in specs if n >= 15}
    thin = {f"{s[:5]}-{p or 'C'}" for s, p, n, mu in specs if n < 15}
    return tables, truth, thin


def test_history_from_known_groups_is_rebuilt_within_2_percent():
    tables, truth, thin = _known_history()
    res = build_catalog(tables, HOSP, procedures=PROCS)
    g = groups(res)
    for code, score in truth.items():
        assert code in g, code
        assert g[code]["group_type"] in ("core", "basic")
        assert g[code]["score"] == pytest.approx(score, rel=0.02), code
    assert not thin & set(g)  # thin combinations are pooled, not core groups
    assert sum(r["n_cases"] for r in g.values()) == sum(t.num_rows for t in tables)


# ---------------------------------------------------------------------------------- parameters


def test_threshold_decides_core_versus_comprehensive():
    rows = many(10, "K80.100", "51.2300", 9000) + many(10, "K80.200", "51.2300", 11000) + many(30, "J18.900", None, 5000)
    lo = groups(build([rows] * 3, threshold=10))
    hi = groups(build([rows] * 3, threshold=15))
    assert lo["K80.1-51.2300"]["group_type"] == "core" and "K80-S" not in lo
    assert "K80.1-51.2300" not in hi and "K80.2-51.2300" not in hi
    comp = hi["K80-S"]
    assert (comp["group_type"], comp["dx_key"], comp["treat_class"], comp["proc_expr"]) == ("comprehensive", "K80", "surgery", "")
    assert comp["avg_cost"] == 10000.0 and comp["n_cases"] == 60


def test_weights_change_counts_and_means():
    # a group seen only in the oldest year: 30 cases there = 3 weighted cases a year at 1:2:7
    old_only = many(30, "I20.000", "36.0600", 30000)
    base = many(40, "J18.900", None, 5000)
    years = [old_only + base, base, base]
    assert "I20.0-36.0600" not in groups(build(years))
    assert groups(build(years, weights=(7, 2, 1)))["I20.0-36.0600"]["group_type"] == "core"
    # a group getting dearer relative to the region scores higher when the newest year weighs more
    years = [many(20, "K35.800", "47.0100", c) + many(20, "J18.900", None, 5000) for c in (8000, 10000, 12000)]
    s127 = groups(build(years))["K35.8-47.0100"]["score"]
    s111 = groups(build(years, weights=(1, 1, 1)))["K35.8-47.0100"]["score"]
    s001 = groups(build(years, weights=(0, 0, 1)))["K35.8-47.0100"]["score"]
    assert s111 < s127 < s001 and s001 == round(12000 / 8500 * 1000, 4)


def test_trimming_removes_outliers_in_large_groups_only():
    rows = many(39, "K35.800", "47.0100", 10000) + many(1, "K35.800", "47.0100", 1_000_000) + many(40, "J18.900", None, 5000)
    trimmed = groups(build([rows] * 3))["K35.8-47.0100"]
    untrimmed = groups(build([rows] * 3, trim=None))["K35.8-47.0100"]
    too_small = groups(build([rows] * 3, min_trim_group=41))["K35.8-47.0100"]
    assert trimmed["avg_cost"] == 10000.0  # one dearest and one cheapest case of 40 left out
    assert untrimmed["avg_cost"] == too_small["avg_cost"] == (39 * 10000 + 1_000_000) / 40
    assert trimmed["score"] < untrimmed["score"]
    assert trimmed["n_cases"] == 120  # n_cases counts every case behind the group


@pytest.mark.parametrize("pair_cost, split", [(16000, True), (10500, False)])
def test_related_procedure_forms_a_group_only_when_cost_changes_materially(pair_cost, split):
    rows = (many(40, "K80.100", "51.2300", 10000)
            + many(40, "K80.100", "51.2300", pair_cost, other=["54.5100"])
            + many(40, "J18.900", None, 5000))
    g = groups(build([rows] * 3))
    assert ("K80.1-51.2300+54.5100" in g) is split
    if split:
        assert g["K80.1-51.2300+54.5100"]["proc_expr"] == "51.2300+54.5100"
        assert g["K80.1-51.2300+54.5100"]["avg_cost"] == 16000.0
        assert g["K80.1-51.2300"]["avg_cost"] == 10000.0
    else:
        assert g["K80.1-51.2300"]["n_cases"] == 240


def test_mirrored_pairs_keep_one_group(tmp_path):
    # A+B and B+A are the same all-of expression: only the pair with more cases becomes a group
    rows = (many(40, "K80.100", "51.2300", 16000, other=["54.5100"])
            + many(30, "K80.100", "54.5100", 16000, other=["51.2300"])
            + many(40, "K80.100", "51.2300", 10000) + many(40, "K80.100", "54.5100", 9000)
            + many(40, "J18.900", None, 5000))
    g = groups(build([rows] * 3, tmp_path / "rules"))
    assert "K80.1-51.2300+54.5100" in g and "K80.1-54.5100+51.2300" not in g
    assert g["K80.1-54.5100"]["n_cases"] == 3 * 70
    from dipengine import rules
    assert rules.check_rules(tmp_path / "rules") == []


def test_comprehensive_range_and_blank_hierarchy():
    rows = (many(5, "K80.100", None, 7000) + many(12, "K80.000", None, 9000)      # K80 conservative: 17
            + many(5, "K81.000", None, 4000) + many(12, "K82.800", None, 6000)    # K00-K93 conservative: 17
            + many(3, "A00.000", None, 3000)                                       # blank
            + many(40, "J18.900", None, 5000))
    res = build([rows] * 3)
    g = groups(res)
    assert g["K80-C"]["dx_key"] == "K80" and g["K80-C"]["n_cases"] == 51
    assert g["K00-K93-C"]["dx_key"] == "K00-K93" and g["K00-K93-C"]["n_cases"] == 51
    assert g["BLANK"]["group_type"] == "blank" and g["BLANK"]["n_cases"] == 9
    assert g["BLANK"]["score"] == 1000.0  # too few residual cases: the overall mean
    assert res.counts == {"core": 1, "basic": 0, "comprehensive": 2, "blank": 1}
    assert list(res.groups["dip_code"])[-1].as_py() == "BLANK"


def test_diagnostic_procedures_can_count_as_conservative():
    rows = many(20, "K25.000", "45.1300", 3000) + many(20, "K25.000", None, 2500) + many(20, "J18.900", None, 5000)
    g = groups(build([rows] * 3))
    assert g["K25.0-45.1300"]["treat_class"] == "diagnostic"
    g2 = groups(build([rows] * 3, diagnostic_as_conservative=True))
    assert "K25.0-45.1300" not in g2 and g2["K25.0-C"]["n_cases"] == 120


def test_basic_groups_need_level1_share_and_low_cv():
    steady = many(30, "J20.900", None, 3000, h="H1") + many(10, "J20.900", None, 3300, h="H5")
    spread = [case("J06.900", None, c, h="H2") for c in (500, 9000) * 20]
    mostly_l3 = many(15, "J40.000", None, 3000, h="H1") + many(25, "J40.000", None, 3000, h="H6")
    g = groups(build([steady + spread + mostly_l3] * 3))
    assert g["J20.9-C"]["group_type"] == "basic"
    assert g["J06.9-C"]["group_type"] == "core"   # CV ~0.9 > 0.7
    assert g["J40.0-C"]["group_type"] == "core"   # 37.5% at level 1 < 50%
    assert groups(build([steady + spread] * 3, basic_cv=1.0))["J06.9-C"]["group_type"] == "basic"


def test_auxiliary_coefficients():
    rows = (many(40, "I63.900", None, 10000)
            + many(20, "I63.900", None, 20000, mode=5)                       # death
            + many(20, "I63.900", None, 15000, odx=["A41.900"], los=6)         # severity III
            + many(20, "I63.900", None, 10000, odx=["A41.900"], los=2)        # below the LOS gate
            + many(20, "I63.900", None, 12000, odx=["E11.900", "E14.900", "I50.900"])  # CCI 2 -> cci_1
            + many(40, "J18.900", None, 5000))
    res = build([rows] * 3)
    aux = {(r["dip_code"], r["subtype"]): r["coefficient"] for r in res.aux.to_pylist()}
    mean = (40 * 10000 + 20 * 20000 + 20 * 15000 + 20 * 10000 + 20 * 12000) / 120
    assert aux[("I63.9-C", "death")] == round(20000 / mean, 4)
    assert aux[("I63.9-C", "severity_III")] == round(15000 / mean, 4)
    assert ("I63.9-C", "severity_II") not in aux
    assert ("I63.9-C", "cci_1") not in aux  # 12000 / mean is within aux_min_diff of 1
    assert aux.get(("I63.9-C", "cci_1")) is None
    assert {k[0] for k in aux} == {"I63.9-C"}


# ------------------------------------------------- catalogue options and the comprehensive threshold

def _subtype_years():
    """I63.9-C: 40 cases of 10,000 and four subtype populations of 20; the group mean is 14,000."""
    rows = (many(40, "I63.900", None, 10000)
            + many(20, "I63.900", None, 21000, mode=9)                         # death only with mode 9
            + many(20, "I63.900", None, 17500, odx=["A41.900"], los=2)          # sepsis, 2 days
            + many(20, "I63.900", None, 16800, odx=["E11.900", "I21.900"])      # CCI score 2
            + many(20, "I63.900", None, 8700, age=67)
            + many(40, "J18.900", None, 5000))
    return [rows] * 3


CUSTOM_OPTIONS = {"cci_levels": [1, 2, 5], "severity_min_los": 2, "death_discharge_mode": 9,
                  "age_bands": ["60p:60:", "65_74:65:74"]}


def test_catalogue_options_decide_the_subtypes_and_go_into_the_rule_set(tmp_path):
    from dipengine import rules

    def aux_of(res):
        return {r["subtype"]: r["coefficient"] for r in res.aux.to_pylist() if r["dip_code"] == "I63.9-C"}

    default = build(_subtype_years(), tmp_path / "default")
    # default options: mode 9 is no death, LOS 2 is under the severity gate, CCI 2 is cci_1, 67 is 65-69
    assert aux_of(default) == {"cci_1": 1.2, "age_65_69": 0.6214}          # 16,800 / 14,000; 8,700 / 14,000
    custom = build(_subtype_years(), tmp_path / "custom", options=CUSTOM_OPTIONS)
    assert aux_of(custom) == {"death": 1.5, "severity_III": 1.25, "cci_2": 1.2,  # 21,000 / 17,500 / 16,800
                              "age_60p": 0.6214, "age_65_74": 0.6214}         # a case counts for each band
    assert custom.groups.equals(default.groups) and custom.same_level_avg.equals(default.same_level_avg)
    assert custom.options == CUSTOM_OPTIONS
    # the rule set carries the options it was built with, so the grouper reads what the builder used
    man = tomllib.loads((tmp_path / "custom" / "manifest.toml").read_text())
    assert man["options"] == CUSTOM_OPTIONS
    assert tomllib.loads((tmp_path / "default" / "manifest.toml").read_text())["options"] == {
        k: rules.DEFAULT_OPTIONS[k] for k in catalog.CATALOG_OPTIONS}
    assert rules.check_rules(tmp_path / "custom") == []
    rs = rules.load_rules(tmp_path / "custom")
    assert {k: rs.options[k] for k in CUSTOM_OPTIONS} == CUSTOM_OPTIONS


def test_grouper_applies_the_coefficients_of_a_rule_set_built_with_options(tmp_path):
    from dipengine import rules
    from dipengine.reference import group_case

    build(_subtype_years(), tmp_path / "rules", options=CUSTOM_OPTIONS)
    rs = rules.load_rules(tmp_path / "rules")
    base = dict(case_id="x", hospital_id="H5", main_dx="I63.900", main_proc=None, other_procs=[], other_dx=[],
                discharge_mode=1, los=5, age=40, age_days=None, sex="F", total_cost_fen=1_000_000)
    for change, subtype in (({"discharge_mode": 9}, "death"), ({"other_dx": ["A41.900"], "los": 2}, "severity_III"),
                            ({"other_dx": ["E11.900", "I21.900"]}, "cci_2"), ({"age": 67}, "age_60p"), ({}, None)):
        g = group_case({**base, **change}, rs)
        assert (g["dip_code"], g["aux_subtype"]) == ("I63.9-C", subtype), change


@pytest.mark.parametrize("options, expect", [
    ({"cci_levels": [3, 1, 5]}, "option cci_levels = [3, 1, 5]: must be three increasing positive integers"),
    ({"severity_min_los": -1}, "option severity_min_los = -1: must be a non-negative integer"),
    ({"death_discharge_mode": "5"}, "option death_discharge_mode = '5': must be a non-negative integer"),
    ({"age_bands": ["a:5:1"]}, "ends before it starts"),
    ({"age_bands": ["a:1:5", "a:6:9"]}, "age band age_a twice"),
    ({"age_bands": [f"b{i}:{i}:{i}" for i in range(65)]}, "at most 64 age bands"),
    ({"match_mode": "all_listed"}, "'match_mode' is not an option of the catalogue build"),
])
def test_bad_catalogue_options_are_named(options, expect):
    with pytest.raises(ValueError) as e:
        build(_subtype_years(), options=options)
    assert expect in str(e.value)
    with pytest.raises(ValueError, match="comprehensive_threshold must be positive"):
        build(_subtype_years(), comprehensive_threshold=0)


def test_comprehensive_threshold_is_its_own_setting():
    rows = (many(5, "K80.100", None, 7000) + many(12, "K80.000", None, 9000)      # K80 conservative: 17
            + many(5, "K81.000", None, 4000) + many(12, "K82.800", None, 6000)    # K00-K93 conservative: 17
            + many(3, "A00.000", None, 3000)                                       # 3 a year
            + many(40, "J18.900", None, 5000))
    same = groups(build([rows] * 3))
    assert groups(build([rows] * 3, comprehensive_threshold=15)) == same  # default: the core threshold
    # 20 a year: K80 (17) is too thin, K80 and K81/K82 pool by chapter (34); A00 stays blank
    hi = groups(build([rows] * 3, comprehensive_threshold=20))
    assert "K80-C" not in hi and hi["K00-K93-C"]["n_cases"] == 3 * 34 and hi["BLANK"]["n_cases"] == 9
    assert hi["J18.9-C"]["group_type"] == "core"  # core groups keep threshold 15
    # 3 a year: A00 becomes a comprehensive group; K80.0 (12 a year) is still no core group
    lo = groups(build([rows] * 3, comprehensive_threshold=3))
    assert lo["A00-C"]["n_cases"] == 9 and lo["K80-C"]["n_cases"] == 51 and "K80.0-C" not in lo
    assert lo["BLANK"]["n_cases"] == 0 and lo["BLANK"]["score"] == 1000.0
    # the blank group is scored from its own cases once they reach the comprehensive threshold:
    # 2 + 2 residual cases a year in two chapters (no pool of 3), 4 in the blank group; kept cases
    # 38 × 5,000 + 4 × 2,500 a year, M = 200,000 / 42, blank score = 2,500 / M × 1,000 = 525
    years = [many(40, "J18.900", None, 5000) + many(2, "A00.000", None, 2500) + many(2, "E86.000", None, 2500)] * 3
    for comp, score in ((3, 525.0), (4, 525.0), (5, 1000.0), (None, 1000.0)):
        g = groups(build(years, threshold=40, comprehensive_threshold=comp))
        assert set(g) == {"J18.9-C", "BLANK"} and g["BLANK"]["n_cases"] == 12
        assert g["BLANK"]["score"] == score, comp


def test_same_level_averages_budget_point_value_and_pool_budgets():
    last = (many(20, "K35.800", "47.0100", 9000, h="H3") + many(20, "K35.800", "47.0100", 11000, h="H5")
            + many(20, "J18.900", None, 5000, ins="resident")
            + many(5, "J18.900", None, 5000, region="110100"))  # cross-province: not in the pools' budget
    older = many(40, "K35.800", "47.0100", 9500) + many(40, "J18.900", None, 4800)
    res = build([older, older, last])
    sl = {(r["dip_code"], r["level"]): r["avg_cost"] for r in res.same_level_avg.to_pylist()}
    assert sl[("K35.8-47.0100", 2)] == 9000.0 and sl[("K35.8-47.0100", 3)] == 11000.0
    assert ("K35.8-47.0100", 1) not in sl
    w = np.array([0.1, 0.2, 0.7])
    totals = np.array([sum(r["total_cost_fen"] for r in rows) for rows in (older, older, last)]) / 100
    g = groups(res)
    n_w = {"K35.8-47.0100": 40.0, "J18.9-C": 0.3 * 40 + 0.7 * 25}
    points = sum(g[c]["score"] * n for c, n in n_w.items())
    assert res.budget_point_value == pytest.approx(float(totals @ w) / points, rel=1e-12)
    assert res.budgets_fen == {"employee": 20 * (630000 + 770000), "resident": 20 * 350000}


def test_rejected_rows_are_not_used():
    rows = many(20, "K35.800", "47.0100", 10000) + many(20, "J18.900", None, 5000)
    bad = many(50, "K35.800", "47.0100", 90000, reason="BAD_AMOUNT")
    assert build([rows + bad] * 3).groups.equals(build([rows] * 3).groups)


def test_result_does_not_depend_on_batch_size():
    tables, _, _ = _known_history(seed=3)
    a = build_catalog(tables, HOSP, procedures=PROCS)
    b = build_catalog(tables, HOSP, procedures=PROCS, batch_size=997)
    assert a.groups.equals(b.groups) and a.aux.equals(b.aux) and a.same_level_avg.equals(b.same_level_avg)
    assert a.budget_point_value == b.budget_point_value


def test_bad_parameters_and_inputs():
    rows = many(20, "J18.900", None, 5000)
    with pytest.raises(ValueError, match="weights"):
        build([rows] * 3, weights=(1, 2))
    with pytest.raises(ValueError, match="trim"):
        build([rows] * 3, trim=(0.9, 0.1))
    with pytest.raises(DataError, match="no groupable case"):
        build([rows, many(3, "J18.900", None, 5000, reason="INVALID_DX"), rows])
    assert groups(build([rows, rows]))["J18.9-C"]["score"] == 1000.0  # two years default to 2:7


# ---------------------------------------------------------------------------------- outputs


def _example_years():
    return [many(20, "K35.800x001", "47.0100", g, h=h) + many(20, "J18.900", None, 2 * r - g, odx=["A41.900"], los=4)
            + many(20, "J18.900", None, 3 * (2 * r - g), mode=5)
            for (g, r), h in zip(((9800, 8000), (10100, 8200), (10400, 8500)), ("H1", "H3", "H5"))]


def test_writes_a_rule_set_that_checks_and_loads(tmp_path):
    from dipengine import rules
    res = build(_example_years(), tmp_path / "rules", tmp_path / "pricing", name="demo")
    assert rules.check_rules(tmp_path / "rules") == []
    rs = rules.load_rules(tmp_path / "rules")
    assert rs.groups.num_rows == res.groups.num_rows
    assert {f.name for f in (tmp_path / "rules").iterdir()} == {
        "groups.csv", "procedures.csv", "excluded_dx.csv", "excluded_proc.csv", "aux_coefficients.csv",
        "cci_weights.csv", "severity_dx.csv", "manifest.toml", ".dipengine-output"}
    man = tomllib.loads((tmp_path / "rules" / "manifest.toml").read_text())
    assert man["name"] == "demo" and man["version"] == "2027.1"
    assert man["effective_from"] == dt.date(2027, 1, 1)
    assert man["build"]["weights"] == [1.0, 2.0, 7.0] and man["build"]["threshold"] == 15.0
    assert man["build"]["history_years"] == [2024, 2025, 2026] and "created" in man["build"]
    assert len(man["files"]) == 7
    assert res.aux.num_rows > 0  # death and severity subtypes of J18.9-C


def test_pricing_skeleton_loads_as_a_policy(tmp_path):
    from dipengine import policy
    res = build(_example_years(), tmp_path / "rules", tmp_path / "pricing")
    doc = tomllib.loads((tmp_path / "pricing" / "policy.toml").read_text())
    assert doc["region"] == "440200" and doc["year"] == 2027 and doc["score_scale"] == 1000
    assert doc["point_value"]["budget_value"] == res.budget_point_value
    assert doc["budget"]["employee"] * 100 == res.budgets_fen["employee"]
    pol = policy.load_policy(tmp_path / "pricing")
    assert pol.budget_value["employee"] == res.budget_point_value
    text = (tmp_path / "pricing" / "same_level_avg.csv").read_text().splitlines()
    assert text[0] == "dip_code,level,avg_cost"
    assert "K35.8-47.0100,3,10400.00" in text


def test_failed_build_writes_nothing(tmp_path):
    rows = many(20, "J18.900", None, 5000)
    with pytest.raises(DataError):
        build([rows, many(2, "J18.900", None, 1, reason="BAD_AMOUNT"), rows], tmp_path / "rules")
    assert not (tmp_path / "rules").exists()


def test_cli_build(tmp_path):
    from dipengine.cli import main

    paths = []
    for rows, year in zip(_example_years(), YEARS):
        p = tmp_path / f"history_{year}.parquet"
        pq.write_table(table(rows, year), p)
        paths.append(str(p))
    pq.write_table(PROCS, tmp_path / "procs.parquet")
    HOSP.to_pandas().to_csv(tmp_path / "hospitals.csv", index=False)
    procs_csv = tmp_path / "procs.csv"
    PROCS.to_pandas().to_csv(procs_csv, index=False)
    args = ["catalog", "build", "--history", *paths, "--hospitals", str(tmp_path / "hospitals.csv"),
            "--out", str(tmp_path / "rules"), "--pricing-out", str(tmp_path / "pricing"),
            "--procedures", str(procs_csv)]
    assert main(args) == 0
    assert (tmp_path / "rules" / "groups.csv").exists() and (tmp_path / "pricing" / "policy.toml").exists()
    man = tomllib.loads((tmp_path / "rules" / "manifest.toml").read_text())
    assert man["build"]["history_sha256"][0] == catalog.sha256_file(paths[0])
    assert man["options"]["cci_levels"] == [1, 3, 5] and man["build"]["comprehensive_threshold"] == 15.0
    assert main(args + ["--weights", "1,2"]) == 2
    assert main(["catalog", "build", "--history", str(tmp_path / "missing.parquet"), "--hospitals",
                 str(tmp_path / "hospitals.csv"), "--out", str(tmp_path / "r2")]) == 1


def test_cli_build_takes_the_catalogue_options(tmp_path, capsys):
    from dipengine.cli import main

    paths = []
    for rows, year in zip(_subtype_years(), YEARS):
        paths.append(str(tmp_path / f"history_{year}.parquet"))
        pq.write_table(table(rows, year), paths[-1])
    HOSP.to_pandas().to_csv(tmp_path / "hospitals.csv", index=False)
    base = ["catalog", "build", "--history", *paths, "--hospitals", str(tmp_path / "hospitals.csv")]
    opts = ["--cci-levels", "1,2,5", "--severity-min-los", "2", "--death-discharge-mode", "9",
            "--age-bands", "60p:60:,65_74:65:74", "--comprehensive-threshold", "20"]
    assert main(base + ["--out", str(tmp_path / "rules")] + opts) == 0
    man = tomllib.loads((tmp_path / "rules" / "manifest.toml").read_text())
    assert man["options"] == CUSTOM_OPTIONS
    assert man["build"]["comprehensive_threshold"] == 20.0 and man["build"]["threshold"] == 15.0
    aux = (tmp_path / "rules" / "aux_coefficients.csv").read_text()
    assert "I63.9-C,death,1.5" in aux and "I63.9-C,age_65_74,0.6214" in aux
    assert main(base + ["--out", str(tmp_path / "r2"), "--age-bands", "none"]) == 0
    assert tomllib.loads((tmp_path / "r2" / "manifest.toml").read_text())["options"]["age_bands"] == []
    assert "age_" not in (tmp_path / "r2" / "aux_coefficients.csv").read_text()
    capsys.readouterr()
    for bad, word in ((["--cci-levels", "1,x,5"], "--cci-levels"), (["--cci-levels", "5,3,1"], "cci_levels"),
                      (["--age-bands", "old:80"], "age band"), (["--severity-min-los", "-2"], "severity_min_los"),
                      (["--comprehensive-threshold", "0"], "comprehensive_threshold")):
        assert main(base + ["--out", str(tmp_path / "r3")] + bad) == 2, bad
        assert word in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_default_build_reproduces_the_shipped_demo_tables(tmp_path):
    """Default options and comprehensive threshold: the files ``scripts/make_shipped_tables.py`` wrote
    (the tables, byte for byte, made before the options existed; the manifest now also records them)."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_shipped_tables", repo / "scripts" / "make_shipped_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    new_rules, new_pricing = script.generate(tmp_path)
    shipped = repo / "grouper_rules" / "demo"
    for name in ("groups.csv", "procedures.csv", "aux_coefficients.csv", "cci_weights.csv", "severity_dx.csv",
                 "excluded_dx.csv", "excluded_proc.csv"):
        assert (new_rules / name).read_bytes() == (shipped / name).read_bytes(), name
    sla = repo / "pricing_tables" / "440200" / "2026" / "same_level_avg.csv"
    assert (new_pricing / "same_level_avg.csv").read_bytes() == sla.read_bytes()
    man = tomllib.loads((new_rules / "manifest.toml").read_text())
    from dipengine.rules import DEFAULT_OPTIONS
    assert man["options"] == {k: DEFAULT_OPTIONS[k] for k in catalog.CATALOG_OPTIONS}
    assert man["build"]["comprehensive_threshold"] == man["build"]["threshold"] == 15.0
    assert script._differences(new_rules, shipped) == []  # the shipped manifest is up to date too


# ---------------------------------------------------------------------------------- the twin

DXS = ["K35.800", "K35.100", "K80.100", "K81.000", "J18.900", "A41.900", "C16.900", "Z51.100"]
ODX = ["A41.900", "J96.000", "J18.000", "E11.900", "E14.200", "I50.000", "C78.000", "N18.500"]


OPTION_VARIANTS = [
    None,
    CUSTOM_OPTIONS,
    # overlapping bands, a severity gate of 0 days (an unknown LOS still has no severity), death = mode 1
    {"cci_levels": [1, 2, 2], "severity_min_los": 0, "death_discharge_mode": 1,
     "age_bands": ["0_1y:0d:364d", "60p:60:", "3_70:3:70", "1y:365d:365d"]},
    {"age_bands": [f"b{i}:{i * 9}:{i * 9 + 20}" for i in range(10)]},  # more than 8: a 16-bit band mask
    {"age_bands": []},
]


@st.composite
def histories(draw):
    ny = draw(st.integers(1, 3))
    years = []
    for _ in range(ny):
        n = draw(st.integers(1, 60))
        rows = []
        for _ in range(n):
            rows.append(case(
                draw(st.sampled_from(DXS)),
                draw(st.sampled_from([None, None, "47.0100", "51.2300", "45.1300", "99.2500"])),
                draw(st.sampled_from([500.0, 1000.0, 1234.56, 2500.0, 8000.0, 20000.0])),
                other=draw(st.lists(st.sampled_from(list(PROC_CLASS)), max_size=3)),
                odx=draw(st.lists(st.sampled_from(ODX), max_size=3)),
                h=draw(st.sampled_from(list(LEVELS))),
                mode=draw(st.sampled_from([1, 1, 5, 9])),
                los=draw(st.sampled_from([None, 0, 1, 2, 3, 4, 6])),
                age=draw(st.sampled_from([None, 0, 3, 40, 67, 85])),
                age_days=draw(st.sampled_from([None, 10, 100, 364, 365])),
            ))
        years.append(rows)
    params = dict(
        weights=draw(st.sampled_from([(1, 2, 7), (1, 1, 1), (3, 0, 5)]))[-ny:],
        threshold=draw(st.sampled_from([1, 2, 3, 5])),
        trim=draw(st.sampled_from([None, (0.1, 0.9), (0.025, 0.975)])),
        min_trim_group=draw(st.sampled_from([3, 10])),
        related_min_gain=draw(st.sampled_from([0.0, 0.2])),
        basic_share=draw(st.sampled_from([0.3, 0.5])),
        basic_cv=draw(st.sampled_from([0.3, 0.7])),
        aux_min_cases=draw(st.sampled_from([1, 2])),
        aux_min_diff=draw(st.sampled_from([0.0, 0.1])),
        diagnostic_as_conservative=draw(st.booleans()),
        comprehensive_threshold=draw(st.sampled_from([None, 1, 4])),
        options=draw(st.sampled_from(OPTION_VARIANTS)),
    )
    return years, params


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories())
def test_fast_build_agrees_with_the_reference_twin(hist):
    years, params = hist
    if sum(params["weights"]) == 0:
        return
    cci = catalog.load_prefix_table(catalog.DATA_DIR / "cci_weights.csv", "weight")
    sev = catalog.load_prefix_table(catalog.DATA_DIR / "severity_dx.csv", "level", allowed={"II", "III"})
    fast = build(years, **params)
    slow = reference_catalog(years, LEVELS, PROC_CLASS, cci=cci, severity=sev, **params)
    got = groups(fast)
    assert set(got) == set(slow["groups"])
    for code, ref in slow["groups"].items():
        g = got[code]
        assert (g["group_type"], g["treat_class"], g["n_cases"]) == (ref["group_type"], ref["treat_class"], ref["n_cases"])
        assert g["score"] == pytest.approx(ref["score"], abs=2e-4)
        assert abs(g["avg_cost"] * 100 - ref["avg_cost_fen"]) <= 1
    aux = {(r["dip_code"], r["subtype"]): r["coefficient"] for r in fast.aux.to_pylist()}
    assert set(aux) == set(slow["aux"])
    for k, v in slow["aux"].items():
        assert aux[k] == pytest.approx(v, abs=2e-4)
    sl = {(r["dip_code"], r["level"]): round(r["avg_cost"] * 100) for r in fast.same_level_avg.to_pylist()}
    assert sl == slow["same_level"]
    assert fast.budget_point_value == pytest.approx(slow["budget_point_value"], rel=1e-6)
    assert not math.isnan(fast.budget_point_value)


def test_raw_history_goes_through_the_reader(tmp_path):
    from dipengine import synth
    from dipengine import reader
    from dipengine import rules
    hist, hosp = [], None
    for year in YEARS:
        cases, hosp = synth.synth_region(year, 4000, seed=5, bad_rows=0.05, hospitals=hosp)
        hist.append(cases)
    res = build_catalog(hist, hosp, tmp_path / "rules", tmp_path / "pricing")
    good = [reader.read_cases(c, hosp)["reason"].null_count for c in hist]
    assert res.cases_used == good and all(g < c.num_rows for g, c in zip(good, hist))
    assert res.years == list(YEARS)
    assert rules.check_rules(tmp_path / "rules") == []
    assert res.counts["core"] > 0 and res.counts["blank"] == 1


# ------------------------------------------------------------ bounded build = whole-array build


def _files(directory):
    """name -> bytes of every written file (manifest ``created`` lines left out)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            text = p.read_bytes()
            if p.name == "manifest.toml":
                text = b"\n".join(line for line in text.split(b"\n") if not line.startswith(b"created"))
            out[str(p.relative_to(directory))] = text
    return out


@pytest.fixture(scope="module")
def synth_histories():
    """Normalised synthetic history years (and their registries) of a few regions."""
    from dipengine import reader, synth

    made = {}
    for seed, n_years, n in ((11, 3, 3000), (12, 2, 2500), (13, 1, 1500)):
        hist, hosp = [], None
        for year in YEARS[-n_years:]:
            cases, hosp = synth.synth_region(year, n, seed=seed, bad_rows=0.02, hospitals=hosp)
            hist.append(reader.read_cases(cases, hosp))
        made[seed] = (hist, hosp)
    return made


@pytest.mark.parametrize("seed, params", [
    (11, {}),
    (11, dict(threshold=2, min_trim_group=3, trim=(0.1, 0.9), batch_size=257)),
    (11, dict(trim=None, threshold=3, related_min_gain=0.0, batch_size=1000)),
    (12, dict(threshold=1, min_trim_group=2, trim=(0.2, 0.7), diagnostic_as_conservative=True, batch_size=97)),
    (13, dict(threshold=2, aux_min_cases=1, aux_min_diff=0.0, basic_cv=2.0, basic_share=0.0)),
    (11, dict(threshold=20, comprehensive_threshold=4, aux_min_cases=1, aux_min_diff=0.0, batch_size=500,
              options={"cci_levels": [1, 1, 2], "severity_min_los": 1, "death_discharge_mode": 9,
                       "age_bands": [f"b{i}:{i * 7}:{i * 7 + 30}" for i in range(12)]})),
])
@pytest.mark.parametrize("partition_rows", [1, 40, 1000, None])
def test_bounded_build_writes_the_files_of_the_whole_array_build(tmp_path, monkeypatch, synth_histories, seed,
                                                                 params, partition_rows):
    hist, hosp = synth_histories[seed]
    seen = _capture_tables(monkeypatch)
    ref = build_catalog(hist, hosp, tmp_path / "m" / "rules", tmp_path / "m" / "pricing", method="memory", **params)
    got = build_catalog(hist, hosp, tmp_path / "b" / "rules", tmp_path / "b" / "pricing",
                        partition_rows=partition_rows, spill_dir=tmp_path, **params)
    _assert_same_tables(*seen)
    assert _files(tmp_path / "b") == _files(tmp_path / "m")
    assert got.budget_point_value == ref.budget_point_value and got.budgets_fen == ref.budgets_fen
    assert (got.years, got.cases_used, got.counts) == (ref.years, ref.cases_used, ref.counts)
    assert got.counts["core"] + got.counts["basic"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "m"]  # the spill folder is gone


def _capture_tables(monkeypatch) -> list:
    """Record the per-(group, year) tables each build hands to ``catalog._finish``."""
    seen = []
    finish = catalog._finish

    def spy(rows, n_core, tabs, *args, **kw):
        seen.append((rows, n_core, tabs))
        return finish(rows, n_core, tabs, *args, **kw)
    monkeypatch.setattr(catalog, "_finish", spy)
    return seen


def _assert_same_tables(a, b):
    """Same groups and bit-identical tables (float sums of squares included)."""
    assert a[:2] == b[:2] and set(a[2]) == set(b[2])
    for key, x in a[2].items():
        y = b[2][key]
        if key == "sub":
            assert [s for s, _, _ in x] == [s for s, _, _ in y]
            assert all(np.array_equal(p, q) and np.array_equal(r, t) for (_, p, r), (_, q, t) in zip(x, y))
        elif key == "budgets":
            assert list(x) == list(y)
        else:
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(histories(), st.sampled_from([1, 2, 7, 100]), st.sampled_from([3, 16, 131_072]))
def test_bounded_build_equals_the_whole_array_build_on_generated_histories(monkeypatch, hist, partition_rows,
                                                                           batch_size):
    years, params = hist
    if sum(params["weights"]) == 0:
        return
    seen = _capture_tables(monkeypatch)
    a = build(years, method="memory", batch_size=batch_size, **params)
    b = build(years, partition_rows=partition_rows, batch_size=batch_size, **params)
    _assert_same_tables(*seen[-2:])
    assert a.groups.equals(b.groups) and a.aux.equals(b.aux) and a.same_level_avg.equals(b.same_level_avg)
    assert repr(a.budget_point_value) == repr(b.budget_point_value)
    assert (a.budgets_fen, a.overall_avg_cost, a.counts) == (b.budgets_fen, b.overall_avg_cost, b.counts)


def test_trimming_ties_break_in_input_order_in_both_builds(monkeypatch):
    # equal costs at the trimming cut at hospitals of different levels: which of them are left out
    # (the first ones in input order) moves the same-level averages and the sums of squares
    rng = np.random.default_rng(5)
    rows = []
    for i in range(300):
        h = ("H1", "H3", "H5")[i % 3]
        cost = 500.0 if i % 4 == 0 else (20000.0 if i % 7 == 0 else float(rng.integers(1000, 9000)))
        rows.append(case("J18.900", None, cost, h=h, age=int(rng.integers(20, 90)), mode=1 + 4 * (i % 11 == 0)))
    seen = _capture_tables(monkeypatch)
    for batch_size in (131_072, 37):
        for parts in (1, 50, None):
            build([rows[:200], rows], method="memory", batch_size=batch_size, trim=(0.1, 0.9))
            build([rows[:200], rows], partition_rows=parts, batch_size=batch_size, trim=(0.1, 0.9))
            _assert_same_tables(*seen[-2:])
    ref = seen[0][2]
    assert ref["k_cnt"].sum() < ref["g_cnt"].sum() and ref["sl_cnt"][0, 1:].min() > 0


def test_spill_folder_is_removed_on_error(tmp_path, monkeypatch):
    from dipengine import catalog_stats

    rows = many(30, "J18.900", None, 5000)
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(DataError, match="no groupable case"):  # pass 1, after a year was spilled
        build([rows, many(3, "J18.900", None, 5000, reason="INVALID_DX"), rows], spill_dir=spill)
    assert list(spill.iterdir()) == []

    def broken(*args, **kw):
        raise DataError("disk full")
    monkeypatch.setattr(catalog_stats, "_partition", broken)  # pass 3, the partitions written
    with pytest.raises(DataError, match="disk full"):
        build([rows, rows], tmp_path / "rules", spill_dir=spill)
    assert list(spill.iterdir()) == [] and not (tmp_path / "rules").exists()
    with pytest.raises(DataError, match="cannot make a folder"):
        build([rows], spill_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="method"):
        build([rows], method="fast")


def test_partition_plan_keeps_segments_whole():
    from dipengine.catalog_stats import _plan

    sizes = np.array([5, 0, 3, 40, 1, 1, 0, 7, 2], np.int64)
    for per, most in ((1, 256), (4, 256), (10, 256), (1000, 256), (1, 3)):
        part, n = _plan(sizes, per, most)
        assert n <= most and set(part[sizes > 0]) == set(range(n))
        assert (np.diff(part[sizes > 0]) >= 0).all()  # consecutive segments
        load = np.bincount(part[sizes > 0], weights=sizes[sizes > 0], minlength=n)
        assert load.max() <= max(per, -(-sizes.sum() // most)) + sizes.max()


def test_normalised_parquet_history_reads_row_group_by_row_group(tmp_path, synth_histories):
    hist, hosp = synth_histories[11]
    paths = []
    for i, t in enumerate(hist):
        paths.append(tmp_path / f"h{i}.parquet")
        pq.write_table(t, paths[-1], row_group_size=700)
    a = build_catalog(hist, hosp, method="memory")
    b = build_catalog([str(p) for p in paths], hosp, batch_size=500)
    assert a.groups.equals(b.groups) and a.aux.equals(b.aux) and a.same_level_avg.equals(b.same_level_avg)
    assert a.budget_point_value == b.budget_point_value and a.cases_used == b.cases_used
    paths[1].write_bytes(paths[1].read_bytes()[:4000] + b"\0" * 50_000 + paths[1].read_bytes()[-20_000:])
    with pytest.raises(DataError, match="cannot read dataset") as err:
        build_catalog([str(p) for p in paths], hosp)
    assert err.value.file == str(paths[1])
