"""Reader/validator: normalised case table, reason codes, formats, streaming (dipengine.reader)."""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dipengine.case import read_cases_reference
from dipengine.errors import DataError
from dipengine.reader import SCHEMA, iter_cases, load_code_list, read_cases

HEADER = ("case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,"
          "main_proc,other_procs,total_cost,fund_paid,patient_paid,sex,note")
GOOD = "2027-03-01,2027-03-05,K35.800x001,47.0100,,1000.00,700.00,300.00,M"

# One row per reader-level defect, plus good rows; (row, expected reason, text the detail must hold).
DEFECT_ROWS = [
    (f"C01,H1,employee,440200,40,{GOOD},ok", None, None),
    (f",H1,employee,440200,40,{GOOD},no id", "MISSING_FIELD", "case_id: missing"),
    (f"C01,H1,employee,440200,40,{GOOD},repeat", "DUPLICATE_CASE", "case_id: 'C01'"),
    (f"C03,H1,worker,440200,40,{GOOD},enum", "BAD_VALUE", "insurance_type: 'worker'"),
    (f"C04,H1,employee,440200,40,2027-03-09,2027-03-05,K35.800x001,47.0100,,1000.00,700.00,300.00,M,dates",
     "BAD_DATES", "discharge_date: 2027-03-05 is before admit_date 2027-03-09"),
    (f"C05,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,47.0100,,1000.00,900.00,300.00,M,sum",
     "BAD_AMOUNT", "fund_paid + patient_paid = 1200.00 differs from total_cost = 1000.00"),
    (f"C06,H1,employee,440200,40,2027-03-01,2027-03-05,K35.,47.0100,,1000.00,700.00,300.00,M,dx",
     "INVALID_DX", "main_dx: 'K35.' is not a well-formed ICD-10 医保版 code"),
    (f"C07,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,47.0100,4701,1000.00,700.00,300.00,M,proc",
     "INVALID_PROC", "other_procs: '4701'"),
    (f"C08,H9,employee,440200,40,{GOOD},hosp", "UNKNOWN_HOSPITAL", "hospital_id: 'H9'"),
    (f"C09,H1,employee,440200,40,{GOOD},ok too", None, None),
]


@pytest.fixture
def hospitals_csv(tmp_path):
    path = tmp_path / "hospitals.csv"
    path.write_text("hospital_id,name,level,region\nH1,One,3,440200\nH2,Two,2,440200\n", encoding="utf-8")
    return path


def write_csv(tmp_path, lines, header=HEADER, name="cases.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def case_table(n=1, **cols):
    """A minimal valid case table of ``n`` rows, overridden by ``cols`` (lists)."""
    base = {
        "case_id": [f"C{i}" for i in range(n)],
        "hospital_id": ["H1"] * n,
        "insurance_type": ["employee"] * n,
        "insured_region": ["440200"] * n,
        "age": ["40"] * n,
        "admit_date": ["2027-03-01"] * n,
        "discharge_date": ["2027-03-05"] * n,
        "main_dx": ["K35.800x001"] * n,
        "total_cost": ["1000.00"] * n,
    }
    base.update(cols)
    return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in base.items()})


def test_each_defect_kind_gets_its_reason_and_rows_keep_their_order(tmp_path, hospitals_csv):
    path = write_csv(tmp_path, [r for r, _, _ in DEFECT_ROWS])
    out = read_cases(path, hospitals_csv)
    assert out.num_rows == len(DEFECT_ROWS)
    assert out["note"].to_pylist() == [r.split(",")[-1] for r, _, _ in DEFECT_ROWS]
    assert out["reason"].to_pylist() == [reason for _, reason, _ in DEFECT_ROWS]
    for detail, (_, _, text) in zip(out["reason_detail"].to_pylist(), DEFECT_ROWS):
        if text is None:
            assert detail is None
        else:
            assert text in detail
    assert out.schema.names[: len(SCHEMA)] == SCHEMA.names
    assert out.schema.remove(out.schema.get_field_index("note")) == SCHEMA


def test_first_defect_by_precedence_wins_and_all_are_listed():
    t = case_table(1, hospital_id=[None], sex=["Q"], main_dx=["K35."], total_cost=["-5"])
    out = read_cases(t, pa.table({"hospital_id": ["H1"], "level": ["3"], "region": ["440200"]}))
    assert out["reason"][0].as_py() == "MISSING_FIELD"
    detail = out["reason_detail"][0].as_py().split("; ")
    assert detail == ["hospital_id: missing (required)", "sex: 'Q' is not one of M, F, U",
                      "total_cost: '-5' is negative", "main_dx: 'K35.' is not a well-formed ICD-10 医保版 code"]
    assert out["total_cost_fen"][0].as_py() == -500  # parsed values stay on rejected rows


@pytest.mark.parametrize("column, value, text", [
    ("sex", "X", "sex: 'X' is not one of M, F, U"),
    ("person_type", "boss", "person_type: 'boss'"),
    ("remote_filing", "abroad", "remote_filing: 'abroad'"),
    ("discharge_mode", "7", "discharge_mode: '7' is not one of 1, 2, 3, 4, 5, 9"),
    ("age", "131", "age: '131' is outside 0..130 years"),
    ("age", "-1", "age: '-1' is outside"),
    ("age", "40.5", "age: '40.5' is not an integer"),
    ("age_days", "366", "age_days: '366' is outside 0..365 days"),
    ("insured_region", "4402", "insured_region: '4402' is not a 6-digit region code"),
    ("los", "four", "los: 'four' is not an integer"),
    ("los", "-2", "los: '-2' is negative"),
])
def test_bad_values(column, value, text):
    out = read_cases(case_table(1, **{column: [value]}))
    assert out["reason"].to_pylist() == ["BAD_VALUE"]
    assert text in out["reason_detail"][0].as_py()


@pytest.mark.parametrize("cols, text", [
    ({"admit_date": ["2027-02-30"]}, "admit_date: '2027-02-30' is not a date (YYYY-MM-DD)"),
    ({"discharge_date": ["05/03/2027"]}, "discharge_date: '05/03/2027' is not a date"),
    ({"los": ["9"]}, "los: 9 is inconsistent with the dates (4 days)"),
])
def test_bad_dates(cols, text):
    out = read_cases(case_table(1, **cols))
    assert out["reason"].to_pylist() == ["BAD_DATES"]
    assert text in out["reason_detail"][0].as_py()


def test_period_limits_the_discharge_date():
    t = case_table(3, discharge_date=["2027-03-05", "2027-04-01", "2026-12-31"],
                   admit_date=["2027-03-01", "2027-03-30", "2026-12-30"])
    assert read_cases(t, period="2027")["reason"].to_pylist() == [None, None, "BAD_DATES"]
    out = read_cases(t, period="2027-03")
    assert out["reason"].to_pylist() == [None, "BAD_DATES", "BAD_DATES"]
    assert "discharge_date: 2027-04-01 is outside the period 2027-03" in out["reason_detail"][1].as_py()
    with pytest.raises(ValueError, match="YYYY"):
        read_cases(t, period="March")


def test_los_is_derived_from_the_dates_with_a_minimum_of_one_day():
    t = case_table(3, admit_date=["2027-03-01", "2027-03-05", "2027-03-05"],
                   discharge_date=["2027-03-05", "2027-03-05", "2027-03-06"])
    out = read_cases(t)
    assert out["los"].to_pylist() == [4, 1, 1]
    given = read_cases(case_table(3, los=["5", "", "0"], admit_date=["2027-03-01", "2027-03-01", "2027-03-05"],
                                  discharge_date=["2027-03-05", "2027-03-05", "2027-03-05"]))
    assert given["los"].to_pylist() == [5, 4, 0]  # within one day of the dates: kept as given
    assert given["reason"].to_pylist() == [None, None, None]


def test_defaults_and_enumeration_case():
    out = read_cases(case_table(2, sex=[" f ", None], insurance_type=["Resident", "employee"]))
    assert out["person_type"].to_pylist() == ["other", "other"]
    assert out["remote_filing"].to_pylist() == ["none", "none"]
    assert out["discharge_mode"].to_pylist() == [1, 1]
    assert out["discharge_mode"].type == pa.int8()
    assert out["sex"].to_pylist() == ["F", None]
    assert out["insurance_type"].to_pylist() == ["resident", "employee"]
    assert out["reason"].to_pylist() == [None, None]


def test_money_is_exact_fen():
    t = case_table(3, total_cost=["0.30", "12345678.905", "1,234.565"], fund_paid=["0.10", None, "1000"],
                   patient_paid=["0.20", None, "234.56"])
    out = read_cases(t)
    assert out["fund_paid_fen"][0].as_py() + out["patient_paid_fen"][0].as_py() == 30
    assert out["total_cost_fen"].to_pylist() == [30, 1_234_567_891, 123_457]
    # beyond the plausibility limit (10 million yuan): rejected, but the exact value is kept
    assert out["reason"].to_pylist() == [None, "BAD_AMOUNT", None]
    assert "exceeds the limit of 10,000,000 yuan" in out["reason_detail"][1].as_py()
    assert out["fund_paid_fen"].to_pylist() == [10, None, 100000]


@pytest.mark.parametrize("cols, text", [
    ({"total_cost": ["abc"]}, "total_cost: 'abc' is not a number"),
    ({"fund_paid": ["-1"]}, "fund_paid: '-1' is negative"),
    ({"class_b_cost": ["1000.01"]}, "class_b_cost: 1000.01 exceeds total_cost 1000.00"),
    ({"out_of_catalogue_cost": ["2000"]}, "out_of_catalogue_cost: 2000.00 exceeds total_cost 1000.00"),
])
def test_bad_amounts(cols, text):
    out = read_cases(case_table(1, **cols))
    assert out["reason"].to_pylist() == ["BAD_AMOUNT"]
    assert text in out["reason_detail"][0].as_py()


def test_paid_amounts_may_differ_from_total_by_one_yuan():
    t = case_table(2, total_cost=["100.00", "100.00"], fund_paid=["60.00", "60.00"],
                   patient_paid=["41.00", "41.01"])
    assert read_cases(t)["reason"].to_pylist() == [None, "BAD_AMOUNT"]


def test_typed_money_columns():
    t = case_table(3, total_cost=pa.array([Decimal("10.05"), Decimal("0.10"), None], pa.decimal128(12, 2)),
                   fund_paid=pa.array([0.1 + 0.2, None, float("nan")]))
    out = read_cases(t)
    assert out["total_cost_fen"].to_pylist() == [1005, 10, 0]
    assert out["fund_paid_fen"].to_pylist() == [30, None, None]
    assert out["reason"].to_pylist() == [None, None, "MISSING_FIELD"]


@pytest.mark.parametrize("value, expected", [
    ("K80.000x002|J18.900", ["K80.000x002", "J18.900"]),
    ("K80.000x002,J18.900", ["K80.000x002", "J18.900"]),
    (" k80.000X002 ， j18.900 ｜", ["K80.000x002", "J18.900"]),
    ("A01.000x005+J17.0*|I10.x00", ["A01.000x005+J17.0*", "I10.x00"]),
    ("", []),
    (None, []),
    ("||", []),
])
def test_list_columns_from_text(value, expected):
    out = read_cases(case_table(1, other_dx=pa.array([value], pa.string())))
    assert out["other_dx"].to_pylist() == [expected]
    assert out["reason"].to_pylist() == [None]


def test_list_columns_from_lists():
    lists = pa.array([["51.2300x001", " 47.0100 ", None, ""], [], None], pa.list_(pa.string()))
    out = read_cases(case_table(3, other_procs=lists))
    assert out["other_procs"].to_pylist() == [["51.2300x001", "47.0100"], [], []]
    assert out["other_procs"].type == pa.list_(pa.string())


@pytest.mark.parametrize("raw, normal", [
    ("K80.000x002", "K80.000x002"),
    ("A01.000x005+J17.0*", "A01.000x005+J17.0*"),
    (" k35.800X001", "K35.800x001"),
    ("ｋ３５．８００ｘ００１", "K35.800x001"),
])
def test_diagnosis_forms(raw, normal):
    out = read_cases(case_table(1, main_dx=[raw]))
    assert out["main_dx"].to_pylist() == [normal]
    assert out["reason"].to_pylist() == [None]


def test_unknown_secondary_diagnosis_is_only_a_warning():
    out = read_cases(case_table(2, other_dx=["ZZZ|K35.800x001", "K35.800x001"]))
    assert out["reason"].to_pylist() == [None, None]
    assert out["reason_detail"].to_pylist() == [
        "warning: other_dx: 'ZZZ' is not a well-formed ICD-10 医保版 code", None]


def test_code_lists(tmp_path):
    dx = tmp_path / "dx.tsv"
    dx.write_text("code\tname\nK35.800x001\tA\nA01.000x005+J17.0*\tB\n", encoding="utf-8")
    t = case_table(4, main_dx=["K35.800x001", "K35.900", "A01.000x005", "A01.000x005+J17.0*"],
                   main_proc=["47.0100", "47.0900", None, None], other_dx=["K35.900", "", "", ""])
    out = read_cases(t, code_lists={"dx": dx, "proc": ["47.0100"]})
    assert out["reason"].to_pylist() == [None, "INVALID_DX", None, None]
    assert out["reason_detail"].to_pylist()[:2] == [
        "warning: other_dx: 'K35.900' is not in the code list",
        "main_dx: 'K35.900' is not in the code list; main_proc: '47.0900' is not in the code list"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("dx\tname\nK35.8\tA\n", encoding="utf-8")
    with pytest.raises(DataError, match="code"):
        read_cases(t, code_lists={"dx": bad})


def test_every_official_code_is_well_formed(icd10_path, icd9_path):
    dx = load_code_list(icd10_path)
    proc = load_code_list(icd9_path)
    n = max(len(dx), len(proc))
    t = case_table(n, main_dx=pa.array(np.resize(dx.to_numpy(zero_copy_only=False), n)),
                   main_proc=pa.array(np.resize(proc.to_numpy(zero_copy_only=False), n)))
    out = read_cases(t, code_lists={"dx": icd10_path, "proc": icd9_path})
    bad = out.filter(out["reason"].is_valid())
    assert bad.num_rows == 0, bad["reason_detail"].to_pylist()[:5]
    assert out["main_dx"].equals(t["main_dx"])  # already in normal form


def test_unknown_hospital_only_with_a_registry(hospitals_csv):
    t = case_table(2, hospital_id=["H2", "H3"])
    assert read_cases(t)["reason"].to_pylist() == [None, None]
    assert read_cases(t, hospitals_csv)["reason"].to_pylist() == [None, "UNKNOWN_HOSPITAL"]


def test_extra_columns_are_carried_through_untouched():
    t = case_table(2).append_column("ward", pa.array([7, None], pa.int16())).append_column(
        "reason", pa.array(["old", "old"]))
    out = read_cases(t)
    assert out["ward"].type == pa.int16() and out["ward"].to_pylist() == [7, None]
    assert out.column_names.count("reason") == 1 and out["reason"].to_pylist() == [None, None]


def test_typed_inputs_from_pandas():
    df = pd.DataFrame({
        "case_id": ["A", "B", "C"], "hospital_id": ["H1"] * 3, "insurance_type": ["employee"] * 3,
        "insured_region": [440200] * 3, "age": [40, np.nan, 3.0],
        "admit_date": pd.to_datetime(["2027-03-01 00:00", "2027-03-01 00:00", "2027-03-01 10:30"]),
        "discharge_date": [dt.date(2027, 3, 5)] * 3,
        "main_dx": ["K35.800x001"] * 3, "total_cost": [1000.0, 5.5, 0.125],
        "other_dx": [["J18.900"], [], ["I10.x00", "E11.900"]],
    })
    out = read_cases(df)
    assert out["age"].to_pylist() == [40, None, 3]
    assert out["insured_region"].to_pylist() == ["440200"] * 3
    assert out["admit_date"].to_pylist() == [dt.date(2027, 3, 1)] * 3
    assert out["total_cost_fen"].to_pylist() == [100000, 550, 13]
    assert out["reason"].to_pylist() == [None, "MISSING_FIELD", None]
    assert out["other_dx"].to_pylist() == [["J18.900"], [], ["I10.x00", "E11.900"]]


def test_all_null_columns_of_null_type():
    n = 3
    t = case_table(n)
    for name in ("hospital_id", "main_dx", "age", "admit_date", "total_cost", "sex", "person_type",
                 "main_proc", "other_dx", "los", "fund_paid"):
        if name in t.column_names:
            t = t.drop_columns([name])
        t = t.append_column(name, pa.nulls(n))
    out = read_cases(t)
    assert out["reason"].to_pylist() == ["MISSING_FIELD"] * n
    detail = out["reason_detail"][0].as_py()
    for name in ("hospital_id", "age", "admit_date", "main_dx", "total_cost"):
        assert f"{name}: missing (required)" in detail
    assert out["other_dx"].to_pylist() == [[]] * n and out["person_type"].to_pylist() == ["other"] * n
    assert out["total_cost_fen"].to_pylist() == [0] * n


def test_timestamps_as_text_are_tolerated():
    out = read_cases(case_table(2, admit_date=["2027-03-01T08:00:00", "2027-03-01 23:59"]))
    assert out["admit_date"].to_pylist() == [dt.date(2027, 3, 1)] * 2
    assert out["reason"].to_pylist() == [None, None]


def test_missing_required_column_is_a_file_error(tmp_path):
    path = write_csv(tmp_path, ["C1,H1,employee,440200,40,2027-03-01,2027-03-05,1000"],
                     header="case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,total_cost")
    with pytest.raises(DataError) as e:
        read_cases(path)
    assert "main_dx" in str(e.value) and str(path) in str(e.value)


def test_impossible_column_type_is_a_file_error():
    t = case_table(1, age=pa.array([[40]], pa.list_(pa.int64())))
    with pytest.raises(DataError, match="'age'"):
        read_cases(t)


def test_mixed_type_dataframe_column_is_a_file_error():
    df = case_table(2).to_pandas()
    df["age"] = pd.Series([40, "x"], dtype=object)
    with pytest.raises(DataError, match="cannot read"):
        read_cases(df)


def test_unreadable_file_is_a_file_error(tmp_path):
    path = tmp_path / "cases.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cases.parquet"):
        read_cases(path)


def test_all_formats_give_the_same_table(tmp_path):
    lines = [r for r, _, _ in DEFECT_ROWS]
    csv = write_csv(tmp_path, lines)
    text_table = pcsv.read_csv(csv, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in HEADER.split(",")}, strings_can_be_null=False))
    pq.write_table(text_table, tmp_path / "cases.parquet")
    feather.write_feather(text_table, tmp_path / "cases.arrow")
    (tmp_path / "ds").mkdir()
    pq.write_table(text_table.slice(0, 4), tmp_path / "ds" / "part-0.parquet")
    pq.write_table(text_table.slice(4), tmp_path / "ds" / "part-1.parquet")
    expected = read_cases(csv)
    for source in (tmp_path / "cases.parquet", tmp_path / "cases.arrow", tmp_path / "ds",
                   str(tmp_path / "ds" / "*.parquet"), text_table.to_pandas(), text_table):
        out = read_cases(source)
        # extras are carried untouched, so pandas' own string type may come back for them
        assert out.drop_columns(["note"]).equals(expected.drop_columns(["note"])), source
        assert out["note"].to_pylist() == expected["note"].to_pylist()


def test_duplicates_are_found_across_batches_and_files(tmp_path):
    t = case_table(7, case_id=["A", "B", "C", "A", "D", "B", "A"])
    batches = list(iter_cases(t, batch_size=2))
    assert [b.num_rows for b in batches] == [2, 2, 2, 1]
    reasons = pa.Table.from_batches(batches)["reason"].to_pylist()
    assert reasons == [None, None, None, "DUPLICATE_CASE", None, "DUPLICATE_CASE", "DUPLICATE_CASE"]
    pq.write_table(t.slice(0, 3), tmp_path / "a.parquet")
    pq.write_table(t.slice(3), tmp_path / "b.parquet")
    assert read_cases([tmp_path / "a.parquet", tmp_path / "b.parquet"])["reason"].to_pylist() == reasons


def test_progress_is_called_per_batch():
    calls = []
    list(iter_cases(case_table(5), batch_size=2, progress=lambda done, total: calls.append((done, total))))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_empty_input_gives_an_empty_table(tmp_path):
    path = write_csv(tmp_path, [])
    out = read_cases(path)
    assert out.num_rows == 0
    assert out.schema.names[: len(SCHEMA)] == SCHEMA.names


# --- the fast path agrees with the row-by-row reference -------------------------------------

_text = st.text(alphabet="AKx0159.-+*| ,", max_size=8)
_cells = {
    "case_id": st.sampled_from(["A", "B", "C", " A", "", None]),
    "hospital_id": st.sampled_from(["H1", "H2", "H9", "", None]),
    "insurance_type": st.sampled_from(["employee", "Resident", "x", None]),
    "person_type": st.sampled_from(["retired", "child", "boss", None]),
    "insured_region": st.sampled_from(["440200", "44020", "", None]),
    "sex": st.sampled_from(["M", "f", "Q", None]),
    "age": st.one_of(st.sampled_from(["40", "0", "131", "-1", "4.0", "4.5", "x", "", "1e2", None]),
                     st.integers(-5, 200).map(str)),
    "age_days": st.sampled_from(["10", "366", "", None]),
    "los": st.sampled_from(["1", "4", "9", "-1", "", None]),
    "discharge_mode": st.sampled_from(["1", "5", "7", "300", "x", None]),
    "admit_date": st.sampled_from(["2027-03-01", "2027-02-30", "2027-03-05 10:00", "bad", "", None,
                                   "2027/3/1", "2027/02/30", "20270301", "20270301083000", "2027/3/1 8:30"]),
    "discharge_date": st.sampled_from(["2027-03-05", "2027-02-27", "2027-04-02", "2026-12-31", None,
                                       "2027/03/05 10:00:00", "20270230", "2027-03-05T23:59:59", "2027/3/5/"]),
    "main_dx": st.one_of(st.sampled_from(["K35.800x001", " k35.8 ", "A01.000x005+J17.0*", "K35.", "", None]),
                         _text),
    "main_proc": st.one_of(st.sampled_from(["47.0100", "4701", None]), _text),
    "other_dx": st.one_of(st.sampled_from(["K35.800|J18.900", "ZZ,K35.8", "", None]), _text),
    "other_procs": st.one_of(st.sampled_from(["47.0100|51.2300x001", "47.01,99", None]), _text),
    "total_cost": st.one_of(st.sampled_from(["1000", "0.005", "-1", "abc", "20000000", "", None]),
                            st.decimals(0, 10**6, places=3).map(str)),
    "fund_paid": st.sampled_from(["700", "700.50", "1,000", None]),
    "patient_paid": st.sampled_from(["300", "299", None]),
    "class_b_cost": st.sampled_from(["10", "5000", None]),
}
_rows = st.fixed_dictionaries(_cells)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_rows, min_size=1, max_size=12), batch=st.integers(1, 5),
       period=st.sampled_from([None, "2027", "2027-03"]))
def test_fast_path_matches_reference(rows, batch, period):
    t = pa.table({name: pa.array([r[name] for r in rows], pa.string()) for name in _cells})
    hospitals = pa.table({"hospital_id": ["H1", "H2"], "level": ["3", "2"], "region": ["440200"] * 2})
    lists = {"dx": ["K35.800", "K35.800x001", "J18.900"], "proc": ["47.0100", "51.2300x001"]}
    for code_lists in (None, lists):
        expected = read_cases_reference(t, hospitals, period=period, code_lists=code_lists)
        fast = pa.Table.from_batches(list(iter_cases(t, hospitals, period=period, code_lists=code_lists,
                                                     batch_size=batch)))
        for name in expected.column_names:
            assert fast[name].to_pylist() == expected[name].to_pylist(), name


def test_reference_explains_itself():
    """The reference twin is the readable statement of the rules; spot-check one row."""
    out = read_cases_reference(case_table(1, los=["9"]))
    assert out["reason"].to_pylist() == ["BAD_DATES"]
    assert re.search(r"los: 9 is inconsistent", out["reason_detail"][0].as_py())


# --- kernels against their pure-Python twins ------------------------------------------------

def _buffers(values):
    from dipengine.arrays import string_buffers as _string_buffers

    return _string_buffers(pa.array(values, pa.string()))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.text(alphabet="ab中 ", max_size=3)), max_size=30),
                min_size=1, max_size=4))
def test_seen_set_matches_a_python_set(batches):
    from dipengine._libs.validate import SeenSet

    seen, expected_seen = SeenSet(), set()
    for values in batches:
        out = np.zeros(len(values), dtype=np.uint8)
        seen.mark(*_buffers(values), out)
        expected = []
        for v in values:
            expected.append(v is not None and v in expected_seen)
            if v is not None:
                expected_seen.add(v)
        assert out.astype(bool).tolist() == expected
    assert len(seen) == len(expected_seen)


def test_seen_set_grows_past_its_first_capacity():
    from dipengine._libs.validate import SeenSet

    rng = np.random.default_rng(1)
    ids = [f"case-{i}" for i in rng.integers(0, 30_000, 50_000)]
    seen = SeenSet()
    out = np.zeros(len(ids), dtype=np.uint8)
    for start in range(0, len(ids), 7_000):
        chunk = ids[start:start + 7_000]
        seen.mark(*_buffers(chunk), out[start:start + 7_000])
    assert out.astype(bool).tolist() == pd.Series(ids).duplicated().tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet="K3.5x|,，｜ \t", max_size=12)), max_size=20))
def test_split_codes_matches_re_split(values):
    from dipengine._libs.validate import split_codes
    from dipengine.reader import LIST_SEPARATORS

    data, counts_expected = [], []
    for v in values:
        parts = [] if v is None else [p.strip(" \t") for p in re.split(LIST_SEPARATORS, v)]
        parts = [p for p in parts if p]
        data.extend(parts)
        counts_expected.append(len(parts))
    elem_data, elem_offsets, counts = split_codes(*_buffers(values))
    got = [bytes(elem_data[a:b]).decode() for a, b in zip(elem_offsets[:-1], elem_offsets[1:])]
    assert got == data
    assert counts.tolist() == counts_expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-10**15, 10**15), max_size=30))
def test_yuan_text_is_exact(fen):
    """Amounts in BAD_AMOUNT details print exactly, as a bureau would read them."""
    from dipengine.reader import _yuan_text

    assert _yuan_text(np.array(fen, np.int64)).to_pylist() == [f"{Decimal(f) / 100:.2f}" for f in fen]


@pytest.mark.parametrize("arrow_type", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32()])
def test_int_column_bounds_per_arrow_type(arrow_type):
    """Integers beyond int32 are bad, whatever the column's integer type; nulls are absent."""
    from dipengine.reader import _int_column

    info = np.iinfo(arrow_type.to_pandas_dtype())
    values = sorted({v for v in (info.min, -2**31, -2**31 + 1, -1, 0, 7, 2**31 - 1, 2**31, info.max)
                     if info.min <= v <= info.max})
    col = pa.array(values + [None], arrow_type)
    value, present, bad = _int_column(col, len(col))
    want_bad = [abs(v) >= 2**31 for v in values] + [False]
    assert bad.tolist() == want_bad
    assert present.tolist() == [True] * len(values) + [False]
    assert value.tolist() == [0 if b else v for v, b in zip(values, want_bad)] + [0]


# --- date forms and thousands separators ----------------------------------------------------

DATE_FORMS = ["2026-01-05", "2026/01/05", "20260105", "2026-01-05 08:30:00", "2026/01/05 08:30:00",
              "2026-01-05T08:30:00", "20260105083000", "2026/1/5", "2026/1/5 8:30", " 2026/1/5 "]


@pytest.mark.parametrize("text", DATE_FORMS)
def test_date_forms_are_read(tmp_path, text):
    path = write_csv(tmp_path, [f"C1,H1,employee,440200,40,{text},{text},K35.800x001,,,1000.00,700.00,300.00,M,x"])
    for out in (read_cases(path), read_cases_reference(path)):
        assert out["admit_date"].to_pylist() == [dt.date(2026, 1, 5)]
        assert out["discharge_date"].to_pylist() == [dt.date(2026, 1, 5)]
        assert out["reason"].to_pylist() == [None]


@pytest.mark.parametrize("text", ["2027-02-30", "2027/2/30", "20270230", "20270230083000", "2026/13/1", "2026/0/5",
                                  "2026-1-5", "2026/001/5", "202601051", "2026/1/5/", "05/01/2026", "2026.01.05"])
def test_impossible_or_unknown_date_forms_are_bad(text):
    t = case_table(1, admit_date=[text])
    for out in (read_cases(t), read_cases_reference(t)):
        assert out["reason"].to_pylist() == ["BAD_DATES"]
        assert f"admit_date: '{text}' is not a date (YYYY-MM-DD)" in out["reason_detail"][0].as_py()


_date_parts = st.tuples(st.integers(999, 3000), st.integers(0, 13), st.integers(0, 32),
                        st.sampled_from(["", " 08:30", " 8:30", "T23:59:59", " 08:30:00.5", "083000", "0830"]),
                        st.sampled_from(["iso", "slash", "slash-short", "digits"]))


def _date_text(parts) -> str:
    y, m, d, time, form = parts
    if form == "iso":
        return f"{y:04d}-{m:02d}-{d:02d}{time}"
    if form == "slash":
        return f"{y:04d}/{m:02d}/{d:02d}{time}"
    if form == "slash-short":
        return f"{y}/{m}/{d}{time}"
    return f"{y:04d}{m:02d}{d:02d}{time}"


@settings(max_examples=300, deadline=None)
@given(st.lists(_date_parts, min_size=1, max_size=20))
def test_date_column_matches_its_twin_and_the_calendar(parts):
    from dipengine.case import _one_date_text
    from dipengine.reader import _date_column

    texts = [_date_text(p) for p in parts]
    days, present, bad = _date_column(pa.array(texts, pa.string()), len(texts))
    for text, (y, m, d, time, form), day, is_bad in zip(texts, parts, days.tolist(), bad.tolist()):
        twin = _one_date_text(text)
        assert (None if is_bad else day, True, is_bad) == twin, text
        shaped = 1000 <= y <= 2999 and {
            "iso": time in ("", " 08:30", "T23:59:59", " 08:30:00.5"),
            "slash": time not in ("083000", "0830"),
            "slash-short": time not in ("083000", "0830"),
            "digits": time in ("", "083000"),
        }[form]
        try:
            real = dt.date(y, m, d)
        except ValueError:
            real = None
        expected = (real - dt.date(1970, 1, 1)).days if shaped and real is not None else None
        assert twin[0] == expected, text
    assert present.all()


def test_amounts_with_thousands_separators_through_a_csv_file(tmp_path):
    path = write_csv(tmp_path, [
        'C1,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,,,"1,234.50","1,000.25",234.25,M,a',
        'C2,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,,,"1,234,567.005",,,M,b',
        'C3,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,,,"12,3x",,,M,c',
    ])
    for out in (read_cases(path), read_cases_reference(path)):
        assert out["total_cost_fen"].to_pylist() == [123450, 123456701, 0]  # half up at the fen
        assert out["fund_paid_fen"].to_pylist() == [100025, None, None]
        assert out["reason"].to_pylist() == [None, None, "BAD_AMOUNT"]
        assert "total_cost: '12,3x' is not a number" in out["reason_detail"][2].as_py()
        assert out["note"].to_pylist() == ["a", "b", "c"]  # the quoted commas split no column


def test_a_dataset_whose_first_file_has_an_all_null_column_reads_as_one_file(tmp_path):
    """A column all null in one file is typed ``null`` there; the dataset takes the other files' type."""
    from dipengine.synth import synth_region

    cases, _ = synth_region(2026, 300, seed=3)
    first = cases.slice(0, 1)
    nulled = [pa.nulls(1) if first[n].null_count == 1 else first[n] for n in first.column_names]
    assert any(pa.types.is_null(c.type) for c in nulled)
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table(nulled, names=first.column_names), tmp_path / "ds" / "a.parquet")
    pq.write_table(cases.slice(1), tmp_path / "ds" / "b.parquet")
    pq.write_table(cases, tmp_path / "one.parquet")
    assert read_cases(tmp_path / "ds").equals(read_cases(tmp_path / "one.parquet"))
