"""Single-case estimates: the worked examples of dip-rules §6.4/§6.6 end to end, bad cases, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from dipengine.estimate import Estimator
from dipengine.rules import write_rule_set

# the contract §5 example policy, without the band clamp and with the worked examples' value 8.00
POLICY = ((Path(__file__).parent / "data" / "contract_policy.toml").read_text(encoding="utf-8")
          .replace("band = [0.9, 1.1]\n", "").replace("budget_value = 8.39", "budget_value = 8.00"))
# dip-rules §6.6: bill 11,000, patient burden 3,300 (fund records 7,700): no deductible, 70 %
BENEFITS = """insured_region,insurance_type,person_type,level,locality,filing,deductible,deductible_repeat,band_upper,ratio,annual_cap,class_b_self_rate
440200,employee,*,2,local,*,0,0,,0.7,500000,0
440200,employee,*,3,in_province,*,1000,500,,0.85,9000,0.1
"""
GROUPS = [
    {"dip_code": "G1", "dip_name": "appendicitis: appendectomy", "group_type": "core", "dx_key": "K35.8",
     "proc_expr": "47.0100", "treat_class": "surgery", "score": 1225.27, "avg_cost": 9800.0, "n_cases": 40},
    {"dip_code": "G2", "dip_name": "appendicitis: conservative", "group_type": "core", "dx_key": "K35.8",
     "proc_expr": "", "treat_class": "conservative", "score": 500.0, "avg_cost": 4000.0, "n_cases": 40},
]
HOSPITALS = "hospital_id,name,level,region\nH2,second,2,440200\nP3,shenzhen,3,440300\n"
CASE = {"case_id": "n1", "hospital_id": "H2", "patient_id": "p", "insurance_type": "employee",
        "insured_region": "440200", "sex": "F", "age": 34, "admit_date": "2027-04-01",
        "discharge_date": "2027-04-06", "main_dx": " k35.800X001", "main_proc": "47.0100",
        "total_cost": "11000.00"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("est")
    write_rule_set(d / "rules", {"groups.csv": GROUPS},
                   {"name": "t", "version": "1", "scheme": "test", "source": "test fixture"})
    pricing = d / "pricing"
    pricing.mkdir()
    (pricing / "policy.toml").write_text(POLICY, encoding="utf-8")
    (pricing / "same_level_avg.csv").write_text("dip_code,level,avg_cost\nG1,2,9000\n", encoding="utf-8")
    (pricing / "benefits.csv").write_text(BENEFITS, encoding="utf-8")
    (d / "hospitals.csv").write_text(HOSPITALS, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def est(setup):
    return Estimator(setup / "rules", setup / "pricing", setup / "hospitals.csv")


def test_normal_case_worked_example(est):
    r = est.estimate(CASE)
    assert r["dip_code"] == "G1" and r["match_path"] == "core" and r["reason"] is None
    assert r["level_coef"] == 0.9 and r["deviation"] == "normal"
    assert r["case_points"] == pytest.approx(1102.7430)
    assert r["point_value"] == 8.0
    assert r["standard_fen"] == 882_194           # 8,821.94 yuan
    assert r["patient_share_fen"] == 330_000      # 3,300
    assert r["fund_benefit_fen"] == 770_000       # 7,700 booked by the fund
    assert r["fund_due_fen"] == 552_194           # 5,521.94
    assert json.loads(json.dumps(r, ensure_ascii=False)) == r
    assert any("G1" in line for line in r["trace"]) and any("benefits" in line for line in r["trace"])


def test_high_and_low_deviation(est):
    high = est.estimate({**CASE, "total_cost": "25000"})
    assert high["deviation"] == "high"
    ratio = 25000 / 9000
    assert high["ratio"] == pytest.approx(ratio)
    assert high["case_points"] == pytest.approx(math.floor(1225.27 * (ratio - 1) * 10000 + 0.5) / 10000)
    low = est.estimate({**CASE, "total_cost": "3600"})
    assert low["deviation"] == "low" and low["case_points"] == pytest.approx(490.108)


def test_point_value_override_and_earlier_admissions(setup):
    est = Estimator(setup / "rules", setup / "pricing", setup / "hospitals.csv", point_value=10.0)
    r = est.estimate({**CASE, "hospital_id": "P3", "insured_region": "440200", "remote_filing": "long_term",
                      "admission_no": 2, "annual_fund_used": "5000"})
    assert r["locality"] == "in_province" and r["level_coef"] == 1.0
    # no level-3 same-level cost: the group's average (9,800) is the reference; ratio 1.12, normal
    assert r["ref_source"] == "group_avg" and r["deviation"] == "normal"
    assert r["standard_fen"] == 1_225_270        # 1,225.27 points x 10 yuan
    assert r["deductible_fen"] == 50_000             # repeat admission
    assert r["fund_benefit_fen"] == 400_000          # cap 9,000 minus 5,000 already used
    assert r["cap_reached"] is True


def test_bad_case_answers_with_reason(est):
    r = est.estimate({k: v for k, v in CASE.items() if k != "main_dx"})
    assert r["reason"] == "MISSING_FIELD" and r["match_path"] == "rejected"
    assert r["dip_code"] is None and r["standard_fen"] is None
    r = est.estimate({**CASE, "hospital_id": "nowhere"})
    assert r["reason"] == "UNKNOWN_HOSPITAL"


def test_cli_estimate(setup, tmp_path, capsys):
    from dipengine.cli import main

    case = tmp_path / "case.json"
    case.write_text(json.dumps(CASE), encoding="utf-8")
    args = ["estimate", "--rules", str(setup / "rules"), "--pricing", str(setup / "pricing"),
            "--hospitals", str(setup / "hospitals.csv"), "--case", str(case)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fund_due_fen"] == 552_194
    case.write_text(json.dumps({"case_id": "x"}), encoding="utf-8")
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "MISSING_FIELD"
    bad = args.copy()
    bad[2] = str(tmp_path / "no-rules")
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    case.write_text("{not json", encoding="utf-8")
    assert main(args) == 1


def test_estimates_agree_with_the_batch_path(setup, est):
    """Estimator (reference grouper, points_one, benefit_case) == grouper + scoring + benefits."""
    import pyarrow as pa

    from dipengine.benefits import compute_benefits
    from dipengine.grouper import group
    from dipengine.reader import read_cases
    from dipengine.scoring import case_points

    cases = [CASE, {**CASE, "case_id": "h", "total_cost": "25000"}, {**CASE, "case_id": "l", "total_cost": "3600.5"},
             {**CASE, "case_id": "c", "main_proc": None, "patient_id": "q"},
             {**CASE, "case_id": "r", "hospital_id": "P3", "remote_filing": "long_term", "patient_id": "s"},
             {**CASE, "case_id": "x", "main_dx": "K35.", "patient_id": "t"}]
    singles = [est.estimate(c) for c in cases]
    table = read_cases(pa.Table.from_pylist([{k: (None if v is None else str(v)) for k, v in c.items()}
                                             for c in cases]), est.hospitals)
    grouped = group(table, est.rules)
    scored = case_points(table, grouped, est.hospitals, est.policy, groups=est.rules.groups).to_pylist()
    ben = compute_benefits(table, est.benefits, est.hospitals).to_pylist()
    for s, p, b in zip(singles, scored, ben):
        assert s["dip_code"] == p["dip_code"] and s["reason"] == p["reason"]
        assert s["case_points"] == pytest.approx(p["points_e4"] / 10000.0)
        assert s["deviation"] == p["deviation"]
        assert s["patient_share_fen"] == b["patient_share_fen"]
        assert s["fund_benefit_fen"] == b["fund_benefit_fen"]


def test_deviation_options_in_estimates(setup, tmp_path):
    """high_inclusive and reference_by = "level_pool" (issue 17 item 3), as the batch path applies them."""
    import shutil

    import pyarrow as pa

    from dipengine.grouper import group
    from dipengine.reader import read_cases
    from dipengine.scoring import case_points

    pricing = tmp_path / "pricing"
    shutil.copytree(setup / "pricing", pricing)
    (pricing / "policy.toml").write_text(POLICY.replace("[deviation]\n", '[deviation]\nhigh_inclusive = true\n'
                                                        'reference_by = "level_pool"\n'), encoding="utf-8")
    (pricing / "same_level_avg.csv").write_text("dip_code,level,pool,avg_cost\nG1,2,employee,9000\n"
                                                "G1,2,resident,5500\n", encoding="utf-8")
    est = Estimator(setup / "rules", pricing, setup / "hospitals.csv")
    cases = [{**CASE, "total_cost": "11000"}, {**CASE, "case_id": "r", "insurance_type": "resident"},
             {**CASE, "case_id": "b", "total_cost": "18000", "patient_id": "q"}]
    singles = [est.estimate(c) for c in cases]
    # employee: 11,000 / 9,000 normal; resident: 11,000 / 5,500 = 2.0, high with the inclusive bound
    assert [s["deviation"] for s in singles] == ["normal", "high", "high"]
    assert [s["case_points"] for s in singles] == [1102.743, 1225.27, 1225.27]
    table = read_cases(pa.Table.from_pylist([{k: (None if v is None else str(v)) for k, v in c.items()}
                                             for c in cases]), est.hospitals)
    scored = case_points(table, group(table, est.rules), est.hospitals, est.policy, groups=est.rules.groups)
    assert scored["points_e4"].to_pylist() == [round(s["case_points"] * 10000) for s in singles]
    assert scored["deviation"].to_pylist() == [s["deviation"] for s in singles]


# --- the single-case path: same answers, trace optional, no state across calls -----------------

def test_trace_can_be_left_out(est):
    full = est.estimate(CASE)
    lean = est.estimate(CASE, trace=False)
    assert lean["trace"] is None and full["trace"]
    assert {k: v for k, v in lean.items() if k != "trace"} == {k: v for k, v in full.items() if k != "trace"}
    bad = est.estimate({**CASE, "hospital_id": "nowhere"}, trace=False)
    assert bad["reason"] == "UNKNOWN_HOSPITAL" and bad["trace"] is None


def test_calls_are_independent(est):
    """No duplicate-case_id check across estimates: the same case twice gives the same answer."""
    assert est.estimate(CASE) == est.estimate(CASE)
    assert est.estimate(CASE)["reason"] is None


def test_bad_earlier_admission_fields_warn_and_default(est):
    r = est.estimate({**CASE, "admission_no": "second", "annual_fund_used": "lots"})
    assert r["reason"] is None and r["deductible_fen"] == 0 and r["fund_benefit_fen"] == 770_000
    assert "warning: admission_no: 'second'" in r["reason_detail"]
    assert "warning: annual_fund_used: 'lots'" in r["reason_detail"]


def test_native_json_values_read_like_text(est):
    """Numbers and lists as JSON gives them read as a table of those types would be."""
    r = est.estimate({**CASE, "age": 34, "total_cost": 11000, "other_dx": ["I10", None, " e11.900 "]})
    assert r["fund_due_fen"] == 552_194
    c = est.normalise({**CASE, "age": 34.0, "total_cost": 11000.005, "other_dx": ["I10", None, " e11.900 "]})
    assert c["age"] == 34 and c["total_cost_fen"] == 1_100_001 and c["other_dx"] == ["I10", "E11.900"]
    c = est.normalise({**CASE, "age": True})
    assert c["reason"] == "BAD_VALUE" and "age: 'True'" in c["reason_detail"]


_values = {
    "case_id": st.sampled_from(["A", " b ", "", None]),
    "hospital_id": st.sampled_from(["H2", "P3", "H9", "", None]),
    "insurance_type": st.sampled_from(["employee", "Resident", "x", None]),
    "person_type": st.sampled_from(["retired", "boss", None]),
    "insured_region": st.sampled_from(["440200", "4402", None]),
    "remote_filing": st.sampled_from(["temporary", "nope", None]),
    "sex": st.sampled_from(["m", "F", "Q", None]),
    "age": st.one_of(st.integers(-3, 140), st.floats(-2, 140, allow_nan=False).map(lambda f: round(f, 1)),
                     st.sampled_from(["40", " 7 ", "4.5", "x", "1e2", "", None])),
    "age_days": st.one_of(st.integers(-1, 400), st.none()),
    "los": st.one_of(st.integers(-1, 12), st.sampled_from(["3", "x", None])),
    "discharge_mode": st.one_of(st.integers(0, 9), st.sampled_from(["5", "300", None])),
    "admit_date": st.sampled_from(["2027-03-01", "2027-02-30", "2027-03-05 10:00", "bad", None]),
    "discharge_date": st.sampled_from(["2027-03-05", "2027-02-27", None]),
    "main_dx": st.one_of(st.sampled_from(["K35.800x001", " k35.8 ", "A01.000x005+J17.0*", "K35.", None]),
                         st.text(alphabet="AKx0159.+* ", max_size=8)),
    "main_proc": st.one_of(st.sampled_from(["47.0100", "4701", None]), st.text(alphabet="x0147.", max_size=7)),
    "other_dx": st.one_of(st.sampled_from(["K35.800|J18.900", "ZZ,K35.8", "", None]),
                          st.lists(st.sampled_from(["I10", "e11.900", "bad", "", None]), max_size=3)),
    "other_procs": st.one_of(st.sampled_from(["47.0100|51.2300x001", None]),
                             st.lists(st.sampled_from(["47.0100", "9", None]), max_size=2)),
    "total_cost": st.one_of(st.sampled_from(["1000", "0.005", "-1", "abc", "1,234.5", "2e3", "20000000", "", None]),
                            st.decimals(0, 10**6, places=3).map(str), st.integers(-5, 10**9),
                            st.floats(0, 1e8, allow_nan=False)),
    "fund_paid": st.one_of(st.sampled_from(["700", "700.50", None]), st.floats(0, 1e4, allow_nan=False)),
    "patient_paid": st.sampled_from(["300", "299", None]),
    "out_of_catalogue_cost": st.one_of(st.sampled_from(["10", "1e12", None]), st.integers(0, 10**5)),
    "class_b_cost": st.sampled_from(["10", "5000", "x", None]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.fixed_dictionaries({}, optional=_values))
def test_normalise_agrees_with_read_cases(est, case):
    """One case through the single-case normaliser == the batch reader on a one-row table."""
    import pyarrow as pa

    from dipengine.reader import SCHEMA, read_cases

    table = pa.Table.from_pylist([case]) if case else pa.table({"x": [1]})
    for name in ("case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
                 "discharge_date", "main_dx", "total_cost"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(1, pa.string()))
    batch = read_cases(table, est.hospitals).to_pylist()[0]
    single = est.normalise(case)
    for name in SCHEMA.names:
        assert single[name] == batch[name], name


# --- other funds, no benefits table, national field names (issue 14) ----------------------------

@pytest.fixture(scope="module")
def no_benefits(setup, tmp_path_factory):
    """The same rule set and registry with a pricing dir that has no benefits.csv."""
    d = tmp_path_factory.mktemp("nob")
    pricing = d / "pricing"
    pricing.mkdir()
    for name in ("policy.toml", "same_level_avg.csv"):
        (pricing / name).write_bytes((setup / "pricing" / name).read_bytes())
    return pricing


def test_other_funds_reduce_the_patient_share_not_the_fund_due(est):
    """Other funds pay 500 of the 3,300 the rules leave to the patient: patient 2,800; the pooled
    fund's due (standard − patient − other funds) stays 5,521.94."""
    r = est.estimate({**CASE, "other_fund_paid": "500"})
    assert r["fund_benefit_fen"] == 770_000
    assert r["patient_share_fen"] == 280_000 and r["other_fund_paid_fen"] == 50_000
    assert r["fund_due_fen"] == 882_194 - 280_000 - 50_000 == 552_194
    assert any("other funds 500.00" in line for line in r["trace"])
    assert r["note"] is None


def test_estimate_without_a_benefits_table(setup, no_benefits):
    est = Estimator(setup / "rules", no_benefits, setup / "hospitals.csv")
    assert est.benefits is None
    r = est.estimate(CASE)
    assert (r["dip_code"], r["match_path"], r["deviation"]) == ("G1", "core", "normal")
    assert r["case_points"] == pytest.approx(1102.7430) and r["standard_fen"] == 882_194
    for key in ("policy_scope_fen", "deductible_fen", "patient_share_fen", "fund_benefit_fen", "fund_due_fen",
                "cap_reached", "benefit_note"):
        assert key in r and r[key] is None, key
    assert "no benefits table" in r["note"] and "omitted" in r["note"]
    assert r["trace"] and any("G1" in line for line in r["trace"])
    # recorded payments still give the fund due: standard − patient − other funds
    paid = est.estimate({**CASE, "fund_paid": "7000", "other_fund_paid": "500", "patient_paid": "3500"})
    assert paid["patient_paid_fen"] == 350_000 and paid["other_fund_paid_fen"] == 50_000
    assert paid["fund_due_fen"] == 882_194 - 350_000 - 50_000
    assert paid["patient_share_fen"] is None and paid["note"] == r["note"]
    # the same with the pricing dir's table switched off explicitly
    off = Estimator(setup / "rules", setup / "pricing", setup / "hospitals.csv", benefits=False)
    assert off.estimate(CASE) == r
    bad = est.estimate({**CASE, "hospital_id": "nowhere"})
    assert bad["reason"] == "UNKNOWN_HOSPITAL" and bad["note"] == r["note"]


def test_cli_estimate_without_a_benefits_table(setup, no_benefits, tmp_path):
    from click.testing import CliRunner

    from dipengine.cli import cli

    case = tmp_path / "case.json"
    case.write_text(json.dumps(CASE), encoding="utf-8")
    res = CliRunner().invoke(cli, ["estimate", "--rules", str(setup / "rules"), "--pricing", str(no_benefits),
                                   "--hospitals", str(setup / "hospitals.csv"), "--case", str(case)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["dip_code"] == "G1" and out["standard_fen"] == 882_194 and out["deviation"] == "normal"
    assert out["patient_share_fen"] is None and out["fund_benefit_fen"] is None and out["fund_due_fen"] is None
    assert "no benefits table" in out["note"] and out["trace"]
    # --benefits DIR with a pricing dir that has none: that table alone
    res = CliRunner().invoke(cli, ["estimate", "--rules", str(setup / "rules"), "--pricing", str(no_benefits),
                                   "--hospitals", str(setup / "hospitals.csv"), "--case", str(case),
                                   "--benefits", str(setup / "pricing")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fund_due_fen"] == 552_194


def test_estimate_of_a_national_case_matches_its_contract_twin(setup):
    from test_cli_settle import nhsa_row

    est = Estimator(setup / "rules", setup / "pricing", setup / "hospitals.csv", schema="nhsa")
    plain = Estimator(setup / "rules", setup / "pricing", setup / "hospitals.csv")
    case = {**CASE, "fund_paid": "7000", "patient_paid": "3000", "other_fund_paid": "1000"}
    national = nhsa_row(case)
    assert {"setl_id", "fixmedins_code", "hi_type", "gend", "hifp_pay", "psn_selfpay", "psn_ownpay"} <= set(national)
    assert national["hi_type"] == "310" and national["gend"] == "2" and "case_id" not in national
    want, got = plain.estimate(case), est.estimate(national)
    for key in ("case_id", "dip_code", "match_path", "case_points", "standard_fen", "deviation", "patient_share_fen",
                "fund_benefit_fen", "patient_paid_fen", "other_fund_paid_fen", "fund_due_fen", "reason"):
        assert got[key] == want[key], key
    assert got["dip_code"] == "G1" and got["standard_fen"] == 882_194 and got["other_fund_paid_fen"] == 100_000
    assert est.normalise(national)["insurance_type"] == "employee"
    # code values map under the contract layout too (310 -> employee, 1 -> M)
    assert plain.normalise({**CASE, "insurance_type": "310", "sex": "1"})["sex"] == "M"


def test_cli_estimate_schema_and_encoding(setup, tmp_path):
    from click.testing import CliRunner

    from dipengine.cli import cli
    from test_cli_settle import nhsa_row

    base = ["estimate", "--rules", str(setup / "rules"), "--pricing", str(setup / "pricing"),
            "--hospitals", str(setup / "hospitals.csv")]
    case = tmp_path / "case.json"
    case.write_bytes(json.dumps({**nhsa_row(CASE), "科室": "普外科"}, ensure_ascii=False).encode("gbk"))
    res = CliRunner().invoke(cli, base + ["--case", str(case), "--schema", "nhsa", "--encoding", "gbk"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fund_due_fen"] == 552_194
    res = CliRunner().invoke(cli, base + ["--case", str(case), "--schema", "nhsa"])  # not UTF-8
    assert res.exit_code != 0
    # estimate is the one-case path (a Python call per case): no table of cases, no sheet
    res = CliRunner().invoke(cli, base + ["--case", str(case), "--sheet", "1"])
    assert res.exit_code == 2 and "--sheet" in res.output
