"""The demo pipeline end to end on a small region: files, reconciliation, determinism."""
from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "dip-demo"
    return run_demo(out, n_cases=6000, seed=3), out


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
    assert s.n_cases == len(src) == 6000
    # planted bad rows are kept with a reason
    rejected = pc.equal(res["match_path"], "rejected")
    assert pc.sum(rejected).as_py() > 0
    assert pc.all(pc.is_valid(pc.filter(res["reason"], rejected))).as_py()


def test_paid_total_equals_budget_and_transfers_add_up(demo):
    s, out = demo
    m = json.loads((out / "annual" / "manifest.json").read_text())
    for p in ("employee", "resident"):
        info = m["pools"][p]
        if info["reconciled_to_budget"]:
            assert s.standard_fen[p] == s.budget_fen[p]
        else:  # the band clamp held the value: paid at the clamped value, not the budget
            assert info["clamped"]
    st = pq.read_table(out / "annual" / "hospitals.parquet").to_pylist()
    assert s.clearing_fen == s.monthly_paid_fen + s.final_fen
    for r in st:
        assert r["clearing_fen"] == r["monthly_paid_fen"] + r["final_fen"]
    assert m["period"] == "2026"


def test_same_seed_same_results(tmp_path, demo):
    s, out = demo
    s2 = run_demo(tmp_path / "again", n_cases=6000, seed=3)
    assert (tmp_path / "again" / "annual" / "hospitals.parquet").read_bytes() == \
        (out / "annual" / "hospitals.parquet").read_bytes()
    assert s2.settlement_value == s.settlement_value


def test_cli_prints_headline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--cases", "3000", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "paid total = budget" in text
    assert "settlement value" in text
