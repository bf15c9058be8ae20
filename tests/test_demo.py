"""The demo pipeline end to end on a small region: files, reconciliation, determinism, headline."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.demo import clearing_breakdown, clearing_summary, run_demo, yuan
from dipengine.money import round_half_up

POOLS = ("employee", "resident")
# 6,000 cases, seed 4: the employee pool's point value floats (reconciled to its budget), the
# resident pool's is clamped by the policy band, so both branches below are exercised.
N_CASES, SEED = 6000, 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "dip-demo"
    return run_demo(out, n_cases=N_CASES, seed=SEED), out


def _statements(out):
    return pq.read_table(out / "annual" / "hospitals.parquet")


def _by_pool(st, pool, column):
    return int(pc.sum(pc.filter(st[column], pc.equal(st["pool"], pool))).as_py() or 0)


def test_layout_is_the_contracts(demo):
    s, out = demo
    for name in ("rules/groups.csv", "rules/manifest.toml", "pricing/policy.toml", "pricing/benefits.csv",
                 "pricing/same_level_avg.csv", "hospitals.csv", "cases.parquet", "annual/cases.parquet",
                 "annual/hospitals.parquet", "annual/hospitals.csv", "annual/manifest.json"):
        assert (out / name).exists(), name
    for y in (2023, 2024, 2025):
        assert (out / f"history_{y}.parquet").exists()
    months = sorted(p.name for p in (out / "monthly").iterdir())
    assert months == [f"2026-{m:02d}" for m in range(1, 13)]


def test_every_case_once_in_order(demo):
    s, out = demo
    src = pq.read_table(out / "cases.parquet", columns=["case_id"])["case_id"]
    res = pq.read_table(out / "annual" / "cases.parquet", columns=["case_id", "match_path", "reason"])
    assert res["case_id"].equals(src)
    assert s.n_cases == len(src) == N_CASES
    # planted bad rows are kept with a reason
    rejected = pc.equal(res["match_path"], "rejected")
    assert pc.sum(rejected).as_py() > 0
    assert pc.all(pc.is_valid(pc.filter(res["reason"], rejected))).as_py()


def test_paid_total_equals_budget_and_transfers_add_up(demo):
    s, out = demo
    m = json.loads((out / "annual" / "manifest.json").read_text())
    st = _statements(out)
    # the fixture must exercise both branches, or the checks below prove nothing
    assert {m["pools"][p]["reconciled_to_budget"] for p in POOLS} == {True, False}
    for p in POOLS:
        info = m["pools"][p]
        standard, due = _by_pool(st, p, "standard_fen"), _by_pool(st, p, "fund_due_fen")
        assert s.standard_fen[p] == standard and s.fund_due_fen[p] == due
        assert s.budget_fen[p] == info["total_cost_budget_fen"]
        assert s.fund_available_fen[p] == info["fund_available_fen"]
        if info["reconciled_to_budget"]:
            # floating value: Σ standard = total-cost budget and Σ fund due = fund budget net of
            # the reserve, both to the fen, from the statements
            assert not info["clamped"]
            assert standard == info["total_cost_budget_fen"]
            assert due == info["fund_available_fen"]
            assert info["fund_available_fen"] < info["fund_budget_fen"]  # the reserve is held back
        else:
            # clamped: the value sits on the policy band's edge and every hospital is paid at it
            assert info["clamped"]
            bv_fen = info["budget_value_yuan"] * 100.0
            lo, hi = (b * bv_fen for b in m["policy"]["band"])
            pv_fen = lo if info["settlement_value_raw_yuan"] * 100.0 < lo else hi
            assert info["point_value_yuan"] == pytest.approx(pv_fen / 100.0, rel=1e-12)
            assert standard != info["total_cost_budget_fen"]
            rows = st.filter(pc.equal(st["pool"], p))
            want = round_half_up(np.asarray(rows["points_e4"]) * pv_fen / 10000.0)
            assert np.asarray(rows["standard_fen"]).tolist() == np.asarray(want).tolist()
    assert s.clearing_fen == s.monthly_paid_fen + s.final_fen
    for r in st.to_pylist():
        assert r["clearing_fen"] == r["monthly_paid_fen"] + r["final_fen"]
        assert r["fund_due_fen"] == r["standard_fen"] - r["patient_paid_fen"] - r["other_fund_paid_fen"]
    assert m["period"] == "2026"


def _expected_clearing(st, pool):
    """The bands' effect recomputed from the statements, row by row."""
    got = dict(due=0, due_a=0, clearing=0, withheld=0, shared=0, retained=0, borne=0, surplus=0, over=0)
    for r in st.filter(pc.equal(st["pool"], pool)).to_pylist():
        due_a, rec, clr = r["fund_due_assessed_fen"], r["recorded_fen"], r["clearing_fen"]
        got["due"] += r["fund_due_fen"]
        got["due_a"] += due_a
        got["clearing"] += clr
        if r["band"] == "partial_retention":
            assert rec < clr < due_a
            got["withheld"] += due_a - clr
        if r["band"] in ("partial_retention", "pay_due"):
            got["retained"] += clr - rec
            got["surplus"] += due_a - rec
        elif r["band"] in ("share_overspend", "cap"):
            assert due_a < clr < rec
            got["shared"] += clr - due_a
            got["borne"] += rec - clr
            got["over"] += rec - due_a
        else:
            assert clr == due_a
    return got


def test_clearing_breakdown_explains_the_clearing_to_the_fen(demo):
    s, out = demo
    st = _statements(out)
    m = json.loads((out / "annual" / "manifest.json").read_text())
    parts = clearing_breakdown(st, m)
    assert list(parts) == list(POOLS) and s.clearing == parts
    for p in POOLS:
        b, want = parts[p], _expected_clearing(st, p)
        assert b.fund_due_fen == want["due"] and b.due_assessed_fen == want["due_a"]
        assert b.withheld_surplus_fen == want["withheld"] and b.shared_overspend_fen == want["shared"]
        assert b.retained_surplus_fen == want["retained"] and b.borne_overspend_fen == want["borne"]
        # the chain the summary prints is exact
        assert b.fund_due_fen - b.assessment_fen - b.withheld_surplus_fen + b.shared_overspend_fen == b.clearing_fen
        assert b.retained_surplus_fen + b.withheld_surplus_fen == want["surplus"]
        assert b.shared_overspend_fen + b.borne_overspend_fen == want["over"]
        assert b.fund_budget_fen - b.reserve_fen == b.fund_available_fen == m["pools"][p]["fund_available_fen"]
        assert b.shared_overspend_fen > 0  # the small region has hospitals above their due
        assert (b.due_minus_available_fen == 0) == m["pools"][p]["reconciled_to_budget"]
    assert sum(b.clearing_fen for b in parts.values()) == s.clearing_fen


def test_same_seed_same_results(tmp_path, demo):
    s, out = demo
    s2 = run_demo(tmp_path / "again", n_cases=N_CASES, seed=SEED)
    assert (tmp_path / "again" / "annual" / "hospitals.parquet").read_bytes() == \
        (out / "annual" / "hospitals.parquet").read_bytes()
    assert s2.settlement_value == s.settlement_value


def test_cli_prints_headline(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out), "--cases", str(N_CASES), "--seed", str(SEED)]) == 0
    text = capsys.readouterr().out
    m = json.loads((out / "annual" / "manifest.json").read_text())
    st = _statements(out)
    assert "settlement value" in text and "NO" not in text.split()
    for p in POOLS:
        info = m["pools"][p]
        standard, due = _by_pool(st, p, "standard_fen"), _by_pool(st, p, "fund_due_fen")
        yes = f"{p}: paid total = budget: yes, to the fen"
        if info["clamped"]:
            assert yes not in text and f"{p}: settlement value clamped by the policy band" in text
            assert (f"Σ standard {yuan(standard)} ≠ total-cost budget {yuan(info['total_cost_budget_fen'])} "
                    f"({yuan(standard - info['total_cost_budget_fen'])} apart)") in text
        else:
            assert yes in text and f"{p}: settlement value clamped" not in text
            assert f"Σ standard {yuan(standard)} = total-cost budget {yuan(info['total_cost_budget_fen'])}" in text
            assert (f"Σ fund due {yuan(due)} = fund available {yuan(info['fund_available_fen'])} "
                    f"(fund budget {yuan(info['fund_budget_fen'])} − 3% reserve "
                    f"{yuan(info['fund_budget_fen'] - info['fund_available_fen'])})") in text
        # the clearing against the fund budget, and why, in words and to the fen
        want = _expected_clearing(st, p)
        over = want["clearing"] - info["fund_budget_fen"]
        assert (f"{p}: clearing {yuan(want['clearing'])}, {yuan(abs(over))} "
                f"{'above' if over > 0 else 'below'} the fund budget {yuan(info['fund_budget_fen'])}") in text
        assert f"− assessment deductions {yuan(want['due'] - want['due_a'])}" in text
        assert f"− surplus withheld {yuan(want['withheld'])}" in text
        assert f"+ overspend shared {yuan(want['shared'])}" in text
        assert f"retained surplus {yuan(want['retained'])}" in text
        assert f"overspend borne {yuan(want['borne'])}" in text
    assert "partial_retention" in text and "share_overspend" in text and "cap" in text


def _worked_example():
    """dip-rules §7.5: due 10,800,000, assessment 0.98, recorded 11,500,000, s = 0.5."""
    st = pa.table({"hospital_id": ["H1"], "pool": ["employee"], "band": ["share_overspend"],
                   "fund_due_fen": [1_080_000_000], "fund_due_assessed_fen": [1_058_400_000],
                   "recorded_fen": [1_150_000_000], "clearing_fen": [1_104_200_000]})
    manifest = {"pools": {"employee": {"fund_budget_fen": 1_113_402_062, "fund_available_fen": 1_080_000_000,
                                       "clamped": False, "settlement_method": "fund_plus_personal"}},
                "policy": {"reserve_rate": 0.03, "bands": [
                    {"upper": 0.8, "rule": "partial_retention", "share": 0.8}, {"upper": 1.0, "rule": "pay_due"},
                    {"upper": 1.1, "rule": "share_overspend", "fund_share": 0.5},
                    {"rule": "cap", "cap_over": 0.1, "fund_share": 0.5}]}}
    return st, manifest


def test_clearing_summary_on_the_worked_example():
    st, manifest = _worked_example()
    b = clearing_breakdown(st, manifest)["employee"]
    assert (b.assessment_fen, b.shared_overspend_fen, b.borne_overspend_fen) == (21_600_000, 45_800_000, 45_800_000)
    text = "\n".join(clearing_summary(st, manifest))
    assert ("employee: clearing 11,042,000.00, 92,020.62 below the fund budget 11,134,020.62 and "
            "242,000.00 above the fund available 10,800,000.00") in text
    assert "Σ fund due 10,800,000.00 (= fund available, to the fen)" in text
    assert "− assessment deductions 216,000.00" in text and "Σ assessed due 10,584,000.00" in text
    assert ("+ overspend shared 458,000.00 (1 hospital under share_overspend: the fund pays 50% of their "
            "overspend") in text
    assert "= clearing 11,042,000.00" in text and "overspend borne 458,000.00" in text
    # without a manifest the chain from Σ fund due still holds; a monthly statement has none
    assert any(line.startswith("employee: clearing 11,042,000.00; why:") for line in clearing_summary(st))
    assert clearing_summary(st.set_column(6, "clearing_fen", pa.array([None], pa.int64()))) == []


def test_settle_summary_states_the_clearing_against_the_fund_budget(demo, tmp_path, capsys):
    """`dipengine settle` (annual) says how the clearing relates to the fund budget, as the demo does."""
    s, out = demo
    args = ["settle", "--rules", str(out / "rules"), "--pricing", str(out / "pricing"),
            "--hospitals", str(out / "hospitals.csv"), "--input", str(out / "cases.parquet"),
            "--period", "2026", "--out", str(tmp_path / "annual"), "--monthly",
            *[str(d) for d in sorted((out / "monthly").iterdir())]]
    assert main(args) == 0
    text = capsys.readouterr().out
    m = json.loads((tmp_path / "annual" / "manifest.json").read_text())
    st = pq.read_table(tmp_path / "annual" / "hospitals.parquet")
    assert "clearing vs fund budget (yuan):" in text
    for line in clearing_summary(st, m):
        assert "  " + line in text
    for p in POOLS:
        want = _expected_clearing(st, p)
        assert f"+ overspend shared {yuan(want['shared'])}" in text
        assert f"− surplus withheld {yuan(want['withheld'])}" in text
