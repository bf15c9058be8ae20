"""The audit (issue 18): per-case flags (fast path vs the plain twin), hospital indicators on a
hand-computed fixture, the command's outputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipengine.audit import (
    CASE_FLAGS, DEVIATIONS, FEATURES, AuditOptions, coding_bits, coding_bits_reference, flag_cases,
    flag_cases_reference, flags_table, indicators, options_from)
from dipengine.errors import DataError


HOSPITALS = pa.array(["H1", "H2", "H3", "H4"])
GROUPS = pa.array(["G1", "G2", "G3"])


def features(rows) -> pa.Table:
    """A FEATURES table from partial rows written with names (hospital_id, dip_code, category,
    deviation, main_dx / sex / age / treat_class / has_main_proc), mapped to the codes the audit
    keeps; default: a scored normal case of H1, G1, K35."""
    base = dict(hospital_id="H1", level=3, scored=True, dip_code="G1", treat_class="conservative", category="K35",
                main_dx="K35.800", has_main_proc=False, sex="M", age=40, admit=0, discharge=5, los=5,
                discharge_mode=1, ratio=1.0, deviation="normal", aux=False, base_score=1000.0,
                total_cost_fen=1_000_000, special_review=False)
    out = []
    for i, r in enumerate(rows):
        row = dict(base, case_id=f"c{i}", patient_id=f"p{i}")
        row.update(r)
        cat = row.pop("category")
        row["cat"] = -1 if cat is None else (ord(cat[0]) - 65) * 100 + int(cat[1:])
        row["hosp"] = HOSPITALS.to_pylist().index(row.pop("hospital_id"))
        code = row.pop("dip_code")
        row["group"] = GROUPS.to_pylist().index(code) if row["scored"] and code is not None else -1
        dev = row.pop("deviation")
        row["deviation"] = DEVIATIONS.index(dev) if dev is not None else -1
        bits = coding_bits_reference(row.pop("main_dx"), row.pop("sex"), row.pop("age"), row.pop("treat_class"),
                                     row.pop("has_main_proc"))
        row["coding"] = bits if row["scored"] else 0
        out.append(row)
    return pa.Table.from_pylist(out, schema=FEATURES)


def table(f, fl):
    return flags_table(f, fl, HOSPITALS, GROUPS)


# --------------------------------------------------------------------------- the patterns, by hand

def test_readmission_windows():
    f = features([
        dict(patient_id="A", admit=0, discharge=5, los=5),
        dict(patient_id="A", admit=12, discharge=14, los=2),                    # 7 days later: readmission
        dict(patient_id="A", admit=40, discharge=42, los=2),                    # 26 days later: no
        dict(patient_id="B", admit=0, discharge=3, los=3, discharge_mode=2),    # transferred out ...
        dict(patient_id="B", admit=5, discharge=9, los=4, category="J18"),      # ... back 2 days later
        dict(patient_id="C", admit=0, discharge=3, los=3),
        dict(patient_id="C", admit=4, discharge=6, los=2, hospital_id="H2"),    # another hospital
        dict(patient_id="D", admit=0, discharge=3, los=3),
        dict(patient_id="D", admit=3, discharge=6, los=3, scored=False),        # rejected: not compared
    ])
    fl = flag_cases(f, AuditOptions())
    assert fl.masks["readmission"].tolist() == [False, True, False, False, False, False, False, False, False]
    assert fl.masks["transfer_readmission"].tolist() == [False] * 4 + [True] + [False] * 4
    assert fl.gap.tolist()[:5] == [-1, 7, 26, -1, 2]
    # the window is inclusive: 7 days is a readmission with readmit_days = 7, not with 6
    assert flag_cases(f, AuditOptions(readmit_days=7)).masks["readmission"][1]
    assert not flag_cases(f, AuditOptions(readmit_days=6)).masks["readmission"][1]
    anyh = flag_cases(f, AuditOptions(readmit_hospital="any", readmit_group="any"))
    assert anyh.masks["readmission"].tolist() == [False, True, False, False, True, False, True, False, False]
    t = table(f, fl)
    assert t["evidence"][1].as_py() == "readmitted 7 days after c0 (G1)"
    assert t["evidence"][4].as_py() == "back 2 days after a transfer out (c3)"
    assert t["flags"].to_pylist()[:5] == [None, "readmission", None, None, "transfer_readmission"]


def test_norm_based_patterns():
    # group G1: 20 cases with LOS 5, one of 12; 95 % quantile = 5, limit 1.5 × 5 = 7.5
    rows = [dict(los=5) for _ in range(20)] + [dict(los=12)]
    rows += [dict(dip_code="G2", discharge_mode=5 if i == 0 else 1) for i in range(60)]  # G2: 1 death in 60
    rows += [dict(dip_code="G3", ratio=0.2, los=1), dict(dip_code="G3", ratio=0.2, los=3),
             dict(dip_code="G3", ratio=0.5, los=1)]
    rows += [dict(sex="M", main_dx="O80.000"), dict(sex="F", main_dx="N40.x00"), dict(age=3, main_dx="P07.300"),
             dict(treat_class="surgery", has_main_proc=False), dict(treat_class="surgery", has_main_proc=True)]
    f = features(rows)
    fl = flag_cases(f, AuditOptions(long_los_quantile=0.95, long_los_factor=1.5))
    m = fl.masks
    assert np.flatnonzero(m["over_long_stay"]).tolist() == [20]
    # the default: 2.8 × the median, 14 days: 12 is not over-long
    assert not flag_cases(f, AuditOptions()).masks["over_long_stay"].any()
    assert fl.los_limit[20] == 7.5
    assert np.flatnonzero(m["low_risk_death"]).tolist() == [21]  # 0 other deaths in 59: below 0.2 %
    assert np.flatnonzero(m["low_standard"]).tolist() == [81]    # ratio 0.2 and 1 day (not 3 days, not 0.5)
    # against the group's median: 25 cases of 10 days and one of 2 days at ratio 0.6 (not below 0.35)
    g = features([dict(los=10) for _ in range(25)] + [dict(los=2, ratio=0.6), dict(los=2, ratio=0.9)])
    low = flag_cases(g, AuditOptions()).masks["low_standard"]
    assert np.flatnonzero(low).tolist() == [25]  # 2 <= 0.3 × 10 and 0.6 < 0.8; the 0.9 one is not
    assert table(g, flag_cases(g, AuditOptions()))["evidence"][25].as_py() == (
        "cost ratio 0.6 with a stay of 2 days (group median 10)")
    assert np.flatnonzero(m["inconsistent_coding"]).tolist() == [84, 85, 86, 87]
    ev = table(f, fl)["evidence"].to_pylist()
    assert ev[20] == "LOS 12 days > limit 7.5 of the group"
    assert ev[81] == "cost ratio 0.2 with a stay of 1 days (group median -)"  # 3 cases: no median
    assert ev[84] == "main diagnosis of the other sex" and ev[86] == "perinatal main diagnosis after the first year"
    assert ev[87] == "surgical group without a main procedure"


def test_indicators_by_hand():
    """Two level-3 hospitals. H1: 4 cases, scores 1000, 1000, 2000, 2000 (mean 1500), LOS 5, 5,
    10, 10, costs 10k, 10k, 30k, 30k yuan, one low, one high, one with an auxiliary subtype,
    one readmission. H2: 2 cases, score 1000, LOS 10, cost 20k, no subtype.
    Region: mean score (6000 + 2000) / 6 = 1333.33 -> CMI H1 = 1500 / 1333.33 = 1.125,
    H2 = 0.75. Group means: G1 (score 1000; H1 ×2, H2 ×2): LOS 7.5, cost 15k; G2 (H1 ×2):
    LOS 10, cost 30k. Time index H1 = 30 / (7.5 + 7.5 + 10 + 10) = 0.857142..., H2 = 20 / 15;
    cost index H1 = 80k / (15k + 15k + 30k + 30k) = 0.888..., H2 = 40k / 30k."""
    f = features([
        dict(patient_id="A", admit=0, discharge=5, los=5, deviation="low"),
        dict(patient_id="A", admit=8, discharge=13, los=5, aux=True),
        dict(dip_code="G2", base_score=2000.0, los=10, total_cost_fen=3_000_000, deviation="high"),
        dict(dip_code="G2", base_score=2000.0, los=10, total_cost_fen=3_000_000),
        dict(hospital_id="H2", los=10, total_cost_fen=2_000_000),
        dict(hospital_id="H2", los=10, total_cost_fen=2_000_000),
        dict(hospital_id="H3", scored=False),
    ])
    reg = pa.table({"hospital_id": ["H1", "H2", "H3"], "name": ["甲", "乙", "丙"], "level": pa.array([3, 3, 3], pa.int8()),
                    "region": ["440200"] * 3, "coefficient": [None] * 3, "assessment_coef": [1.0] * 3})
    opt = AuditOptions(long_los_min_cases=100, low_risk_min_cases=100, assessment_floor=0.9)
    ind = {r["hospital_id"]: r for r in indicators(f, flag_cases(f, opt), reg, opt).to_pylist()}
    assert set(ind) == {"H1", "H2"}  # no scored case: no row
    h1, h2 = ind["H1"], ind["H2"]
    assert h1["n_cases"] == 4 and h2["n_cases"] == 2
    assert h1["cmi"] == pytest.approx(1.125) and h2["cmi"] == pytest.approx(0.75)
    assert h1["los_index"] == pytest.approx(30 / 35) and h2["los_index"] == pytest.approx(20 / 15)
    assert h1["cost_index"] == pytest.approx(80 / 90) and h2["cost_index"] == pytest.approx(40 / 30)
    assert (h1["low_share"], h1["high_share"], h1["aux_share"]) == (0.25, 0.25, 0.25)
    assert h1["readmission_rate"] == 0.25 and h1["n_flagged"] == 1 and h2["n_flagged"] == 0
    assert h1["peer_aux_share"] == 0.0 and h2["peer_aux_share"] == 0.25  # the other level-3 hospital's
    assert (h1["rank"], h2["rank"]) == (1, 2)
    assert h1["assessment_coef"] == 0.9 and h2["assessment_coef"] == 1.0  # 1 − 0.5 × 25 % = 0.875, floor 0.9
    opt = AuditOptions(long_los_min_cases=100, low_risk_min_cases=100, assessment_floor=0.8)
    assert indicators(f, flag_cases(f, opt), reg, opt)["assessment_coef"].to_pylist() == [0.875, 1.0]
    assert h1["avg_los"] == 7.5 and h1["upcoding"] is False  # fewer than 100 cases: no signal


def test_upcoding_signal():
    rows = []
    for h, aux_every in (("H1", 2), ("H2", 10), ("H3", 10), ("H4", 10)):
        rows += [dict(hospital_id=h, aux=i % aux_every == 0) for i in range(200)]
    f = features(rows)
    reg = pa.table({"hospital_id": ["H1", "H2", "H3", "H4"], "name": list("abcd"), "level": pa.array([3] * 4, pa.int8()),
                    "region": ["440200"] * 4, "coefficient": [None] * 4, "assessment_coef": [1.0] * 4})
    ind = {r["hospital_id"]: r for r in indicators(f, flag_cases(f, AuditOptions()), reg, AuditOptions()).to_pylist()}
    assert ind["H1"]["upcoding"] and ind["H1"]["aux_share"] == 0.5 and ind["H1"]["peer_aux_share"] == 0.1
    assert not any(ind[h]["upcoding"] for h in ("H2", "H3", "H4")) and ind["H1"]["rank"] == 1


def test_options_are_checked():
    with pytest.raises(DataError, match="readmit_group"):
        options_from(None, readmit_group="similar")
    with pytest.raises(DataError, match="unknown audit option"):
        options_from(None, readmit_weeks=2)
    assert options_from(None, readmit_days=7).readmit_days == 7


# --------------------------------------------------------------------------- fast vs the twin

frow = st.fixed_dictionaries({
    "patient_id": st.sampled_from(["A", "B", "C", None]),
    "hospital_id": st.sampled_from(["H1", "H2"]),
    "scored": st.sampled_from([True, True, True, False]),
    "dip_code": st.sampled_from(["G1", "G2", "G3"]),
    "category": st.sampled_from(["K35", "J18", None]),
    "treat_class": st.sampled_from(["surgery", "conservative", None]),
    "has_main_proc": st.booleans(),
    "main_dx": st.sampled_from(["K35.800", "O80.000", "n40.x00", "P07.300", None]),
    "sex": st.sampled_from(["M", "F", None]),
    "age": st.sampled_from([0, 1, 40, None]),
    "admit": st.integers(0, 12),
    "los": st.sampled_from([0, 1, 2, 3, 5, 9, 20, None]),
    "discharge_mode": st.sampled_from([1, 1, 2, 3, 5, None]),
    "ratio": st.sampled_from([None, 0.1, 0.35, 0.5, 1.0, 3.0]),
    "no_discharge": st.booleans(),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frow, max_size=40), st.fixed_dictionaries({
    "readmit_days": st.sampled_from([0, 1, 3, 15]), "readmit_hospital": st.sampled_from(["same", "any"]),
    "readmit_group": st.sampled_from(["category", "group", "any"]), "low_cost_ratio": st.sampled_from([0.3, 0.5]),
    "short_stay_share": st.sampled_from([0.3, 0.5]), "short_stay_cost_ratio": st.sampled_from([0.4, 1.0]),
    "short_los": st.sampled_from([1, 2]), "long_los_quantile": st.sampled_from([0.5, 0.95, 1.0]),
    "long_los_factor": st.sampled_from([1.0, 1.5]), "long_los_min_cases": st.sampled_from([0, 1, 3]),
    "low_risk_death_rate": st.sampled_from([0.1, 0.5]), "low_risk_min_cases": st.sampled_from([1, 4])}))
def test_fast_path_equals_the_twin(rows, opts):
    for r in rows:
        los = r["los"] if r["los"] is not None else 0
        r["discharge"] = None if r.pop("no_discharge") else r["admit"] + los
    f = features(rows)
    opt = AuditOptions(**opts)
    fast = flag_cases(f, opt)
    slow = flag_cases_reference(f, opt)
    for k in CASE_FLAGS:
        assert fast.masks[k].tolist() == slow[k], k
    assert table(f, fast).num_rows == len(rows)


# --------------------------------------------------------------------------- the command

def test_cli_audit_outputs(tmp_path, capsys):
    from dipengine.cli import main
    from dipengine.synth import synth_region

    cases, hospitals = synth_region(2026, 6000, seed=3, bad_rows=0.02)
    pq.write_table(cases, tmp_path / "cases.parquet")
    import pyarrow.csv as pcsv

    pcsv.write_csv(hospitals, tmp_path / "hospitals.csv")
    args = ["audit", "--rules", "demo", "--pricing", "440200/2026", "--hospitals", str(tmp_path / "hospitals.csv"),
            "--input", str(tmp_path / "cases.parquet")]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "audit 2026: 6,000 cases" in text and "worklist (top 5)" in text
    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir()) == [".dipengine-output", "flags.parquet", "indicators.csv",
                                                     "indicators.parquet", "manifest.json", "worklist.csv"]
    flags = pq.read_table(out / "flags.parquet")
    assert flags["case_id"].to_pylist() == cases["case_id"].to_pylist()  # every case, in input order
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["counts"]["cases"] == 6000 and m["counts"]["readmission"] == sum(flags["readmission"].to_pylist())
    ind = pq.read_table(out / "indicators.parquet")
    assert ind["rank"].to_pylist() == list(range(1, ind.num_rows + 1))
    # the same inputs give the same bytes; a wider window flags at least as many readmissions
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for name in ("flags.parquet", "indicators.parquet", "indicators.csv", "worklist.csv", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert main(args + ["--out", str(tmp_path / "c"), "--readmit-hospital", "any", "--readmit-group", "any"]) == 0
    wide = json.loads((tmp_path / "c" / "manifest.json").read_text(encoding="utf-8"))
    assert wide["counts"]["readmission"] > m["counts"]["readmission"]


def test_cli_audit_assessment_feeds_the_registry(tmp_path, capsys):
    import shutil

    import pyarrow.csv as pcsv

    from dipengine.cli import main
    from dipengine.policy import resolve_pricing_dir
    from dipengine.synth import synth_region

    cases, hospitals = synth_region(2026, 3000, seed=4)
    pq.write_table(cases, tmp_path / "cases.parquet")
    pcsv.write_csv(hospitals, tmp_path / "hospitals.csv")
    pricing = tmp_path / "pricing"
    shutil.copytree(resolve_pricing_dir("440200/2026"), pricing)
    (pricing / "manifest.toml").unlink()
    with open(pricing / "policy.toml", "a", encoding="utf-8") as fh:
        fh.write("\n[audit]\nassessment_floor = 0.95\nreadmit_days = 10\n")
    args = ["audit", "--rules", "demo", "--pricing", str(pricing), "--hospitals", str(tmp_path / "hospitals.csv"),
            "--input", str(tmp_path / "cases.parquet"), "--out", str(tmp_path / "a")]
    assert main(args) == 0
    m = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
    assert m["options"]["readmit_days"] == 10 and m["options"]["assessment_floor"] == 0.95
    reg = pcsv.read_csv(tmp_path / "a" / "hospitals_assessed.csv")
    coef = reg["assessment_coef"].to_pylist()
    assert reg["hospital_id"].to_pylist() == hospitals["hospital_id"].to_pylist()
    assert all(0.95 <= c <= 1.0 for c in coef) and min(coef) < 1.0
    # the suggested registry is a registry settle reads
    assert main(["settle", "--rules", "demo", "--pricing", str(pricing), "--hospitals",
                 str(tmp_path / "a" / "hospitals_assessed.csv"), "--input", str(tmp_path / "cases.parquet"),
                 "--period", "2026", "--out", str(tmp_path / "s"), "--no-benefits"]) == 0
    with open(pricing / "policy.toml", "a", encoding="utf-8") as fh:
        fh.write("readmit_weeks = 2\n")
    assert main(args[:-1] + [str(tmp_path / "x")]) == 1
    assert "readmit_weeks" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_year_on_year_upcoding_signal(tmp_path):
    # four level-3 hospitals with the same share this year (no peer signal); H1's was 10 % the year before
    rows = []
    for h in ("H1", "H2", "H3", "H4"):
        rows += [dict(hospital_id=h, aux=i % 4 == 0) for i in range(200)]
    f = features(rows)
    reg = pa.table({"hospital_id": ["H1", "H2", "H3", "H4"], "name": list("abcd"), "level": pa.array([3] * 4, pa.int8()),
                    "region": ["440200"] * 4, "coefficient": [None] * 4, "assessment_coef": [1.0] * 4})
    opt = AuditOptions()
    hist = (np.array([200, 200, 200, 50]), np.array([20, 50, 48, 5]))
    ind = {r["hospital_id"]: r for r in indicators(f, flag_cases(f, opt), reg, opt, history=hist).to_pylist()}
    assert ind["H1"]["upcoding"] and ind["H1"]["aux_shift"] == pytest.approx(0.15)
    assert not ind["H2"]["upcoding"] and not ind["H3"]["upcoding"]
    assert not ind["H4"]["upcoding"]  # 50 cases the year before: too few to compare
    assert indicators(f, flag_cases(f, opt), reg, opt)["aux_shift"].null_count == 4  # no history: null


def test_cli_audit_with_a_history(tmp_path, capsys):
    import pyarrow.csv as pcsv

    from dipengine.cli import main
    from dipengine.synth import synth_region

    cases, hospitals = synth_region(2026, 3000, seed=6)
    prev, _ = synth_region(2025, 3000, seed=7, hospitals=hospitals)
    pq.write_table(cases, tmp_path / "cases.parquet")
    pq.write_table(prev, tmp_path / "prev.parquet")
    pcsv.write_csv(hospitals, tmp_path / "hospitals.csv")
    assert main(["audit", "--rules", "demo", "--pricing", "440200/2026", "--hospitals", str(tmp_path / "hospitals.csv"),
                 "--input", str(tmp_path / "cases.parquet"), "--history", str(tmp_path / "prev.parquet"),
                 "--out", str(tmp_path / "a")]) == 0
    ind = pq.read_table(tmp_path / "a" / "indicators.parquet")
    assert ind["aux_share_history"].null_count < ind.num_rows  # the earlier year's shares are there
    m = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
    assert m["parameters"]["history"] == [str(tmp_path / "prev.parquet")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["K35.800", "O80.000", "o99.000", "N40.x00", "C61.x00", "P07.300", "N97.900",
                                           "", None]),
                          st.sampled_from(["M", "F", None]), st.sampled_from([0, 1, 30, None]),
                          st.sampled_from(["surgery", "conservative", None]), st.booleans()), max_size=30))
def test_coding_bits_equal_the_twin(rows):
    cols = list(zip(*rows)) if rows else [[]] * 5
    fast = coding_bits(pa.array(cols[0], pa.string()), pa.array(cols[1], pa.string()), pa.array(cols[2], pa.int32()),
                       pa.array(cols[3], pa.string()), pa.array(cols[4], pa.bool_()))
    assert fast.tolist() == [coding_bits_reference(*r) for r in rows]


def test_high_score_share_signal():
    # H1 puts 40 % of its cases in the high-score group G2 (score 5000), its peers 5 %
    rows = []
    for h, every in (("H1", 5), ("H2", 20), ("H3", 20), ("H4", 20)):
        rows += [dict(hospital_id=h, dip_code="G2", base_score=5000.0) if i % every < (2 if h == "H1" else 1)
                 else dict(hospital_id=h) for i in range(200)]
    f = features(rows)
    reg = pa.table({"hospital_id": ["H1", "H2", "H3", "H4"], "name": list("abcd"), "level": pa.array([2] * 4, pa.int8()),
                    "region": ["440200"] * 4, "coefficient": [None] * 4, "assessment_coef": [1.0] * 4})
    ind = {r["hospital_id"]: r for r in indicators(f, flag_cases(f, AuditOptions()), reg, AuditOptions()).to_pylist()}
    assert ind["H1"]["high_score_share"] == 0.4 and ind["H1"]["peer_high_score_share"] == 0.05
    assert ind["H1"]["upcoding"] and not ind["H2"]["upcoding"] and ind["H1"]["aux_share"] == 0.0


# --------------------------------------------------------------------------- recall on planted cases

@pytest.fixture(scope="module")
def planted_region():
    import dataclasses

    from dipengine.policy import load_policy, resolve_pricing_dir
    from dipengine.synth import DEFAULT_PARAMS, synth_region

    params = dataclasses.replace(DEFAULT_PARAMS, over_long_share=0.02, upcoding_hospitals=0.1)
    cases, hospitals, truth = synth_region(2026, 100_000, seed=11, bad_rows=0.01, params=params, planted=True)
    return cases, hospitals, truth, load_policy(resolve_pricing_dir("440200/2026"))


def _recall_precision(truth, pattern, found: set, key="case_id"):
    import pyarrow.compute as pc

    planted = set(truth.filter(pc.equal(truth["pattern"], pattern))[key].to_pylist())
    hit = len(planted & found)
    return hit / len(planted), hit / max(len(found), 1), len(planted)


def test_recall_on_planted_patterns(planted_region):
    """synth plants 15-day readmissions, over-long stays (2 %), up-coding hospitals (10 %) and
    low-cost short stays; the audit with its default thresholds (readmissions compared at any
    hospital and group, as planted) finds them."""
    from dipengine.audit import audit

    cases, hospitals, truth, policy = planted_region
    r = audit(cases, "demo", policy, hospitals,
              options=AuditOptions(readmit_hospital="any", readmit_group="any", readmit_days=14))
    fl = r.flags

    def flagged(col):
        return set(fl.filter(fl[col])["case_id"].to_pylist())

    got = {
        "readmission_15d": _recall_precision(truth, "readmission_15d", flagged("readmission")),
        "over_long_stay": _recall_precision(truth, "over_long_stay", flagged("over_long_stay")),
        "upcoding_hospital": _recall_precision(truth, "upcoding_hospital",
                                               set(r.indicators.filter(r.indicators["upcoding"])["hospital_id"]
                                                   .to_pylist()), key="hospital_id"),
        "low_cost_short_stay": _recall_precision(truth, "low_cost_short_stay", flagged("low_standard")),
    }
    for pattern in ("readmission_15d", "over_long_stay", "upcoding_hospital", "low_cost_short_stay"):
        recall, precision, n = got[pattern]
        assert n > 0 and recall >= 0.95 and precision >= 0.8, (pattern, got[pattern])
