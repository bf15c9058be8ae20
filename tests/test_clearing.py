"""The clearing workflow (issue 17 item 7): prepayments, audit deductions before the bands, the
quality-deposit release by assessment score and the ``retain_share_of_due`` band rule.

Every worked example is computed by hand in integer fen, with one explicit half-up step.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dipengine.clearing import read_amounts, read_clearing_inputs, release_share, released_fen, split_whole
from dipengine.cli import main
from dipengine.demo import clearing_breakdown, clearing_summary
from dipengine.errors import DataError, RuleSetError
from dipengine.policy import Band
from dipengine.settlement import HOSPITAL_SCHEMA, clearing_amount, settle_scored, statement_schema
from test_cli_settle import _args, region  # noqa: F401  (region: the CLI fixture)
from test_policy import policy_doc
from test_settlement import YUAN, make_policy, registry, scored_cases

RETAIN_BANDS = [
    {"upper": 0.75, "rule": "retain_share_of_due", "share": 0.25},
    {"upper": 1.00, "rule": "pay_due"},
    {"upper": 1.10, "rule": "share_overspend", "fund_share": 0.5},
    {"rule": "cap", "cap_over": 0.10, "fund_share": 0.5},
]


def example_7_5(**policy_changes):
    """dip-rules §7.5: one hospital, 2,000,000 points at 8.00, burden 5.2M, assessment 0.98,
    recorded 11.5M; due' 10,584,000 yuan."""
    n = 1000
    hospitals = registry(1, assessment=0.98)
    policy = make_policy(budget__employee=10_800_000, budget__reserve_rate=0.0, **policy_changes)
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, [5_200 * YUAN] * n,
                             [11_500 * YUAN] * n, hospitals, policy)
    return sc, cases, hospitals, policy


# ---- retain_share_of_due ----------------------------------------------------------------------

def test_retain_share_of_due_worked_example():
    """recorded + share × due': 700,000,000 + 0.25 × 1,000,000,002 = 950,000,000.5 → 950,000,001 fen."""
    policy = make_policy(settlement__bands=RETAIN_BANDS)
    assert policy.bands[0] == Band(upper=0.75, rule="retain_share_of_due", share=0.25)
    clearing, ratio, rule = clearing_amount(1_000_000_002, 700_000_000, policy.bands)
    assert (clearing, rule) == (950_000_001, "retain_share_of_due")
    assert ratio == pytest.approx(0.7)
    # continuous with pay_due where the band ends (R = 1 − share): recorded 0.75 due' + 0.25 due' = due'
    assert clearing_amount(1_000_000, 750_000, policy.bands) == (1_000_000, 0.75, "retain_share_of_due")
    assert clearing_amount(1_000_000, 750_001, policy.bands)[0] == 1_000_000  # pay_due beyond it
    # against partial_retention 0.8 on the same hospital: 7M + 0.8 × 3M = 9.4M; here 7M + 2.5M
    assert clearing_amount(1_000_000_000, 700_000_000, policy.bands)[0] == 950_000_000


def test_retain_share_of_due_in_a_settlement_and_the_summary():
    """§7.5 with recorded 7.0M instead: R = 7,000,000 / 10,584,000 = 0.6614 → retain_share_of_due:
    7,000,000 + 0.25 × 10,584,000 = 9,646,000 yuan."""
    n = 1000
    hospitals = registry(1, assessment=0.98)
    policy = make_policy(budget__employee=10_800_000, budget__reserve_rate=0.0, settlement__bands=RETAIN_BANDS)
    sc, cases = scored_cases(["H000"] * n, 2000.0, [1_000_000] * n, [5_200 * YUAN] * n,
                             [7_000 * YUAN] * n, hospitals, policy)
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    row = res.hospitals.to_pylist()[0]
    assert (row["band"], row["clearing_fen"]) == ("retain_share_of_due", 9_646_000 * YUAN)
    assert res.hospitals.schema.equals(HOSPITAL_SCHEMA)  # a band rule adds no column
    b = clearing_breakdown(res.hospitals, res.manifest)["employee"]
    assert b.withheld_surplus_fen == (10_584_000 - 9_646_000) * YUAN  # the fund keeps that of the surplus
    assert b.retained_surplus_fen == (9_646_000 - 7_000_000) * YUAN
    assert b.fund_due_fen - b.assessment_fen - b.withheld_surplus_fen + b.shared_overspend_fen == b.clearing_fen
    text = "\n".join(clearing_summary(res.hospitals, res.manifest))
    assert "1 hospital under retain_share_of_due: keep their surplus up to 25% of their due" in text


def test_retain_share_of_due_band_is_checked():
    doc = policy_doc()
    doc["settlement"]["bands"][0] = {"upper": 0.8, "rule": "retain_share_of_due"}
    with pytest.raises(RuleSetError, match=r"missing \[settlement\] bands\[0\].share"):
        make_policy(settlement__bands=doc["settlement"]["bands"])
    doc["settlement"]["bands"][0] = {"upper": 0.8, "rule": "retain_share_of_due", "share": 1.5}
    with pytest.raises(RuleSetError, match=r"bands\[0\].share: 1.5 must be <= 1"):
        make_policy(settlement__bands=doc["settlement"]["bands"])
    doc["settlement"]["bands"][0] = {"upper": 0.8, "rule": "retain_share_of_due", "share": 0.2, "fund_share": 1}
    with pytest.raises(RuleSetError, match=r"unknown key \[settlement\] bands\[0\].fund_share"):
        make_policy(settlement__bands=doc["settlement"]["bands"])


# ---- audit deductions -------------------------------------------------------------------------

def deductions_table(rows):
    return pa.table({"hospital_id": [r[0] for r in rows], "amount": [r[1] for r in rows],
                     "pool": [r[2] for r in rows], "reason": [r[3] for r in rows]})


def test_deductions_before_banding_worked_example():
    """§7.5 with 84,000.01 yuan of audit deductions (two findings):
    due' 1,058,400,000 − 8,400,001 = 1,049,999,999 fen (banded due);
    R = 1,150,000,000 / 1,049,999,999 = 1.0952 → share_overspend;
    clearing = 1,049,999,999 + 0.5 × 100,000,001 = 1,099,999,999.5 → 1,100,000,000 fen (11,000,000.00 yuan),
    42,000.00 yuan below the 11,042,000.00 without them: the band shares the deduction."""
    sc, cases, hospitals, policy = example_7_5()
    ded = read_clearing_inputs(hospitals, deductions=deductions_table(
        [("H000", "80,000.00", None, "高套病种"), ("H000", "4000.01", "employee", "分解住院")]))
    res = settle_scored(sc, cases, hospitals, policy, "2027", clearing=ded)
    row = res.hospitals.to_pylist()[0]
    assert row["fund_due_fen"] == 1_080_000_000  # the deductions leave the fund due (and the budget) alone
    assert row["fund_due_assessed_fen"] == 1_058_400_000
    assert row["deduction_fen"] == 8_400_001
    assert row["fund_due_net_fen"] == 1_049_999_999
    assert row["ratio_R"] == 1_150_000_000 / 1_049_999_999
    assert row["band"] == "share_overspend"
    assert row["clearing_fen"] == 1_100_000_000
    assert row["final_fen"] == 1_100_000_000
    assert res.hospitals.schema.equals(statement_schema(deductions=True))
    names = res.hospitals.column_names
    assert names[names.index("fund_due_assessed_fen") + 1:names.index("recorded_fen")] == [
        "deduction_fen", "fund_due_net_fen"]
    m = res.manifest
    assert m["sums"]["hospitals"]["deduction_fen"] == 8_400_001
    assert m["sums"]["hospitals"]["fund_due_net_fen"] == 1_049_999_999
    assert m["clearing"]["deductions"] == {
        "rows": 2, "hospitals": 1, "amount_fen": 8_400_001, "by_pool_fen": 400_001, "whole_hospital_fen": 8_000_000,
        "by_reason_fen": {"分解住院": 400_001, "高套病种": 8_000_000}}
    # the clearing chain stays exact: fund due − assessment − deductions + overspend shared = clearing
    b = clearing_breakdown(res.hospitals, m)["employee"]
    assert b.deductions_fen == 8_400_001 and b.shared_overspend_fen == 1_100_000_000 - 1_049_999_999
    assert (b.fund_due_fen - b.assessment_fen - b.deductions_fen - b.withheld_surplus_fen
            + b.shared_overspend_fen) == b.clearing_fen
    text = "\n".join(clearing_summary(res.hospitals, m))
    assert "− audit deductions 84,000.01 (before the bands) = Σ banded due 10,499,999.99" in text
    # the same run without deductions is §7.5: 11,042,000
    assert settle_scored(sc, cases, hospitals, policy, "2027").hospitals["clearing_fen"][0].as_py() == 1_104_200_000


def test_deduction_can_move_a_hospital_into_another_band():
    """due' 1,000,000, recorded 950,000 (R 0.95, pay_due → 1,000,000); a deduction of 100,000 makes the
    banded due 900,000, R = 1.0556 → share_overspend: 900,000 + 0.5 × 50,000 = 925,000."""
    policy = make_policy()
    assert clearing_amount(1_000_000, 950_000, policy.bands)[0] == 1_000_000
    assert clearing_amount(900_000, 950_000, policy.bands)[::2] == (925_000, "share_overspend")


def test_zero_deductions_and_prepayments_change_no_amount():
    sc, cases, hospitals, policy = example_7_5()
    base = settle_scored(sc, cases, hospitals, policy, "2027")
    zero = read_clearing_inputs(hospitals, deductions=deductions_table([("H000", "0", None, None)]),
                                prepayments=pa.table({"hospital_id": ["H000"], "amount": ["0.00"]}))
    res = settle_scored(sc, cases, hospitals, policy, "2027", clearing=zero)
    assert res.hospitals.select(HOSPITAL_SCHEMA.names).equals(base.hospitals)
    assert res.cases.equals(base.cases)
    assert res.hospitals.to_pylist()[0]["prepayment_fen"] == 0


def test_without_the_inputs_the_statements_and_manifest_are_as_before():
    sc, cases, hospitals, policy = example_7_5()
    res = settle_scored(sc, cases, hospitals, policy, "2027")
    assert res.hospitals.schema.equals(HOSPITAL_SCHEMA)
    assert "clearing" not in res.manifest
    assert set(res.manifest["sums"]["hospitals"]) == {
        "standard_fen", "patient_paid_fen", "other_fund_paid_fen", "fund_due_fen", "fund_due_assessed_fen",
        "recorded_fen", "clearing_fen", "monthly_paid_fen", "deposit_fen", "final_fen"}
    assert policy.deposit_release == "full" and "[settlement] deposit_release = 'full'" in policy.defaults_applied


# ---- prepayments and the deposit release ------------------------------------------------------

MONTHLY = {("H000", "employee"): (950_000_000, 50_000_001)}
"""Σ of the monthly statements: 9,500,000.00 paid (net) and 500,000.01 of quality deposit withheld."""


def test_prepayment_and_deposit_release_by_score_worked_example():
    """§7.5's clearing 11,042,000.00 yuan = 1,104,200,000 fen; score 75 between [60, 90] releases
    (75 − 60) / (90 − 60) = 1/2 of the deposit: 50,000,001 / 2 = 25,000,000.5 → 25,000,001 fen;
    prepayment 900,000.00 yuan = 90,000,000 fen;
    final = 1,104,200,000 − 950,000,000 − (50,000,001 − 25,000,001) − 90,000,000 = 39,200,000 fen."""
    sc, cases, hospitals, policy = example_7_5(settlement__deposit_release="by_score",
                                               settlement__deposit_release_scores=[60, 90])
    hospitals = hospitals.append_column("assessment_score", pa.array([75.0]))
    pre = read_clearing_inputs(hospitals, prepayments=pa.table({"hospital_id": ["H000", "H000"],
                                                                "amount": ["600000", "300,000.00"],
                                                                "note": ["2027-01 预付", "2027-07 追加"]}))
    res = settle_scored(sc, cases, hospitals, policy, "2027", monthly=MONTHLY, clearing=pre)
    row = res.hospitals.to_pylist()[0]
    assert row["clearing_fen"] == 1_104_200_000
    assert row["monthly_paid_fen"] == 950_000_000 and row["deposit_fen"] == 50_000_001
    assert row["assessment_score"] == 75.0
    assert row["deposit_release_fen"] == 25_000_001
    assert row["prepayment_fen"] == 90_000_000
    assert row["final_fen"] == 39_200_000
    # what the hospital got over the year is the clearing less the forfeited part of the deposit
    forfeited = row["deposit_fen"] - row["deposit_release_fen"]
    assert row["monthly_paid_fen"] + row["prepayment_fen"] + row["final_fen"] == row["clearing_fen"] - forfeited
    names = res.hospitals.column_names
    assert names[names.index("deposit_fen"):] == ["deposit_fen", "assessment_score", "deposit_release_fen",
                                                   "prepayment_fen", "final_fen", "n_rejected", "n_out_of_pool"]
    m = res.manifest
    assert m["clearing"]["deposit_release"] == {"rule": "by_score", "scores": [60.0, 90.0], "deposit_fen": 50_000_001,
                                                "released_fen": 25_000_001, "forfeited_fen": 25_000_000}
    assert m["clearing"]["prepayments"]["amount_fen"] == 90_000_000 and m["clearing"]["prepayments"]["rows"] == 2
    assert m["policy"]["deposit_release"] == "by_score" and m["policy"]["deposit_release_scores"] == [60.0, 90.0]
    assert m["sums"]["hospitals"]["prepayment_fen"] == 90_000_000
    assert m["sums"]["hospitals"]["deposit_release_fen"] == 25_000_001


def test_full_release_is_todays_final_transfer():
    """Default deposit_release = "full": final = clearing − Σ monthly paid (net) − prepayment
    = 1,104,200,000 − 950,000,000 − 90,000,000 = 64,200,000 fen."""
    sc, cases, hospitals, policy = example_7_5()
    pre = read_clearing_inputs(hospitals, prepayments=pa.table({"hospital_id": ["H000"], "amount": ["900000"],
                                                                "pool": ["employee"]}))
    row = settle_scored(sc, cases, hospitals, policy, "2027", monthly=MONTHLY, clearing=pre).hospitals.to_pylist()[0]
    assert "deposit_release_fen" not in row
    assert row["final_fen"] == 64_200_000
    base = settle_scored(sc, cases, hospitals, policy, "2027", monthly=MONTHLY).hospitals.to_pylist()[0]
    assert base["final_fen"] == 1_104_200_000 - 950_000_000  # as before the clearing workflow


@pytest.mark.parametrize("score,share", [(95, 1), (90, 1), (60, 0), (0, 0), (84, "4/5"), (87.5, "11/12")])
def test_release_share_is_linear_between_the_scores(score, share):
    from fractions import Fraction

    assert release_share(score, (60.0, 90.0)) == Fraction(share)


def test_released_fen_rounds_half_up_exactly():
    from fractions import Fraction

    assert released_fen(50_000_001, Fraction(1, 2)) == 25_000_001
    assert released_fen(50_000_001, Fraction(11, 12)) == 45_833_334  # 45,833,334.25
    assert released_fen(3, Fraction(5, 6)) == 3  # 2.5 → 3
    assert released_fen(0, Fraction(1, 3)) == 0


def test_by_score_needs_a_score_for_every_deposit(tmp_path):
    from dipengine.clearing import check_scores

    hospitals = registry(2)
    with pytest.raises(DataError, match=r"hospitals.csv, column 'assessment_score', value 'H001': no assessment_score"):
        check_scores(hospitals.append_column("assessment_score", pa.array([80.0, None], pa.float64())),
                     {("H000", "employee"): (10, 5), ("H001", "resident"): (10, 5)}, ["hospitals.csv"])
    check_scores(hospitals, {("H000", "employee"): (10, 0)}, ["hospitals.csv"])  # nothing to release
    check_scores(hospitals, None, ["hospitals.csv"])


def test_registry_assessment_score_column(tmp_path):
    from dipengine.hospitals import SCHEMA, read_hospitals

    f = tmp_path / "hospitals.csv"
    f.write_text("hospital_id,name,level,region,assessment_score\nA,a,3,440200,87.5\nB,b,2,440200,\n")
    t = read_hospitals(f)
    assert t.column_names == SCHEMA.names + ["assessment_score"]
    assert t["assessment_score"].to_pylist() == [87.5, None]
    f.write_text("hospital_id,name,level,region,assessment_score\nA,a,3,440200,87.5\nB,b,2,440200,101\n")
    with pytest.raises(DataError, match=r"row 3, column 'assessment_score', value '101': assessment_score must lie"):
        read_hospitals(f)
    f.write_text("hospital_id,name,level,region\nA,a,3,440200\n")
    assert read_hospitals(f).schema.equals(SCHEMA)  # without the column, as before


def test_deposit_release_policy_keys():
    p = make_policy(settlement__deposit_release="by_score", settlement__deposit_release_scores=[0, 100])
    assert (p.deposit_release, p.deposit_release_scores) == ("by_score", (0.0, 100.0))
    assert not any("deposit_release" in d for d in p.defaults_applied)
    for changes, message in (
            ({"settlement__deposit_release": "by_score"}, r"missing \[settlement\] deposit_release_scores"),
            ({"settlement__deposit_release": "by_coef"}, r"invalid \[settlement\] deposit_release: 'by_coef'"),
            ({"settlement__deposit_release_scores": [60, 90]}, r"deposit_release_scores: applies only with"),
            ({"settlement__deposit_release": "by_score", "settlement__deposit_release_scores": [90, 60]},
             r"must be \[lo, hi\] with 0 <= lo < hi <= 100"),
            ({"settlement__deposit_release": "by_score", "settlement__deposit_release_scores": [60]},
             r"must be \[lo, hi\]")):
        with pytest.raises(RuleSetError, match=message):
            make_policy(**changes)


# ---- per-hospital amounts over the pools ------------------------------------------------------

def test_split_whole_is_exact():
    assert split_whole(1001, [300, 700], [1, 1]) == [300, 701]  # 300.3 / 700.7: the larger remainder
    assert split_whole(3, [5, 5], [1, 1]) == [2, 1]  # a tie goes to the earlier pool
    assert split_whole(10, [0, 0], [1, 3]) == [3, 7]  # nothing recorded: by cases (2.5 / 7.5)
    assert split_whole(5, [0, -4], [0, 0]) == [3, 2]  # nothing at all: equally
    assert split_whole(7, [123], [1]) == [7]


def test_whole_hospital_amounts_split_over_its_pools():
    """H000 recorded 3,000 fen employee and 7,000 resident: a deduction of 10.01 yuan without a pool is
    300.3 / 700.7 → 300 / 701 fen; a prepayment named for the resident pool goes there only."""
    hospitals = registry(2)
    policy = make_policy(point_value__band=None)
    sc, cases = scored_cases(["H000", "H000", "H001"], 1000.0, [1_000_000] * 3, [0] * 3, [3_000, 7_000, 5_000],
                             hospitals, policy, insurance_type=["employee", "resident", "employee"])
    clearing = read_clearing_inputs(hospitals, deductions=deductions_table([("H000", "10.01", None, None)]),
                                    prepayments=pa.table({"hospital_id": ["H000", "H001"], "amount": ["5", "1"],
                                                          "pool": ["resident", "resident"]}))
    res = settle_scored(sc, cases, hospitals, policy, "2027", clearing=clearing)
    rows = {(r["hospital_id"], r["pool"]): r for r in res.hospitals.to_pylist()}
    assert rows[("H000", "employee")]["deduction_fen"] == 300
    assert rows[("H000", "resident")]["deduction_fen"] == 701
    assert rows[("H000", "resident")]["prepayment_fen"] == 500 and rows[("H000", "employee")]["prepayment_fen"] == 0
    # H001 has no resident case: its resident prepayment gets a statement of its own, clawed back in full
    h1 = rows[("H001", "resident")]
    assert (h1["n_cases"], h1["clearing_fen"], h1["prepayment_fen"], h1["final_fen"]) == (0, 0, 100, -100)
    for r in rows.values():
        assert r["fund_due_net_fen"] == r["fund_due_assessed_fen"] - r["deduction_fen"]
        assert r["final_fen"] == r["clearing_fen"] - r["monthly_paid_fen"] - r["prepayment_fen"]


def test_whole_hospital_amount_without_any_statement_is_an_error(tmp_path):
    hospitals = registry(2)
    policy = make_policy(point_value__band=None)
    sc, cases = scored_cases(["H000"], 1000.0, [1_000_000], [0], [3_000], hospitals, policy)
    f = tmp_path / "pre.csv"
    f.write_text("hospital_id,amount\nH000,1\nH001,2\n")
    clearing = read_clearing_inputs(hospitals, prepayments=f)
    with pytest.raises(DataError, match=r"pre.csv, row 3, column 'pool', value 'H001': hospital H001 has no statement"):
        settle_scored(sc, cases, hospitals, policy, "2027", clearing=clearing)


# ---- strict files -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,where,message", [
    ("hospital_id,amount,reason,ward\nH000,1,x,y\n", "column 'ward'", "unknown column"),
    ("hospital_id,reason\nH000,x\n", "column 'amount'", "required column missing"),
    ("hospital_id,amount\nH000,1\nH999,2\n", "row 3, column 'hospital_id', value 'H999'",
     "hospital not in the registry"),
    ("hospital_id,amount\n,2\n", "row 2, column 'hospital_id'", "empty value"),
    ("hospital_id,amount\nH000,\n", "row 2, column 'amount'", "empty value"),
    ("hospital_id,amount\nH000,12x\n", "row 2, column 'amount', value '12x'", "not an amount in yuan"),
    ("hospital_id,amount\nH000,1.005\n", "row 2, column 'amount', value '1.005'", "at most 2 decimals"),
    ("hospital_id,amount\nH000,-5\n", "row 2, column 'amount', value '-5'", "must not be negative"),
    ("hospital_id,amount,pool\nH000,5,staff\n", "row 2, column 'pool', value 'staff'",
     "pool must be employee, resident or empty"),
])
def test_bad_deductions_file_names_file_row_column_value(tmp_path, text, where, message):
    f = tmp_path / "ded.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_amounts(f, "deductions", registry(1))
    line = str(e.value)
    assert line.startswith(f"{f}, {where}: ") and message in line and "\n" not in line


def test_prepayments_take_a_note_not_a_reason(tmp_path):
    f = tmp_path / "pre.csv"
    f.write_text("hospital_id,amount,note\nH000,1,ok\n")
    assert read_amounts(f, "prepayments", registry(1)).total_fen == 100
    f.write_text("hospital_id,amount,reason\nH000,1,x\n")
    with pytest.raises(DataError, match="column 'reason': unknown column"):
        read_amounts(f, "prepayments", registry(1))
    with pytest.raises(DataError, match="file not found"):
        read_amounts(tmp_path / "none.csv", "prepayments", registry(1))


def test_monthly_runs_refuse_the_clearing_inputs():
    sc, cases, hospitals, policy = example_7_5()
    pre = read_clearing_inputs(hospitals, prepayments=pa.table({"hospital_id": ["H000"], "amount": ["1"]}))
    with pytest.raises(DataError, match="annual clearing"):
        settle_scored(sc, cases, hospitals, policy, "2027-01", clearing=pre)


# ---- the command line: in through settle, out in the statements and the manifest ------------------

def _by_score_pricing(region):
    p = region["tmp"] / "pricing" / "policy.toml"
    p.write_text(p.read_text(encoding="utf-8").rstrip("\n")
                 + '\ndeposit_release = "by_score"\ndeposit_release_scores = [60, 90]\n', encoding="utf-8")


def test_cli_clearing_round_trip(region, capsys):  # noqa: F811
    """Three monthly runs, then the annual clearing with prepayments, deductions and the deposit
    released by score: every input shows in the statements and the manifest, and the money
    reconciles (Σ monthly paid + Σ prepayment + Σ final = Σ clearing − Σ forfeited deposit)."""
    tmp = region["tmp"]
    (tmp / "hospitals.csv").write_text("hospital_id,name,level,region,coefficient,assessment_coef,assessment_score\n"
                                       "H1,甲,3,440200,,0.98,84\nH2,乙,2,440200,,,70.5\n", encoding="utf-8")
    dirs = []
    for month in ("2027-01", "2027-02", "2027-03"):
        assert main(_args(region, month, tmp / month)) == 0
        dirs += ["--monthly", str(tmp / month)]
    _by_score_pricing(region)
    (tmp / "prepayments.csv").write_text("hospital_id,amount,pool,note\nH1,1000.00,employee,Q1\nH2,500,,\n",
                                         encoding="utf-8")
    (tmp / "deductions.csv").write_text("hospital_id,amount,reason\nH1,123.45,高套病种\nH2,10.01,\n", encoding="utf-8")
    out = tmp / "annual"
    capsys.readouterr()
    assert main(_args(region, "2027", out, *dirs, "--prepayments", str(tmp / "prepayments.csv"),
                      "--deductions", str(tmp / "deductions.csv"))) == 0
    text = capsys.readouterr().out
    assert "audit deductions 133.46 yuan off the assessed fund due before the bands" in text
    assert "prepayments offset 1,500.00" in text and "(by assessment score)" in text
    stm = pq.read_table(out / "hospitals.parquet")
    assert stm.schema.equals(statement_schema(deductions=True, release=True, prepayments=True))
    csv_names = (out / "hospitals.csv").read_text(encoding="utf-8").splitlines()[0].replace('"', "").split(",")
    assert csv_names == stm.column_names
    rows = stm.to_pylist()
    monthly = {}
    for d in dirs[1::2]:
        for r in pq.read_table(f"{d}/hospitals.parquet").to_pylist():
            paid, dep = monthly.get((r["hospital_id"], r["pool"]), (0, 0))
            monthly[(r["hospital_id"], r["pool"])] = (paid + r["monthly_paid_fen"], dep + r["deposit_fen"])
    score = {"H1": 84.0, "H2": 70.5}
    for r in rows:
        key = (r["hospital_id"], r["pool"])
        assert (r["monthly_paid_fen"], r["deposit_fen"]) == monthly.get(key, (0, 0))
        assert r["assessment_score"] == score[r["hospital_id"]]
        assert r["deposit_release_fen"] == released_fen(r["deposit_fen"], release_share(score[key[0]], (60, 90)))
        assert r["fund_due_net_fen"] == r["fund_due_assessed_fen"] - r["deduction_fen"]
        assert r["clearing_fen"] == clearing_amount(r["fund_due_net_fen"], r["recorded_fen"],
                                                    make_policy().bands)[0]
        forfeited = r["deposit_fen"] - r["deposit_release_fen"]
        assert r["final_fen"] == r["clearing_fen"] - r["monthly_paid_fen"] - forfeited - r["prepayment_fen"]
    by_h = {}
    for r in rows:
        by_h.setdefault(r["hospital_id"], []).append(r)
    assert sum(r["deduction_fen"] for r in by_h["H1"]) == 12_345
    assert sum(r["deduction_fen"] for r in by_h["H2"]) == 1_001
    assert sum(r["prepayment_fen"] for r in by_h["H2"]) == 50_000
    assert [r["prepayment_fen"] for r in by_h["H1"] if r["pool"] == "employee"] == [100_000]
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    sums = m["sums"]["hospitals"]
    assert sums["deduction_fen"] == 13_346 and sums["prepayment_fen"] == 150_000
    forfeited = m["clearing"]["deposit_release"]["forfeited_fen"]
    assert forfeited == sums["deposit_fen"] - sums["deposit_release_fen"] > 0
    assert sums["monthly_paid_fen"] + sums["prepayment_fen"] + sums["final_fen"] == sums["clearing_fen"] - forfeited
    assert m["parameters"]["prepayments"] == str(tmp / "prepayments.csv")
    assert m["parameters"]["deductions"] == str(tmp / "deductions.csv")
    assert set(m["sha256"]["prepayments"]) == {str(tmp / "prepayments.csv")}
    assert set(m["sha256"]["deductions"]) == {str(tmp / "deductions.csv")}
    assert m["clearing"]["deductions"]["by_reason_fen"] == {"(none)": 1_001, "高套病种": 12_345}
    assert m["clearing"]["prepayments"]["hospitals"] == 2
    # Σ fund due still equals the fund available: the deductions are the fund's, after the point value
    for pool, info in m["pools"].items():
        assert sum(r["fund_due_fen"] for r in rows if r["pool"] == pool) == info["fund_available_fen"]


def test_cli_without_clearing_inputs_writes_what_it_wrote(region):  # noqa: F811
    out = region["tmp"] / "annual"
    assert main(_args(region, "2027", out)) == 0
    assert pq.read_table(out / "hospitals.parquet").schema.equals(HOSPITAL_SCHEMA)
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "clearing" not in m and "prepayments" not in m["parameters"] and "deductions" not in m["sha256"]


@pytest.mark.parametrize("option,text,message", [
    ("--deductions", "hospital_id,amount,reason\nH1,12.5,x\nH7,1,y\n",
     "clearing.csv, row 3, column 'hospital_id', value 'H7': hospital not in the registry"),
    ("--prepayments", "hospital_id,amount\nH1,abc\n",
     "clearing.csv, row 2, column 'amount', value 'abc': not an amount in yuan"),
    ("--deductions", "hospital_id,amount,pool\nH1,1,both\n", "row 2, column 'pool', value 'both'"),
])
def test_cli_bad_clearing_file_stops_before_writing(region, capsys, option, text, message):  # noqa: F811
    f = region["tmp"] / "clearing.csv"
    f.write_text(text, encoding="utf-8")
    out = region["tmp"] / "never"
    assert main(_args(region, "2027", out, option, str(f))) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_clearing_inputs_are_annual_only(region, capsys):  # noqa: F811
    f = region["tmp"] / "pre.csv"
    f.write_text("hospital_id,amount\nH1,1\n", encoding="utf-8")
    assert main(_args(region, "2027-01", region["tmp"] / "m", "--prepayments", str(f))) == 1
    assert "apply to the annual clearing (period YYYY) only" in capsys.readouterr().err
    assert not (region["tmp"] / "m").exists()


def test_cli_by_score_without_a_score_stops_before_writing(region, capsys):  # noqa: F811
    tmp = region["tmp"]
    assert main(_args(region, "2027-01", tmp / "jan")) == 0
    _by_score_pricing(region)
    out = tmp / "never"
    assert main(_args(region, "2027", out, "--monthly", str(tmp / "jan"))) == 1
    err = capsys.readouterr().err
    assert "column 'assessment_score', value 'H1': no assessment_score for hospital H1" in err
    assert not out.exists()


def test_pipeline_streaming_equals_in_memory_with_clearing_inputs(region):  # noqa: F811
    """settle_to (two passes, spill) and settle (in memory) give the same statements and manifest
    entries with the clearing inputs; so does the Dask engine, which shares prepare and finish."""
    from dipengine.pipeline import settle, settle_to

    tmp = region["tmp"]
    (tmp / "ded.csv").write_text("hospital_id,amount\nH1,99.99\nH2,0.01\n", encoding="utf-8")
    (tmp / "pre.csv").write_text("hospital_id,amount\nH1,10\n", encoding="utf-8")
    args = (region["input"], region["rules"], region["pricing"], region["hospitals"], "2027")
    kw = dict(prepayments=str(tmp / "pre.csv"), deductions=str(tmp / "ded.csv"))
    mem = settle(*args, **kw)
    streamed = settle_to(tmp / "out", *args, batch_size=2, **kw)
    assert streamed.hospitals.equals(mem.hospitals)
    assert pq.read_table(tmp / "out" / "hospitals.parquet").equals(mem.hospitals)
    assert streamed.manifest["clearing"] == mem.manifest["clearing"]
    assert streamed.manifest["sums"] == mem.manifest["sums"]
