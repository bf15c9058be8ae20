"""Named presets of regional variants (issue 17 item 2): data files a rule set or policy names."""
from __future__ import annotations

import pyarrow as pa
import pytest

from dipengine.grouper import group
from dipengine.presets import PresetError, load_preset, preset_names
from dipengine.reference import group_table
from dipengine.rules import DEFAULT_OPTIONS, check_rules, load_rules, write_rule_set

from tests.test_grouper import both, case, tables
from tests.test_reference_agreement import cohort


def _rules(tmp_path, options):
    return load_rules(write_rule_set(tmp_path / "rs", tables(), {"name": "p", "version": "1", "options": options}))


def test_shipped_presets():
    assert preset_names() == ["hubei-base", "jining", "national"]
    for name in preset_names():
        p = load_preset(name)
        assert p.name == name and p.description and p.source and len(p.sha256) == 64
        assert set(p.options) <= set(DEFAULT_OPTIONS)


def test_unknown_preset(tmp_path):
    with pytest.raises(PresetError, match="unknown preset 'wuhan' \\(one of hubei-base, jining, national\\)"):
        load_preset("wuhan")
    d = write_rule_set(tmp_path / "r", tables(), {"name": "p", "version": "1", "options": {"preset": "wuhan"}})
    assert [(p.file, p.column) for p in check_rules(d)] == [("manifest.toml", "preset")]


def test_national_is_the_default(tmp_path, rules_features):
    rs = _rules(tmp_path / "n", {"preset": "national"})
    assert rs.options == DEFAULT_OPTIONS
    # the shipped feature rule set with the preset named groups 20,000 cases exactly as without it
    base = load_rules(rules_features)
    t = {f: getattr(base, f[:-4]) for f in ("groups.csv", "procedures.csv", "excluded_dx.csv", "excluded_proc.csv",
                                             "aux_coefficients.csv", "cci_weights.csv")}
    t["severity_dx.csv"] = pa.table({"dx_prefix": base.severity_dx["dx_prefix"], "level": pa.array(
        ["II" if v == 2 else "III" for v in base.severity_dx["level"].to_pylist()])})
    named = load_rules(write_rule_set(tmp_path / "f", t, {"name": "f", "version": "1",
                                                           "options": {"preset": "national"}}))
    cases = cohort(base, 20_000, 11)
    assert group(cases, named).equals(group(cases, base))


def test_jining_preset(tmp_path):
    rs = _rules(tmp_path / "j", {"preset": "jining"})
    assert rs.options["match_mode"] == "all_listed" and rs.options["main_procedure_first"] is True
    # all_listed: 51.2300+51.8800/51.1000 needs both 51.8800 and 51.1000
    cs = [case("K80.100", "51.2300", ["51.8800"]), case("K80.100", "51.2300", ["51.8800", "51.1000"])]
    assert both(rs, *cs) == ["GB-LAP", "GB-LAP-CBD"]
    assert both(_rules(tmp_path / "n", {}), *cs) == ["GB-LAP-CBD", "GB-LAP-CBD"]
    # a key the manifest gives itself overrides the preset's
    assert _rules(tmp_path / "o", {"preset": "jining", "match_mode": "any_of"}).options["match_mode"] == "any_of"


def test_hubei_base_preset(tmp_path):
    rs = _rules(tmp_path / "h", {"preset": "hubei-base"})
    assert rs.options["main_procedure_first"] is False and rs.options["plus_main_term"] == "any"
    # no main-procedure preference: with 47.0900 main and 47.0100 also done, the closer average wins
    c = case("K35.800", "47.0900", ["47.0100"], cost=10000)
    assert both(rs, c) == ["APP-LAP"] and both(_rules(tmp_path / "n", {}), c) == ["APP-OPEN"]
    # kinds core, basic, comprehensive: a conservative core group ranks above a basic surgical one
    tier = rs.options["tier_order"]
    assert tier.index("core:conservative") < tier.index("basic:surgery") < tier.index("comprehensive:surgery")
    # and the two orders of a "+" expression are one group for the rule-set check
    t = tables()
    t["groups.csv"] = t["groups.csv"] + [dict(t["groups.csv"][4], dip_code="GB-CBD-2",
                                              proc_expr="51.8800/51.1000+51.2300")]
    for preset, n in (("hubei-base", 1), ("national", 0)):
        d = write_rule_set(tmp_path / preset, t, {"name": "p", "version": "1", "options": {"preset": preset}})
        assert len(check_rules(d)) == n


def test_reference_follows_presets(tmp_path, rules_features):
    base = load_rules(rules_features)
    cases = cohort(base, 3000, 5)
    for name in preset_names():
        t = {f: getattr(base, f[:-4]) for f in ("groups.csv", "procedures.csv", "excluded_dx.csv",
                                                 "excluded_proc.csv", "aux_coefficients.csv", "cci_weights.csv")}
        t["severity_dx.csv"] = pa.table({"dx_prefix": base.severity_dx["dx_prefix"], "level": pa.array(
            ["II" if v == 2 else "III" for v in base.severity_dx["level"].to_pylist()])})
        rs = load_rules(write_rule_set(tmp_path / name, t, {"name": "f", "version": "1", "options": {"preset": name}}))
        fast, slow = group(cases, rs), group_table(cases, rs)
        assert fast["dip_code"].to_pylist() == slow["dip_code"].to_pylist(), name
