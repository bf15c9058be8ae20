"""Case points: coefficients, deviation classes and formulas, locality, pools; kernel vs twin."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine._libs.scoring import count_by_label, sum_by_label
from dipengine.policy import policy_from_dict
from dipengine.scoring import case_points, case_points_reference
from test_policy import policy_doc

HOSPITALS = pa.table({
    "hospital_id": ["H1", "H2", "H3", "H4"],
    "name": ["a", "b", "c", "d"],
    "level": pa.array([2, 3, 1, 2], pa.int8()),
    "region": ["440200", "440200", "440200", "440200"],
    "coefficient": [float("nan"), float("nan"), float("nan"), 0.95],
    "assessment_coef": [1.0, 1.0, 1.0, 1.0],
})
SAME_LEVEL = pa.table({"dip_code": ["G1", "G1", "BLANK"], "level": pa.array([2, 3, 2], pa.int8()),
                       "avg_cost_fen": pa.array([900_000, 1_000_000, 500_000], pa.int64())})
GROUPS = pa.table({"dip_code": ["G1", "GB", "BLANK"], "avg_cost": [9500.0, 4000.0, 5000.0]})


def make_policy(**deviation):
    doc = policy_doc()
    doc["deviation"].update(deviation)
    return policy_from_dict(doc, SAME_LEVEL)


def make_inputs(rows):
    """rows: dicts with hospital_id, cost (yuan), and optional group fields."""
    n = len(rows)
    cases = pa.table({
        "case_id": [f"C{i}" for i in range(n)],
        "hospital_id": [r.get("hospital_id", "H1") for r in rows],
        "insurance_type": [r.get("insurance_type", "employee") for r in rows],
        "insured_region": [r.get("insured_region", "440200") for r in rows],
        "total_cost_fen": pa.array([round(r["cost"] * 100) for r in rows], pa.int64()),
        "patient_paid_fen": pa.array([0] * n, pa.int64()),
        "fund_paid_fen": pa.array([0] * n, pa.int64()),
        "reason": pa.nulls(n, pa.string()),
    })
    path = [r.get("match_path", "core") for r in rows]
    grouped = pa.table({
        "case_id": cases["case_id"],
        "dip_code": [None if p in ("rejected", "excluded") else r.get("dip_code", "G1") for r, p in zip(rows, path)],
        "dip_name": pa.nulls(n, pa.string()),
        "group_type": [r.get("group_type", p if p in ("core", "basic", "comprehensive", "blank") else None)
                       for r, p in zip(rows, path)],
        "match_path": path,
        "treat_class": pa.nulls(n, pa.string()),
        "base_score": [r.get("score", 1225.27) if p not in ("rejected", "excluded") else 0.0
                       for r, p in zip(rows, path)],
        "aux_subtype": pa.nulls(n, pa.string()),
        "aux_coef": [r.get("aux", 1.0) for r in rows],
        "reason": [r.get("reason") for r in rows],
        "reason_detail": pa.nulls(n, pa.string()),
    })
    return cases, grouped


def test_dip_rules_6_4_table():
    """Score 1,225.27, 二级 (0.90), same-level average 9,000: normal / high / low / extreme."""
    cases, grouped = make_inputs([{"cost": 11000}, {"cost": 25000}, {"cost": 3600}, {"cost": 45001}])
    out = case_points(cases, grouped, HOSPITALS, make_policy(), groups=GROUPS)
    assert out["deviation"].to_pylist() == ["normal", "high", "low", "extreme"]
    pts = out["case_points"].to_pylist()
    assert pts[0] == 1102.743  # 1,225.27 × 0.90
    assert pts[1] == round(1225.27 * (25000 / 9000 - 1), 4) == 2178.2578
    assert pts[2] == 490.108  # 1,225.27 × 0.40, no level coefficient
    assert out["special_review"].to_pylist() == [False, False, False, True]
    assert out["ratio"][0].as_py() == pytest.approx(11000 / 9000)
    assert out["level_coef"].to_pylist() == [0.9] * 4
    assert out["ref_source"].to_pylist() == ["same_level"] * 4
    # standards at 8.00 yuan per point (dip-rules: 8,821.94 / 17,426.06 / 3,920.86)
    std = [math.floor(p * 800 + 0.5) for p in pts[:3]]
    assert std == [882_194, 1_742_606, 392_086]


def test_high_formula_options_and_extreme_rule():
    rows = [{"cost": 25000}, {"cost": 54000}]  # ratio 2.78 (high) and 6.0 (extreme)
    cases, grouped = make_inputs(rows)
    jn = case_points(cases, grouped, HOSPITALS, make_policy(high_formula="ratio_minus_2_plus_coef",
                                                           extreme_rule="review_normal_pay"))
    r = 25000 / 9000
    assert jn["case_points"][0].as_py() == round(1225.27 * (r - 2 + 0.9), 4)
    assert jn["case_points"][1].as_py() == round(1225.27 * 0.9, 4)  # normal pay pending review
    assert jn["special_review"][1].as_py()
    nat = case_points(cases, grouped, HOSPITALS, make_policy(apply_level_coef_to_outliers=True))
    assert nat["case_points"][0].as_py() == round(1225.27 * (r - 1) * 0.9, 4)
    assert nat["case_points"][1].as_py() == round(1225.27 * (6.0 - 1) * 0.9, 4)  # extreme: high formula


def test_per_level_thresholds_and_low_bound():
    cases, grouped = make_inputs([{"cost": 20000}, {"cost": 4500}])  # ratio 2.22 and exactly 0.5
    p = make_policy(high_ratio={"1": 2.0, "2": 2.5, "3": 3.0})
    assert case_points(cases, grouped, HOSPITALS, p)["deviation"].to_pylist() == ["normal", "normal"]
    p = make_policy(low_inclusive=True)
    assert case_points(cases, grouped, HOSPITALS, p)["deviation"].to_pylist() == ["high", "low"]


def test_inclusive_high_bound_worked_example():
    """Score 1,225.27, 二级 (0.90), same-level 9,000; 三级 10,000 with high_ratio 2.5 at level 3.

    Exactly on the high bound: 18,000 / 9,000 = 2.0 and 25,000 / 10,000 = 2.5 are normal by
    default (ratio > high_ratio) and high with high_inclusive (ratio >= high_ratio); 45,000 /
    9,000 = 5.0 is high (not extreme, which stays ratio > extreme_ratio) either way.
    """
    rows = [{"cost": 18000}, {"cost": 25000, "hospital_id": "H2"}, {"cost": 45000}, {"cost": 17999.99},
            {"cost": 4500}]
    high = {"1": 2.0, "2": 2.0, "3": 2.5}
    cases, grouped = make_inputs(rows)
    default = case_points(cases, grouped, HOSPITALS, make_policy(high_ratio=high))
    assert default["deviation"].to_pylist() == ["normal", "normal", "high", "normal", "normal"]
    assert default["points_e4"].to_pylist() == [11_027_430, 12_252_700, 49_010_800, 11_027_430, 11_027_430]
    incl = case_points(cases, grouped, HOSPITALS, make_policy(high_ratio=high, high_inclusive=True))
    assert incl["deviation"].to_pylist() == ["high", "high", "high", "normal", "normal"]
    # 1,225.27 × (2 − 1) = 1,225.27; 1,225.27 × (2.5 − 1) = 1,837.905; 1,225.27 × (5 − 1) = 4,901.08
    assert incl["points_e4"].to_pylist() == [12_252_700, 18_379_050, 49_010_800, 11_027_430, 11_027_430]
    assert incl["special_review"].to_pylist() == [False] * 5
    # the low bound is its own option: ratio 0.5 stays normal with only high_inclusive
    both = case_points(cases, grouped, HOSPITALS, make_policy(high_ratio=high, high_inclusive=True,
                                                             low_inclusive=True))
    assert both["deviation"].to_pylist() == ["high", "high", "high", "normal", "low"]
    assert both["points_e4"][4].as_py() == 6_126_350  # 1,225.27 × 0.5 = 612.635
    # Jining's high formula is continuous at the bound: 1,225.27 × (2 − 2 + 0.90) = 1,102.743
    jn = case_points(cases, grouped, HOSPITALS, make_policy(high_inclusive=True, high_formula="ratio_minus_2_plus_coef"))
    assert jn["deviation"][0].as_py() == "high" and jn["points_e4"][0].as_py() == 11_027_430
    # the readable twin says the same
    slow = case_points_reference(cases, grouped, HOSPITALS, make_policy(high_ratio=high, high_inclusive=True))
    assert [s["deviation"] for s in slow] == incl["deviation"].to_pylist()
    assert [s["points_e4"] for s in slow] == incl["points_e4"].to_pylist()


# reference keyed by group × level × pool: G1 at level 2 costs 9,000 for employees and 6,000 for
# residents; at level 3 only employees have a row (residents fall back to the group's 9,500)
SAME_LEVEL_POOL = pa.table({"dip_code": ["G1", "G1", "G1", "BLANK"], "level": pa.array([2, 2, 3, 2], pa.int8()),
                            "avg_cost_fen": pa.array([900_000, 600_000, 1_000_000, 500_000], pa.int64()),
                            "pool": ["employee", "resident", "employee", "employee"]})


def pool_policy(**deviation):
    doc = policy_doc()
    doc["deviation"].update(reference_by="level_pool", **deviation)
    return policy_from_dict(doc, SAME_LEVEL_POOL)


def test_reference_by_level_and_pool_worked_example():
    rows = [
        {"cost": 13200},                                   # 二级 employee: 13,200 / 9,000 = 1.4667, normal
        {"cost": 13200, "insurance_type": "resident"},     # 二级 resident: 13,200 / 6,000 = 2.2, high
        {"cost": 12000, "hospital_id": "H2"},              # 三级 employee: 12,000 / 10,000 = 1.2
        {"cost": 19000, "hospital_id": "H2", "insurance_type": "resident"},  # no row: group 9,500, 2.0
        {"cost": 13200, "insurance_type": None},           # no pool: no same-level row, group 9,500
    ]
    cases, grouped = make_inputs(rows)
    out = case_points(cases, grouped, HOSPITALS, pool_policy(), groups=GROUPS)
    assert out["ref_source"].to_pylist() == ["same_level", "same_level", "same_level", "group_avg", "group_avg"]
    assert out["ratio"].to_pylist() == [13200 / 9000, 2.2, 1.2, 2.0, 13200 / 9500]
    assert out["deviation"].to_pylist() == ["normal", "high", "normal", "normal", "normal"]
    # 1,225.27 × 0.90 = 1,102.743; 1,225.27 × (2.2 − 1) = 1,470.324; 1,225.27 × 1.00 = 1,225.27
    assert out["points_e4"].to_pylist() == [11_027_430, 14_703_240, 12_252_700, 12_252_700, 11_027_430]
    slow = case_points_reference(cases, grouped, HOSPITALS, pool_policy(), groups=GROUPS)
    assert [s["points_e4"] for s in slow] == out["points_e4"].to_pylist()
    assert [s["ref_source"] for s in slow] == out["ref_source"].to_pylist()
    # keyed by level only (today), the resident case takes the level's 9,000 and is normal
    by_level = case_points(cases, grouped, HOSPITALS, make_policy(), groups=GROUPS)
    assert by_level["ref_source"].to_pylist()[:2] == ["same_level", "same_level"]
    assert by_level["deviation"][1].as_py() == "normal" and by_level["points_e4"][1].as_py() == 11_027_430
    assert by_level["ref_source"][4].as_py() == "same_level"  # the level row serves every pool


def test_reference_table_must_match_reference_by():
    from dipengine.errors import DataError

    cases, grouped = make_inputs([{"cost": 9000}])
    with pytest.raises(DataError, match="same_level_avg, column 'pool': a pool column needs"):
        case_points(cases, grouped, HOSPITALS, make_policy(), SAME_LEVEL_POOL)
    with pytest.raises(DataError, match="same_level_avg, column 'pool': required column missing"):
        case_points(cases, grouped, HOSPITALS, pool_policy(), SAME_LEVEL)
    with pytest.raises(DataError, match="column 'pool'"):
        case_points_reference(cases, grouped, HOSPITALS, pool_policy(), SAME_LEVEL)
    bad = SAME_LEVEL_POOL.set_column(3, "pool", pa.array(["employee", "retired", "employee", "employee"]))
    with pytest.raises(DataError, match="value 'retired': pool must be employee or resident"):
        case_points(cases, grouped, HOSPITALS, pool_policy(), bad)


def test_coefficients_institution_overrides_and_basic_groups():
    rows = [
        {"cost": 10000, "hospital_id": "H2"},  # level 3 -> 1.00, same-level avg 10,000
        {"cost": 10000, "hospital_id": "H4"},  # level 2 but institution coefficient 0.95
        {"cost": 10000, "hospital_id": "H2", "match_path": "basic", "group_type": "basic", "dip_code": "GB"},
        {"cost": 10000, "hospital_id": "H4", "match_path": "basic", "group_type": "basic", "dip_code": "GB"},
        {"cost": 10000, "hospital_id": "H1", "aux": 1.2},
    ]
    doc = policy_doc()
    doc["level_coefficients"]["basic_group"] = 0.85
    policy = policy_from_dict(doc, SAME_LEVEL)
    out = case_points(*make_inputs(rows), HOSPITALS, policy, groups=GROUPS)
    assert out["level_coef"].to_pylist() == [1.0, 0.95, 0.85, 0.85, 0.9]
    assert out["case_points"][4].as_py() == round(1225.27 * 1.2 * 0.9, 4)
    # basic group GB has no same-level row: falls back to the rule set's avg_cost
    assert out["ref_source"].to_pylist()[2:4] == ["group_avg", "group_avg"]
    assert out["ratio"][2].as_py() == pytest.approx(10000 / 4000)


def test_blank_group_factor_and_rejected_rows():
    rows = [
        {"cost": 2500, "match_path": "blank", "dip_code": "BLANK", "score": 500.0},
        {"cost": 2500, "match_path": "rejected", "reason": "NO_GROUP"},
        {"cost": 2500, "match_path": "excluded", "reason": "EXCLUDED_DX"},
        {"cost": 2500, "hospital_id": "NOPE"},
    ]
    out = case_points(*make_inputs(rows), HOSPITALS, make_policy())
    assert out["case_points"].to_pylist() == [round(500 * 0.5 * 0.7, 4), 0.0, 0.0, 0.0]
    assert out.num_rows == 4 and out["case_id"].to_pylist() == ["C0", "C1", "C2", "C3"]
    assert out["deviation"].to_pylist()[1:] == [None, None, None]
    assert out["reason"].to_pylist() == [None, "NO_GROUP", "EXCLUDED_DX", "UNKNOWN_HOSPITAL"]
    assert out["match_path"].to_pylist() == ["blank", "rejected", "excluded", "rejected"]
    assert out["in_pool"].to_pylist() == [True, False, False, False]


@pytest.mark.parametrize("include,expect", [
    ("none", [True, False, False, False]),
    ("in_province", [True, True, False, False]),
    ("all", [True, True, True, False]),
])
def test_locality_and_pools(include, expect):
    rows = [
        {"cost": 9000, "insured_region": "440200"},
        {"cost": 9000, "insured_region": "440300", "insurance_type": "resident"},
        {"cost": 9000, "insured_region": "110100"},
        {"cost": 9000, "insurance_type": None},
    ]
    doc = policy_doc()
    doc["budget"]["include_remote"] = include
    out = case_points(*make_inputs(rows), HOSPITALS, policy_from_dict(doc, SAME_LEVEL))
    assert out["locality"].to_pylist() == ["local", "in_province", "cross_province", "local"]
    assert out["pool"].to_pylist() == ["employee", "resident", "employee", None]
    assert out["in_pool"].to_pylist() == expect
    # excluded remote cases keep their computed points (informative)
    assert out["case_points"].to_pylist() == [round(1225.27 * 0.9, 4)] * 4


def test_points_are_exact_fixed_point():
    out = case_points(*make_inputs([{"cost": 11000}] * 3), HOSPITALS, make_policy())
    assert out["points_e4"].to_pylist() == [11_027_430] * 3
    assert out["points_e4"].type == pa.int64()


def test_sum_kernels_exact_and_skip_negative_labels():
    labels = np.array([0, 1, -1, 1, 0], np.int32)
    values = np.array([2**53, 1, 99, 2, 1], np.int64)
    out = np.zeros(2, np.int64)
    sum_by_label(labels, values, out)
    assert out.tolist() == [2**53 + 1, 3]  # a float sum would lose the 1
    cnt = np.zeros(2, np.int64)
    count_by_label(labels, cnt)
    assert cnt.tolist() == [2, 2]


row_strategy = st.fixed_dictionaries({
    # half the costs sit exactly on a threshold of some reference (9,000 / 10,000 / 9,500 / 4,000 / 5,000)
    "cost": st.one_of(st.integers(0, 80000), st.sampled_from(
        [ref * k for ref in (9000, 10000, 9500, 4000, 5000, 6000) for k in (0.5, 2, 2.5, 3, 5)])),
    "hospital_id": st.sampled_from(["H1", "H2", "H3", "H4", "H1", "H2", "HX"]),
    "insurance_type": st.sampled_from(["employee", "resident", None]),
    "insured_region": st.sampled_from(["440200", "440300", "110100", None]),
    "match_path": st.sampled_from(["core", "basic", "comprehensive", "blank", "rejected", "excluded"]),
    "dip_code": st.sampled_from(["G1", "G1", "GB", "BLANK", "UNKNOWN"]),
    "score": st.floats(0.0, 5000.0, allow_nan=False),
    "aux": st.sampled_from([1.0, 1.15, 1.3]),
})
policy_strategy = st.fixed_dictionaries({
    "high_formula": st.sampled_from(["ratio_minus_1", "ratio_minus_2_plus_coef"]),
    "extreme_rule": st.sampled_from(["high_formula", "review_normal_pay"]),
    "apply_level_coef_to_outliers": st.booleans(),
    "low_inclusive": st.booleans(),
    "high_inclusive": st.booleans(),
    "reference_by": st.sampled_from(["level", "level_pool"]),
    "high_ratio": st.sampled_from([2.0, {"1": 2.0, "2": 2.5, "3": 3.0}]),
})


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row_strategy, min_size=1, max_size=25), dev=policy_strategy,
       include=st.sampled_from(["none", "in_province", "all"]))
def test_kernel_agrees_with_readable_twin(rows, dev, include):
    for r in rows:
        if r["match_path"] in ("basic", "blank"):
            r["group_type"] = r["match_path"]
    doc = policy_doc()
    doc["deviation"].update(dev)
    doc["budget"]["include_remote"] = include
    policy = policy_from_dict(doc, SAME_LEVEL_POOL if dev["reference_by"] == "level_pool" else SAME_LEVEL)
    cases, grouped = make_inputs(rows)
    fast = case_points(cases, grouped, HOSPITALS, policy, groups=GROUPS)
    slow = case_points_reference(cases, grouped, HOSPITALS, policy, groups=GROUPS)
    for i, s in enumerate(slow):
        assert fast["points_e4"][i].as_py() == s["points_e4"]
        assert fast["deviation"][i].as_py() == s["deviation"]
        assert fast["in_pool"][i].as_py() == s["in_pool"]
        assert fast["locality"][i].as_py() == s["locality"]
        assert fast["pool"][i].as_py() == s["pool"]
        assert fast["ref_source"][i].as_py() == s["ref_source"]
        r = fast["ratio"][i].as_py()
        assert (r is None and math.isnan(s["ratio"])) or r == s["ratio"]
