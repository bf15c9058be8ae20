"""The shipped demo tables: ``grouper_rules/demo`` and ``pricing_tables/440200/2026``.

They are built by ``scripts/make_shipped_tables.py`` (catalogue builder over synthetic history
2023-2025, seed 0); these tests hold that they load, travel as package data, are reachable by
their short names, and settle a fresh synthetic 2026 year of the same region to the budget.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dipengine.benefits import load_benefits
from dipengine.cli import main
from dipengine.grouper import group
from dipengine.io import sha256_file, write_table
from dipengine.manifest import read_manifest, verify_files
from dipengine.policy import load_policy, resolve_pricing_dir
from dipengine.reader import read_cases
from dipengine.rules import check_rules, load_rules, resolve_rules_dir
from dipengine.synth import synth_hospitals, synth_region

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "grouper_rules" / "demo"
PRICING = REPO / "pricing_tables" / "440200" / "2026"
YEAR_CASES = 200_000  # the settled year must match the history's volume, or the point-value band clamps


@pytest.fixture(scope="module")
def region_2026(tmp_path_factory):
    """A fresh synthetic 2026 year of the shipped region (not in the catalogue's history)."""
    d = tmp_path_factory.mktemp("y2026")
    hospitals = synth_hospitals(60, region="440200", seed=0)
    cases, _ = synth_region(2026, YEAR_CASES, seed=0, hospitals=hospitals)
    write_table(hospitals, d / "hospitals.csv")
    write_table(cases, d / "cases.parquet")
    return d


def test_shipped_rule_set_checks_and_loads():
    assert check_rules(RULES) == []
    rs = load_rules(RULES)
    assert (rs.name, rs.version) == ("demo", "2026.1")
    types = set(rs.groups["group_type"].to_pylist())
    assert {"core", "blank"} <= types
    assert rs.aux_coefficients.num_rows > 0 and rs.cci_weights.num_rows > 0
    build = rs.manifest["build"]
    assert build["history_years"] == [2023, 2024, 2025]
    assert build["cases_used"] == [200_000] * 3
    assert build["created"] == "2026-01-01T00:00:00+00:00"  # fixed: regenerating is byte-stable
    assert "illustrative" in rs.manifest["source"]
    assert "illustrative" in (RULES / "README.md").read_text(encoding="utf-8").lower()


def test_shipped_pricing_loads_and_matches_the_rule_set():
    policy = load_policy(PRICING)
    assert (policy.region, policy.year) == ("440200", 2026)
    codes = set(load_rules(RULES).groups["dip_code"].to_pylist())
    assert set(policy.same_level_avg["dip_code"].to_pylist()) <= codes
    benefits = load_benefits(PRICING)
    assert "440200" in benefits.regions
    man = read_manifest(PRICING)
    tables = {f.name for f in PRICING.iterdir() if f.suffix in (".csv", ".toml") and f.name != "manifest.toml"}
    assert set(man["files"]) == tables == {"policy.toml", "same_level_avg.csv", "benefits.csv"}
    assert verify_files(PRICING, man) == []
    assert "illustrative" in (PRICING / "README.md").read_text(encoding="utf-8").lower()


def test_short_names_resolve_to_the_shipped_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_rules_dir("demo").samefile(RULES)
    assert resolve_pricing_dir("440200/2026").samefile(PRICING)
    assert resolve_rules_dir("no_such_set") == Path("no_such_set")
    assert resolve_pricing_dir("440200/1999") == Path("440200/1999")
    (tmp_path / "demo").mkdir()  # a local directory of that name wins
    assert resolve_rules_dir("demo") == Path("demo")


def test_package_data_carries_the_tables(tmp_path):
    """Build the package tree as a wheel would hold it; read the tables via importlib.resources."""
    lib, egg = tmp_path / "lib", tmp_path / "egg"
    egg.mkdir()
    env = dict(os.environ, DIPENGINE_EXT="__none__")  # no kernel rebuild: copy the built ones
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg),
                    "build_py", "--build-lib", str(lib)], cwd=REPO, env=env, check=True, capture_output=True)
    for pyx in (REPO / "cext").glob("*.pyx"):  # the compiled kernels, wherever the install put them
        origin = Path(importlib.util.find_spec(f"dipengine._libs.{pyx.stem}").origin)
        shutil.copy(origin, lib / "dipengine" / "_libs" / origin.name)
    probe = (
        "import json\n"
        "from importlib import resources\n"
        "from dipengine.rules import load_rules, resolve_rules_dir\n"
        "from dipengine.policy import load_policy, resolve_pricing_dir\n"
        "d = resources.files('dipengine.grouper_rules') / 'demo'\n"
        "p = resources.files('dipengine.pricing_tables') / '440200' / '2026'\n"
        "print(json.dumps({'rules': str(d), 'groups': load_rules(d).groups.num_rows,\n"
        "                  'by_name': str(resolve_rules_dir('demo')), 'year': load_policy(p).year,\n"
        "                  'pricing_by_name': str(resolve_pricing_dir('440200/2026')),\n"
        "                  'files': sorted(f.name for f in d.iterdir()) + sorted(f.name for f in p.iterdir())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(lib)),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["rules"] == str(lib / "dipengine" / "grouper_rules" / "demo") == got["by_name"]
    assert got["pricing_by_name"] == str(lib / "dipengine" / "pricing_tables" / "440200" / "2026")
    assert got["groups"] == load_rules(RULES).groups.num_rows and got["year"] == 2026
    for name in set(read_manifest(RULES)["files"]) | set(read_manifest(PRICING)["files"]) | {"manifest.toml"}:
        assert name in got["files"], name
    assert sha256_file(lib / "dipengine" / "grouper_rules" / "demo" / "groups.csv") == sha256_file(RULES / "groups.csv")


def test_fresh_year_groups_without_no_group_and_mostly_core(region_2026):
    cases = read_cases(region_2026 / "cases.parquet", region_2026 / "hospitals.csv", period="2026")
    out = group(cases, load_rules(RULES))
    assert out.num_rows == YEAR_CASES
    assert pc.sum(pc.equal(out["reason"], "NO_GROUP")).as_py() in (0, None)
    assert pc.all(pc.is_null(out["reason"])).as_py()  # a clean year: nothing rejected
    core = pc.sum(pc.equal(out["match_path"], "core")).as_py()
    assert core / YEAR_CASES > 0.9


def test_settle_by_short_names_reconciles_to_the_budget(region_2026, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no local ./demo: the names resolve to the shipped tables
    rc = main(["settle", "--rules", "demo", "--pricing", "440200/2026",
               "--hospitals", str(region_2026 / "hospitals.csv"), "--input", str(region_2026 / "cases.parquet"),
               "--period", "2026", "--out", "annual"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((tmp_path / "annual" / "manifest.json").read_text(encoding="utf-8"))
    st = pq.read_table(tmp_path / "annual" / "hospitals.parquet")
    assert pq.read_table(tmp_path / "annual" / "cases.parquet").num_rows == YEAR_CASES
    for pool in ("employee", "resident"):
        info = man["pools"][pool]
        assert not info["clamped"]  # the floating point value is in effect: contract §8 item 4 applies
        sel = pc.equal(st["pool"], pool)
        standard = pc.sum(pc.filter(st["standard_fen"], sel)).as_py()
        fund_due = pc.sum(pc.filter(st["fund_due_fen"], sel)).as_py()
        assert standard == info["total_cost_budget_fen"]
        assert fund_due == info["fund_available_fen"]
        assert st.schema.field("standard_fen").type == pa.int64()
