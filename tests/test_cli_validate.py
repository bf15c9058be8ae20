"""``dipengine validate``: summary, output table, exit codes (dipengine.cli.validate)."""
from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main

HEADER = ("case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,"
          "other_dx,total_cost,fund_paid,patient_paid,ward")
ROWS = [
    "C1,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,J18.900|I10.x00,1000.10,700.05,300.05,A",
    "C2,H1,employee,440200,40,2027-03-01,2027-03-05,K35.,,0.30,,,B",
    "C1,H1,employee,440200,40,2027-03-01,2027-03-05,K35.800x001,,12.345,,,C",
    "C4,H7,resident,440200,,2027-03-01,2027-03-05,K35.800x001,,5,,,D",
    "C5,H1,resident,440200,8,2027-03-01,2027-03-05,K35.800x001,ZZZ,5,,,E",
]


@pytest.fixture
def files(tmp_path):
    cases = tmp_path / "cases.csv"
    cases.write_text("\n".join([HEADER, *ROWS]) + "\n", encoding="utf-8")
    hospitals = tmp_path / "hospitals.csv"
    hospitals.write_text("hospital_id,level,region\nH1,3,440200\n", encoding="utf-8")
    return cases, hospitals


def test_prints_counts_by_reason_and_exits_0_with_rejected_rows(files, capsys):
    cases, hospitals = files
    assert main(["validate", "--input", str(cases), "--hospitals", str(hospitals)]) == 0
    out = capsys.readouterr().out
    lines = {" ".join(line.split()[:-1]): line.split()[-1] for line in out.splitlines() if line.split()}
    assert lines["rows read"] == "5"
    assert lines["rows OK"] == "2"
    assert lines["MISSING_FIELD"] == "1" and lines["DUPLICATE_CASE"] == "1" and lines["INVALID_DX"] == "1"
    assert "with warnings 1" in out


def test_out_parquet_has_one_row_per_input_row_and_exact_yuan(files, tmp_path):
    cases, _ = files
    out = tmp_path / "checked.parquet"
    assert main(["validate", "--input", str(cases), "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t["case_id"].to_pylist() == ["C1", "C2", "C1", "C4", "C5"]
    assert t["ward"].to_pylist() == list("ABCDE")
    assert t["reason"].to_pylist() == [None, "INVALID_DX", "DUPLICATE_CASE", "MISSING_FIELD", None]
    assert t["total_cost_fen"].to_pylist() == [100010, 30, 1235, 500, 500]
    assert t["total_cost"].type == pa.decimal128(18, 2)
    assert t["total_cost"].to_pylist() == [Decimal("1000.10"), Decimal("0.30"), Decimal("12.35"),
                                           Decimal("5.00"), Decimal("5.00")]
    assert t["fund_paid"].to_pylist()[:2] == [Decimal("700.05"), None]
    names = t.column_names
    assert names.index("total_cost") + 1 == names.index("total_cost_fen")
    assert t["reason_detail"][4].as_py() == "warning: other_dx: 'ZZZ' is not a well-formed ICD-10 医保版 code"


def test_out_csv_joins_lists_with_bars(files, tmp_path):
    cases, _ = files
    out = tmp_path / "checked.csv"
    assert main(["validate", "--input", str(cases), "--out", str(out)]) == 0
    t = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(column_types={"other_dx": pa.string(),
                                                                              "total_cost": pa.string()}))
    assert t["other_dx"].to_pylist()[0] == "J18.900|I10.x00"
    assert t["total_cost"].to_pylist()[0] == "1000.10"
    assert t.num_rows == 5


def test_negative_fen_become_negative_yuan():
    from dipengine.money import fen_to_decimal

    d = fen_to_decimal(pa.array([-1, -12345, 0, None, 9_000_000_000_000_000], pa.int64()))
    assert d.to_pylist() == [Decimal("-0.01"), Decimal("-123.45"), Decimal("0.00"), None,
                             Decimal("90000000000000.00")]


def test_missing_main_dx_exits_1_naming_the_column(tmp_path, capsys):
    cases = tmp_path / "cases.csv"
    cases.write_text("case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,total_cost\n"
                     "C1,H1,employee,440200,40,2027-03-01,2027-03-05,1000\n", encoding="utf-8")
    out = tmp_path / "never.parquet"
    assert main(["validate", "--input", str(cases), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "main_dx" in err and "cases.csv" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_usage_errors_exit_2(files, capsys):
    cases, _ = files
    assert main(["validate", "--input", str(cases), "--period", "2027-13"]) == 2
    assert main(["validate"]) == 2


def test_period_and_code_list_options(files, tmp_path, capsys, icd10_path, icd9_path):
    cases, _ = files
    out = tmp_path / "checked.parquet"
    assert main(["validate", "--input", str(cases), "--period", "2027-04", "--out", str(out)]) == 0
    # March discharges fall outside April; earlier defects keep precedence.
    assert pq.read_table(out)["reason"].to_pylist() == [
        "BAD_DATES", "BAD_DATES", "DUPLICATE_CASE", "MISSING_FIELD", "BAD_DATES"]
    listed = tmp_path / "listed.csv"
    listed.write_text("\n".join([HEADER, ROWS[0], ROWS[0].replace("C1,", "C9,").replace("K35.800x001", "K35.999")])
                      + "\n", encoding="utf-8")
    assert main(["validate", "--input", str(listed), "--period", "2027-03", "--codes-icd10", str(icd10_path),
                 "--codes-icd9", str(icd9_path), "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t["reason"].to_pylist() == [None, "INVALID_DX"]
    assert t["reason_detail"][1].as_py() == "main_dx: 'K35.999' is not in the code list"


def test_help():
    assert main(["validate", "--help"]) == 0
