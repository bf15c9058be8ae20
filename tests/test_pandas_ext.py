"""DataFrame.dip delegates to the batch functions: same results as the Arrow path."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

import dipengine.pandas_ext  # noqa: F401  (registers the accessor)
from dipengine.benefits import compute_benefits, load_benefits
from dipengine.grouper import group
from dipengine.policy import packaged_pricing_root
from dipengine.reader import read_cases
from dipengine.rules import packaged_rules_root
from dipengine.synth import synth_region

RULES = packaged_rules_root() / "demo"          # the shipped rule set, wherever the tests run from
PRICING = packaged_pricing_root() / "440200" / "2026"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run every test from an empty working directory: nothing may depend on the checkout's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def region():
    cases, hospitals = synth_region(2026, 2000, seed=5, bad_rows=0.02)
    return cases, hospitals


def test_paths_do_not_depend_on_the_working_directory():
    assert RULES.is_absolute() and (RULES / "manifest.toml").is_file()
    assert PRICING.is_absolute() and (PRICING / "policy.toml").is_file()


def test_group_matches_arrow_path(region):
    cases, hospitals = region
    df = cases.to_pandas()
    got = df.dip.group(RULES, hospitals=hospitals)
    want = group(read_cases(cases, hospitals), RULES)
    assert pa.Table.from_pandas(got, preserve_index=False).equals(want)
    assert got["case_id"].tolist() == df["case_id"].tolist()
    assert got["reason"].notna().sum() > 0


def test_validate_gives_fen_and_reasons(region):
    cases, hospitals = region
    out = cases.to_pandas().dip.validate(hospitals=hospitals)
    assert "total_cost_fen" in out.columns and "reason" in out.columns
    assert out["reason"].notna().sum() > 0


def test_accessor_refuses_a_frame_without_case_columns():
    with pytest.raises(AttributeError, match="main_dx"):
        pd.DataFrame({"case_id": ["a"]}).dip  # noqa: B018


def test_normalised_frame_is_grouped_as_is(region):
    cases, hospitals = region
    norm = read_cases(cases, hospitals)
    got = norm.to_pandas().dip.group(RULES)
    assert pa.Table.from_pandas(got, preserve_index=False).equals(group(norm, RULES))


def test_benefits_match_arrow_path_and_take_the_shipped_name(region):
    cases, hospitals = region
    df = cases.to_pandas()
    want = compute_benefits(read_cases(cases, hospitals), load_benefits(PRICING), hospitals)
    for pricing in (PRICING, str(PRICING), "440200/2026"):  # a directory, or the shipped REGION/YEAR
        got = df.dip.benefits(pricing, hospitals)
        assert pa.Table.from_pandas(got, preserve_index=False).equals(want), pricing
