"""Rule-set loading, checking (one test per defect, file/line/column asserted), writing, compiling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dipengine.cli import cli
from dipengine.errors import DataError, RuleSetError
from dipengine.rules import (
    Problem, category_number, check_rules, load_rules, parse_age_band, parse_proc_expr, write_rule_set)


def g(code, gtype="core", dx="K35.8", expr="47.0100", cls="surgery", score="1300", avg="10400"):
    return {"dip_code": code, "dip_name": code, "group_type": gtype, "dx_key": dx, "proc_expr": expr,
            "treat_class": cls, "score": score, "avg_cost": avg, "n_cases": "20"}


GOOD = [
    g("A1"),
    g("A2", expr="", cls="conservative", score="650", avg="5200"),
    g("A3", expr="51.2300+51.8800/51.1000"),
    g("C1", gtype="comprehensive", dx="K35", expr="", cls="surgery"),
    g("C2", gtype="comprehensive", dx="A00-B99", expr="", cls="conservative"),
    g("B", gtype="blank", dx="", expr="", cls=""),
]


def make(tmp_path, groups=GOOD, **extra) -> Path:
    tables = {"groups.csv": groups}
    tables.update(extra)
    meta = {"name": "t", "version": "1"}
    if "options" in extra:
        meta["options"] = tables.pop("options")
    return write_rule_set(tmp_path / "rs", tables, meta)


def only(problems) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_feature_rule_set_checks_clean(rules_features):
    assert check_rules(rules_features) == []
    rs = load_rules(rules_features)
    assert rs.name == "features" and rs.groups.num_rows > 100
    assert set(rs.groups["group_type"].to_pylist()) == {"core", "basic", "comprehensive", "blank"}
    assert rs.groups.schema.field("score").type == "double" and rs.groups.schema.field("n_cases").type == "int64"
    for table in ("procedures", "excluded_dx", "excluded_proc", "aux_coefficients", "cci_weights", "severity_dx"):
        assert getattr(rs, table).num_rows > 0, table


def test_write_then_load_round_trip(tmp_path):
    rs = load_rules(make(tmp_path))
    assert rs.groups["dip_code"].to_pylist() == ["A1", "A2", "A3", "C1", "C2", "B"]
    assert rs.groups["score"].to_pylist()[0] == 1300.0
    assert set(rs.sha256) == {"groups.csv"} and len(rs.sha256["groups.csv"]) == 64
    assert rs.options["match_mode"] == "any_of"


@pytest.mark.parametrize("expr, terms", [
    ("", []),
    ("47.0100", [["47.0100"]]),
    ("51.2300/51.2301", [["51.2300", "51.2301"]]),
    ("51.2200+54.5100", [["51.2200"], ["54.5100"]]),
    ("51.2200+54.5100/54.5101x001", [["51.2200"], ["54.5100", "54.5101x001"]]),
])
def test_parse_proc_expr(expr, terms):
    assert parse_proc_expr(expr) == terms


@pytest.mark.parametrize("expr", ["+", "47.0100+", "/47.0100", "47.0100//47.0900", "47.0100 + 47.0900",
                                  "47.0100|47.0900", "k35.8", "47.0100/47.0100", "47.0100+47.0100",
                                  "__import__('os')", "47.0100*"])
def test_parse_proc_expr_rejects(expr):
    with pytest.raises(ValueError):
        parse_proc_expr(expr)


def test_bad_sha256(tmp_path):
    d = make(tmp_path)
    with open(d / "groups.csv", "a", encoding="utf-8") as f:
        f.write("A9,x,core,K35.3,47.0100,surgery,1,1,1\n")
    p = only(check_rules(d))
    assert (p.file, p.line) == ("groups.csv", 0) and "sha256 mismatch" in p.message


def test_duplicate_dip_code(tmp_path):
    p = only(check_rules(make(tmp_path, GOOD + [g("A1", dx="K35.3")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "dip_code") and "duplicate" in p.message


def test_malformed_proc_expr(tmp_path):
    p = only(check_rules(make(tmp_path, GOOD + [g("A9", expr="47.0100++47.0900")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "proc_expr") and "malformed" in p.message


def test_same_dx_key_and_proc_expr(tmp_path):
    # the same expression written in another order is the same group
    p = only(check_rules(make(tmp_path, GOOD + [g("A9", expr="51.8800/51.1000+51.2300")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "proc_expr") and "line 4" in p.message


def test_unknown_group_type(tmp_path):
    p = only(check_rules(make(tmp_path, GOOD + [g("A9", gtype="special")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "group_type")


def test_unknown_treat_class(tmp_path):
    p = only(check_rules(make(tmp_path, GOOD + [g("A9", dx="K35.3", cls="operation")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "treat_class")


@pytest.mark.parametrize("score", ["0", "-3", "abc", "nan", ""])
def test_non_positive_score(tmp_path, score):
    p = only(check_rules(make(tmp_path, GOOD + [g("A9", dx="K35.3", score=score)])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "score")


@pytest.mark.parametrize("rng", ["B99-A00", "A00-B9", "A00-", "A00-B99-C00", "a00-b99"])
def test_malformed_range(tmp_path, rng):
    p = only(check_rules(make(tmp_path, GOOD + [g("C9", gtype="comprehensive", dx=rng, expr="", cls="therapeutic")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "dx_key")


def test_every_problem_is_listed_and_load_raises(tmp_path):
    d = make(tmp_path, GOOD + [g("A1", gtype="x", cls="y", score="0", expr="1")])
    problems = check_rules(d)
    assert {p.column for p in problems} >= {"dip_code", "group_type", "treat_class", "score", "proc_expr"}
    with pytest.raises(RuleSetError) as e:
        load_rules(d)
    assert isinstance(e.value, DataError) and len(e.value.problems) == len(problems)
    assert "groups.csv:8:" in str(e.value)


def test_other_defects(tmp_path):
    d = make(tmp_path, GOOD + [g("B2", gtype="blank", dx="", expr="", cls=""), g("X", dx="K35")],
             **{"aux_coefficients.csv": [{"dip_code": "ZZ", "subtype": "age_3_4", "coefficient": "0"}],
                "severity_dx.csv": [{"dx_prefix": "A41", "level": "IV"}],
                "options": {"match_mode": "some", "cci_levels": [3, 1, 5]}})
    got = {(p.file, p.column) for p in check_rules(d)}
    assert got == {("groups.csv", "group_type"), ("groups.csv", "dx_key"), ("aux_coefficients.csv", "dip_code"),
                   ("aux_coefficients.csv", "subtype"), ("aux_coefficients.csv", "coefficient"),
                   ("severity_dx.csv", "level"), ("manifest.toml", "match_mode"), ("manifest.toml", "cci_levels")}


def test_missing_manifest_and_columns(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "groups.csv").write_text("dip_code,dip_name\nA,a\n", encoding="utf-8")
    problems = check_rules(d)
    assert any(p.file == "manifest.toml" for p in problems)
    assert any(p.file == "groups.csv" and p.line == 1 and p.column == "group_type" for p in problems)


def test_rules_check_cli(tmp_path, rules_features):
    bad = make(tmp_path, GOOD + [g("A1", dx="K35.3")])
    res = CliRunner().invoke(cli, ["rules", "check", str(bad)])
    assert res.exit_code == 1
    assert res.output.splitlines()[0].startswith("groups.csv:8:dip_code: duplicate dip_code")
    res = CliRunner().invoke(cli, ["rules", "check", str(rules_features)])
    assert res.exit_code == 0 and res.output.startswith("OK features 2027.1:") and "blank" in res.output
    res = CliRunner().invoke(cli, ["rules", "show", str(rules_features)])
    assert res.exit_code == 0 and "comprehensive" in res.output


def test_compiled_arrays(tmp_path):
    rs = load_rules(make(tmp_path))
    c = rs.compiled
    assert c.sub_vocab.to_pylist() == ["K35.8"]
    assert c.sub_cand.tolist() == [0, 1, 2]
    assert c.proc_vocab.to_pylist() == ["47.0100", "51.1000", "51.2300", "51.8800"]
    assert c.g_term_off.tolist() == [0, 1, 1, 3, 3, 3, 3]
    assert c.g_avg_fen[0] == 1_040_000
    surgery, conservative = 3, 0
    assert c.comp_lookup[category_number("K35") * 4 + surgery] == 3
    assert c.comp_lookup[category_number("K36") * 4 + surgery] == -1
    assert c.comp_lookup[category_number("B20") * 4 + conservative] == 4
    assert c.blank == 5
    assert all(a.flags.c_contiguous for a in (c.sub_off, c.term_codes, c.comp_lookup) if isinstance(a, np.ndarray))


def test_age_bands():
    assert parse_age_band("0_28d:0d:28d") == ("age_0_28d", 0, 28)
    assert parse_age_band("1_6:1:6") == ("age_1_6", 365, 6 * 365)
    assert parse_age_band("80p:80:")[2] == 2**31 - 1
    with pytest.raises(ValueError):
        parse_age_band("x:5:1")
