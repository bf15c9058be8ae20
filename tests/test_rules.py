"""Rule-set loading, checking (one test per defect, file/line/column asserted), writing, compiling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dipengine.cli import cli
from dipengine.errors import DataError, RuleSetError
from dipengine.rules import (
    Problem, category_number, check_reachable, check_rules, load_rules, parse_age_band, parse_proc_expr,
    write_rule_set)


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
    # the same expression with its codes and later terms in another order is the same group
    p = only(check_rules(make(tmp_path / "a", GOOD + [g("A9", expr="51.2300+51.1000/51.8800")])))
    assert (p.file, p.line, p.column) == ("groups.csv", 8, "proc_expr") and "line 4" in p.message


@pytest.mark.parametrize("options, duplicate", [
    ({}, False),                                   # the first term is the main one: A+B is not B+A
    ({"plus_main_term": "any"}, True),             # the main procedure may match any term
    ({"main_procedure_first": False}, True),       # no main-procedure preference: order never read
])
def test_term_order_counts_as_the_grouper_reads_it(tmp_path, options, duplicate):
    d = make(tmp_path, GOOD + [g("A9", expr="51.8800/51.1000+51.2300")], options=options)
    problems = check_rules(d)
    if duplicate:
        p = only(problems)
        assert (p.file, p.line, p.column) == ("groups.csv", 8, "proc_expr") and "line 4" in p.message
    else:
        assert problems == []


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
    last = res.output.splitlines()[-1]
    assert res.exit_code == 0 and last.startswith("OK features 2027.1:") and "blank" in last
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


# --------------------------------------------------------------------------- issue 15: money, manifests, periods


@pytest.mark.parametrize("avg, fen", [("1.005", 101), ("2.675", 268), ("0.125", 13), ("10400", 1_040_000),
                                      ("1e3", 100_000), ("12345678.905", 1_234_567_891), ("0", 0)])
def test_avg_cost_is_converted_to_fen_exactly_half_up(tmp_path, avg, fen):
    # Before: floor(float * 100 + 0.5) gave 100 fen for 1.005 yuan (1.005 * 100 = 100.49999999999999).
    rs = load_rules(make(tmp_path, [g("A1", avg=avg), g("B", gtype="blank", dx="", expr="", cls="")]), cache=False)
    assert rs.compiled.g_avg_fen.tolist()[0] == fen
    assert rs.compiled.g_avg_fen.dtype == np.int64


@pytest.mark.parametrize("avg", ["1.00499999999999999", "-1", "abc", "1_000", "nan", "1,000"])
def test_avg_cost_that_cannot_be_converted_exactly_is_a_problem(tmp_path, avg):
    p = only(check_rules(make(tmp_path, [g("A1", avg=avg)])))
    assert (p.file, p.line, p.column) == ("groups.csv", 2, "avg_cost")


def test_empty_manifest_is_a_problem_not_a_crash(tmp_path):
    # Before: load_rules raised KeyError('name') (a traceback through `rules check`).
    d = make(tmp_path)
    (d / "manifest.toml").write_text("", encoding="utf-8")
    assert [str(p) for p in check_rules(d)] == ["manifest.toml:0:: empty manifest (no keys and no [files] table)"]
    with pytest.raises(RuleSetError, match="empty manifest"):
        load_rules(d, cache=False)


def test_manifest_entry_outside_the_rule_set_is_a_problem_naming_the_line(tmp_path):
    from dipengine.io import sha256_file

    d = make(tmp_path)
    (tmp_path / "shadow").write_text("root:x:0\n", encoding="utf-8")
    text = (d / "manifest.toml").read_text(encoding="utf-8")
    text += f'"../shadow" = "{sha256_file(tmp_path / "shadow")}"\n'
    (d / "manifest.toml").write_text(text, encoding="utf-8")
    p = only(check_rules(d))
    assert (p.file, p.line, p.column) == ("manifest.toml", len(text.splitlines()), "files")
    assert p.message.startswith("[files] '../shadow': the name must stay inside the directory")


def test_table_that_is_a_symlink_out_or_a_fifo_is_not_read(tmp_path):
    import os
    import threading

    d = make(tmp_path)
    (tmp_path / "elsewhere.csv").write_text("code,class\nroot:x:0:0,secret\n", encoding="utf-8")
    (d / "procedures.csv").symlink_to(tmp_path / "elsewhere.csv")
    os.mkfifo(d / "excluded_dx.csv")
    got = []
    t = threading.Thread(target=lambda: got.append(check_rules(d)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "check_rules blocked on a FIFO table"
    text = "\n".join(str(p) for p in got[0])
    assert "root:x" not in text and "secret" not in text
    assert "procedures.csv:0:: not read: the path leads outside the directory" in text
    assert "excluded_dx.csv:0:: not a regular file (not read)" in text


@pytest.mark.parametrize("frm, to, problem", [
    ("2027-01-01", "2026-12-31", "effective_to 2026-12-31 is before effective_from 2027-01-01"),
    ("2027-13-01", "2027-12-31", "effective_from: '2027-13-01' is not a date YYYY-MM-DD"),
    ("2027", None, "effective_from: '2027' is not a date YYYY-MM-DD"),
])
def test_effective_dates_are_checked(tmp_path, frm, to, problem):
    meta = {"name": "t", "version": "1", "effective_from": frm, "effective_to": to}
    p = only(check_rules(write_rule_set(tmp_path / "rs", {"groups.csv": GOOD}, meta)))
    assert p.file == "manifest.toml" and p.line > 0 and p.message == problem


def test_check_period_against_effective_dates(tmp_path):
    import datetime as dt

    from dipengine.rules import check_period, period_dates

    rs = load_rules(write_rule_set(tmp_path / "rs", {"groups.csv": GOOD}, {
        "name": "t", "version": "2026.1", "effective_from": dt.date(2026, 1, 1), "effective_to": dt.date(2026, 12, 31)}),
        cache=False)
    for period in ("2026", "2026-01", "2026-12", " 2026-06 "):
        assert check_period(rs, period) is None, period
    assert check_period(rs, "2027") == ("rule set t 2026.1 is effective 2026-01-01 to 2026-12-31; period 2027 "
                                        "(2027-01-01 to 2027-12-31) lies outside it")
    assert "period 2025-12 (2025-12-01 to 2025-12-31) lies outside it" in check_period(rs, "2025-12")
    # A rule set that starts mid-year covers its months, not the whole year.
    mid = {"name": "m", "version": "1", "effective_from": "2026-07-01"}
    assert check_period(mid, "2026-07") is None and check_period(mid, "2030") is None
    assert "lies only partly inside it" in check_period(mid, "2026")
    assert "outside" in check_period(mid, "2026-06")
    assert check_period({"name": "open", "version": "1"}, "1999") is None
    assert period_dates("2024-02") == (dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    for bad in ("2026-13", "26", "2026-1", "x"):
        with pytest.raises(ValueError):
            check_period(rs, bad)


def test_shipped_demo_rule_set_covers_its_year():
    from dipengine.rules import check_period, resolve_rules_dir

    rs = load_rules(resolve_rules_dir("demo"))
    assert check_period(rs, "2026") is None and check_period(rs, "2026-03") is None
    assert "outside" in check_period(rs, "2027")


def test_load_rules_accepts_a_shipped_name_and_a_local_path_wins(tmp_path, monkeypatch):
    from dipengine.rules import packaged_rules_root

    monkeypatch.chdir(tmp_path)
    rs = load_rules("demo")  # before: "demo:0:: rule-set directory not found" (the CLI accepted it)
    assert rs.path == packaged_rules_root() / "demo" and rs.name == "demo"
    assert check_rules("demo") == []
    make(tmp_path)  # ./rs
    (tmp_path / "rs").rename(tmp_path / "demo")
    assert load_rules("demo").name == "t"


def test_unreachable_groups_are_warned(tmp_path):
    groups = GOOD + [
        g("X1", dx="K80.0", expr="", cls="conservative"),      # under excluded_dx K80
        g("X2", dx="K35.3", expr="99.0400/99.0401"),            # every code of its term not counted
        g("X3", dx="K35.3", expr="47.0100+99.0400/51.2200"),    # one code of the term still counts: reachable
        g("X4", gtype="comprehensive", dx="K35-K35", expr="", cls="surgery"),  # C1 (K35) takes all of it
        g("X5", gtype="comprehensive", dx="K8", expr="", cls="surgery"),       # K80-K89: K81... still reach it
    ]
    d = make(tmp_path, groups, **{"excluded_dx.csv": [{"code": "K80"}], "excluded_proc.csv": [{"code": "99.04"}],
                                  "procedures.csv": [{"code": "47.01", "class": "surgery"},
                                                     {"code": "47.0100", "class": "surgery"}]})
    assert check_rules(d) == []  # warnings, not problems: the rule set loads
    warned = check_reachable(load_rules(d))
    assert [(w.file, w.line, w.column) for w in warned] == [
        ("groups.csv", 8, "dx_key"), ("groups.csv", 9, "proc_expr"), ("groups.csv", 11, "dx_key"),
        ("procedures.csv", 2, "code")]
    assert "'X1' can never be reached" in warned[0].message and "'K80'" in warned[0].message
    assert "more specific comprehensive groups" in warned[2].message
    res = CliRunner().invoke(cli, ["rules", "check", str(d)])
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == "groups.csv:8:dx_key: " + "warning: " + warned[0].message
    assert res.output.splitlines()[-1].endswith("4 warning(s)")
    res = CliRunner().invoke(cli, ["rules", "check", "--strict", str(d)])
    assert res.exit_code == 1
    assert check_reachable(load_rules(make(tmp_path / "good"))) == []
