"""Patient-side benefits: rules loading, the calculation of dip-rules §8 and its invariants."""
from __future__ import annotations

import datetime as dt
from importlib import resources

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from dipengine._libs.benefits import accumulate_cap
from dipengine.benefits import (
    TERMS, BenefitSpiller, accumulate_cap_py, benefit_case, benefit_terms, benefit_walk, compute_benefits,
    load_benefits, reference_benefits,
)
from dipengine.errors import DataError
from dipengine.io import sha256_file

DEMO = resources.files("dipengine.data") / "benefits_demo.csv"
HEADER = ("insured_region,insurance_type,person_type,level,locality,filing,deductible,"
          "deductible_repeat,band_upper,ratio,annual_cap,class_b_self_rate\n")

HOSPITALS = pa.table({
    "hospital_id": ["L1", "L2", "L3", "P3", "X3", "X1"],
    "name": ["one", "two", "three", "shenzhen", "beijing", "beijing small"],
    "level": pa.array([1, 2, 3, 3, 3, 1], pa.int8()),
    "region": ["440200", "440200", "440200", "440300", "110100", "110100"],
    "coefficient": [float("nan")] * 6,
    "assessment_coef": [1.0] * 6,
})
HOSP_DICT = {h: (int(lv), r) for h, lv, r in zip(HOSPITALS["hospital_id"].to_pylist(),
                                                  HOSPITALS["level"].to_pylist(),
                                                  HOSPITALS["region"].to_pylist())}


@pytest.fixture(scope="module")
def demo():
    return load_benefits(str(DEMO))


def make_cases(rows: list[dict]) -> pa.Table:
    """A normalised case table (docs/architecture.md) from partial dicts."""
    base = {"case_id": None, "hospital_id": "L3", "patient_id": None, "insurance_type": "employee",
            "person_type": "in_service", "insured_region": "440200", "remote_filing": "none",
            "admit_date": dt.date(2027, 3, 1), "discharge_date": dt.date(2027, 3, 10),
            "total_cost_fen": 2_000_000, "out_of_catalogue_cost_fen": 100_000,
            "class_b_cost_fen": 500_000, "fund_paid_fen": None, "other_fund_paid_fen": None, "reason": None}
    full = [{**base, "case_id": f"c{i}", **r} for i, r in enumerate(rows)]
    types = {"admit_date": pa.date32(), "discharge_date": pa.date32(), "total_cost_fen": pa.int64(),
             "out_of_catalogue_cost_fen": pa.int64(), "class_b_cost_fen": pa.int64(),
             "fund_paid_fen": pa.int64(), "other_fund_paid_fen": pa.int64()}
    return pa.table({k: pa.array([r[k] for r in full], types.get(k, pa.string())) for k in base})


def one(demo_rules, **fields) -> dict:
    return compute_benefits(make_cases([fields]), demo_rules, HOSPITALS).to_pylist()[0]


def write(tmp_path, text, name="benefits.csv"):
    p = tmp_path / name
    p.write_text(HEADER + text, encoding="utf-8")
    return p


# ---------------------------------------------------------------- worked examples (dip-rules §8.4)


def test_worked_example_local_employee(demo):
    r = one(demo)
    assert r["policy_scope_fen"] == 1_850_000
    assert r["deductible_fen"] == 100_000
    assert r["fund_benefit_fen"] == 1_487_500
    assert r["patient_share_fen"] == 512_500
    assert r["locality"] == "local" and r["benefit_note"] is None and r["cap_reached"] is False


def test_worked_example_cross_province_temporary(demo):
    r = one(demo, hospital_id="X3", remote_filing="temporary")
    assert r["locality"] == "cross_province"
    assert r["fund_benefit_fen"] == 1_312_500
    assert r["patient_share_fen"] == 687_500


def test_worked_example_resident_level2(demo):
    r = one(demo, hospital_id="L2", insurance_type="resident", person_type="other")
    assert r["deductible_fen"] == 50_000
    assert r["fund_benefit_fen"] == 1_350_000


def test_worked_examples_on_a_minimal_table(tmp_path):
    p = write(tmp_path, "440200,employee,*,3,local,*,1000,500,,0.85,500000,0.10\n"
                        "440200,employee,*,3,cross_province,temporary,1000,500,,0.75,500000,0.10\n"
                        "440200,resident,*,2,local,*,500,500,,0.75,200000,0.10\n")
    rules = load_benefits(tmp_path)
    assert str(p) in rules.files
    out = compute_benefits(make_cases([{}, {"hospital_id": "X3", "remote_filing": "temporary"},
                                       {"hospital_id": "L2", "insurance_type": "resident"}]),
                           rules, HOSPITALS)
    assert out["fund_benefit_fen"].to_pylist() == [1_487_500, 1_312_500, 1_350_000]
    assert out["patient_share_fen"].to_pylist() == [512_500, 687_500, 650_000]


# ---------------------------------------------------------------- admissions over the year


def test_second_admission_uses_repeat_deductible_and_year_resets(demo):
    cases = make_cases([
        {"patient_id": "p", "discharge_date": dt.date(2027, 5, 1), "admit_date": dt.date(2027, 4, 20)},
        {"patient_id": "p", "discharge_date": dt.date(2027, 2, 1), "admit_date": dt.date(2027, 1, 20)},
        {"patient_id": "p", "discharge_date": dt.date(2028, 1, 5), "admit_date": dt.date(2027, 12, 28)},
        {"patient_id": "q", "discharge_date": dt.date(2027, 5, 1)},
    ])
    out = compute_benefits(cases, demo, HOSPITALS)
    # input order kept; the February discharge is the first admission of 2027
    assert out["case_id"].to_pylist() == ["c0", "c1", "c2", "c3"]
    assert out["admission_no"].to_pylist() == [2, 1, 1, 1]
    assert out["deductible_fen"].to_pylist() == [50_000, 100_000, 100_000, 100_000]
    # 17,500 + 500 eligible at 85% (repeat deductible 500 instead of 1,000)
    assert out["fund_benefit_fen"][0].as_py() == 1_530_000


def test_cases_without_patient_id_are_each_a_first_admission(demo):
    out = compute_benefits(make_cases([{}, {}, {}]), demo, HOSPITALS)
    assert out["admission_no"].to_pylist() == [1, 1, 1]


def test_same_discharge_day_ordered_by_admit_then_case_id(demo):
    d = dt.date(2027, 6, 1)
    cases = make_cases([
        {"patient_id": "p", "case_id": "b", "discharge_date": d, "admit_date": dt.date(2027, 5, 20)},
        {"patient_id": "p", "case_id": "a", "discharge_date": d, "admit_date": dt.date(2027, 5, 20)},
        {"patient_id": "p", "case_id": "z", "discharge_date": d, "admit_date": dt.date(2027, 5, 1)},
    ])
    assert compute_benefits(cases, demo, HOSPITALS)["admission_no"].to_pylist() == [3, 2, 1]


def test_annual_cap_accumulates_in_discharge_order(tmp_path):
    write(tmp_path, "440200,employee,*,3,local,*,0,0,,1,25000,0\n")
    rules = load_benefits(tmp_path)
    cases = make_cases([
        {"patient_id": "p", "discharge_date": dt.date(2027, 9, 1), "total_cost_fen": 1_000_000,
         "out_of_catalogue_cost_fen": 0, "class_b_cost_fen": 0},
        {"patient_id": "p", "discharge_date": dt.date(2027, 1, 10), "total_cost_fen": 1_000_000,
         "out_of_catalogue_cost_fen": 0, "class_b_cost_fen": 0},
        {"patient_id": "p", "discharge_date": dt.date(2027, 4, 10), "total_cost_fen": 1_000_000,
         "out_of_catalogue_cost_fen": 0, "class_b_cost_fen": 0},
        {"patient_id": "p", "discharge_date": dt.date(2027, 11, 1), "total_cost_fen": 1_000_000,
         "out_of_catalogue_cost_fen": 0, "class_b_cost_fen": 0},
    ])
    out = compute_benefits(cases, rules, HOSPITALS).to_pylist()
    # cap 25,000 yuan: Jan 10,000, Apr 10,000, Sep (third) gets the 5,000 left, Nov nothing
    assert [r["fund_benefit_fen"] for r in out] == [500_000, 1_000_000, 1_000_000, 0]
    assert [r["cap_cut_fen"] for r in out] == [500_000, 0, 0, 1_000_000]
    assert [r["cap_reached"] for r in out] == [True, False, False, True]
    assert [r["patient_share_fen"] for r in out] == [500_000, 0, 0, 1_000_000]


def test_segmented_ratio_bands(demo):
    # employee level 3 local: 85% up to 50,000 yuan eligible, 88% above; eligible 60,000
    r = one(demo, total_cost_fen=6_100_000, out_of_catalogue_cost_fen=0, class_b_cost_fen=0)
    assert r["eligible_fen"] == 6_000_000
    assert r["fund_benefit_fen"] == 5_000_000 * 85 // 100 + 1_000_000 * 88 // 100


def test_class_b_self_pay_rounds_half_up_once(tmp_path):
    write(tmp_path, "440200,employee,*,3,local,*,0,0,,0.5,500000,0.1\n")
    rules = load_benefits(tmp_path)
    # 乙类 5 fen x 10% = 0.5 fen -> 1 fen; scope 100 - 1 = 99 fen; fund 49.5 -> 50 fen
    r = one(rules, total_cost_fen=100, out_of_catalogue_cost_fen=0, class_b_cost_fen=5)
    assert r["class_b_self_fen"] == 1
    assert r["policy_scope_fen"] == 99
    assert r["fund_benefit_fen"] == 50
    assert r["patient_share_fen"] == 50


def test_deductible_larger_than_policy_scope(demo):
    r = one(demo, total_cost_fen=60_000, out_of_catalogue_cost_fen=0, class_b_cost_fen=0)
    assert r["deductible_fen"] == 60_000
    assert r["fund_benefit_fen"] == 0 and r["patient_share_fen"] == 60_000


# ---------------------------------------------------------------- localities, filings, precedence


@pytest.mark.parametrize("hospital, filing, locality, ratio_pct, ded_yuan", [
    ("L1", "none", "local", 92, 300),            # local level 1: filing irrelevant
    ("L1", "temporary", "local", 92, 300),
    ("P3", "long_term", "in_province", 85, 1000),
    ("P3", "referral", "in_province", 85, 1000),
    ("P3", "emergency", "in_province", 85, 1000),
    ("P3", "temporary", "in_province", 75, 1000),
    ("P3", "none", "in_province", 65, 1000),
    ("X1", "long_term", "cross_province", 92, 1000),  # remote: the insured region's level-3 deductible
    ("X1", "temporary", "cross_province", 82, 1000),
    ("X1", "none", "cross_province", 72, 1000),
])
def test_each_locality_and_filing(demo, hospital, filing, locality, ratio_pct, ded_yuan):
    r = one(demo, hospital_id=hospital, remote_filing=filing)
    assert r["locality"] == locality
    assert r["deductible_fen"] == ded_yuan * 100
    assert r["fund_benefit_fen"] == (1_850_000 - ded_yuan * 100) * ratio_pct // 100


def test_remote_patient_uses_insured_region_policy(tmp_path):
    # Shenzhen-insured patient treated in 440200: Shenzhen's table applies, in_province
    write(tmp_path, "440300,employee,*,3,in_province,*,800,800,,0.9,500000,0.05\n"
                    "440200,employee,*,3,local,*,1000,500,,0.85,500000,0.10\n")
    rules = load_benefits(tmp_path)
    r = one(rules, insured_region="440300", remote_filing="long_term")
    assert r["locality"] == "in_province"
    assert r["class_b_self_fen"] == 25_000 and r["deductible_fen"] == 80_000
    assert r["fund_benefit_fen"] == (2_000_000 - 100_000 - 25_000 - 80_000) * 9 // 10


def test_exact_person_type_beats_star(demo):
    retired = one(demo, person_type="retired")
    assert retired["fund_benefit_fen"] == 1_750_000 * 89 // 100
    other = one(demo, person_type="other")
    assert other["fund_benefit_fen"] == 1_487_500


def test_no_rule_no_table_unknown_hospital_and_rejected_rows(tmp_path):
    write(tmp_path, "440200,employee,in_service,3,local,*,1000,500,,0.85,500000,0.10\n")
    rules = load_benefits(tmp_path)
    cases = make_cases([{"person_type": "retired"}, {"insured_region": "999999"},
                        {"hospital_id": "NOPE"}, {"reason": "BAD_DATES"}, {}])
    out = compute_benefits(cases, rules, HOSPITALS).to_pylist()
    assert [r["benefit_note"] for r in out] == ["NO_BENEFIT_RULE", "NO_BENEFIT_TABLE", "UNKNOWN_HOSPITAL",
                                                "REJECTED", None]
    for r in out[:3]:
        assert r["fund_benefit_fen"] == 0 and r["patient_share_fen"] == 2_000_000
        assert r["policy_scope_fen"] is None
    assert out[3]["fund_benefit_fen"] is None and out[3]["patient_share_fen"] is None
    assert out[3]["case_id"] == "c3"
    assert out[4]["fund_benefit_fen"] == 1_487_500


def test_recorded_fund_difference(demo):
    out = compute_benefits(make_cases([{"fund_paid_fen": 1_500_000}, {}]), demo, HOSPITALS)
    assert out["fund_diff_fen"].to_pylist() == [12_500, None]


def test_accepts_pandas_and_record_batches(demo):
    cases = make_cases([{}, {"hospital_id": "X3"}])
    a = compute_benefits(cases, demo, HOSPITALS)
    assert compute_benefits(cases.to_batches()[0], demo, HOSPITALS).equals(a)
    assert compute_benefits(cases.to_pandas(), demo, HOSPITALS)["fund_benefit_fen"].equals(a["fund_benefit_fen"])


# ---------------------------------------------------------------- load-time validation


@pytest.mark.parametrize("body, column, fragment", [
    ("440200,employee,*,3,local,*,1000,500,,1.2,500000,0.1\n", "ratio", "outside [0, 1]"),
    ("440200,employee,*,3,local,*,1000,500,,0.8,500000,-0.1\n", "class_b_self_rate", "not a rate"),
    ("440200,worker,*,3,local,*,1000,500,,0.8,500000,0.1\n", "insurance_type", "unknown value"),
    ("440200,employee,*,3,remote,*,1000,500,,0.8,500000,0.1\n", "locality", "unknown value"),
    ("440200,employee,*,3,local,filed,1000,500,,0.8,500000,0.1\n", "filing", "unknown value"),
    ("440200,employee,*,4,local,*,1000,500,,0.8,500000,0.1\n", "level", "1, 2 or 3"),
    ("44020,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n", "insured_region", "6-digit"),
    ("440200,employee,*,3,local,*,1000.005,500,,0.8,500000,0.1\n", "deductible", "not an amount"),
    ("440200,employee,*,3,local,*,1000,500,,0.8,,0.1\n", "annual_cap", "empty"),
    ("440200,employee,*,3,local,*,1000,500,5000,0.8,500000,0.1\n"
     "440200,employee,*,3,local,*,1000,500,4000,0.8,500000,0.1\n"
     "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n", "band_upper", "not ascending"),
    ("440200,employee,*,3,local,*,1000,500,5000,0.8,500000,0.1\n"
     "440200,employee,*,3,local,*,1000,500,5000,0.9,500000,0.1\n"
     "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n", "band_upper", "not ascending"),
    ("440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n"
     "440200,employee,*,3,local,*,1000,500,,0.9,500000,0.1\n", "band_upper", "last band"),
    ("440200,employee,*,3,local,*,1000,500,5000,0.8,500000,0.1\n", "band_upper", "empty band_upper"),
    ("440200,employee,*,3,local,*,1000,500,5000,0.8,500000,0.1\n"
     "440200,employee,*,3,local,*,900,500,,0.9,500000,0.1\n", "deductible", "differs from line 2"),
    ("440200,employee,retired,3,local,*,1000,500,,0.8,500000,0.1\n"
     "440200,employee,*,3,local,none,1000,500,,0.8,500000,0.1\n", "person_type", "ambiguous"),
])
def test_bad_tables_name_line_column_value(tmp_path, body, column, fragment):
    write(tmp_path, body)
    with pytest.raises(DataError) as e:
        load_benefits(tmp_path)
    msg = e.value.one_line()
    assert "benefits.csv" in msg and repr(column) in msg and fragment in msg


def test_bad_value_message_names_line_and_value(tmp_path):
    write(tmp_path, "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n"
                    "440200,employee,*,2,local,*,1000,500,,1.5,500000,0.1\n")
    with pytest.raises(DataError, match=r"benefits\.csv:3.*'ratio'.*'1\.5'"):
        load_benefits(tmp_path)


def test_missing_and_unknown_columns(tmp_path):
    (tmp_path / "benefits.csv").write_text("insured_region,insurance_type\n440200,employee\n")
    with pytest.raises(DataError, match="person_type"):
        load_benefits(tmp_path)
    (tmp_path / "benefits.csv").write_text(HEADER.strip() + ",ratoi\n"
                                           "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1,1\n")
    with pytest.raises(DataError, match="ratoi.*unknown column"):
        load_benefits(tmp_path)


def test_region_defined_in_two_dirs(tmp_path):
    row = "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", row)
    write(tmp_path / "b", row)
    with pytest.raises(DataError, match="defined twice"):
        load_benefits([tmp_path / "a", tmp_path / "b"])


def test_several_dirs_give_several_regions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "440200,employee,*,3,local,*,1000,500,,0.85,500000,0.1\n")
    write(tmp_path / "b", "110100,employee,*,3,cross_province,*,1300,1300,,0.9,500000,0.1\n")
    rules = load_benefits([tmp_path / "a", tmp_path / "b"])
    cases = make_cases([{}, {"insured_region": "110100"}])
    out = compute_benefits(cases, rules, HOSPITALS)
    assert out["fund_benefit_fen"].to_pylist() == [1_487_500, (1_850_000 - 130_000) * 9 // 10]


def test_manifest_sha256_checked(tmp_path):
    p = write(tmp_path, "440200,employee,*,3,local,*,1000,500,,0.8,500000,0.1\n")
    (tmp_path / "manifest.toml").write_text(f'[files]\n"benefits.csv" = "{sha256_file(p)}"\n')
    assert load_benefits(tmp_path).n_rules == 1
    (tmp_path / "manifest.toml").write_text('[files]\n"benefits.csv" = "00"\n')
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_benefits(tmp_path)
    (tmp_path / "manifest.toml").write_text('[files]\n"policy.toml" = "00"\n')
    with pytest.raises(DataError, match="not listed"):
        load_benefits(tmp_path)


def test_demo_table_covers_every_case_key(demo):
    assert set(demo.regions) == {"440200", "440300", "441400", "360700", "110100"}
    assert (demo.lookup >= 0).all()


# ---------------------------------------------------------------- fast path vs twin, invariants


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**7), st.integers(0, 3 * 10**6)),
                min_size=0, max_size=40))
def test_cap_kernel_matches_python_twin(items):
    n = len(items)
    patient = np.array([p for p, _, _ in items], dtype=np.int64)
    raw = np.array([r for _, r, _ in items], dtype=np.int64)
    cap = np.array([c for _, _, c in items], dtype=np.int64)
    order = np.argsort(patient, kind="stable").astype(np.int64)
    fund = np.full(n, -7, np.int64)
    reached = np.full(n, -1, np.int8)
    accumulate_cap(order, patient, raw, cap, fund, reached)
    want_fund, want_reached = accumulate_cap_py(order.tolist(), patient.tolist(), raw.tolist(), cap.tolist())
    assert fund.tolist() == [want_fund[i] for i in range(n)]
    assert reached.astype(bool).tolist() == [want_reached[i] for i in range(n)]


SMALL_CAPS = (
    "440200,employee,*,1,local,*,300,150,2000,0.9,3000,0.1\n"
    "440200,employee,*,1,local,*,300,150,,0.95,3000,0.1\n"
    "440200,employee,*,3,local,*,1000,500,,0.85,5000,0.1\n"
    "440200,employee,retired,3,local,*,1000,500,,0.89,5000,0.05\n"
    "440200,employee,*,3,in_province,*,1000,500,,0.85,5000,0.1\n"
    "440200,employee,*,3,in_province,temporary,1000,500,,0.75,5000,0.1\n"
    "440200,employee,retired,3,in_province,temporary,1000,500,,0.79,5000,0.1\n"
    "440200,employee,retired,3,in_province,*,1000,500,,0.89,5000,0.1\n"
    "440200,resident,*,3,cross_province,*,900,900,1000,0.5,4000,0.08\n"
    "440200,resident,*,3,cross_province,*,900,900,,0.6,4000,0.08\n"
    "440300,employee,*,3,in_province,*,700,0,,0.8,6000,0.05\n"
)


@pytest.fixture(scope="module")
def small_caps(tmp_path_factory):
    d = tmp_path_factory.mktemp("caps")
    (d / "benefits.csv").write_text(HEADER + SMALL_CAPS)
    return load_benefits(d)


case_rows = st.fixed_dictionaries({
    # weighted towards keys the table covers, so most rows compute a benefit
    "hospital_id": st.sampled_from(["L1", "L3", "L3", "P3", "X3", "NOPE"]),
    "patient_id": st.sampled_from(["a", "b", "c", None]),
    "insurance_type": st.sampled_from(["employee"] * 4 + ["resident", None]),
    "person_type": st.sampled_from(["in_service", "retired", "other", None]),
    "insured_region": st.sampled_from(["440200"] * 4 + ["440300", "123456"]),
    "remote_filing": st.sampled_from(["none", "temporary", "long_term", None]),
    "discharge_date": st.dates(dt.date(2026, 11, 1), dt.date(2027, 2, 28)),
    "los": st.integers(0, 30),
    "total_cost_fen": st.integers(0, 2_000_000),
    "ooc_share": st.integers(0, 40),
    "class_b_fen": st.one_of(st.none(), st.integers(0, 500_000)),
    "other_fen": st.one_of(st.none(), st.just(0), st.integers(0, 300_000), st.integers(0, 3_000_000)),
    "case_id": st.sampled_from(["x", "y", "z", "w"]),
    "reason": st.sampled_from([None] * 6 + ["BAD_DATES"]),
})


def _hypothesis_rows(raw_rows, recorded: bool = False):
    """Case rows from ``case_rows`` draws; ``recorded``: a recorded fund payment on every fourth row."""
    rows = []
    for i, r in enumerate(raw_rows):
        total = r["total_cost_fen"]
        rows.append({
            "case_id": f"{r['case_id']}{i % 3}", "hospital_id": r["hospital_id"], "patient_id": r["patient_id"],
            "insurance_type": r["insurance_type"], "person_type": r["person_type"],
            "insured_region": r["insured_region"], "remote_filing": r["remote_filing"],
            "admit_date": r["discharge_date"] - dt.timedelta(days=r["los"]),
            "discharge_date": r["discharge_date"], "total_cost_fen": total,
            "out_of_catalogue_cost_fen": total * r["ooc_share"] // 100,
            "class_b_cost_fen": None if r["class_b_fen"] is None else min(r["class_b_fen"], total),
            "fund_paid_fen": total // 2 if recorded and i % 4 == 0 else None,
            "other_fund_paid_fen": r["other_fen"], "reason": r["reason"],
        })
    return rows


@settings(max_examples=80, deadline=None)
@given(st.lists(case_rows, min_size=1, max_size=25))
def test_vectorised_matches_reference_and_money_adds_up(small_caps, raw_rows):
    rows = _hypothesis_rows(raw_rows)
    table = make_cases(rows)
    got = compute_benefits(table, small_caps, HOSPITALS).to_pylist()
    want = reference_benefits(rows, small_caps, HOSP_DICT)
    for g, w, r in zip(got, want, rows):
        for k in ("locality", "policy_scope_fen", "deductible_fen", "fund_benefit_fen", "patient_share_fen",
                  "other_fund_fen", "cap_reached", "admission_no", "benefit_note"):
            assert g[k] == w[k], (k, g, w)
        if r["reason"] is None:
            # fund + other funds + patient = total cost, to the fen, unless the other funds recorded
            # exceed what the rules leave to the patient (patient share 0, floored)
            other = r["other_fund_paid_fen"] or 0
            assert g["other_fund_fen"] == other
            assert g["fund_benefit_fen"] >= 0 and g["patient_share_fen"] >= 0
            left = r["total_cost_fen"] - g["fund_benefit_fen"]
            assert g["patient_share_fen"] == max(left - other, 0)
            if other <= left:
                assert g["fund_benefit_fen"] + other + g["patient_share_fen"] == r["total_cost_fen"]
        else:
            assert g["other_fund_fen"] is None
    # per patient and year, the fund never pays beyond the cap
    fund_by_patient: dict = {}
    for g, r in zip(got, rows):
        if r["reason"] is None and r["patient_id"] and g["benefit_note"] is None:
            key = (r["patient_id"], r["discharge_date"].year)
            fund_by_patient[key] = fund_by_patient.get(key, 0) + g["fund_benefit_fen"]
    assert all(v <= 6000_00 for v in fund_by_patient.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(case_rows, min_size=1, max_size=30), st.integers(1, 7), st.integers(1, 5), st.integers(1, 2))
def test_terms_row_by_row_and_partitioned_walks_equal_the_whole_table(small_caps, raw_rows, batch, parts,
                                                                      workers):
    """benefit_terms depends on each row alone (any batching gives the same rows), and the
    BenefitSpiller (terms per batch, hash partitions by patient, walks on 1 or 2 threads) gives
    compute_benefits on the whole table, row for row, whatever the partition count."""
    table = make_cases(_hypothesis_rows(raw_rows, recorded=True))
    whole_terms = benefit_terms(table, small_caps, HOSPITALS)
    assert whole_terms.schema.names == [name for name, _ in TERMS]
    pieces = [benefit_terms(table.slice(a, batch), small_caps, HOSPITALS) for a in range(0, table.num_rows, batch)]
    assert pa.Table.from_batches(pieces).equals(pa.Table.from_batches([whole_terms]))
    want = compute_benefits(table, small_caps, HOSPITALS)
    assert benefit_walk(whole_terms).equals(want)
    spiller = BenefitSpiller(small_caps, HOSPITALS, partitions=parts, carry=("insurance_type",),
                             keep=("total_cost_fen",))
    for a in range(0, table.num_rows, batch):
        spiller.write(spiller.prepare(table.slice(a, batch)))
    seen = []
    spill, summaries = spiller.finish(workers=workers,
                                      summarise=lambda terms, result: seen.append(terms.num_rows) or result.num_rows)
    try:
        got = spill.read(0, table.num_rows)
        assert got.drop_columns(["insurance_type"]).equals(want)
        assert got["insurance_type"].to_pylist() == table["insurance_type"].to_pylist()
        assert sum(summaries) == sum(seen) == table.num_rows and len(summaries) == spill.partitions
    finally:
        spill.close()
    assert not spill.directory.exists()


def test_spiller_columns_and_bad_arguments(demo, tmp_path):
    """``columns`` narrows what read returns; unknown columns, output names as carry and
    partitions < 1 are ValueErrors; abort removes the spill."""
    table = make_cases([{"patient_id": "p"}, {"patient_id": "p"}, {"patient_id": None}])
    spiller = BenefitSpiller(demo, HOSPITALS, spill_dir=tmp_path, columns=("fund_benefit_fen", "benefit_note"))
    spiller.write(spiller.prepare(table))
    spill, _ = spiller.finish()
    got = spill.read(0, 3)
    assert got.column_names == ["fund_benefit_fen", "benefit_note"]
    assert got.equals(compute_benefits(table, demo, HOSPITALS).select(["fund_benefit_fen", "benefit_note"]))
    spill.close()
    with pytest.raises(ValueError, match="not a benefits output column"):
        BenefitSpiller(demo, HOSPITALS, spill_dir=tmp_path, columns=("nope",))
    with pytest.raises(ValueError, match="is a benefits output column"):
        BenefitSpiller(demo, HOSPITALS, spill_dir=tmp_path, keep=("fund_benefit_fen",))
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        BenefitSpiller(demo, HOSPITALS, spill_dir=tmp_path, partitions=0)
    spiller = BenefitSpiller(demo, HOSPITALS, spill_dir=tmp_path)
    spiller.write(spiller.prepare(table))
    spiller.abort()
    assert list(tmp_path.iterdir()) == []


def test_single_case_function_agrees_with_worked_example(demo):
    res = benefit_case({"insured_region": "440200", "insurance_type": "employee", "person_type": "in_service",
                        "total_cost_fen": 2_000_000, "out_of_catalogue_cost_fen": 100_000,
                        "class_b_cost_fen": 500_000}, demo, 3, "440200")
    assert (res["fund_benefit_fen"], res["patient_share_fen"]) == (1_487_500, 512_500)
    assert any("rule" in line for line in res["trace"])
    capped = benefit_case({"insured_region": "440200", "insurance_type": "employee",
                           "total_cost_fen": 2_000_000}, demo, 3, "440200",
                          admission_no=2, cap_used_fen=50_000_000 - 100_000)
    assert capped["fund_benefit_fen"] == 100_000 and capped["cap_reached"] is True
    assert capped["deductible_fen"] == 50_000


# ---------------------------------------------------------------- command line


CASES_CSV = """case_id,hospital_id,patient_id,insurance_type,person_type,insured_region,remote_filing,sex,age,admit_date,discharge_date,main_dx,total_cost,out_of_catalogue_cost,class_b_cost,fund_paid,patient_paid
a1,L3,p1,employee,in_service,440200,,M,50,2027-03-01,2027-03-10,K35.800,20000,1000,5000,14000,6000
a2,X3,p2,employee,in_service,440200,temporary,F,40,2027-03-01,2027-03-10,K35.800,20000,1000,5000,,
a3,L2,p3,resident,,440200,,F,40,2027-03-01,2027-03-10,K35.800,20000.00,1000,5000,,
a4,ZZ,p3,resident,,440200,,F,40,2027-03-01,2027-03-10,K35.800,20000.00,1000,5000,,
"""


def test_cli_benefits_writes_one_row_per_case(tmp_path, capsys):
    import dipengine.reader  # noqa: F401
    from dipengine.cli import main
    from dipengine.io import read_table

    (tmp_path / "cases.csv").write_text(CASES_CSV, encoding="utf-8")
    HOSPITALS.drop(["coefficient", "assessment_coef"]).to_pandas().to_csv(tmp_path / "h.csv", index=False)
    out = tmp_path / "out.parquet"
    rc = main(["benefits", "--pricing", str(DEMO), "--hospitals", str(tmp_path / "h.csv"),
               "--input", str(tmp_path / "cases.csv"), "--out", str(out)])
    assert rc == 0
    t = read_table(str(out))
    assert t["case_id"].to_pylist() == ["a1", "a2", "a3", "a4"]
    assert t["fund_benefit_fen"].to_pylist() == [1_487_500, 1_312_500, 1_350_000, None]
    assert t["benefit_note"].to_pylist() == [None, None, None, "REJECTED"]
    assert t["fund_diff_fen"].to_pylist()[0] == 1_400_000 - 1_487_500
    text = capsys.readouterr().out
    assert "employee" in text and "resident" in text and "REJECTED" in text


def test_cli_benefits_bad_table_exits_1_and_writes_nothing(tmp_path, capsys):
    from dipengine.cli import main

    (tmp_path / "pricing").mkdir()
    write(tmp_path / "pricing", "440200,employee,*,3,local,*,1000,500,,1.5,500000,0.1\n")
    (tmp_path / "cases.csv").write_text(CASES_CSV, encoding="utf-8")
    out = tmp_path / "out.parquet"
    rc = main(["benefits", "--pricing", str(tmp_path / "pricing"), "--hospitals", str(tmp_path / "none.csv"),
               "--input", str(tmp_path / "cases.csv"), "--out", str(out)])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("error:") and "'ratio'" in err and "Traceback" not in err


# ---------------------------------------------------------------- other funds (issue 14)


def test_other_funds_reduce_the_patient_share_not_the_fund(demo):
    """大额/大病/医疗救助 a case records pay part of what the rules leave to the patient."""
    out = compute_benefits(make_cases([
        {},                                                      # worked example: fund 14,875, patient 5,125
        {"other_fund_paid_fen": 100_000},                        # other funds 1,000: patient 4,125
        {"other_fund_paid_fen": 600_000},                        # more than the patient's part: floored at 0
        {"other_fund_paid_fen": 0},
        {"insured_region": "999999", "other_fund_paid_fen": 50_000},  # no table: the whole bill less other funds
        {"reason": "BAD_DATES", "other_fund_paid_fen": 50_000},
    ]), demo, HOSPITALS)
    names = out.column_names
    assert names[:7] == ["case_id", "locality", "policy_scope_fen", "deductible_fen", "fund_benefit_fen",
                         "patient_share_fen", "cap_reached"]
    assert "other_fund_fen" in names and out.schema.field("other_fund_fen").type == pa.int64()
    rows = out.to_pylist()
    assert [r["fund_benefit_fen"] for r in rows[:4]] == [1_487_500] * 4
    assert [r["patient_share_fen"] for r in rows[:4]] == [512_500, 412_500, 0, 512_500]
    assert [r["other_fund_fen"] for r in rows] == [0, 100_000, 600_000, 0, 50_000, None]
    assert rows[4]["benefit_note"] == "NO_BENEFIT_TABLE" and rows[4]["fund_benefit_fen"] == 0
    assert rows[4]["patient_share_fen"] == 2_000_000 - 50_000
    assert rows[5]["patient_share_fen"] is None and rows[5]["benefit_note"] == "REJECTED"


def test_single_case_function_takes_off_other_funds(demo):
    case = {"insured_region": "440200", "insurance_type": "employee", "person_type": "in_service",
            "total_cost_fen": 2_000_000, "out_of_catalogue_cost_fen": 100_000, "class_b_cost_fen": 500_000,
            "other_fund_paid_fen": 100_000}
    res = benefit_case(case, demo, 3, "440200")
    assert (res["fund_benefit_fen"], res["other_fund_fen"], res["patient_share_fen"]) == (1_487_500, 100_000, 412_500)
    assert any("other funds" in line for line in res["trace"])
    assert benefit_case({**case, "other_fund_paid_fen": 10**9}, demo, 3, "440200")["patient_share_fen"] == 0
    none = benefit_case({**case, "insured_region": "999999"}, demo, 3, "440200")
    assert none["benefit_note"] == "NO_BENEFIT_TABLE" and none["patient_share_fen"] == 1_900_000


def test_cli_benefits_reads_a_national_extract(tmp_path, capsys):
    """``--schema nhsa``: the same cases under 4101 field names and code values, same result."""
    from dipengine.cli import main
    from dipengine.io import read_table
    from test_cli_settle import nhsa_csv

    HOSPITALS.drop(["coefficient", "assessment_coef"]).to_pandas().to_csv(tmp_path / "h.csv", index=False)
    (tmp_path / "cases.csv").write_text(CASES_CSV, encoding="utf-8")
    (tmp_path / "national.csv").write_text(nhsa_csv(CASES_CSV), encoding="utf-8")
    base = ["benefits", "--pricing", str(DEMO), "--hospitals", str(tmp_path / "h.csv")]
    assert main(base + ["--input", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "c.parquet")]) == 0
    assert main(base + ["--input", str(tmp_path / "national.csv"), "--out", str(tmp_path / "n.parquet"),
                        "--schema", "nhsa"]) == 0
    want, got = read_table(str(tmp_path / "c.parquet")), read_table(str(tmp_path / "n.parquet"))
    assert got.equals(want) and want["fund_benefit_fen"].to_pylist()[:3] == [1_487_500, 1_312_500, 1_350_000]


def test_cli_benefits_other_funds_column(tmp_path, capsys):
    from dipengine.cli import main
    from dipengine.io import read_table

    HOSPITALS.drop(["coefficient", "assessment_coef"]).to_pandas().to_csv(tmp_path / "h.csv", index=False)
    lines = CASES_CSV.splitlines()
    text = "\n".join([lines[0] + ",other_fund_paid", lines[1].replace(",6000", ",5000") + ",1000"]
                     + [x + "," for x in lines[2:]]) + "\n"
    (tmp_path / "cases.csv").write_text(text, encoding="utf-8")
    out = tmp_path / "out.parquet"
    assert main(["benefits", "--pricing", str(DEMO), "--hospitals", str(tmp_path / "h.csv"),
                 "--input", str(tmp_path / "cases.csv"), "--out", str(out)]) == 0
    t = read_table(str(out))
    assert t["other_fund_fen"].to_pylist() == [100_000, 0, 0, None]
    assert t["patient_share_fen"].to_pylist()[0] == 412_500 and t["fund_benefit_fen"].to_pylist()[0] == 1_487_500
    assert "other funds taken off the patient share: 1,000.00 yuan over 1 cases" in capsys.readouterr().out
