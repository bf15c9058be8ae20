"""Differential test on a hand-written fixture (issue 17 item 8): every grouping option and preset.

``tests/data/differential``: a rule set, the variants (manifest options) and 43 cases with the
group each should take, worked out by hand from dip-rules §2 (see its README). Both groupers
must give exactly the expected group.
"""
from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import pyarrow as pa
import pytest

from dipengine.grouper import group
from dipengine.reference import group_table
from dipengine.rules import load_rules, write_rule_set

HERE = Path(__file__).parent / "data" / "differential"
VARIANTS = tomllib.loads((HERE / "variants.toml").read_text(encoding="utf-8"))
CASES = list(csv.DictReader((HERE / "cases.csv").open(encoding="utf-8")))


def _csv(name, extra=()):
    lines = (HERE / name).read_text(encoding="utf-8").splitlines() + list(extra)
    return list(csv.DictReader(lines))


def _rules(tmp_path, variant):
    v = VARIANTS[variant]
    groups = _csv("groups.csv", v.get("extra_groups", ()))
    for g in groups:
        g["score"], g["avg_cost"], g["n_cases"] = float(g["score"]), float(g["avg_cost"]), int(g["n_cases"])
    procs = [dict(r, level=int(r["level"])) for r in _csv("procedures.csv")]
    tables = {"groups.csv": groups, "procedures.csv": procs, "excluded_dx.csv": _csv("excluded_dx.csv"),
              "excluded_proc.csv": _csv("excluded_proc.csv")}
    return load_rules(write_rule_set(tmp_path / variant, tables,
                                     {"name": f"diff-{variant}", "version": "1", "options": v["options"]}))


def test_fixture_size_and_coverage():
    assert len(CASES) >= 30
    assert {c["variant"] for c in CASES} == set(VARIANTS)
    assert len({c["case_id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_expected_groups(tmp_path, variant):
    rs = _rules(tmp_path, variant)
    rows = [c for c in CASES if c["variant"] == variant]
    t = pa.table({
        "case_id": [c["case_id"] for c in rows],
        "main_dx": [c["main_dx"] for c in rows],
        "main_proc": [c["main_proc"] or None for c in rows],
        "other_procs": pa.array([c["other_procs"].split("|") if c["other_procs"] else [] for c in rows],
                                pa.list_(pa.string())),
        "total_cost_fen": pa.array([int(c["total_cost"]) * 100 for c in rows], pa.int64()),
    })
    want = [c["expected"] or None for c in rows]
    fast = group(t, rs)
    slow = group_table(t, rs)
    for name, out in (("cython", fast), ("reference", slow)):
        got = out["dip_code"].to_pylist()
        bad = [(c["case_id"], c["expected"], g, c["why"]) for c, g in zip(rows, got) if (c["expected"] or None) != g]
        assert not bad, f"{name}: {bad}"
    assert fast["match_path"].to_pylist() == slow["match_path"].to_pylist()
    assert all(p == "excluded" for p, w in zip(fast["match_path"].to_pylist(), want) if w is None)
