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


# --------------------------------------------------------------------------- policies

def _policy(changes, drop=()):
    from dipengine.policy import policy_from_dict
    from test_policy import policy_doc
    from test_settlement import same_level

    doc = policy_doc()
    for key in drop:
        doc["deviation"].pop(key, None)
    doc.update(changes)
    return policy_from_dict(doc, same_level())


JINING_KEYS = ("high_formula", "low_inclusive", "extreme_rule", "blank_group_factor")


def test_policy_takes_the_presets_deviation_keys():
    p = _policy({"preset": "jining"}, drop=JINING_KEYS)
    d = p.deviation
    assert (d.high_formula, d.low_inclusive, d.extreme_rule, d.blank_group_factor) == (
        "ratio_minus_2_plus_coef", True, "review_normal_pay", 0.7)
    assert p.preset == {"name": "jining", "sha256": load_preset("jining").sha256}
    assert p.as_dict()["preset"]["name"] == "jining"
    # the policy's own keys win over the preset's
    assert _policy({"preset": "jining"}, drop=JINING_KEYS[1:]).deviation.high_formula == "ratio_minus_1"
    n = _policy({"preset": "national"}, drop=JINING_KEYS[:3])
    assert (n.deviation.high_formula, n.deviation.low_inclusive, n.deviation.extreme_rule) == (
        "ratio_minus_1", False, "high_formula")
    assert _policy({}).preset is None


def test_policy_preset_errors():
    from dipengine.errors import RuleSetError

    with pytest.raises(RuleSetError, match="unknown preset 'x'"):
        _policy({"preset": "x"})


def test_jining_preset_scores_as_jining():
    """dip-rules §6.4 [LOC-JN]: score 1,000 at a level-3 hospital (coefficient 1.0), reference
    10,000 yuan: cost 30,000 (ratio 3) is high: 1,000 × (3 − 2 + 1.0) = 2,000 points (national
    1,000 × (3 − 1) = 2,000 too); cost 25,000 (ratio 2.5): 1,500 points both ways; cost 5,000
    (ratio exactly 0.5) is low under Jining (≤), 500 points, and normal nationally, 1,000;
    cost 80,000 (ratio 8, extreme) is paid as normal under Jining, 1,000, nationally by the
    high formula, 7,000."""
    from test_settlement import YUAN, registry, scored_cases

    hospitals = registry(1)
    costs = [30_000 * YUAN, 25_000 * YUAN, 5_000 * YUAN, 80_000 * YUAN]
    out = {}
    for name in ("jining", "national"):
        policy = _policy({"preset": name}, drop=JINING_KEYS if name == "jining" else JINING_KEYS[:3])
        sc, _ = scored_cases(["H000"] * 4, 1000.0, costs, [0] * 4, [0] * 4, hospitals, policy)
        out[name] = (sc["deviation"].to_pylist(), sc["case_points"].to_pylist())
    assert out["jining"] == (["high", "high", "low", "extreme"], [2000.0, 1500.0, 500.0, 1000.0])
    assert out["national"] == (["high", "high", "normal", "extreme"], [2000.0, 1500.0, 1000.0, 7000.0])
