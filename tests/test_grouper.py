"""Golden grouping cases from dip-rules §2-3, output shape, and determinism of the Cython grouper."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dipengine.grouper import group, group_arrays
from dipengine.rules import load_rules, write_rule_set


GROUPS = [  # (dip_code, group_type, dx_key, proc_expr, treat_class, avg_cost yuan)
    ("APP-LAP", "core", "K35.8", "47.0100", "surgery", 10400),
    ("APP-OPEN", "core", "K35.8", "47.0900", "surgery", 9100),
    ("APP-C", "basic", "K35.8", "", "conservative", 5200),
    ("GB-LAP", "core", "K80.1", "51.2300", "surgery", 15800),
    ("GB-LAP-CBD", "core", "K80.1", "51.2300+51.8800/51.1000", "surgery", 24600),
    ("GB-OPEN", "core", "K80.1", "51.2200", "surgery", 17900),
    ("GB-C", "core", "K80.1", "", "conservative", 6800),
    ("PNEU-C", "core", "J18.9", "", "conservative", 6900),
    ("PNEU-BRONCH", "core", "J18.9", "33.2400", "diagnostic", 11200),
    ("HERNIA-A", "core", "K40.9", "53.0000", "surgery", 8000),
    ("HERNIA-B", "core", "K40.9", "53.0100", "surgery", 9000),
    ("TYPH-C", "core", "A01.0", "", "conservative", 5000),
    ("ZH-K35-S", "comprehensive", "K35", "", "surgery", 11000),
    ("ZH-K3-C", "comprehensive", "K3", "", "conservative", 5000),
    ("ZH-K-S", "comprehensive", "K", "", "surgery", 20000),
    ("ZH-AB-C", "comprehensive", "A00-B99", "", "conservative", 5800),
    ("ZH-AK-C", "comprehensive", "A00-K99", "", "conservative", 6000),
    ("BLANK", "blank", "", "", "", 8000),
]


def tables(blank=True):
    rows = [dict(dip_code=c, dip_name=c.lower(), group_type=t, dx_key=dx, proc_expr=e, treat_class=k,
                 score=round(a / 8, 4), avg_cost=float(a), n_cases=20)
            for c, t, dx, e, k, a in GROUPS if blank or t != "blank"]
    aux = [dict(dip_code="APP-LAP", subtype=s, coefficient=v) for s, v in (
        ("death", 1.6), ("severity_III", 1.5), ("severity_II", 1.2), ("cci_1", 1.1), ("cci_2", 1.2), ("cci_3", 1.3),
        ("age_80p", 1.15), ("age_0_28d", 1.4))]
    return {
        "groups.csv": rows,
        "procedures.csv": [dict(code="33.2400", level=2, **{"class": "diagnostic"}),
                           dict(code="51.1000", level=2, **{"class": "diagnostic"})],
        "excluded_dx.csv": [dict(code="K80.000")],
        "excluded_proc.csv": [dict(code="99.0400")],
        "aux_coefficients.csv": aux,
        "cci_weights.csv": [dict(dx_prefix=p, weight=w, category=c) for p, w, c in (
            ("I21", 1, "mi"), ("I22", 2, "mi"), ("C78", 6, ""), ("N18", 2, "renal"))],
        "severity_dx.csv": [dict(dx_prefix="A41", level="III"), dict(dx_prefix="J18", level="II")],
    }


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    return load_rules(write_rule_set(tmp_path_factory.mktemp("r") / "golden", tables(), {"name": "g", "version": "1"}))


@pytest.fixture(scope="module")
def rs_noblank(tmp_path_factory):
    return load_rules(write_rule_set(tmp_path_factory.mktemp("r") / "nb", tables(False), {"name": "g", "version": "1"}))


def case(dx, main=None, others=(), cost=0.0, los=5, age=40, age_days=None, mode=1, sec=(), reason=None):
    return dict(main_dx=dx, main_proc=main, other_procs=list(others), total_cost_fen=int(round(cost * 100)),
                los=los, age=age, age_days=age_days, discharge_mode=mode, other_dx=list(sec), reason=reason)


def run(rules, *cases, **kw):
    rows = [dict(c, case_id=f"c{i}") for i, c in enumerate(cases)]
    schema = pa.schema([("case_id", pa.string()), ("main_dx", pa.string()), ("main_proc", pa.string()),
                        ("other_procs", pa.list_(pa.string())), ("other_dx", pa.list_(pa.string())),
                        ("total_cost_fen", pa.int64()), ("los", pa.int32()), ("age", pa.int32()),
                        ("age_days", pa.int32()), ("discharge_mode", pa.int8()), ("reason", pa.string())])
    return group(pa.Table.from_pylist(rows, schema=schema), rules, **kw).to_pylist()


def code(rules, *c, **kw):
    return [r["dip_code"] for r in run(rules, *c, **kw)]


def test_surgery_beats_conservative_core(rs):
    assert code(rs, case("K80.100", "51.2300"), case("K80.100")) == ["GB-LAP", "GB-C"]


def test_main_procedure_tie_break(rs):
    assert code(rs, case("K35.800", "47.0900", ["47.0100"]), case("K35.800", "47.0100", ["47.0900"])) == [
        "APP-OPEN", "APP-LAP"]


def test_most_specific_expression(rs):
    assert code(rs, case("K80.100", "51.2300", ["51.1000"]), case("K80.100", "51.2300", ["51.8800"])) == [
        "GB-LAP-CBD", "GB-LAP-CBD"]


def test_closest_average_cost(rs):
    both = ["53.0000", "53.0100"]
    assert code(rs, case("K40.900", None, both, cost=8900), case("K40.900", None, both, cost=8100)) == [
        "HERNIA-B", "HERNIA-A"]
    # the main procedure outranks the cost
    assert code(rs, case("K40.900", "53.0000", ["53.0100"], cost=8900)) == ["HERNIA-A"]


def test_extension_codes_match_base_code(rs):
    assert code(rs, case("K35.800x001", "47.0100x003")) == ["APP-LAP"]


def test_dagger_form_groups_on_code_before_plus(rs):
    out = run(rs, case("A01.000x005+J17.0*"), case("J17.000+A01.0*"))
    # J17.000+A01.0* groups on J17 (here the A00-K99 range), never on the asterisk code
    assert [r["dip_code"] for r in out] == ["TYPH-C", "ZH-AK-C"]
    assert out[0]["match_path"] == "core"


def test_comprehensive_longest_prefix_then_range(rs):
    out = run(rs, case("K35.300", "47.0100"), case("K36.000"), case("K50.000", "47.0100"),
              case("B20.000"), case("D50.000"), case("K36.000", None, ["33.2400"]))
    # the last case is diagnostic: comprehensive groups match on the case's class only, and
    # there is no diagnostic one and no K36 core group, so it is blank
    assert [r["dip_code"] for r in out] == ["ZH-K35-S", "ZH-K3-C", "ZH-K-S", "ZH-AB-C", "ZH-AK-C", "BLANK"]
    assert {r["match_path"] for r in out[:5]} == {"comprehensive"}
    assert [r["treat_class"] for r in out] == ["surgery", "conservative", "surgery", "conservative", "conservative",
                                               "diagnostic"]


def test_diagnostic_only_case_is_conservative_equivalent(rs):
    # 33.2400 matches the diagnostic core group; an unlisted diagnostic procedure falls back to conservative
    assert code(rs, case("J18.900", "33.2400"), case("J18.900", "87.4400")) == ["PNEU-BRONCH", "PNEU-C"]


def test_blank_versus_no_group(rs, rs_noblank):
    a = run(rs, case("Q99.900", "47.0100"))[0]
    b = run(rs_noblank, case("Q99.900", "47.0100"))[0]
    assert (a["dip_code"], a["match_path"], a["reason"], a["treat_class"]) == ("BLANK", "blank", None, "surgery")
    assert (b["dip_code"], b["match_path"], b["reason"], b["base_score"]) == (None, "rejected", "NO_GROUP", 0.0)
    assert "Q99.900" in b["reason_detail"]


def test_excluded_main_diagnosis(rs):
    r = run(rs, case("K80.000x002", "51.2300"))[0]
    assert (r["match_path"], r["reason"], r["dip_code"]) == ("excluded", "EXCLUDED_DX", None)
    assert "K80.000" in r["reason_detail"]


def test_not_counted_procedure_turns_case_conservative(rs):
    # 99.0400 (transfusion) is not counted: conservative; 99.2500 (therapeutic) counts: not conservative
    assert code(rs, case("K35.800", "99.0400"), case("K35.800", "99.2500")) == ["APP-C", "BLANK"]


def test_severity_los_gate(rs):
    out = run(rs, case("K35.800", "47.0100", sec=["A41.900"], los=2), case("K35.800", "47.0100", sec=["A41.900"], los=3),
              case("K35.800", "47.0100", sec=["J18.900"], los=3))
    assert [(r["aux_subtype"], r["aux_coef"]) for r in out] == [(None, 1.0), ("severity_III", 1.5), ("severity_II", 1.2)]


def test_death_has_the_highest_coefficient(rs):
    r = run(rs, case("K35.800", "47.0100", sec=["A41.900"], mode=5))[0]
    assert (r["aux_subtype"], r["aux_coef"]) == ("death", 1.6)


def test_cci_levels(rs):
    out = run(rs, case("K35.800", "47.0100", sec=["I21.000", "I22.100"], los=1),
              case("K35.800", "47.0100", sec=["I21.000", "I22.100", "N18.900"], los=1),
              case("K35.800", "47.0100", sec=["C78.000"], los=1),
              case("K35.800", "47.0100", sec=["I21.000"], los=1))
    # I21 and I22 share the "mi" category: max weight 2, not 3
    assert [r["aux_subtype"] for r in out] == ["cci_1", "cci_2", "cci_3", "cci_1"]


def test_age_bands(rs):
    out = run(rs, case("K35.800", "47.0100", age=0, age_days=10), case("K35.800", "47.0100", age=85),
              case("K35.800", "47.0100", age=0), case("K35.800", "47.0100", age=50))
    assert [r["aux_subtype"] for r in out] == ["age_0_28d", "age_80p", None, None]
    assert out[0]["base_score"] == 1300.0 and out[0]["aux_coef"] == 1.4


def test_all_listed_mode(tmp_path):
    rules = load_rules(write_rule_set(tmp_path / "jn", tables(), {
        "name": "jn", "version": "1", "options": {"match_mode": "all_listed"}}))
    # 51.2300+51.8800/51.1000 needs both 51.8800 and 51.1000 in all_listed mode
    assert code(rules, case("K80.100", "51.2300", ["51.8800"]), case("K80.100", "51.2300", ["51.8800", "51.1000"])) == [
        "GB-LAP", "GB-LAP-CBD"]


def test_rejected_rows_kept_in_order(rs):
    out = run(rs, case("K35.800", "47.0100"), case("K35.800", "47.0100", reason="BAD_DATES"), case(None), case("XYZ"))
    assert [r["case_id"] for r in out] == ["c0", "c1", "c2", "c3"]
    assert [r["match_path"] for r in out] == ["core", "rejected", "rejected", "rejected"]
    assert [r["reason"] for r in out] == [None, "BAD_DATES", "MISSING_FIELD", "INVALID_DX"]
    assert [r["base_score"] for r in out] == [1300.0, 0.0, 0.0, 0.0]


def test_output_kinds(rs):
    t = pa.table({"case_id": ["a", "b"], "main_dx": ["K35.800", "k35.800X001"], "main_proc": ["47.0100", None]})
    out = group(t, rs)
    assert out.column_names == ["case_id", "dip_code", "dip_name", "group_type", "match_path", "treat_class",
                                "base_score", "aux_subtype", "aux_coef", "reason", "reason_detail"]
    assert out["dip_code"].to_pylist() == ["APP-LAP", "APP-C"]
    assert isinstance(group(t.to_batches()[0], rs), pa.RecordBatch)
    df = group(t.to_pandas(), rs)
    assert type(df).__name__ == "DataFrame" and list(df["dip_code"]) == ["APP-LAP", "APP-C"]
    assert group(t.slice(0, 0), rs).num_rows == 0


def test_group_arrays_index(rs):
    t = pa.table({"case_id": ["a", "b"], "main_dx": ["K35.800", "K80.000"], "main_proc": ["47.0100", None]})
    res = group_arrays(t, rs)
    assert res.group_index.dtype == np.int32 and res.group_index.tolist() == [0, -1]
    assert res.match_path.tolist() == [0, 4]


def test_explain_trace(rs):
    t = pa.table({"case_id": ["a"], "main_dx": ["K35.800"], "main_proc": ["47.0900"], "other_procs": [["47.0100"]]})
    trace = group(t, rs, explain=True)["trace"][0].as_py()
    assert "candidate APP-LAP" in trace and "not chosen: APP-LAP" in trace and "group APP-OPEN" in trace


def test_threads_and_batches_do_not_matter(rules_features):
    from tests.test_reference_agreement import cohort

    demo = load_rules(rules_features)
    cases = cohort(demo, 30_000, 11)
    one = group(cases, demo, n_threads=1)
    assert group(cases, demo, n_threads=2).equals(one)
    parts = [group(cases.slice(i, 7_000), demo, n_threads=2) for i in range(0, cases.num_rows, 7_000)]
    assert pa.concat_tables(parts).equals(one)


def test_every_official_code_gets_its_subcategory(icd10_path, tmp_path):
    """Every official diagnosis code of icd10_yb2.tsv groups on its first 5 characters.

    (PROVENANCE.md says 33,303 rows; the file holds 33,304 distinct codes.)
    """
    import pyarrow.csv as pcsv

    codes = pcsv.read_csv(icd10_path, parse_options=pcsv.ParseOptions(delimiter="\t"),
                          convert_options=pcsv.ConvertOptions(column_types={"code": pa.string()}))["code"]
    codes = codes.combine_chunks()
    assert len(codes) >= 33_303 and len(set(codes.to_pylist())) == len(codes)
    expected = [c.split("+")[0][:5] for c in codes.to_pylist()]
    subs = sorted(set(expected))
    rows = [dict(dip_code=s, dip_name=s, group_type="core", dx_key=s, proc_expr="", treat_class="conservative",
                 score=1.0, avg_cost=1.0, n_cases=1) for s in subs]
    rules = load_rules(write_rule_set(tmp_path / "all", {"groups.csv": rows}, {"name": "all", "version": "1"}))
    out = group(pa.table({"case_id": codes, "main_dx": codes}), rules)
    assert out["reason"].null_count == len(codes)
    assert out["dip_code"].to_pylist() == expected


# --------------------------------------------------------------------------- grouping options (issue 17)

def _with_options(tmp_path, options, extra_groups=()):
    t = tables()
    t["groups.csv"] = t["groups.csv"] + [
        dict(dip_code=c, dip_name=c, group_type="core", dx_key=dx, proc_expr=e, treat_class="surgery",
             score=1000.0, avg_cost=float(a), n_cases=20) for c, dx, e, a in extra_groups]
    return load_rules(write_rule_set(tmp_path / "opt", t, {"name": "o", "version": "1", "options": options}))


def both(rules, *cases):
    """dip_code per case from the Cython grouper, checked equal to the pure-Python reference."""
    from dipengine.reference import group_table

    rows = [dict(c, case_id=f"c{i}") for i, c in enumerate(cases)]
    schema = pa.schema([("case_id", pa.string()), ("main_dx", pa.string()), ("main_proc", pa.string()),
                        ("other_procs", pa.list_(pa.string())), ("other_dx", pa.list_(pa.string())),
                        ("total_cost_fen", pa.int64()), ("los", pa.int32()), ("age", pa.int32()),
                        ("age_days", pa.int32()), ("discharge_mode", pa.int8()), ("reason", pa.string())])
    t = pa.Table.from_pylist(rows, schema=schema)
    fast = group(t, rules)["dip_code"].to_pylist()
    assert fast == group_table(t, rules)["dip_code"].to_pylist()
    return fast


def test_main_procedure_first_option(tmp_path):
    # main 47.0900 with 47.0100 also done, cost 10,000: APP-LAP (10,400) is the closer average
    c = case("K35.800", "47.0900", ["47.0100"], cost=10000)
    assert both(_with_options(tmp_path / "a", {}), c) == ["APP-OPEN"]  # keyed on the main procedure
    assert both(_with_options(tmp_path / "b", {"main_procedure_first": False}), c) == ["APP-LAP"]


def test_plus_main_term_option(tmp_path):
    extra = [("X", "K80.1", "51.2200+51.2300", 20000), ("Y", "K80.1", "51.2300+51.2200/51.1000", 30000)]
    c = case("K80.100", "51.2300", ["51.2200"], cost=20000)
    # first: only Y's first term holds the main procedure; any: both do, and X's cost is closer
    assert both(_with_options(tmp_path / "a", {}, extra), c) == ["Y"]
    assert both(_with_options(tmp_path / "b", {"plus_main_term": "any"}, extra), c) == ["X"]


def test_tie_break_option(tmp_path):
    c = case("K80.100", "51.2300", ["51.8800"], cost=15000)
    assert both(_with_options(tmp_path / "a", {}), c) == ["GB-LAP-CBD"]  # more "+" terms first
    assert both(_with_options(tmp_path / "b", {"tie_break": ["cost", "terms"]}), c) == ["GB-LAP"]  # closest cost
    # without any tie-break the earlier row wins
    assert both(_with_options(tmp_path / "c", {"tie_break": [], "main_procedure_first": False}), c) == ["GB-LAP"]


def test_tier_order_option(tmp_path):
    from dipengine.rules import DEFAULT_OPTIONS

    order = list(DEFAULT_OPTIONS["tier_order"])
    order.remove("comprehensive:surgery")
    c = [case("K35.800", "47.0100"), case("K80.100")]
    assert both(_with_options(tmp_path / "a", {}), *c) == ["APP-LAP", "GB-C"]
    rs = _with_options(tmp_path / "b", {"tier_order": ["comprehensive:surgery"] + order})
    assert both(rs, *c) == ["ZH-K35-S", "GB-C"]  # only the surgical comprehensive tier moved
    assert rs.compiled.g_rank.tolist()[rs.groups["dip_code"].to_pylist().index("ZH-K35-S")] == 0


def test_proc_prefix_option(tmp_path):
    extra = [("PFX", "K40.9", "53.1", 7000), ("PFX2", "K40.9", "53.10/53.2", 7500)]
    c = [case("K40.900", "53.1000x001"), case("K40.900", "53.1100"), case("K40.900", "53.2100"),
         case("K40.900", "53.0100")]
    rs = _with_options(tmp_path / "a", {"proc_prefix": True}, extra)
    # 53.1000x001 starts with both 53.1 and 53.10 (cost 0: PFX's average is closer); 53.1100 only
    # with 53.1; 53.2100 with 53.2; 53.0100 is a whole code of HERNIA-B
    assert both(rs, *c) == ["PFX", "PFX", "PFX2", "HERNIA-B"]
    from dipengine.rules import check_rules

    t = tables()
    t["groups.csv"] = t["groups.csv"] + [dict(dip_code="PFX", dip_name="", group_type="core", dx_key="K40.9",
                                              proc_expr="53.1", treat_class="surgery", score=1.0, avg_cost=1.0)]
    problems = check_rules(write_rule_set(tmp_path / "b", t, {"name": "o", "version": "1"}))
    assert [(p.file, p.column) for p in problems] == [("groups.csv", "proc_expr")]  # a prefix needs the option


@pytest.mark.parametrize("options, key", [
    ({"main_procedure_first": "yes"}, "main_procedure_first"),
    ({"plus_main_term": "last"}, "plus_main_term"),
    ({"tier_order": ["core:surgery"]}, "tier_order"),
    ({"tie_break": ["cost", "cost"]}, "tie_break"),
    ({"tie_break": ["price"]}, "tie_break"),
    ({"proc_prefix": 1}, "proc_prefix"),
])
def test_bad_grouping_options(tmp_path, options, key):
    from dipengine.rules import check_rules

    problems = check_rules(write_rule_set(tmp_path / "r", tables(), {"name": "o", "version": "1", "options": options}))
    assert [(p.file, p.column) for p in problems] == [("manifest.toml", key)]
