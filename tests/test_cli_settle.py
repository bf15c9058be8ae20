"""``dipengine settle`` end to end: read -> group -> score -> settle -> files, and its errors."""
from __future__ import annotations

import json

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.rules import write_rule_set
from test_policy import POLICY_TOML

GROUPS = [
    {"dip_code": "K35.8-47.0100", "dip_name": "阑尾炎:阑尾切除", "group_type": "core", "dx_key": "K35.8",
     "proc_expr": "47.0100", "treat_class": "surgery", "score": 1300.0, "avg_cost": 10400.0, "n_cases": 50},
    {"dip_code": "J18.9-C", "dip_name": "肺炎:保守", "group_type": "basic", "dx_key": "J18.9", "proc_expr": "",
     "treat_class": "conservative", "score": 862.5, "avg_cost": 6900.0, "n_cases": 80},
    {"dip_code": "BLANK", "dip_name": "空白病组", "group_type": "blank", "dx_key": "", "proc_expr": "",
     "treat_class": "conservative", "score": 1000.0, "avg_cost": 8000.0, "n_cases": 10},
]
HOSPITALS_CSV = "hospital_id,name,level,region,coefficient,assessment_coef\nH1,甲,3,440200,,0.98\nH2,乙,2,440200,,\n"
SAME_LEVEL_CSV = "dip_code,level,avg_cost\nK35.8-47.0100,3,10400\nK35.8-47.0100,2,9000\nJ18.9-C,2,6900\n"
HEADER = ("case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,main_proc,"
          "total_cost,fund_paid,patient_paid\n")
ROWS = [
    "C1,H1,employee,440200,40,2027-01-03,2027-01-08,K35.800,47.0100,10400.00,7000.00,3400.00",
    "C2,H2,employee,440200,50,2027-01-05,2027-01-09,K35.800,47.0100,25000.00,18000.00,7000.00",
    "C3,H2,resident,440300,70,2027-02-01,2027-02-11,J18.900,,3000.00,2000.00,1000.00",
    "C4,H1,resident,440200,30,2027-02-10,2027-02-12,R10.400,,5000.00,3500.00,1500.00",
    "C5,H9,employee,440200,30,2027-02-10,2027-02-12,K35.800,47.0100,9000.00,6000.00,3000.00",
    "C6,H1,employee,110100,30,2027-03-10,2027-03-12,K35.800,47.0100,9000.00,6000.00,3000.00",
    "C7,H1,employee,440200,45,2027-03-15,2027-03-10,K35.800,47.0100,9000.00,6000.00,3000.00",
]


@pytest.fixture
def region(tmp_path):
    rules = write_rule_set(tmp_path / "rules", {"groups.csv": GROUPS},
                           {"name": "t", "version": "1", "scheme": "DIP-2.0-local",
                            "effective_from": "2027-01-01", "effective_to": "2027-12-31", "source": "test"})
    pricing = tmp_path / "pricing"
    pricing.mkdir()
    (pricing / "policy.toml").write_text(POLICY_TOML.replace("band = [0.9, 1.1]\n", ""), encoding="utf-8")
    (pricing / "same_level_avg.csv").write_text(SAME_LEVEL_CSV, encoding="utf-8")
    (tmp_path / "hospitals.csv").write_text(HOSPITALS_CSV, encoding="utf-8")
    (tmp_path / "cases.csv").write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    return {"rules": str(rules), "pricing": str(pricing), "hospitals": str(tmp_path / "hospitals.csv"),
            "input": str(tmp_path / "cases.csv"), "tmp": tmp_path}


def _args(r, period, out, *extra):
    return ["settle", "--rules", r["rules"], "--pricing", r["pricing"], "--hospitals", r["hospitals"],
            "--input", r["input"], "--period", period, "--out", str(out), *extra]


def test_annual_settle_end_to_end(region, capsys):
    out = region["tmp"] / "annual"
    assert main(_args(region, "2027", out)) == 0
    text = capsys.readouterr().out
    assert "annual clearing 2027: 7 cases" in text and "reconciled to the fen" in text
    cases = pq.read_table(out / "cases.parquet")
    assert cases["case_id"].to_pylist() == [f"C{i}" for i in range(1, 8)]
    assert cases["match_path"].to_pylist() == ["core", "core", "basic", "blank", "rejected", "core", "rejected"]
    assert cases["reason"].to_pylist()[4] == "UNKNOWN_HOSPITAL" and cases["reason"].to_pylist()[6] == "BAD_DATES"
    assert cases["deviation"].to_pylist()[:4] == ["normal", "high", "low", "normal"]
    assert cases["locality"].to_pylist()[5] == "cross_province" and not cases["in_pool"][5].as_py()
    stm = pq.read_table(out / "hospitals.parquet")
    assert pcsv.read_csv(out / "hospitals.csv").num_rows == stm.num_rows
    m = json.loads((out / "manifest.json").read_text())
    for pool in ("employee", "resident"):
        info = m["pools"][pool]
        rows = [r for r in stm.to_pylist() if r["pool"] == pool]
        assert sum(r["standard_fen"] for r in rows) == info["total_cost_budget_fen"]
        assert sum(r["fund_due_fen"] for r in rows) == info["fund_available_fen"]
    assert set(m["sha256"]["inputs"]) == {region["input"]}
    assert "groups.csv" in m["sha256"]["rules"] and "policy.toml" in m["sha256"]["policy"]
    h1 = next(r for r in stm.to_pylist() if (r["hospital_id"], r["pool"]) == ("H1", "employee"))
    assert h1["n_cases"] == 1 and h1["n_out_of_pool"] == 1 and h1["n_rejected"] == 1
    # same inputs -> same outputs
    out2 = region["tmp"] / "annual2"
    assert main(_args(region, "2027", out2)) == 0
    assert json.loads((out2 / "manifest.json").read_text())["pools"] == m["pools"]
    assert pq.read_table(out2 / "cases.parquet").equals(cases)


def test_monthly_runs_then_annual(region, capsys):
    dirs = []
    for month in ("2027-01", "2027-02", "2027-03"):
        out = region["tmp"] / month
        assert main(_args(region, month, out)) == 0
        dirs.append(str(out))
    text = capsys.readouterr().out
    assert "monthly pre-settlement 2027-03" in text and "deposit withheld" in text
    jan = pq.read_table(region["tmp"] / "2027-01" / "cases.parquet")
    assert jan["reason"].to_pylist()[2] == "BAD_DATES"  # a February case in the January run
    monthly = [x for d in dirs for x in ("--monthly", d)]
    out = region["tmp"] / "annual"
    assert main(_args(region, "2027", out, *monthly)) == 0
    paid = sum(pq.read_table(f"{d}/hospitals.parquet")["monthly_paid_fen"].to_numpy().sum() for d in dirs)
    stm = pq.read_table(out / "hospitals.parquet")
    assert stm["monthly_paid_fen"].to_numpy().sum() == paid
    assert paid + stm["final_fen"].to_numpy().sum() == stm["clearing_fen"].to_numpy().sum()


def test_missing_policy_key_exit_1_no_output(region, capsys):
    p = region["tmp"] / "pricing" / "policy.toml"
    p.write_text(p.read_text().replace("high_ratio = 2.0\n", ""), encoding="utf-8")
    out = region["tmp"] / "never"
    assert main(_args(region, "2027", out)) == 1
    err = capsys.readouterr().err
    assert "missing [deviation] high_ratio" in err and "Traceback" not in err
    assert not out.exists()


def test_period_year_must_match_policy(region, capsys):
    assert main(_args(region, "2026", region["tmp"] / "x")) == 1
    assert "does not match period 2026" in capsys.readouterr().err


def test_usage_errors_exit_2(region):
    assert main(["settle", "--rules", region["rules"]]) == 2


def test_help_lists_options(capsys):
    assert main(["settle", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--rules", "--pricing", "--hospitals", "--input", "--period", "--out", "--monthly"):
        assert opt in text


# --- input layouts: --schema nhsa, --encoding, --sheet (issue 14) --------------------------------

NHSA_NAMES = {"case_id": "setl_id", "hospital_id": "fixmedins_code", "patient_id": "psn_no",
              "insurance_type": "hi_type", "person_type": "psn_type", "insured_region": "insuplc", "sex": "gend",
              "admit_date": "adm_time", "discharge_date": "dscg_time", "total_cost": "medfee_sumamt",
              "fund_paid": "hifp_pay", "patient_paid": "psn_selfpay", "other_fund_paid": "hifmi_pay",
              "out_of_catalogue_cost": "fulamt_ownpay_amt", "class_b_cost": "clab_amt"}
NHSA_CODES = {"insurance_type": {"employee": "310", "resident": "390"}, "sex": {"M": "1", "F": "2"}}


def nhsa_row(row: dict) -> dict:
    """A contract-keyed case as a flat national extract (4101 field names and code values):
    patient_paid becomes psn_selfpay with psn_ownpay 0, other_fund_paid hifmi_pay (大病)."""
    out = {}
    for k, v in row.items():
        v = NHSA_CODES.get(k, {}).get(v, v)
        out[NHSA_NAMES.get(k, k)] = v
        if k == "patient_paid":
            out["psn_ownpay"] = "0" if v not in (None, "") else v
    return out


def nhsa_csv(text: str) -> str:
    import csv
    import io

    rows = [nhsa_row(r) for r in csv.DictReader(io.StringIO(text))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# the settle table with sex and other funds on two rows (fund + other + patient = total)
OTHER_HEADER = HEADER.rstrip("\n") + ",sex,other_fund_paid\n"
OTHER_ROWS = [
    ROWS[0].replace(",3400.00", ",2900.00") + ",M,500.00",
    ROWS[1] + ",F,",
    ROWS[2].replace(",1000.00", ",800.00") + ",F,200.00",
    *(r + ",M," for r in ROWS[3:]),
]
CASE_COLUMNS = ["case_id", "dip_code", "match_path", "reason", "hospital_id", "level", "locality", "pool", "in_pool",
                "ratio", "deviation", "case_points", "points_e4", "standard_fen", "patient_paid_fen",
                "other_fund_paid_fen", "fund_due_fen", "fund_paid_fen"]


@pytest.fixture
def layouts(region):
    contract = region["tmp"] / "contract.csv"
    contract.write_text(OTHER_HEADER + "\n".join(OTHER_ROWS) + "\n", encoding="utf-8")
    national = region["tmp"] / "national.csv"
    national.write_text(nhsa_csv(contract.read_text(encoding="utf-8")), encoding="utf-8")
    return contract, national


def test_settle_nhsa_extract_gives_the_contract_statements(region, layouts):
    from dipengine.settlement import settle

    contract, national = layouts
    assert "setl_id" in national.read_text().splitlines()[0] and ",310," in national.read_text()
    args = (region["rules"], region["pricing"], region["hospitals"], "2027")
    want = settle(contract, *args)
    got = settle(national, *args, schema="nhsa")
    assert got.hospitals.equals(want.hospitals)
    assert got.cases.select(CASE_COLUMNS).equals(want.cases.select(CASE_COLUMNS))
    assert got.manifest["pools"] == want.manifest["pools"]
    assert got.manifest["parameters"]["schema"] == "nhsa" and want.manifest["parameters"]["schema"] is None
    assert got.manifest["sha256"]["schema"]
    # the other funds are in: C1 (500 yuan) and C3 (200, an in-province resident case, in the pool)
    assert pc_sum(got.hospitals["other_fund_paid_fen"]) == 70_000
    for r in got.hospitals.to_pylist():
        assert r["fund_due_fen"] == r["standard_fen"] - r["patient_paid_fen"] - r["other_fund_paid_fen"]


def pc_sum(col):
    import pyarrow.compute as pc

    return pc.sum(col).as_py()


def test_cli_settle_schema_and_encoding(region, layouts, capsys):
    contract, national = layouts
    r = dict(region)
    assert main(_args({**r, "input": str(contract)}, "2027", region["tmp"] / "c")) == 0
    assert main(_args({**r, "input": str(national)}, "2027", region["tmp"] / "n", "--schema", "nhsa")) == 0
    text = capsys.readouterr().out
    assert "other funds 700.00" in text
    want = pq.read_table(region["tmp"] / "c" / "hospitals.parquet")
    assert pq.read_table(region["tmp"] / "n" / "hospitals.parquet").equals(want)
    # a GBK file with Chinese text in a carried-through column, read with --encoding gbk
    gbk = region["tmp"] / "gbk.csv"
    lines = contract.read_text(encoding="utf-8").splitlines()
    gbk.write_bytes(("\n".join([lines[0] + ",科室"] + [x + ",普外科" for x in lines[1:]]) + "\n").encode("gbk"))
    assert main(_args({**r, "input": str(gbk)}, "2027", region["tmp"] / "g", "--encoding", "gbk")) == 0
    assert pq.read_table(region["tmp"] / "g" / "hospitals.parquet").equals(want)
    cases = pq.read_table(region["tmp"] / "g" / "cases.parquet")
    assert set(cases["科室"].to_pylist()) == {"普外科"}
    m = json.loads((region["tmp"] / "g" / "manifest.json").read_text())
    assert m["parameters"]["encoding"] == "gbk"


def test_settle_reads_an_xlsx_sheet(region, layouts):
    pytest.importorskip("python_calamine")
    openpyxl = pytest.importorskip("openpyxl")
    import csv

    from dipengine.settlement import settle

    contract, _ = layouts
    wb = openpyxl.Workbook()
    wb.active.title = "notes"
    wb.active.append(["not the cases"])
    ws = wb.create_sheet("cases")
    for row in csv.reader(contract.read_text(encoding="utf-8").splitlines()):
        ws.append(row)
    path = region["tmp"] / "cases.xlsx"
    wb.save(path)
    args = (region["rules"], region["pricing"], region["hospitals"], "2027")
    want = settle(contract, *args).hospitals
    assert settle(path, *args, sheet="cases").hospitals.equals(want)
    assert settle(path, *args, sheet=1).hospitals.equals(want)
    out = region["tmp"] / "x"
    assert main(_args({**region, "input": str(path)}, "2027", out, "--sheet", "1")) == 0
    assert pq.read_table(out / "hospitals.parquet").equals(want)


@pytest.mark.parametrize("command,options", [("settle", ("--schema", "--encoding", "--sheet")),
                                             ("benefits", ("--schema", "--encoding", "--sheet")),
                                             ("estimate", ("--schema", "--encoding"))])
def test_input_layout_options_in_help(command, options):
    from click.testing import CliRunner

    from dipengine.cli import cli

    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0
    for opt in options:
        assert opt in res.output
    assert "nhsa" in res.output


def test_rule_set_dates_must_cover_the_period(tmp_path, capsys):
    """A 2026 rule set does not settle 2027 silently: an error, or a warning with --allow-out-of-period."""
    import shutil

    from dipengine.rules import resolve_rules_dir
    from dipengine.synth import synth_region, write_region

    cases, hospitals = synth_region(2027, 400, seed=2)
    write_region(cases, hospitals, tmp_path / "region")
    pricing = tmp_path / "pricing"
    from dipengine.policy import resolve_pricing_dir

    shutil.copytree(resolve_pricing_dir("440200/2026"), pricing)
    policy = (pricing / "policy.toml").read_text(encoding="utf-8").replace("year = 2026", "year = 2027")
    (pricing / "policy.toml").write_text(policy, encoding="utf-8")
    from dipengine.manifest import read_manifest, write_manifest

    meta = {k: v for k, v in read_manifest(pricing).items() if k != "files"}
    write_manifest(pricing, meta, sorted(read_manifest(pricing)["files"]))
    args = ["settle", "--rules", str(resolve_rules_dir("demo")), "--pricing", str(pricing), "--hospitals",
            str(tmp_path / "region" / "hospitals.csv"), "--input", str(tmp_path / "region" / "cases.parquet"),
            "--period", "2027"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "effective 2026-01-01 to 2026-12-31; period 2027" in err and "lies outside it" in err
    assert "Traceback" not in err
    assert not (tmp_path / "a").exists()
    assert main(args + ["--out", str(tmp_path / "b"), "--allow-out-of-period"]) == 0
    assert "warning: rule set demo" in capsys.readouterr().err
    assert (tmp_path / "b" / "hospitals.csv").exists()
