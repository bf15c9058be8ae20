"""Special review (issue 17 item 6): quota ranking, the decisions file, applying decisions."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dipengine.errors import DataError
from test_cli_settle import region  # noqa: F401,F811  (the CLI fixture)
from dipengine.special_review import (
    SPECIAL_REVIEW_SCHEMA, candidate_rows, found_rows, quota_cases, rank_within_quota, read_reviewed)


def test_quota_is_a_floor_of_the_share():
    assert [quota_cases(0.005, n) for n in (0, 199, 200, 399, 400, 1000)] == [0, 0, 1, 1, 2, 5]
    assert quota_cases(0.1, 30) == 3  # exact on the decimal text: 0.1 × 30 is 3, not 2.9999...
    assert quota_cases(0.0, 10_000) == 0


def _scored(ids, hosp, ratio, flagged, in_pool=None):
    n = len(ids)
    return pa.table({
        "case_id": ids, "hospital_id": hosp, "pool": ["employee"] * n, "dip_code": ["G"] * n,
        "deviation": ["extreme" if f else "normal" for f in flagged], "ratio": pa.array(ratio, pa.float64()),
        "case_points": pa.array([100.0] * n), "points_e4": pa.array([1_000_000] * n, pa.int64()),
        "special_review": flagged, "in_pool": in_pool or [True] * n,
    })


def test_candidates_ranked_within_each_hospital():
    s1 = _scored(["a", "b", "c"], ["H1", "H1", "H2"], [6.0, 1.0, 7.5], [True, False, True])
    s2 = _scored(["e", "d", "f"], ["H1", "H1", "H1"], [6.0, 9.0, 5.5], [True, True, True], [True, True, False])
    costs = pa.table({"total_cost_fen": pa.array([1, 2, 3], pa.int64())})
    parts = [candidate_rows(s2, costs), candidate_rows(s1, costs), candidate_rows(s1.slice(1, 1), costs.slice(0, 1))]
    assert parts[2] is None  # b is not flagged
    assert parts[0]["case_id"].to_pylist() == ["e", "d"]  # f is outside the pool
    out = rank_within_quota(parts, {"H1": 400, "H2": 100}, 0.005)
    assert out.schema == SPECIAL_REVIEW_SCHEMA
    rows = out.select(["case_id", "hospital_rank", "hospital_quota", "within_quota"]).to_pylist()
    # H1: d (9.0) first, then a and e tie at 6.0 (by case_id); quota floor(0.005 × 400) = 2
    assert rows == [
        {"case_id": "d", "hospital_rank": 1, "hospital_quota": 2, "within_quota": True},
        {"case_id": "a", "hospital_rank": 2, "hospital_quota": 2, "within_quota": True},
        {"case_id": "e", "hospital_rank": 3, "hospital_quota": 2, "within_quota": False},
        {"case_id": "c", "hospital_rank": 1, "hospital_quota": 0, "within_quota": False},
    ]
    # the same rows whatever the order of the batches
    assert rank_within_quota(parts[::-1], {"H1": 400, "H2": 100}, 0.005).equals(out)
    assert rank_within_quota([], {}, 0.005).num_rows == 0


def _write(tmp_path, text):
    p = tmp_path / "reviewed.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_read_and_apply_decisions(tmp_path):
    r = read_reviewed(_write(tmp_path, "case_id,decision,approved_points,approved_amount,note\n"
                                       "a,approved,1234.56785,,new points\nb,approved,,45678.90,per item\n"
                                       "c,rejected,,,\n"))
    assert r.kind.tolist() == [0, 1, 2]
    assert r.points_e4.tolist() == [12_345_679, 0, 0]  # half up to 1/10,000 point
    assert r.amount_fen.tolist() == [0, 4_567_890, 0]
    s = _scored(["x", "a", "b", "c"], ["H1"] * 4, [1.0, 6.0, 7.0, 8.0], [False, True, True, True])
    out = r.apply(s)
    assert out["points_e4"].to_pylist() == [1_000_000, 12_345_679, 0, 1_000_000]
    assert out["case_points"].to_pylist() == [100.0, 1234.5679, 0.0, 100.0]
    assert out["review"].to_pylist() == [None, "approved_points", "approved_amount", "rejected"]
    assert out["review_amount_fen"].to_pylist() == [None, None, 4_567_890, None]
    r.check([found_rows(out.slice(0, 2)), found_rows(out.slice(2))])  # each decision found its case once
    assert found_rows(s) is None and found_rows(out.slice(0, 1)) is None
    assert r.summary()["approved_amount_fen"] == 4_567_890 and r.summary()["approved_points_e4"] == 12_345_679


def test_a_decision_must_find_its_case_once(tmp_path):
    r = read_reviewed(_write(tmp_path, "case_id,decision,approved_points\na,approved,10\nzz,rejected,\n"))
    out = r.apply(_scored(["a", "b"], ["H1", "H1"], [6.0, 1.0], [True, False]))
    with pytest.raises(DataError, match="case_id not in the input") as e:
        r.check([found_rows(out)])
    assert (e.value.row, e.value.column, e.value.value) == (3, "case_id", "zz")
    r2 = read_reviewed(_write(tmp_path, "case_id,decision\na,rejected\n"))
    s = _scored(["a"], ["H1"], [6.0], [True])
    with pytest.raises(DataError, match="more than once"):
        r2.check([found_rows(r2.apply(s)), found_rows(r2.apply(s))])
    r3 = read_reviewed(_write(tmp_path, "case_id,decision\na,rejected\n"))
    with pytest.raises(DataError, match="not settled in a pool"):
        r3.check([found_rows(r3.apply(_scored(["a"], ["H1"], [6.0], [True], [False])))])


@pytest.mark.parametrize("text, column, value", [
    ("case_id\na\n", "decision", None),
    ("case_id,decision,points\na,approved,1\n", "points", None),
    ("case_id,decision\na,maybe\n", "decision", "maybe"),
    ("case_id,decision\n,approved\n", "case_id", None),
    ("case_id,decision\na,rejected\na,rejected\n", "case_id", "a"),
    ("case_id,decision,approved_points\na,rejected,5\n", "approved_points", "5"),
    ("case_id,decision,approved_points,approved_amount\na,approved,5,6\n", "approved_points", "5"),
    ("case_id,decision,approved_points\na,approved,\n", "decision", "approved"),
    ("case_id,decision,approved_points\na,approved,-1\n", "approved_points", "-1"),
    ("case_id,decision,approved_points\na,approved,lots\n", "approved_points", "lots"),
    ("case_id,decision,approved_amount\na,approved,1.234\n", "approved_amount", "1.234"),
])
def test_bad_decision_files(tmp_path, text, column, value):
    with pytest.raises(DataError) as e:
        read_reviewed(_write(tmp_path, text))
    assert e.value.column == column and e.value.file.endswith("reviewed.csv")
    if value is not None:
        assert str(e.value.value) == value


def test_missing_decision_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_reviewed(tmp_path / "nope.csv")
    assert np.array_equal(read_reviewed(_write(tmp_path, "case_id,decision\n")).kind, np.zeros(0, np.int8))


# --------------------------------------------------------------------------- through the settlement

def test_worked_example_decisions_in_the_clearing():
    """One hospital (level 3, coefficient 1.0), group G1 score 1,000, reference 10,000 yuan,
    fund budget 130,000 yuan, no reserve, nothing paid by the patients:

    - C0, C1 cost 10,000 (normal): 1,000 points each; C2 cost 60,000 and C3 cost 70,000 (ratio
      6 and 7 > 5: extreme, flagged, paid by the high formula): 5,000 and 6,000 points.
    - Without decisions: 13,000 points, value 130,000 / 13,000 = 10 yuan.
    - Decisions: C2 approved 3,000 points; C3 approved 55,000 yuan paid per item. Then 5,000
      points share 130,000 − 55,000 = 75,000 yuan: 15 yuan a point; standards 15,000, 15,000,
      45,000 and 55,000 yuan; Σ = 130,000 = the budget; fund due = standard (no patient share).
    """
    from dipengine.settlement import settle_scored
    from test_settlement import YUAN, make_policy, registry, same_level, scored_cases

    hospitals = registry(1)
    policy = make_policy(same_level(avg_fen=10_000 * YUAN), budget__employee=130_000, budget__reserve_rate=0.0,
                         point_value__band=None)
    costs = [10_000 * YUAN, 10_000 * YUAN, 60_000 * YUAN, 70_000 * YUAN]
    sc, cases = scored_cases(["H000"] * 4, 1000.0, costs, [0] * 4, [c // 2 for c in costs], hospitals, policy)
    assert sc["points_e4"].to_pylist() == [10_000_000, 10_000_000, 50_000_000, 60_000_000]
    assert sc["special_review"].to_pylist() == [False, False, True, True]
    before = settle_scored(sc, cases, hospitals, policy, "2027")
    assert before.manifest["pools"]["employee"]["point_value_yuan"] == pytest.approx(10.0)
    assert before.special_review["case_id"].to_pylist() == ["C3", "C2"]  # by ratio, within H000
    assert "review" not in before.cases.column_names and "n_special_review" not in before.hospitals.column_names

    r = read_reviewed(pa.table({"case_id": ["C2", "C3"], "decision": ["approved", "approved"],
                                "approved_points": ["3000", None], "approved_amount": [None, "55000"]}))
    res = settle_scored(r.apply(sc), cases, hospitals, policy, "2027")
    pool = res.manifest["pools"]["employee"]
    assert pool["point_value_yuan"] == pytest.approx(15.0)
    assert (pool["review_amount_fen"], pool["points_budget_fen"]) == (5_500_000, 7_500_000)
    assert res.cases["standard_fen"].to_pylist() == [1_500_000, 1_500_000, 4_500_000, 5_500_000]
    assert res.cases["review"].to_pylist() == [None, None, "approved_points", "approved_amount"]
    (row,) = res.hospitals.to_pylist()
    assert (row["standard_fen"], row["fund_due_fen"]) == (13_000_000, 13_000_000)  # = the budget, to the fen
    assert (row["n_special_review"], row["n_review_approved"], row["review_amount_fen"]) == (2, 2, 5_500_000)
    sr = res.manifest["special_review"]
    assert sr["decisions"] == {"approved_points": 1, "approved_amount": 1, "rejected": 0}
    assert sr["review_amount_fen"] == 5_500_000 and sr["flagged"] == 2
    assert res.special_review["review"].to_pylist() == ["approved_amount", "approved_points"]
    # a rejection changes nothing: the case is paid as computed
    rej = read_reviewed(pa.table({"case_id": ["C2"], "decision": ["rejected"]}))
    again = settle_scored(rej.apply(sc), cases, hospitals, policy, "2027")
    assert again.cases["standard_fen"].to_pylist() == before.cases["standard_fen"].to_pylist()


EXTREME_ROWS = [  # extreme cost deviations (ratio > 5) in both hospitals and pools
    "C8,H1,employee,440200,60,2027-04-01,2027-04-20,K35.800,47.0100,70000.00,50000.00,20000.00",
    "C9,H1,employee,440200,61,2027-04-02,2027-04-22,K35.800,47.0100,60000.00,42000.00,18000.00",
    "C10,H2,employee,440200,62,2027-04-03,2027-04-25,K35.800,47.0100,50000.00,35000.00,15000.00",
    "C11,H2,resident,440200,63,2027-04-04,2027-04-28,J18.900,,40000.00,28000.00,12000.00",
]


@pytest.fixture
def flagged_region(region):  # noqa: F811  (the imported fixture)
    p = region["tmp"] / "cases.csv"
    p.write_text(p.read_text(encoding="utf-8") + "\n".join(EXTREME_ROWS) + "\n", encoding="utf-8")
    pol = region["tmp"] / "pricing" / "policy.toml"
    pol.write_text(pol.read_text(encoding="utf-8") + "\n[special_review]\nquota = 0.5\n", encoding="utf-8")
    return region


def test_cli_special_review_round_trip(flagged_region, capsys):
    import json

    import pyarrow.parquet as pq

    from dipengine.cli import main
    from test_cli_settle import _args

    r = flagged_region
    out = r["tmp"] / "annual"
    assert main(_args(r, "2027", out)) == 0
    assert "special review: 4 flagged in the pools, 4 within the quota (500 ‰" in capsys.readouterr().out
    sr = pq.read_table(out / "special_review.parquet")
    assert sr.schema == SPECIAL_REVIEW_SCHEMA
    assert sr.select(["case_id", "hospital_rank", "hospital_quota", "within_quota"]).to_pylist() == [
        {"case_id": "C8", "hospital_rank": 1, "hospital_quota": 2, "within_quota": True},
        {"case_id": "C9", "hospital_rank": 2, "hospital_quota": 2, "within_quota": True},
        {"case_id": "C11", "hospital_rank": 1, "hospital_quota": 2, "within_quota": True},
        {"case_id": "C10", "hospital_rank": 2, "hospital_quota": 2, "within_quota": True},
    ]
    (r["tmp"] / "reviewed.csv").write_text("case_id,decision,approved_points,approved_amount,note\n"
                                           "C8,approved,5000,,新技术\nC9,approved,,30000.00,按项目\n"
                                           "C10,rejected,,,\n", encoding="utf-8")
    out2 = r["tmp"] / "reviewed"
    assert main(_args(r, "2027", out2, "--reviewed", str(r["tmp"] / "reviewed.csv"))) == 0
    assert "decisions: 1 new points, 1 paid per item (30,000.00 yuan), 1 rejected" in capsys.readouterr().out
    cases = {row["case_id"]: row for row in pq.read_table(out2 / "cases.parquet").to_pylist()}
    assert cases["C8"]["case_points"] == 5000.0 and cases["C8"]["review"] == "approved_points"
    assert cases["C9"]["points_e4"] == 0 and cases["C9"]["standard_fen"] == 3_000_000
    assert cases["C9"]["fund_due_fen"] == 3_000_000 - 1_800_000
    assert cases["C10"]["review"] == "rejected" and cases["C11"]["review"] is None
    stm = pq.read_table(out2 / "hospitals.parquet").to_pylist()
    m = json.loads((out2 / "manifest.json").read_text(encoding="utf-8"))
    for pool, info in m["pools"].items():  # the fund due still reconciles to the budget exactly
        assert info["reconciled_to_budget"]
        assert sum(s["fund_due_fen"] for s in stm if s["pool"] == pool) == info["fund_available_fen"]
        assert sum(s["standard_fen"] for s in stm if s["pool"] == pool) == info["total_cost_budget_fen"]
    h1 = next(s for s in stm if (s["hospital_id"], s["pool"]) == ("H1", "employee"))
    assert (h1["n_special_review"], h1["n_review_approved"], h1["review_amount_fen"]) == (2, 2, 3_000_000)
    assert m["special_review"]["reviewed"]["approved_amount_fen"] == 3_000_000
    assert m["parameters"]["reviewed"] == str(r["tmp"] / "reviewed.csv")
    assert pq.read_table(out2 / "special_review.parquet")["review"].to_pylist() == [
        "approved_points", "approved_amount", None, "rejected"]


@pytest.mark.parametrize("text, message", [
    ("case_id,decision\nC99,rejected\n", "case_id not in the input"),
    ("case_id,decision\nC7,rejected\n", "not settled in a pool"),
    ("case_id,decision,approved_amount\nC8,approved,12.345\n", "at most 2 decimals"),
])
def test_cli_bad_decisions_stop_before_writing(flagged_region, capsys, text, message):
    from dipengine.cli import main
    from test_cli_settle import _args

    r = flagged_region
    (r["tmp"] / "reviewed.csv").write_text(text, encoding="utf-8")
    out = r["tmp"] / "annual"
    assert main(_args(r, "2027", out, "--reviewed", str(r["tmp"] / "reviewed.csv"))) == 1
    err = capsys.readouterr().err
    assert message in err and "reviewed.csv" in err and "Traceback" not in err
    assert not out.exists()


def test_monthly_runs_refuse_decisions(flagged_region, capsys):
    from dipengine.cli import main
    from test_cli_settle import _args

    r = flagged_region
    (r["tmp"] / "reviewed.csv").write_text("case_id,decision\nC8,rejected\n", encoding="utf-8")
    assert main(_args(r, "2027-04", r["tmp"] / "m", "--reviewed", str(r["tmp"] / "reviewed.csv"))) == 1
    assert "annual clearing (period YYYY) only" in capsys.readouterr().err
