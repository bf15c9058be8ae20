"""``dipengine group`` end to end: reader -> grouper -> file, summary, --explain, errors."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dipengine.cli import cli, main

CASES = """case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,main_proc,other_procs,other_dx,total_cost,discharge_mode
c1,H1,employee,440200,45,2027-03-01,2027-03-05,K35.800x001,47.0100,,,10400.00,1
c2,H1,resident,440200,70,2027-03-02,2027-03-09,K80.100,51.2300,51.8800|51.1000,A41.900,25000.50,5
c3,H1,employee,440200,30,2027-03-02,2027-03-01,K35.800,,,,5000.00,1
c4,H1,employee,440200,30,2027-03-02,2027-03-04,K80.000x002,,,,5000.00,1
c5,H1,employee,440200,81,2027-03-02,2027-03-04,A01.000x005+J17.0*,,,,5000.00,1
"""


@pytest.fixture()
def cases_csv(tmp_path):
    p = tmp_path / "cases.csv"
    p.write_text(CASES, encoding="utf-8")
    return p


def test_group_command_writes_one_row_per_case(cases_csv, tmp_path, rules_features):
    out = tmp_path / "grouped.parquet"
    res = CliRunner().invoke(cli, ["group", "--rules", str(rules_features), "--input", str(cases_csv),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    t = pq.read_table(out)
    assert t["case_id"].to_pylist() == ["c1", "c2", "c3", "c4", "c5"]
    assert t["dip_code"].to_pylist()[:2] == ["K35.8-47.0100", "K80.1-51.2300+51.8800/51.1000"]
    assert t["match_path"].to_pylist()[2:4] == ["rejected", "excluded"]
    assert t["reason"].to_pylist()[2:4] == ["BAD_DATES", "EXCLUDED_DX"]
    assert t["aux_subtype"][1].as_py() == "death"
    assert "grouped 5 cases" in res.output and "excluded 1" in res.output and "BAD_DATES 1" in res.output


def test_group_command_csv_output_and_explain(cases_csv, tmp_path, rules_features):
    out = tmp_path / "grouped.csv"
    res = CliRunner().invoke(cli, ["group", "--rules", str(rules_features), "--input", str(cases_csv),
                                   "--out", str(out), "--explain", "c1"])
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8").startswith("\"case_id\",\"dip_code\"")
    assert "explain c1: core K35.8-47.0100" in res.output
    assert "candidate K35.8-47.0900" not in res.output  # 47.0900 not performed: refused, not a candidate
    assert "refuse K35.8-47.0900" in res.output


def test_bad_rule_set_is_a_clean_data_error(cases_csv, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "groups.csv").write_text("dip_code\n", encoding="utf-8")
    out = tmp_path / "never.parquet"
    code = main(["group", "--rules", str(bad), "--input", str(cases_csv), "--out", str(out)])
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_usage_error_exits_2(cases_csv):
    res = CliRunner().invoke(cli, ["group", "--input", str(cases_csv)])
    assert res.exit_code == 2
