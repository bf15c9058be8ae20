"""Policy loading: every contract §5 key understood, every missing/invalid/unknown key named."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from dipengine.errors import DataError, RuleSetError
from dipengine.io import sha256_file
from dipengine.manifest import write_manifest
from dipengine.policy import load_policy, parse_policy

# The contract §5 example (ILLUS values) plus the agreed budget point value key.
POLICY_TOML = (Path(__file__).parent / "data" / "contract_policy.toml").read_text(encoding="utf-8")

SAME_LEVEL_CSV = "dip_code,level,avg_cost\nG1,2,9000\nG1,3,10000.50\nG2,1,3000\n"


def policy_doc() -> dict:
    return tomllib.loads(POLICY_TOML)


def _dumps(doc: dict) -> str:
    """Tiny TOML writer for the policy shape (scalars, one level of tables, band list)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)
    lines = [f"{k} = {val(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines.extend(f"{kk} = {val(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def write_pricing(tmp_path, doc: dict | None = None, same_level: str = SAME_LEVEL_CSV):
    d = tmp_path / "pricing"
    d.mkdir(exist_ok=True)
    (d / "policy.toml").write_text(POLICY_TOML if doc is None else _dumps(doc), encoding="utf-8")
    (d / "same_level_avg.csv").write_text(same_level, encoding="utf-8")
    return d


def test_contract_example_loads(tmp_path):
    p = load_policy(write_pricing(tmp_path))
    assert p.region == "440200" and p.year == 2027
    assert p.budget_fen == {"employee": 63_000_000_000, "resident": 41_000_000_000}
    assert p.fund_available_fen("employee") == 61_110_000_000
    assert p.include_remote == "in_province" and p.settlement_method == "fund_plus_personal"
    assert p.band == (0.9, 1.1)
    assert p.budget_value == {"employee": 8.39, "resident": 8.39}
    assert p.level_coef == {1: 0.8, 2: 0.9, 3: 1.0} and p.basic_group_coef == 1.0
    assert p.deviation.high_ratio == {1: 2.0, 2: 2.0, 3: 2.0}
    assert [b.rule for b in p.bands] == ["partial_retention", "pay_due", "share_overspend", "cap"]
    assert p.bands[-1].upper is None and p.bands[0].share == 0.8
    assert p.same_level_avg.to_pylist()[1] == {"dip_code": "G1", "level": 3, "avg_cost_fen": 1_000_050}
    assert set(p.sha256) == {"policy.toml", "same_level_avg.csv"}
    # the optional extension keys took their documented defaults, and say so
    assert any("extreme_rule" in s for s in p.defaults_applied)


def test_policy_toml_path_also_accepted(tmp_path):
    d = write_pricing(tmp_path)
    assert load_policy(d / "policy.toml").year == 2027


@pytest.mark.parametrize("section,key", [
    (None, "region"), ("budget", "resident"), ("budget", "reserve_rate"), ("budget", "include_remote"),
    ("point_value", "settlement_method"), ("level_coefficients", "2"),
    ("level_coefficients", "basic_group"), ("deviation", "high_ratio"), ("deviation", "high_formula"),
    ("deviation", "blank_group_factor"), ("settlement", "quality_deposit"), ("settlement", "bands"),
])
def test_missing_required_key_is_named(section, key):
    doc = policy_doc()
    del (doc if section is None else doc[section])[key]
    with pytest.raises(RuleSetError) as e:
        parse_policy(doc)
    where = key if section is None else f"[{section}] {key}"
    assert f"missing {where}" in str(e.value)


def test_every_problem_reported_at_once():
    doc = policy_doc()
    del doc["deviation"]["high_ratio"]
    doc["budget"]["include_remote"] = "some"
    doc["deviation"]["hihg_formula"] = "ratio_minus_1"  # a typo must not pass silently
    with pytest.raises(RuleSetError) as e:
        parse_policy(doc)
    msgs = e.value.problems
    assert "missing [deviation] high_ratio" in msgs
    assert any(m.startswith("invalid [budget] include_remote") for m in msgs)
    assert "unknown key [deviation] hihg_formula" in msgs


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d["budget"].__setitem__("reserve_rate", 1.5), "invalid [budget] reserve_rate"),
    (lambda d: d["budget"].__setitem__("employee", 1.005), "invalid [budget] employee"),
    (lambda d: d.__setitem__("region", 440200), "invalid region"),
    (lambda d: d["point_value"].__setitem__("band", [1.1, 0.9]), "invalid [point_value] band"),
    (lambda d: d["deviation"].__setitem__("high_formula", "ratio"), "invalid [deviation] high_formula"),
    (lambda d: d["deviation"].__setitem__("low_ratio", 2.5), "needs low < 1 < high < extreme"),
    (lambda d: d["deviation"].__setitem__("apply_level_coef_to_outliers", "no"), "is not true or false"),
    (lambda d: d["settlement"]["bands"][1].__setitem__("upper", 0.7), "must be above the previous"),
    (lambda d: d["settlement"]["bands"][0].pop("share"), "missing [settlement] bands[0].share"),
    (lambda d: d["settlement"]["bands"][3].__setitem__("upper", 9.0), "last band must have no upper"),
    (lambda d: d["settlement"]["bands"][2].__setitem__("rule", "cap_at"), "bands[2].rule"),
    (lambda d: d["settlement"]["bands"][1].__setitem__("share", 0.5), "unknown key [settlement] bands[1].share"),
    (lambda d: d.__setitem__("extra", {"x": 1}), "unknown section [extra]"),
])
def test_invalid_values_are_named(mutate, expect):
    doc = copy.deepcopy(policy_doc())
    mutate(doc)
    with pytest.raises(RuleSetError) as e:
        parse_policy(doc)
    assert expect in str(e.value)


def test_per_level_thresholds_and_pool_budget_values():
    doc = policy_doc()
    doc["deviation"]["high_ratio"] = {"1": 2.0, "2": 2.5, "3": 3.0}
    doc["deviation"]["extreme_rule"] = "review_normal_pay"
    doc["point_value"]["budget_value_resident"] = 7.5
    kw = parse_policy(doc)
    assert kw["deviation"].high_ratio == {1: 2.0, 2: 2.5, 3: 3.0}
    assert kw["deviation"].extreme_rule == "review_normal_pay"
    assert kw["budget_value"] == {"employee": 8.39, "resident": 7.5}
    assert not any("extreme_rule" in s for s in kw["defaults_applied"])


def test_same_level_table_checked(tmp_path):
    with pytest.raises(DataError, match="avg_cost"):
        load_policy(write_pricing(tmp_path, same_level="dip_code,level,avg_cost\nG1,2,-5\n"))
    with pytest.raises(DataError, match="level"):
        load_policy(write_pricing(tmp_path, same_level="dip_code,level,avg_cost\nG1,4,5\n"))
    with pytest.raises(DataError, match="duplicate"):
        load_policy(write_pricing(tmp_path, same_level="dip_code,level,avg_cost\nG1,2,5\nG1,2,6\n"))
    d = write_pricing(tmp_path)
    (d / "same_level_avg.csv").unlink()
    with pytest.raises(DataError, match="same_level_avg.csv"):
        load_policy(d)


def test_manifest_sha256_verified(tmp_path):
    d = write_pricing(tmp_path)
    write_manifest(d, {"region": "440200"}, ["policy.toml", "same_level_avg.csv"])
    assert load_policy(d).year == 2027
    (d / "policy.toml").write_text(POLICY_TOML.replace("0.03", "0.04"), encoding="utf-8")
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_policy(d)


def test_malformed_toml_names_the_file(tmp_path):
    d = write_pricing(tmp_path)
    (d / "policy.toml").write_text("region = \n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_policy(d)
    assert "policy.toml" in str(e.value) and "malformed TOML" in str(e.value)


# --------------------------------------------------------------------------- issue 15: manifests, money, periods


def sealed_pricing(tmp_path, extra: str = "") -> Path:
    d = write_pricing(tmp_path)
    write_manifest(d, {"region": "440200", "year": 2027}, ["policy.toml", "same_level_avg.csv"])
    if extra:
        with open(d / "manifest.toml", "a", encoding="utf-8") as fh:
            fh.write(extra)
    return d


@pytest.mark.parametrize("entry, why", [
    ("../../etc/shadow", "the name must stay inside the directory"),
    ("/etc/passwd", "an absolute path is not allowed"),
])
def test_pricing_manifest_entry_outside_the_directory_names_the_line(tmp_path, entry, why):
    # Before: ../../etc/shadow was opened and hashed (and its digest printed in the mismatch).
    d = sealed_pricing(tmp_path, f'"{entry}" = "{"0" * 64}"\n')
    line = len((d / "manifest.toml").read_text(encoding="utf-8").splitlines())
    with pytest.raises(RuleSetError) as e:
        load_policy(d)
    ((f, msg),) = e.value.problems
    assert f == "manifest.toml" and msg.startswith(f"line {line}: [files] {entry!r}: {why}")
    assert str(e.value).startswith(f"{d / 'manifest.toml'}: line {line}: [files] {entry!r}: ")


def test_pricing_manifest_symlink_out_and_fifo(tmp_path):
    import os
    import threading

    (tmp_path / "outside.csv").write_text("x\n", encoding="utf-8")
    d = write_pricing(tmp_path)
    (d / "benefits.csv").symlink_to(tmp_path / "outside.csv")
    os.mkfifo(d / "pipe.csv")
    text = (f'region = "440200"\n[files]\n"benefits.csv" = "{"0" * 64}"\n"pipe.csv" = "{"0" * 64}"\n'
            f'"policy.toml" = "{sha256_file(d / "policy.toml")}"\n'
            f'"same_level_avg.csv" = "{sha256_file(d / "same_level_avg.csv")}"\n')
    (d / "manifest.toml").write_text(text, encoding="utf-8")
    got = []

    def run():
        try:
            load_policy(d)
        except RuleSetError as e:
            got.append(e.problems)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "load_policy blocked on a FIFO"
    assert [f for f, _ in got[0]] == ["manifest.toml", "manifest.toml"]
    assert got[0][0][1].startswith("line 3: [files] 'benefits.csv': the path leads outside the directory")
    assert got[0][1][1] == "line 4: [files] 'pipe.csv': not a regular file (a FIFO)"


def test_empty_pricing_manifest_is_an_error_naming_it(tmp_path):
    # Before: an empty manifest.toml sealed nothing and loaded silently.
    d = write_pricing(tmp_path)
    (d / "manifest.toml").write_text("", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_policy(d)
    assert str(e.value) == f"{d / 'manifest.toml'}: empty manifest (no keys and no [files] table)"


def test_pricing_manifest_must_list_the_policy_files(tmp_path):
    d = write_pricing(tmp_path)
    write_manifest(d, {"region": "440200"}, ["same_level_avg.csv"])
    with pytest.raises(RuleSetError) as e:
        load_policy(d)
    assert e.value.problems == [("policy.toml", "not listed in manifest.toml [files] (no sha256)")]


def test_policy_file_that_is_a_fifo_is_refused(tmp_path):
    import os

    d = tmp_path / "pricing"
    d.mkdir()
    os.mkfifo(d / "policy.toml")
    with pytest.raises(DataError, match="not a regular file"):
        load_policy(d)


@pytest.mark.parametrize("value, fen", [("630000000", 63_000_000_000), ("1234567.89", 123_456_789),
                                        ("0.07", 7), ("1e9", 100_000_000_000)])
def test_budgets_are_exact_fen(tmp_path, value, fen):
    text = POLICY_TOML.replace("employee = 630000000", f"employee = {value}")
    assert f"employee = {value}\n" in text
    d = write_pricing(tmp_path)
    (d / "policy.toml").write_text(text, encoding="utf-8")
    assert load_policy(d).budget_fen["employee"] == fen


def test_budget_with_more_than_two_decimals_is_refused(tmp_path):
    d = write_pricing(tmp_path)
    (d / "policy.toml").write_text(POLICY_TOML.replace("employee = 630000000", "employee = 1.005"),
                                   encoding="utf-8")
    with pytest.raises(RuleSetError, match=r"invalid \[budget\] employee: must be yuan with at most 2 decimals"):
        load_policy(d)


def test_same_level_avg_is_exact_half_up(tmp_path):
    p = load_policy(write_pricing(tmp_path, same_level="dip_code,level,avg_cost\nG1,2,1.005\nG1,3,2.675\n"))
    assert p.same_level_avg["avg_cost_fen"].to_pylist() == [101, 268]


def test_policy_check_period(tmp_path):
    from dipengine.policy import check_period

    p = load_policy(write_pricing(tmp_path))
    assert check_period(p, "2027") is None and check_period(p, "2027-12") is None
    msg = check_period(p, "2026-12")
    assert msg.endswith("are for 440200 2027; period 2026-12 is not in it")
    with pytest.raises(ValueError):
        check_period(p, "2027-00")


def test_load_policy_accepts_shipped_region_year(tmp_path, monkeypatch):
    from dipengine.policy import packaged_pricing_root

    monkeypatch.chdir(tmp_path)
    p = load_policy("440200/2026")  # before: "policy file not found" (the CLI accepted it)
    assert p.path == packaged_pricing_root() / "440200" / "2026" and p.year == 2026


def test_budget_value_needed_only_by_the_band():
    """``budget_value`` is optional (an annual clearing without a band never uses it); with a
    ``band`` it is required, because the band clamps around it."""
    doc = policy_doc()
    del doc["point_value"]["budget_value"]
    with pytest.raises(RuleSetError) as e:
        parse_policy(doc)
    assert "[point_value] budget_value" in str(e.value) and "band" in str(e.value)
    doc["point_value"].pop("band", None)
    kw = parse_policy(doc)
    assert kw["budget_value"] == {"employee": None, "resident": None} and kw["band"] is None


def test_settle_without_budget_value(tmp_path):
    """Annual clearing without ``budget_value`` (and no band) settles and reports none; a monthly
    run refuses it before writing anything, naming the file and the key."""
    import shutil

    from dipengine.errors import DataError
    from dipengine.pipeline import settle_to
    from dipengine.policy import resolve_pricing_dir
    from dipengine.rules import resolve_rules_dir
    from dipengine.synth import synth_region

    pricing = tmp_path / "pricing"
    shutil.copytree(resolve_pricing_dir("440200/2026"), pricing)
    toml = pricing / "policy.toml"
    text = "".join(line for line in toml.read_text(encoding="utf-8").splitlines(keepends=True)
                   if not line.startswith(("budget_value", "band ")))
    toml.write_text(text, encoding="utf-8")
    manifest = pricing / "manifest.toml"
    if manifest.exists():  # the pricing dir's own sha256 of policy.toml
        import hashlib
        import re

        digest = hashlib.sha256(toml.read_bytes()).hexdigest()
        m = manifest.read_text(encoding="utf-8")
        manifest.write_text(re.sub(r'("?policy\.toml"?\s*=\s*")[0-9a-f]{64}', lambda g: g.group(1) + digest, m),
                            encoding="utf-8")
    cases, hospitals = synth_region(2026, 300, seed=3)
    rules = str(resolve_rules_dir("demo"))
    res = settle_to(tmp_path / "annual", cases, rules, str(pricing), hospitals, "2026")
    pools = res.manifest["pools"]
    assert all(pools[p]["budget_value_yuan"] is None for p in pools)
    assert all(pools[p]["point_value_yuan"] > 0 for p in pools if pools[p]["points_e4"])
    with pytest.raises(DataError) as e:
        settle_to(tmp_path / "monthly", cases, rules, str(pricing), hospitals, "2026-03")
    assert "budget point value" in str(e.value) and "point_value.budget_value" in str(e.value)
    assert not (tmp_path / "monthly").exists()


# --- [deviation] high_inclusive and reference_by (issue 17 item 3) ----------------------------

POOL_LEVEL_CSV = "dip_code,level,pool,avg_cost\nG1,2,employee,9000\nG1,2,resident,6000\nG1,3,employee,10000\n"


def test_deviation_options_default_and_are_recorded(tmp_path):
    p = load_policy(write_pricing(tmp_path))
    assert p.deviation.high_inclusive is False and p.deviation.reference_by == "level"
    assert "[deviation] high_inclusive = false" in p.defaults_applied
    assert "[deviation] reference_by = 'level'" in p.defaults_applied
    assert p.as_dict()["deviation"]["high_inclusive"] is False
    assert p.as_dict()["deviation"]["reference_by"] == "level"
    doc = policy_doc()
    doc["deviation"].update(high_inclusive=True, reference_by="level_pool")
    kw = parse_policy(doc)
    assert kw["deviation"].high_inclusive is True and kw["deviation"].reference_by == "level_pool"
    assert not any("high_inclusive" in s or "reference_by" in s for s in kw["defaults_applied"])


@pytest.mark.parametrize("key, value, expect", [
    ("high_inclusive", "yes", "invalid [deviation] high_inclusive: 'yes' is not true or false"),
    ("reference_by", "pool", "invalid [deviation] reference_by: 'pool' is not one of level, level_pool"),
])
def test_deviation_options_invalid_values_are_named(key, value, expect):
    doc = policy_doc()
    doc["deviation"][key] = value
    with pytest.raises(RuleSetError) as e:
        parse_policy(doc)
    assert expect in e.value.problems


def test_same_level_table_keyed_by_pool(tmp_path):
    doc = policy_doc()
    doc["deviation"]["reference_by"] = "level_pool"
    p = load_policy(write_pricing(tmp_path, doc, same_level=POOL_LEVEL_CSV))
    assert p.same_level_avg.to_pylist() == [
        {"dip_code": "G1", "level": 2, "avg_cost_fen": 900_000, "pool": "employee"},
        {"dip_code": "G1", "level": 2, "avg_cost_fen": 600_000, "pool": "resident"},
        {"dip_code": "G1", "level": 3, "avg_cost_fen": 1_000_000, "pool": "employee"}]


def test_pool_column_and_reference_by_must_agree(tmp_path):
    # a pool column without the option: one line naming the file and the column
    d = write_pricing(tmp_path, same_level=POOL_LEVEL_CSV)
    with pytest.raises(DataError) as e:
        load_policy(d)
    msg = str(e.value)
    assert e.value.file == str(d / "same_level_avg.csv") and e.value.column == "pool"
    assert msg.startswith(f"{d / 'same_level_avg.csv'}, column 'pool': ") and "reference_by" in msg
    assert "\n" not in msg
    # the option without the column
    doc = policy_doc()
    doc["deviation"]["reference_by"] = "level_pool"
    d = write_pricing(tmp_path, doc)
    with pytest.raises(DataError) as e:
        load_policy(d)
    assert e.value.file == str(d / "same_level_avg.csv") and e.value.column == "pool"
    assert "required column missing" in str(e.value) and 'reference_by = "level_pool"' in str(e.value)
    # the same checks for a policy built from a document
    from dipengine.policy import policy_from_dict, read_same_level_avg
    with pytest.raises(DataError, match="column 'pool'"):
        policy_from_dict(policy_doc(), read_same_level_avg(write_pricing(tmp_path, same_level=POOL_LEVEL_CSV)
                                                           / "same_level_avg.csv"))


@pytest.mark.parametrize("csv, expect", [
    ("dip_code,level,pool,avg_cost\nG1,2,employee,9000\nG1,2,retired,6000\n",
     "row 3, column 'pool', value 'retired': pool must be employee or resident"),
    ("dip_code,level,pool,avg_cost\nG1,2,employee,9000\nG1,2,,6000\n",
     "row 3, column 'pool', value '': pool must be employee or resident"),
    ("dip_code,level,pool,avg_cost\nG1,2,employee,9000\nG1,2,employee,6000\n",
     "value 'G1|2|employee': duplicate dip_code and level and pool"),
])
def test_pool_column_values_checked(tmp_path, csv, expect):
    doc = policy_doc()
    doc["deviation"]["reference_by"] = "level_pool"
    with pytest.raises(DataError) as e:
        load_policy(write_pricing(tmp_path, doc, same_level=csv))
    assert expect in str(e.value)
