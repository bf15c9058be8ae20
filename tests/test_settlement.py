"""Point values, monthly pre-settlement, annual clearing, reconciliation and outputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dipengine.errors import DataError
from dipengine.policy import policy_from_dict
from dipengine.scoring import case_points
from dipengine.settlement import (
    clearing_amount,
    monthly_payment,
    parse_period,
    point_value_fen,
    read_monthly,
    settle_scored,
    total_cost_budget_fen,
)
from test_policy import policy_doc

YUAN = 100  # fen per yuan


def registry(n, *, assessment=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({
        "hospital_id": [f"H{i:03d}" for i in range(n)],
        "name": [f"h{i}" for i in range(n)],
        "level": pa.array(rng.integers(1, 4, n) if n > 1 else [3], pa.int8()),
        "region": ["440200"] * n,
        "coefficient": [float("nan")] * n,
        "assessment_coef": [assessment] * n if np.isscalar(assessment) else list(assessment),
    })


def same_level(codes=("G1",), avg_fen=1_000_000):
    return pa.table({"dip_code": [c for c in codes for _ in (1, 2, 3)],
                     "level": pa.array([lv for _ in codes for lv in (1, 2, 3)], pa.int8()),
                     "avg_cost_fen": pa.array([avg_fen] * 3 * len(codes), pa.int64())})


def make_policy(sla=None, **changes):
    doc = policy_doc()
    for key, value in changes.items():
        section, name = key.split("__")
        if value is None:
            doc[section].pop(name, None)
        else:
            doc[section][name] = value
    return policy_from_dict(doc, sla if sla is not None else same_level())


def scored_cases(hospital_id, score, cost_fen, patient_fen, fund_fen, hospitals, policy, *,
                 insurance_type=None, match_path=None, extra=None):
    """Cases of group G1 (same-level average 10,000 yuan) scored by case_points."""
    n = len(hospital_id)
    match_path = match_path if match_path is not None else ["core"] * n
    cases = {
        "case_id": [f"C{i}" for i in range(n)],
        "hospital_id": list(hospital_id),
        "insurance_type": insurance_type if insurance_type is not None else ["employee"] * n,
        "insured_region": ["440200"] * n,
        "total_cost_fen": pa.array(cost_fen, pa.int64()),
        "patient_paid_fen": pa.array(patient_fen, pa.int64()),
        "fund_paid_fen": pa.array(fund_fen, pa.int64()),
        "reason": [None if p != "rejected" else "BAD_AMOUNT" for p in match_path],
    }
    if extra:
        cases.update(extra)
    cases = pa.table(cases)
    rejected = [p in ("rejected", "excluded") for p in match_path]
    grouped = pa.table({
        "case_id": cases["case_id"], "dip_code": [None if r else "G1" for r in rejected],
        "dip_name": pa.nulls(n, pa.string()), "group_type": [None if r else "core" for r in rejected],
        "match_path": match_path, "treat_class": pa.nulls(n, pa.string()),
        "base_score": pa.array(np.where(rejected, 0.0, score), pa.float64()),
        "aux_subtype": pa.nulls(n, pa.string()), "aux_coef": [1.0] * n, "reason": cases["reason"],
        "reason_detail": pa.nulls(n, pa.string()),
    })
    return case_points(cases, grouped, hospitals, policy), cases


# ---- point values -----------------------------------------------------------------------------

def test_settlement_point_value_both_forms_give_8_00():
    """dip-rules §5.5: fund 6.3亿 at a 63% share, personal 3.7亿, 125,000,000 points."""
    fund, personal, total = 630_000_000 * YUAN, 370_000_000 * YUAN, 1_000_000_000 * YUAN
    points_e4 = 125_000_000 * 10_000
    t1 = total_cost_budget_fen("fund_over_share", fund, personal, fund, total)
    t2 = total_cost_budget_fen("fund_plus_personal", fund, personal, fund, total)
    assert t1 == t2 == 1_000_000_000 * YUAN
    assert point_value_fen(t1, points_e4) == 800.0  # 8.00 yuan per point


def test_fund_over_share_rounds_half_up_in_exact_integers():
    # 100 × 3 / 2 = 150 exactly; 1 × 1 / 2 = 0.5 -> 1; 1 × 1 / 3 = 0.33 -> 0
    assert total_cost_budget_fen("fund_over_share", 100, 0, 2, 3) == 150
    assert total_cost_budget_fen("fund_over_share", 1, 0, 2, 1) == 1
    assert total_cost_budget_fen("fund_over_share", 1, 0, 3, 1) == 0
    with pytest.raises(DataError):
        total_cost_budget_fen("fund_over_share", 1, 0, 0, 1)


# ---- clearing bands ---------------------------------------------------------------------------

@pytest.mark.parametrize("recorded,expect_fen,band", [
    (500_000, 900_000, "partial_retention"),   # 500k + 0.8 × 500k
    (800_000, 960_000, "partial_retention"),   # R = 0.80 belongs to the band ending at 0.80
    (900_000, 1_000_000, "pay_due"),
    (1_000_000, 1_000_000, "pay_due"),
    (1_050_000, 1_025_000, "share_overspend"),  # due + 0.5 × 50k
    (1_100_000, 1_050_000, "share_overspend"),  # R = 1.10 inclusive
    (1_500_000, 1_050_000, "cap"),              # due + 0.5 × 0.10 × due
])
def test_each_surplus_overspend_band(recorded, expect_fen, band):
    policy = make_policy()
    clearing, ratio, rule = clearing_amount(1_000_000, recorded, policy.bands)
    assert (clearing, rule) == (expect_fen, band)
    assert ratio == recorded / 1_000_000


def test_clearing_worked_example_11_042_000():
    """dip-rules §7.5 end to end: 2,000,000 points at 8.00, burden 5.2M, assessment 0.98."""
    n = 1000
    hospitals = registry(1, assessment=0.98)
    policy = make_policy(budget__employee=10_800_000, budget__reserve_rate=0.0)
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, [5_200 * YUAN] * n,
                             [11_500 * YUAN] * n, hospitals, policy)
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    assert res.manifest["pools"]["employee"]["point_value_yuan"] == 8.0
    row = res.hospitals.to_pylist()[0]
    assert row["points"] == 2_000_000
    assert row["standard_fen"] == 16_000_000 * YUAN
    assert row["fund_due_fen"] == 10_800_000 * YUAN
    assert row["fund_due_assessed_fen"] == 10_584_000 * YUAN
    assert row["ratio_R"] == pytest.approx(1.0865, abs=1e-4)
    assert row["band"] == "share_overspend"
    assert row["clearing_fen"] == 11_042_000 * YUAN
    assert row["final_fen"] == row["clearing_fen"]  # nothing paid monthly


# ---- monthly ----------------------------------------------------------------------------------

def test_monthly_points_method_worked_example():
    """dip-rules §7.2: 170,000 points × 8.39 − 460,000 = 966,300; × 95% = 917,985."""
    n = 85
    hospitals = registry(1)
    policy = make_policy()
    patient = [5_400 * YUAN] * (n - 1) + [460_000 * YUAN - (n - 1) * 5_400 * YUAN]
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, patient, [500_000] * n, hospitals, policy)
    res = settle_scored(sc, cases, hospitals, policy, "2027-03")
    row = res.hospitals.to_pylist()[0]
    assert row["standard_fen"] == 1_426_300 * YUAN
    assert row["patient_paid_fen"] == 460_000 * YUAN
    assert row["monthly_paid_fen"] == row["final_fen"] == 917_985 * YUAN
    assert row["deposit_fen"] == 48_315 * YUAN
    assert row["clearing_fen"] is None and row["band"] is None
    assert res.manifest["pools"]["employee"]["point_value_yuan"] == 8.39


def test_monthly_recorded_advance_method():
    hospitals = registry(1)
    policy = make_policy(settlement__monthly_method="recorded_advance")
    sc, cases = scored_cases(["H000"] * 3, 1000.0, [1_000_000] * 3, [0] * 3, [333_333] * 3, hospitals, policy)
    row = settle_scored(sc, cases, hospitals, policy, "2027-01").hospitals.to_pylist()[0]
    assert row["recorded_fen"] == 999_999
    assert row["monthly_paid_fen"] == 949_999  # 949,999.05 half up
    assert row["deposit_fen"] == 50_000


# ---- reconciliation on generated years --------------------------------------------------------

def generated_year(seed, n=3000, n_h=25, months=False):
    rng = np.random.default_rng(seed)
    hospitals = registry(n_h, assessment=rng.choice([0.95, 0.98, 1.0], n_h), seed=seed)
    hid = rng.integers(0, n_h, n)
    cost = rng.integers(100_000, 6_000_000, n)  # 1,000 to 60,000 yuan; average 10,000 -> all classes
    patient = (cost * rng.uniform(0.1, 0.5, n)).astype(np.int64)
    fund = cost - patient
    ins = rng.choice(["employee", "resident"], n)
    path = rng.choice(["core", "core", "core", "rejected"], n)
    score = rng.uniform(200, 3000, n).round(2)
    extra = {"month": rng.integers(1, 13, n)} if months else None
    return dict(hospital_id=[f"H{i:03d}" for i in hid], score=score, cost_fen=cost, patient_fen=patient,
                fund_fen=fund, hospitals=hospitals, insurance_type=list(ins), match_path=list(path),
                extra=extra)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("method", ["fund_plus_personal", "fund_over_share"])
def test_annual_reconciles_to_budget_exactly(seed, method):
    g = generated_year(seed)
    policy = make_policy(point_value__band=None, point_value__settlement_method=method,
                         budget__employee=12_345_678.91, budget__resident=7_654_321.09)
    sc, cases = scored_cases(g.pop("hospital_id"), g.pop("score"), g.pop("cost_fen"), g.pop("patient_fen"),
                             g.pop("fund_fen"), g["hospitals"], policy, **{k: g[k] for k in ("insurance_type", "match_path")})
    res = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    st = res.hospitals
    for pool in ("employee", "resident"):
        rows = [r for r in st.to_pylist() if r["pool"] == pool]
        info = res.manifest["pools"][pool]
        assert info["reconciled_to_budget"]
        assert sum(r["standard_fen"] for r in rows) == info["total_cost_budget_fen"]
        if method == "fund_plus_personal":
            assert sum(r["fund_due_fen"] for r in rows) == policy.fund_available_fen(pool)
        # statements cover exactly the in-pool cases
        in_pool = np.asarray(sc["in_pool"]) & (np.asarray(sc["pool"].to_pylist(), dtype=object) == pool)
        assert sum(r["n_cases"] for r in rows) == int(in_pool.sum())
        assert sum(r["points_e4"] for r in rows) == int(np.asarray(sc["points_e4"])[in_pool].sum())
        # case-level standards differ from the reconciled figure by rounding only
        assert abs(info["case_minus_hospital_standard_fen"]) <= len(rows) + in_pool.sum() // 2
    assert sum(r["n_rejected"] for r in st.to_pylist()) == int((np.asarray(sc["match_path"]) == "rejected").sum())
    # Σ standard over all pools equals the total-cost budget to the fen
    assert pa.compute.sum(st["standard_fen"]).as_py() == sum(
        res.manifest["pools"][p]["total_cost_budget_fen"] for p in ("employee", "resident"))


def test_band_clamp_stops_reconciliation():
    g = generated_year(7, n=500, n_h=5)
    # a tiny budget drives the raw value far below 0.9 × 8.39
    policy = make_policy(budget__employee=1000, budget__resident=1000)
    sc, cases = scored_cases(g.pop("hospital_id"), g.pop("score"), g.pop("cost_fen"), g.pop("patient_fen"),
                             g.pop("fund_fen"), g["hospitals"], policy, insurance_type=g["insurance_type"])
    res = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    info = res.manifest["pools"]["employee"]
    assert info["clamped"] and not info["reconciled_to_budget"]
    assert info["point_value_yuan"] == pytest.approx(0.9 * 8.39)
    for r in res.hospitals.to_pylist():
        if r["pool"] == "employee":
            assert r["standard_fen"] == int(np.floor(r["points_e4"] * 0.9 * 839 / 10000 + 0.5))


# ---- monthly then annual ----------------------------------------------------------------------

def test_monthly_then_annual_transfers_add_up(tmp_path):
    g = generated_year(11, n=2400, n_h=8, months=True)
    policy = make_policy(point_value__band=None)
    hospitals = g["hospitals"]
    sc, cases = scored_cases(g["hospital_id"], g["score"], g["cost_fen"], g["patient_fen"], g["fund_fen"],
                             hospitals, policy, insurance_type=g["insurance_type"],
                             match_path=g["match_path"], extra=g["extra"])
    month = np.asarray(cases["month"])
    dirs = []
    for m in range(1, 13):
        idx = pa.array(np.flatnonzero(month == m))
        res = settle_scored(sc.take(idx), cases.take(idx), hospitals, policy, f"2027-{m:02d}")
        dirs.append(res.write(tmp_path / f"2027-{m:02d}"))
    paid = read_monthly(dirs, 2027)
    annual = settle_scored(sc, cases, hospitals, policy, "2027", monthly=paid)
    for r in annual.hospitals.to_pylist():
        m_paid, m_dep = paid.get((r["hospital_id"], r["pool"]), (0, 0))
        assert r["monthly_paid_fen"] == m_paid and r["deposit_fen"] == m_dep
        # what was paid monthly plus what the clearing transfers now is the clearing amount
        assert m_paid + r["final_fen"] == r["clearing_fen"]
        assert m_dep > 0
    total_paid = sum(v[0] for v in paid.values()) + pa.compute.sum(annual.hospitals["final_fen"]).as_py()
    assert total_paid == pa.compute.sum(annual.hospitals["clearing_fen"]).as_py()
    with pytest.raises(DataError, match="given twice"):
        read_monthly(dirs + [dirs[0]], 2027)
    with pytest.raises(DataError, match="not a monthly statement of 2026"):
        read_monthly(dirs[:1], 2026)


# ---- outputs ----------------------------------------------------------------------------------

def test_outputs_written_atomically_and_complete(tmp_path):
    g = generated_year(5, n=300, n_h=4)
    policy = make_policy()
    sc, cases = scored_cases(g["hospital_id"], g["score"], g["cost_fen"], g["patient_fen"], g["fund_fen"],
                             g["hospitals"], policy, insurance_type=g["insurance_type"], match_path=g["match_path"],
                             extra={"ward": [f"w{i % 3}" for i in range(300)]})
    res = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    out = res.write(tmp_path / "annual")
    assert sorted(p.name for p in out.iterdir()) == [".dipengine-output", "cases.parquet", "hospitals.csv",
                                                     "hospitals.parquet", "manifest.json", "special_review.parquet"]
    back = pq.read_table(out / "cases.parquet")
    assert back["case_id"].to_pylist() == cases["case_id"].to_pylist()  # every row, in order
    for col in ("hospital_id", "level", "locality", "ratio", "deviation", "level_coef", "case_points",
                "standard_fen", "patient_paid_fen", "fund_due_fen", "fund_paid_fen", "pool", "ward"):
        assert col in back.column_names
    rejected = np.asarray(back["match_path"]) == "rejected"
    assert (np.asarray(back["standard_fen"])[rejected] == 0).all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["cases"] == 300
    assert sum(m["counts"]["match_path"].values()) == 300
    assert m["sums"]["hospitals"]["standard_fen"] == pa.compute.sum(res.hospitals["standard_fen"]).as_py()
    assert set(m["pools"]) == {"employee", "resident"}
    # same inputs, same outputs
    again = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    assert again.cases.equals(res.cases) and again.hospitals.equals(res.hospitals)
    assert again.manifest == res.manifest


def test_failed_write_leaves_previous_output(tmp_path):
    g = generated_year(5, n=50, n_h=2)
    policy = make_policy()
    sc, cases = scored_cases(g["hospital_id"], g["score"], g["cost_fen"], g["patient_fen"], g["fund_fen"],
                             g["hospitals"], policy)
    res = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    out = res.write(tmp_path / "run")
    before = (out / "manifest.json").read_text()
    res.manifest["bad"] = object()  # not JSON-serialisable: the write fails part-way
    with pytest.raises(TypeError):
        res.write(tmp_path / "run")
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_period_parsing():
    assert parse_period("2027") == ("annual", 2027, None)
    assert parse_period("2027-03") == ("monthly", 2027, 3)
    for bad in ("2027-13", "27", "2027/03"):
        with pytest.raises(DataError):
            parse_period(bad)


# ---- estimate mode: computed benefits stand in for missing payments (issue 6 item 2) -----------

BENEFIT_GROUPS = [
    {"dip_code": "G1", "dip_name": "appendicitis: appendectomy", "group_type": "core", "dx_key": "K35.8",
     "proc_expr": "47.0100", "treat_class": "surgery", "score": 1300.0, "avg_cost": 10400.0, "n_cases": 50},
    {"dip_code": "BLANK", "dip_name": "blank", "group_type": "blank", "dx_key": "", "proc_expr": "",
     "treat_class": "conservative", "score": 1000.0, "avg_cost": 8000.0, "n_cases": 10},
]


def benefit_region(tmp_path, n=400, seed=3, *, paid="none", benefits=True, other=False):
    """Rule set, pricing dir (with the demo benefits.csv), registry and a CSV of ``n`` cases.

    ``paid``: ``"none"`` (no fund_paid/patient_paid columns), ``"all"`` (both recorded) or
    ``"some"`` (recorded on about half of the rows, null elsewhere). ``other``: an
    ``other_fund_paid`` column, 100 yuan on about a third of the rows (with ``paid="none"``).
    """
    from importlib import resources

    from dipengine.io import write_table
    from dipengine.rules import write_rule_set
    from test_policy import POLICY_TOML

    rules = write_rule_set(tmp_path / "rules", {"groups.csv": BENEFIT_GROUPS},
                           {"name": "t", "version": "1", "scheme": "test", "source": "test"})
    pricing = tmp_path / "pricing"
    pricing.mkdir()
    (pricing / "policy.toml").write_text(POLICY_TOML.replace("band = [0.9, 1.1]\n", ""), encoding="utf-8")
    (pricing / "same_level_avg.csv").write_text("dip_code,level,avg_cost\nG1,2,9000\nG1,3,10400\n",
                                                encoding="utf-8")
    if benefits:
        (pricing / "benefits.csv").write_bytes(
            (resources.files("dipengine.data") / "benefits_demo.csv").read_bytes())
    (tmp_path / "hospitals.csv").write_text(
        "hospital_id,name,level,region\nH1,a,3,440200\nH2,b,2,440200\nH3,c,1,440200\nH4,d,3,440300\n",
        encoding="utf-8")
    rng = np.random.default_rng(seed)
    total = (rng.lognormal(9.2, 0.5, n) * 100).astype(np.int64)
    fund = total * rng.uniform(0.5, 0.8, n)
    fund = fund.astype(np.int64)
    cols = {
        "case_id": [f"c{i}" for i in range(n)],
        "hospital_id": [f"H{k}" for k in rng.integers(1, 5, n)],
        "patient_id": [f"p{k}" for k in rng.integers(0, n // 3, n)],
        "insurance_type": rng.choice(["employee", "resident"], n).tolist(),
        "person_type": rng.choice(["in_service", "retired", "other"], n).tolist(),
        "insured_region": rng.choice(["440200"] * 8 + ["440300", "999999"], n).tolist(),
        "age": rng.integers(1, 90, n).tolist(),
        "admit_date": ["2027-05-01"] * n,
        "discharge_date": [f"2027-{m:02d}-20" for m in rng.integers(5, 13, n)],
        "main_dx": rng.choice(["K35.800", "K35.800", "R10.400", "bad"], n).tolist(),
        "main_proc": rng.choice(["47.0100", None], n).tolist(),
        "total_cost": [f"{t // 100}.{t % 100:02d}" for t in total],
        "class_b_cost": [f"{t // 1000}" for t in total],
    }
    if paid != "none":
        keep = np.ones(n, bool) if paid == "all" else rng.random(n) < 0.5
        cols["fund_paid"] = [f"{f / 100:.2f}" if k else None for f, k in zip(fund, keep)]
        cols["patient_paid"] = [f"{(t - f) / 100:.2f}" if k else None for t, f, k in zip(total, fund, keep)]
    if other:
        cols["other_fund_paid"] = ["100.00" if k else None for k in rng.random(n) < 0.33]
    write_table(pa.table(cols), tmp_path / "cases.csv")
    return {"rules": rules, "pricing": pricing, "hospitals": tmp_path / "hospitals.csv",
            "cases": tmp_path / "cases.csv"}


def test_apply_benefits_fills_in_only_missing_payments(tmp_path):
    from dipengine.benefits import compute_benefits, load_benefits
    from dipengine.hospitals import read_hospitals
    from dipengine.reader import read_cases
    from dipengine.settlement import apply_benefits

    r = benefit_region(tmp_path, paid="some")
    hosp = read_hospitals(r["hospitals"])
    cases = read_cases(r["cases"], hosp)
    rules = load_benefits(r["pricing"])
    out = apply_benefits(cases, rules, hosp)
    ben = compute_benefits(cases, rules, hosp).to_pylist()
    assert out.num_rows == cases.num_rows and out["case_id"].equals(cases["case_id"])
    names = out.column_names
    assert names.index("paid_source") == names.index("reason_detail") + 1
    sources = set()
    for before, after, b in zip(cases.to_pylist(), out.to_pylist(), ben):
        recorded = before["fund_paid_fen"] is not None and before["patient_paid_fen"] is not None
        sources.add(after["paid_source"])
        assert after["fund_benefit_fen"] == b["fund_benefit_fen"] and after["benefit_note"] == b["benefit_note"]
        if recorded:
            assert after["paid_source"] == "recorded"
            assert (after["fund_paid_fen"], after["patient_paid_fen"]) == (before["fund_paid_fen"],
                                                                           before["patient_paid_fen"])
            if b["fund_benefit_fen"] is not None:
                assert after["fund_diff_fen"] == before["fund_paid_fen"] - b["fund_benefit_fen"]
        elif before["reason"] is None and b["benefit_note"] is None:
            assert after["paid_source"] == "estimated"
            assert after["fund_paid_fen"] == b["fund_benefit_fen"]
            assert after["patient_paid_fen"] == b["patient_share_fen"]
            assert after["fund_paid_fen"] + after["patient_paid_fen"] == before["total_cost_fen"]
        else:  # rejected, or no rule for the case (999999 has no table): nothing is invented
            assert after["paid_source"] == "none"
            assert after["fund_paid_fen"] is None and after["patient_paid_fen"] is None
    assert sources == {"recorded", "estimated", "none"}


@pytest.mark.parametrize("method", ["fund_plus_personal", "fund_over_share"])
def test_settle_estimate_mode_reconciles_to_the_budget(tmp_path, method):
    """No payments in the input: the computed shares stand in, and invariant §8.4 still holds."""
    from dipengine.settlement import settle

    r = benefit_region(tmp_path, paid="none")
    if method != "fund_plus_personal":
        path = r["pricing"] / "policy.toml"
        path.write_text(path.read_text().replace('"fund_plus_personal"', f'"{method}"'), encoding="utf-8")
    res = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027")
    t = res.cases
    assert t.num_rows == 400 and "paid_source" in t.column_names
    rows = t.to_pylist()
    est = [x for x in rows if x["paid_source"] == "estimated"]
    assert est and {x["paid_source"] for x in rows} <= {"estimated", "none"}
    assert all(x["fund_diff_fen"] is None for x in rows)       # nothing recorded, nothing to compare
    for pool in POOLS_:
        info = res.manifest["pools"][pool]
        mine = [x for x in rows if x["pool"] == pool and x["in_pool"]]
        assert info["n_paid_estimated"] == sum(x["paid_source"] == "estimated" for x in mine) > 0
        assert info["patient_paid_fen"] == sum(x["patient_paid_fen"] or 0 for x in mine)
        assert info["recorded_fen"] == sum(x["fund_paid_fen"] or 0 for x in mine)
        st = [x for x in res.hospitals.to_pylist() if x["pool"] == pool]
        assert info["reconciled_to_budget"]
        assert sum(x["standard_fen"] for x in st) == info["total_cost_budget_fen"]
        if method == "fund_plus_personal":
            assert sum(x["fund_due_fen"] for x in st) == info["fund_available_fen"]
    m = res.manifest
    assert sum(m["counts"]["paid_source"].values()) == 400
    assert m["sums"]["cases"]["fund_benefit_fen"] == sum(x["fund_benefit_fen"] or 0 for x in rows)
    assert list(m["sha256"]["benefits"]) == [str(r["pricing"] / "benefits.csv")]


POOLS_ = ("employee", "resident")


def test_settle_with_recorded_payments_reports_the_difference(tmp_path):
    from dipengine.settlement import settle

    r = benefit_region(tmp_path, paid="all")
    res = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027")
    off = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027", benefits=False)
    rows = res.cases.to_pylist()
    assert {x["paid_source"] for x in rows} == {"recorded"}
    # the settlement itself is unchanged: only the comparison columns are added
    for name in off.cases.column_names:
        assert res.cases[name].equals(off.cases[name]), name
    assert res.hospitals.equals(off.hospitals)
    assert not {"paid_source", "fund_diff_fen"} & set(off.cases.column_names)
    diff = [x["fund_paid_fen"] - x["fund_benefit_fen"] for x in rows if x["fund_benefit_fen"] is not None]
    assert [x["fund_diff_fen"] for x in rows if x["fund_benefit_fen"] is not None] == diff
    assert res.manifest["sums"]["cases"]["fund_diff_fen"] == sum(diff)
    assert "fund_diff_fen" not in off.manifest["sums"]["cases"]


def test_settle_without_a_benefits_table_is_unchanged(tmp_path):
    from dipengine.settlement import settle

    r = benefit_region(tmp_path, paid="none", benefits=False)
    res = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027")
    assert "paid_source" not in res.cases.column_names and res.manifest["parameters"]["benefits"] is None
    assert pa.compute.sum(res.cases["patient_paid_fen"]).as_py() is None   # absent payments count as 0
    # an explicit table from elsewhere switches estimate mode on
    from importlib import resources

    demo = str(resources.files("dipengine.data") / "benefits_demo.csv")
    res = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027", benefits=[demo])
    assert "estimated" in res.manifest["counts"]["paid_source"]


def test_cli_settle_estimate_mode(tmp_path, capsys):
    from dipengine.cli import main

    r = benefit_region(tmp_path, n=60, paid="some")
    args = ["settle", "--rules", str(r["rules"]), "--pricing", str(r["pricing"]), "--hospitals",
            str(r["hospitals"]), "--input", str(r["cases"]), "--period", "2027"]
    assert main(args + ["--out", str(tmp_path / "on")]) == 0
    text = capsys.readouterr().out
    assert "payments by source" in text and "estimated" in text
    assert "paid_source" in pq.read_table(tmp_path / "on" / "cases.parquet").column_names
    assert main(args + ["--out", str(tmp_path / "off"), "--no-benefits"]) == 0
    assert "payments by source" not in capsys.readouterr().out
    assert "paid_source" not in pq.read_table(tmp_path / "off" / "cases.parquet").column_names
    assert main(args + ["--out", str(tmp_path / "x"), "--benefits", str(tmp_path / "nowhere")]) == 2
    assert main(args + ["--out", str(tmp_path / "x"), "--benefits", str(r["pricing"]), "--no-benefits"]) == 2


def test_resolve_benefits_reads_each_table_once(tmp_path):
    from dipengine.policy import load_policy
    from dipengine.settlement import resolve_benefits

    r = benefit_region(tmp_path, n=10)
    policy = load_policy(r["pricing"])
    assert resolve_benefits(False, policy) is None
    own = resolve_benefits(None, policy)
    assert list(own.files) == [str(r["pricing"] / "benefits.csv")]
    again = resolve_benefits([r["pricing"], r["pricing"] / "benefits.csv"], policy)
    assert again.files == own.files and resolve_benefits(own, policy) is own


# ---- other funds (大额, 大病, 公务员补助, 医疗救助): issue 14 --------------------------------------

def other_funds(values):
    return {"other_fund_paid_fen": pa.array(values, pa.int64())}


def test_total_cost_budget_adds_the_other_funds():
    # fund_plus_personal: T = F + patients + other funds; fund_over_share: F x total / pooled fund
    assert total_cost_budget_fen("fund_plus_personal", 1000, 300, 600, 1000, 100) == 1400
    assert total_cost_budget_fen("fund_plus_personal", 1000, 300, 600, 1000) == 1300
    assert total_cost_budget_fen("fund_over_share", 1000, 300, 600, 1000, 100) == \
        total_cost_budget_fen("fund_over_share", 1000, 300, 600, 1000) == 1667


def test_monthly_payment_takes_off_the_other_funds():
    """dip-rules §7.2 A: (points x value − patient burden − other funds) x 95 %."""
    policy = make_policy()
    # 1,426,300 − 400,000 − 60,000 = 966,300 -> 917,985 paid, 48,315 withheld
    assert monthly_payment(1_426_300 * YUAN, 400_000 * YUAN, 0, policy, other_fund_paid_fen=60_000 * YUAN) == \
        (917_985 * YUAN, 48_315 * YUAN)
    assert monthly_payment(1_426_300 * YUAN, 460_000 * YUAN, 0, policy) == (917_985 * YUAN, 48_315 * YUAN)


def test_monthly_statement_with_other_funds_worked_example():
    """The §7.2 month with the burden of 460,000 split: patients 400,000, other funds 60,000."""
    n = 85
    hospitals = registry(1)
    policy = make_policy()
    patient = [4_000 * YUAN] * (n - 1) + [400_000 * YUAN - (n - 1) * 4_000 * YUAN]
    other = [600 * YUAN] * (n - 1) + [60_000 * YUAN - (n - 1) * 600 * YUAN]
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, patient, [500_000] * n, hospitals, policy,
                             extra=other_funds(other))
    res = settle_scored(sc, cases, hospitals, policy, "2027-03")
    row = res.hospitals.to_pylist()[0]
    assert row["standard_fen"] == 1_426_300 * YUAN
    assert (row["patient_paid_fen"], row["other_fund_paid_fen"]) == (400_000 * YUAN, 60_000 * YUAN)
    assert row["fund_due_fen"] == 966_300 * YUAN
    assert row["monthly_paid_fen"] == row["final_fen"] == 917_985 * YUAN
    assert row["deposit_fen"] == 48_315 * YUAN


def test_annual_worked_example_with_other_funds():
    """dip-rules §7.5 with the burden of 5.2M split: patients 4.7M, other funds 0.5M.

    The total-cost budget is fund + patients + other funds = 16.0M, so the value stays 8.00 and
    the fund due is 10.8M, the fund budget, to the fen.
    """
    n = 1000
    hospitals = registry(1, assessment=0.98)
    policy = make_policy(budget__employee=10_800_000, budget__reserve_rate=0.0, point_value__band=None)
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, [4_700 * YUAN] * n, [11_500 * YUAN] * n,
                             hospitals, policy, extra=other_funds([500 * YUAN] * n))
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    info = res.manifest["pools"]["employee"]
    assert info["total_cost_budget_fen"] == 16_000_000 * YUAN
    assert info["other_fund_paid_fen"] == 500_000 * YUAN
    assert info["point_value_yuan"] == 8.0
    row = res.hospitals.to_pylist()[0]
    assert row["standard_fen"] == 16_000_000 * YUAN
    assert row["other_fund_paid_fen"] == 500_000 * YUAN
    assert row["fund_due_fen"] == 10_800_000 * YUAN == policy.fund_available_fen("employee")
    assert row["clearing_fen"] == 11_042_000 * YUAN
    c = res.cases.to_pylist()[0]
    assert c["fund_due_fen"] == c["standard_fen"] - 4_700 * YUAN - 500 * YUAN == 10_800 * YUAN


def test_case_and_statement_columns_with_other_funds():
    hospitals = registry(2)
    policy = make_policy(point_value__band=None)
    other = [10_000, None, 0, 25_000, 7]
    sc, cases = scored_cases(["H000", "H000", "H001", "H001", "H001"], 1000.0, [1_000_000] * 5, [200_000] * 5,
                             [700_000] * 5, hospitals, policy, match_path=["core"] * 4 + ["rejected"],
                             extra=other_funds(other))
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    names = res.cases.column_names
    assert names.index("other_fund_paid_fen") == names.index("patient_paid_fen") + 1
    assert names.index("fund_due_fen") == names.index("other_fund_paid_fen") + 1
    assert res.cases["other_fund_paid_fen"].to_pylist() == other  # as recorded, nulls kept
    for c, o in zip(res.cases.to_pylist(), other):
        if c["in_pool"]:
            assert c["fund_due_fen"] == c["standard_fen"] - c["patient_paid_fen"] - (o or 0)
        else:
            assert c["fund_due_fen"] == 0
    st = res.hospitals
    assert st.column_names.index("other_fund_paid_fen") == st.column_names.index("patient_paid_fen") + 1
    by_h = {r["hospital_id"]: r for r in st.to_pylist()}
    assert by_h["H000"]["other_fund_paid_fen"] == 10_000
    assert by_h["H001"]["other_fund_paid_fen"] == 25_000  # the rejected case's 7 fen is not in it
    for r in st.to_pylist():
        assert r["fund_due_fen"] == r["standard_fen"] - r["patient_paid_fen"] - r["other_fund_paid_fen"]
    sums = res.manifest["sums"]
    assert sums["cases"]["other_fund_paid_fen"] == 35_007
    assert sums["hospitals"]["other_fund_paid_fen"] == 35_000
    assert res.manifest["pools"]["employee"]["other_fund_paid_fen"] == 35_000


def test_without_the_column_other_funds_are_zero():
    hospitals = registry(1)
    policy = make_policy()
    sc, cases = scored_cases(["H000"] * 2, 1000.0, [1_000_000] * 2, [300_000] * 2, [700_000] * 2, hospitals, policy)
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    assert res.cases["other_fund_paid_fen"].null_count == 2
    assert res.hospitals["other_fund_paid_fen"].to_pylist() == [0]


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("method", ["fund_plus_personal", "fund_over_share"])
def test_annual_reconciles_exactly_with_other_funds(seed, method):
    """Contract §8 invariant 4 with other funds: Σ standard = total-cost budget and (floating
    fund_plus_personal) Σ fund due = fund budget, both to the fen."""
    g = generated_year(seed)
    rng = np.random.default_rng(seed + 100)
    n = len(g["cost_fen"])
    other = (g["patient_fen"] * rng.uniform(0, 0.6, n)).astype(np.int64)  # part of the burden is other funds
    other = np.where(rng.random(n) < 0.3, other, 0)
    patient = g["patient_fen"] - other
    other_col = pa.array(other, pa.int64(), mask=rng.random(n) < 0.1 * (other == 0))  # a few nulls
    policy = make_policy(point_value__band=None, point_value__settlement_method=method,
                         budget__employee=12_345_678.91, budget__resident=7_654_321.09)
    sc, cases = scored_cases(g["hospital_id"], g["score"], g["cost_fen"], patient, g["fund_fen"], g["hospitals"],
                             policy, insurance_type=g["insurance_type"], match_path=g["match_path"],
                             extra={"other_fund_paid_fen": other_col})
    res = settle_scored(sc, cases, g["hospitals"], policy, "2027")
    pool_of = np.asarray(sc["pool"].to_pylist(), dtype=object)
    in_pool = np.asarray(sc["in_pool"])
    total_budget = 0
    for pool in ("employee", "resident"):
        rows = [r for r in res.hospitals.to_pylist() if r["pool"] == pool]
        info = res.manifest["pools"][pool]
        mine = in_pool & (pool_of == pool)
        O, P = int(other[mine].sum()), int(patient[mine].sum())
        assert O > 0 and info["other_fund_paid_fen"] == O == sum(r["other_fund_paid_fen"] for r in rows)
        assert info["reconciled_to_budget"]
        F = policy.fund_available_fen(pool)
        if method == "fund_plus_personal":
            assert info["total_cost_budget_fen"] == F + P + O
        assert sum(r["standard_fen"] for r in rows) == info["total_cost_budget_fen"]
        due = sum(r["fund_due_fen"] for r in rows)
        assert due == info["total_cost_budget_fen"] - P - O
        if method == "fund_plus_personal":
            assert due == F  # the fund budget, to the fen
        total_budget += info["total_cost_budget_fen"]
    assert pa.compute.sum(res.hospitals["standard_fen"]).as_py() == total_budget


def test_estimate_mode_keeps_recorded_other_funds(tmp_path):
    """Cases without fund/patient payments but with other funds: the computed patient share is net
    of the other funds, which stay as recorded; fund + patient + other = total; §8.4 holds."""
    from dipengine.settlement import settle

    r = benefit_region(tmp_path, paid="none", other=True)
    res = settle(r["cases"], r["rules"], r["pricing"], r["hospitals"], "2027")
    rows = res.cases.to_pylist()
    est = [x for x in rows if x["paid_source"] == "estimated"]
    with_other = [x for x in est if x["other_fund_paid_fen"]]
    assert with_other and len(with_other) < len(est)
    from dipengine.reader import read_cases

    read = read_cases(r["cases"])
    totals = dict(zip(read["case_id"].to_pylist(), read["total_cost_fen"].to_pylist()))
    for x in est:
        total = totals[x["case_id"]]
        assert x["fund_paid_fen"] + x["patient_paid_fen"] + (x["other_fund_paid_fen"] or 0) == total
        if x["in_pool"]:
            assert x["fund_due_fen"] == x["standard_fen"] - x["patient_paid_fen"] - (x["other_fund_paid_fen"] or 0)
    for x in with_other:
        assert x["other_fund_paid_fen"] == 10_000  # as recorded (100 yuan)
    for pool in POOLS_:
        info = res.manifest["pools"][pool]
        st = [x for x in res.hospitals.to_pylist() if x["pool"] == pool]
        assert info["other_fund_paid_fen"] > 0
        assert sum(x["standard_fen"] for x in st) == info["total_cost_budget_fen"] == \
            info["fund_available_fen"] + info["patient_paid_fen"] + info["other_fund_paid_fen"]
        assert sum(x["fund_due_fen"] for x in st) == info["fund_available_fen"]


def test_totals_payments_added_later_equal_one_add():
    """Totals.add(payments=False) + add_payments (what estimate mode does per benefit partition,
    rows in any order) equals Totals.add with the payments, sum for sum and count for count."""
    import pyarrow.compute as pc

    from dipengine.pipeline import prepare, score_batch
    from dipengine.policy import resolve_pricing_dir
    from dipengine.reader import read_cases
    from dipengine.rules import resolve_rules_dir
    from dipengine.settlement import Totals, apply_benefits, payment_labels
    from dipengine.synth import synth_region

    cases, hospitals = synth_region(2026, 600, seed=5, bad_rows=0.05)
    n = cases.num_rows
    unpaid = pa.array(np.arange(n) % 7 == 3)
    cases = cases.set_column(cases.schema.get_field_index("fund_paid"), "fund_paid",
                             pc.if_else(unpaid, pa.nulls(n, cases["fund_paid"].type), cases["fund_paid"]))
    run = prepare(str(resolve_rules_dir("demo")), str(resolve_pricing_dir("440200/2026")), hospitals, "2026")
    t = apply_benefits(read_cases(cases, run.hospitals, period="2026"), run.benefit_rules, run.hospitals)
    scored = score_batch(t, run)
    one = Totals(len(run.hosp_ids), benefits=True).add(scored, t, run.hosp_ids)
    later = Totals(len(run.hosp_ids), benefits=True)
    for a in (0, 250):  # two batches, payments added in reverse row order
        b = 250 if a == 0 else n
        later.add(scored.slice(a, b - a), t.slice(a, b - a), run.hosp_ids, payments=False)
    label, pool = payment_labels(scored, run.hosp_ids)
    rev = np.arange(n)[::-1]
    later.add_payments(t.take(pa.array(rev)), label[rev], pool[rev])
    assert one.counts["paid_source"].get("estimated", 0) > 0
    for k in one.labels:
        assert np.array_equal(one.labels[k], later.labels[k]), k
    assert one.case_sums == later.case_sums and one.counts == later.counts
    assert np.array_equal(one.n_paid_estimated, later.n_paid_estimated)
    assert (one.cases, one.in_pool, one.special_review, one.without_statement) == \
        (later.cases, later.in_pool, later.special_review, later.without_statement)
    with pytest.raises(ValueError, match="labels must lie"):
        later.add_payments(t.slice(0, 1), np.array([10**6], np.int32), np.array([0], np.int32))
    with pytest.raises(ValueError, match="1 rows but 2 labels"):
        later.add_payments(t.slice(0, 1), np.array([0, 0], np.int32), np.array([0], np.int32))
