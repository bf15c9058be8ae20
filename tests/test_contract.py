"""Every command of the public contract (``shared/spec/contract.md``) run for real, as a user would.

Each test names the contract section it holds. Commands run through :func:`dipengine.cli.main`
(the console entry point) or ``python -m dipengine``; data are small synthetic regions. Tests
marked ``xfail(strict=True)`` are known departures in modules owned elsewhere: they fail
today and turn into errors the day the fix lands, so that the mark is removed with the fix.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.rules import write_rule_set

REPO = Path(__file__).resolve().parents[1]

# --- the contract's names, written out once ---------------------------------------------------

INPUT_COLUMNS = [  # §2, in order
    "case_id", "hospital_id", "patient_id", "insurance_type", "person_type", "insured_region",
    "remote_filing", "sex", "age", "age_days", "admit_date", "discharge_date", "los", "discharge_mode",
    "main_dx", "other_dx", "main_proc", "other_procs", "total_cost", "fund_paid", "patient_paid",
    "out_of_catalogue_cost", "class_b_cost",
]
REQUIRED_INPUT = ["case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
                  "discharge_date", "main_dx", "total_cost"]
HOSPITAL_COLUMNS = ["hospital_id", "name", "level", "region", "coefficient", "assessment_coef"]  # §3
GROUP_COLUMNS = ["case_id", "dip_code", "dip_name", "group_type", "match_path", "treat_class", "base_score",
                 "aux_subtype", "aux_coef", "reason", "reason_detail"]  # §6.1
CASE_RESULT_COLUMNS = GROUP_COLUMNS + [  # §6.2
    "hospital_id", "level", "locality", "ratio", "deviation", "level_coef", "case_points", "standard_fen",
    "patient_paid_fen", "fund_due_fen", "fund_paid_fen"]
STATEMENT_COLUMNS = [  # §6.3
    "hospital_id", "pool", "level", "n_cases", "points", "standard_fen", "patient_paid_fen", "fund_due_fen",
    "assessment_coef", "recorded_fen", "ratio_R", "band", "clearing_fen", "monthly_paid_fen", "deposit_fen",
    "final_fen", "n_rejected"]
BENEFIT_COLUMNS = ["case_id", "locality", "policy_scope_fen", "deductible_fen", "fund_benefit_fen",
                   "patient_share_fen", "cap_reached"]  # §1 benefits
REASON_CODES = ["MISSING_FIELD", "INVALID_DX", "INVALID_PROC", "EXCLUDED_DX", "UNKNOWN_HOSPITAL", "BAD_DATES",
                "BAD_AMOUNT", "BAD_VALUE", "DUPLICATE_CASE", "NO_GROUP"]  # §7
MATCH_PATHS = {"core", "basic", "comprehensive", "blank", "excluded", "rejected"}
DEVIATIONS = {"normal", "low", "high", "extreme"}
LOCALITIES = {"local", "in_province", "cross_province"}
POOLS = ("employee", "resident")
COMMANDS = [["demo"], ["synth"], ["validate"], ["catalog"], ["catalog", "build"], ["rules"], ["rules", "check"],
            ["group"], ["settle"], ["benefits"], ["estimate"]]


def in_order(names: list[str], expected: list[str]) -> bool:
    """``expected`` appear in ``names`` in this order (more columns may sit between: §0 extends)."""
    pos = [names.index(c) if c in names else -1 for c in expected]
    return -1 not in pos and pos == sorted(pos)


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# --- fixtures: one small region, run once per module ------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``dipengine demo --cases 2000``: rules, pricing, history, monthly and annual settlements."""
    out = tmp_path_factory.mktemp("contract") / "dip-demo"
    assert main(["demo", "--cases", "2000", "--seed", "5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """``dipengine synth`` with planted bad rows (one defect each, column planted_defect)."""
    out = tmp_path_factory.mktemp("synth") / "region"
    assert main(["synth", "--year", "2026", "--cases", "1500", "--seed", "2", "--out", str(out),
                 "--bad-rows", "0.04"]) == 0
    return out


def settle_args(demo, out, *extra, inputs=None, period="2026"):
    inputs = inputs or [demo / "cases.parquet"]
    args = ["settle", "--rules", demo / "rules", "--pricing", demo / "pricing", "--hospitals",
            demo / "hospitals.csv"]
    for f in inputs:
        args += ["--input", f]
    return args + ["--period", period, "--out", out, *extra]


@pytest.fixture(scope="module")
def annual(demo, tmp_path_factory):
    """``dipengine settle`` annual clearing of the demo year, netting off the demo's monthly runs."""
    out = tmp_path_factory.mktemp("annual") / "out"
    monthly = []
    for d in sorted((demo / "monthly").iterdir()):
        monthly += ["--monthly", d]
    assert main([str(a) for a in settle_args(demo, out, *monthly)]) == 0
    return out


# --- §1: commands, help, exit codes -----------------------------------------------------------


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_takes_help(cmd, capsys):
    code, out, _ = run([*cmd, "--help"], capsys)
    assert code == 0 and "Usage: dipengine " + " ".join(cmd) in out


def test_python_m_dipengine_runs_and_reports_data_errors_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "dipengine", "--help"], capture_output=True, text=True,
                        cwd=tmp_path, env=env)
    assert ok.returncode == 0
    assert all(name in ok.stdout for name in ("demo", "synth", "validate", "catalog", "rules", "group",
                                               "settle", "benefits", "estimate"))
    missing = tmp_path / "no-such-cases.parquet"
    bad = subprocess.run([sys.executable, "-m", "dipengine", "validate", "--input", str(missing)],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    usage = subprocess.run([sys.executable, "-m", "dipengine", "group", "--rules"], capture_output=True,
                           text=True, cwd=tmp_path, env=env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["group", "--input", "x.parquet", "--out", "y.parquet"],           # --rules missing
    ["settle", "--period", "2026"],
    ["synth", "--year", "2026", "--cases", "-1", "--out", "x"],
    ["catalog", "build", "--hospitals", "{hosp}", "--out", "r", "--history", "a", "b", "--weights", "1,2,7"],
], ids=["unknown", "group-no-rules", "settle-missing", "synth-negative", "catalog-weights-count"])
def test_usage_errors_exit_2(args, tmp_path, capsys):
    hosp = tmp_path / "hospitals.csv"
    hosp.write_text("hospital_id,name,level,region\nH1,a,3,440200\n", encoding="utf-8")
    code, _, err = run([a.format(hosp=hosp) for a in args], capsys)
    assert code == 2 and "Traceback" not in err


def _bad_files(tmp: Path) -> dict:
    (tmp / "nocols.csv").write_text("case_id,hospital_id\nA,H\n", encoding="utf-8")
    (tmp / "level7.csv").write_text("hospital_id,name,level,region\nH1,a,7,440200\n", encoding="utf-8")
    (tmp / "case.json").write_text("{not json", encoding="utf-8")
    return {"nocols": tmp / "nocols.csv", "level7": tmp / "level7.csv", "json": tmp / "case.json"}


def test_data_errors_exit_1_with_one_line_naming_file_column_value(demo, tmp_path, capsys):
    f = _bad_files(tmp_path)
    cases, hosp, rules, pricing = demo / "cases.parquet", demo / "hospitals.csv", demo / "rules", demo / "pricing"
    out = tmp_path / "out.parquet"
    cases_of = [  # (args, what the message must name)
        (["validate", "--input", f["nocols"]], [str(f["nocols"]), "insurance_type"]),
        (["validate", "--input", cases, "--hospitals", f["level7"]], [str(f["level7"]), "level", "7"]),
        (["group", "--rules", tmp_path / "no-rules", "--input", cases, "--out", out], [str(tmp_path / "no-rules")]),
        (["group", "--rules", rules, "--input", f["nocols"], "--out", out], [str(f["nocols"]), "insurance_type"]),
        (settle_args(demo, tmp_path / "s", period="2027"), ["policy.toml", "year", "2026"]),
        (["benefits", "--pricing", tmp_path, "--hospitals", hosp, "--input", cases, "--out", out], [str(tmp_path)]),
        (["estimate", "--rules", rules, "--pricing", pricing, "--hospitals", hosp, "--case", f["json"]],
         [str(f["json"])]),
        (["catalog", "build", "--history", tmp_path / "h.parquet", "--hospitals", hosp, "--out", tmp_path / "r"],
         [str(tmp_path / "h.parquet")]),
        (["synth", "--year", "2026", "--cases", "10", "--out", tmp_path / "sy", "--codes-icd10", f["nocols"]],
         [str(f["nocols"]), "code"]),
    ]
    for args, names in cases_of:
        code, _, err = run(args, capsys)
        assert code == 1, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        for name in names:
            assert name in lines[0], (args, name, lines[0])
    assert not out.exists() and not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


# --- §1 synth, §2 and §3: the input schema it writes -------------------------------------------


def test_synth_writes_contract_input_and_registry(region, capsys):
    cases = pq.read_table(region / "cases.parquet")
    assert cases.column_names[:len(INPUT_COLUMNS)] == INPUT_COLUMNS
    for name in ("total_cost", "fund_paid", "patient_paid", "out_of_catalogue_cost", "class_b_cost"):
        assert pa.types.is_decimal(cases.schema.field(name).type) and cases.schema.field(name).type.scale == 2
    hosp = pcsv.read_csv(region / "hospitals.csv", convert_options=pcsv.ConvertOptions(
        column_types={"hospital_id": pa.string(), "region": pa.string()}))
    assert hosp.column_names == HOSPITAL_COLUMNS
    assert set(hosp["level"].to_pylist()) == {1, 2, 3}
    assert all(len(r) == 6 and r.isdigit() for r in hosp["region"].to_pylist())
    good = pc.is_null(cases["planted_defect"])
    assert set(pc.filter(cases["insurance_type"], good).to_pylist()) <= set(POOLS)


def test_synth_draws_codes_from_the_given_lists(tmp_path, icd10_path, icd9_path, capsys):
    code, out, _ = run(["synth", "--year", "2026", "--cases", "300", "--out", tmp_path, "--codes-icd10",
                        icd10_path, "--codes-icd9", icd9_path], capsys)
    assert code == 0 and "cases.parquet" in out
    cases = pq.read_table(tmp_path / "cases.parquet")
    dx = set(pcsv.read_csv(icd10_path, parse_options=pcsv.ParseOptions(delimiter="\t"))["code"].to_pylist())
    proc = set(pcsv.read_csv(icd9_path, parse_options=pcsv.ParseOptions(delimiter="\t"))["code"].to_pylist())
    assert set(cases["main_dx"].drop_null().to_pylist()) <= dx
    assert set(cases["main_proc"].drop_null().to_pylist()) <= proc


# --- §1 validate and §2: normalised columns, money, codes, extra columns -----------------------

TRICKY = """case_id,hospital_id,patient_id,insurance_type,insured_region,sex,age,admit_date,discharge_date,main_dx,other_dx,main_proc,other_procs,total_cost,fund_paid,patient_paid,ward_note
T1,H1,P1,employee,440200,M,40,2026-03-01,2026-03-06, k35.800X001,k80.100|a01.000x005+j17.0*,17.912a0,,2.675,1.675,1.00,east
T2,H1,,resident,440200,F,50,2026-03-01,2026-03-04,x00.X00,,,,10.125,,,
T3,H1,P3,employee,440200,,60,2026-03-01,2026-03-04,K35.800,"J18.900,I10.x00",47.0100,"54.5100|",0.005,0.00,0.01,west
T4,H1,P4,employee,440200,M,60,2026-03-01,2026-03-04,K35.800,,,,-3.00,,,
T4,H1,P5,employee,440200,M,60,2026-03-01,2026-03-04,K35.800,,,,3.00,,,
"""


def test_validate_normal_form_money_and_extras(tmp_path, capsys):
    src = tmp_path / "tricky.csv"
    src.write_text(TRICKY, encoding="utf-8")
    (tmp_path / "h.csv").write_text("hospital_id,name,level,region\nH1,a,3,440200\n", encoding="utf-8")
    out = tmp_path / "valid.parquet"
    code, text, _ = run(["validate", "--input", src, "--hospitals", tmp_path / "h.csv", "--out", out], capsys)
    assert code == 0 and "BAD_AMOUNT" in text and "DUPLICATE_CASE" in text
    t = pq.read_table(out)
    assert set(INPUT_COLUMNS + ["reason", "reason_detail", "ward_note"]) <= set(t.column_names)
    rows = t.to_pylist()
    assert [r["case_id"] for r in rows] == ["T1", "T2", "T3", "T4", "T4"]
    # codes: stripped, upper-case, x lower-case unless first (or first after a dagger)
    assert rows[0]["main_dx"] == "K35.800x001" and rows[1]["main_dx"] == "X00.x00"
    assert rows[0]["main_proc"] == "17.912A0"
    assert rows[0]["other_dx"] == ["K80.100", "A01.000x005+J17.0*"]
    assert rows[2]["other_dx"] == ["J18.900", "I10.x00"] and rows[2]["other_procs"] == ["54.5100"]
    # money: yuan -> fen, half up at the fen
    assert [r["total_cost_fen"] for r in rows[:3]] == [268, 1013, 1]
    assert rows[0]["fund_paid_fen"] == 168 and rows[0]["patient_paid_fen"] == 100
    # empty strings are null; absent optional columns take their defaults
    assert rows[1]["patient_id"] is None and rows[1]["main_proc"] is None and rows[2]["sex"] is None
    assert rows[0]["person_type"] == "other" and rows[0]["remote_filing"] == "none"
    assert rows[0]["discharge_mode"] == 1 and rows[0]["los"] == 5
    # rejected rows keep their place, reason and a detail naming column and value
    assert [r["reason"] for r in rows] == [None, None, None, "BAD_AMOUNT", "DUPLICATE_CASE"]
    assert "total_cost" in rows[3]["reason_detail"] and "-3.00" in rows[3]["reason_detail"]
    assert "case_id" in rows[4]["reason_detail"] and "T4" in rows[4]["reason_detail"]
    # unknown extra columns carried through untouched
    assert [r["ward_note"] for r in rows] == ["east", "", "west", "", ""]


def test_validate_keeps_every_row_and_reports_planted_defects(region, tmp_path, capsys):
    out = tmp_path / "v.csv"
    code, text, _ = run(["validate", "--input", region / "cases.parquet", "--hospitals", region / "hospitals.csv",
                         "--out", out], capsys)
    assert code == 0
    src = pq.read_table(region / "cases.parquet")
    t = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(column_types={"case_id": pa.string()},
                                                               strings_can_be_null=True))
    assert t["case_id"].to_pylist() == src["case_id"].to_pylist()
    planted = src["planted_defect"].to_pylist()
    assert t["reason"].to_pylist() == planted  # every planted defect found, nothing else rejected
    for code_name in set(filter(None, planted)):
        assert code_name in REASON_CODES and f"{code_name}" in text


# --- input forms: Parquet, CSV, Arrow IPC, directory and glob of Parquet ----------------------


def test_input_forms_give_identical_results(demo, region, tmp_path, capsys):
    table = pq.read_table(region / "cases.parquet")
    forms = tmp_path / "forms"
    (forms / "ds").mkdir(parents=True)
    feather.write_feather(table, forms / "cases.arrow")
    from dipengine.io import write_table

    write_table(table, forms / "cases.csv")
    n = table.num_rows
    for i, start in enumerate(range(0, n, 600)):
        pq.write_table(table.slice(start, 600), forms / "ds" / f"part-{i}.parquet")
    results = []
    for src in (region / "cases.parquet", forms / "cases.arrow", forms / "cases.csv", forms / "ds",
                str(forms / "ds" / "*.parquet")):
        out = tmp_path / f"g{len(results)}.parquet"
        code, _, err = run(["group", "--rules", demo / "rules", "--input", src, "--out", out,
                            "--hospitals", region / "hospitals.csv"], capsys)
        assert code == 0, err
        results.append(pq.read_table(out).select(GROUP_COLUMNS))
    for r in results[1:]:
        assert r.equals(results[0])


# --- §1 catalog build and §4/§5 formats -------------------------------------------------------


def test_catalog_build_takes_several_history_files_after_one_flag(demo, tmp_path, capsys):
    hist = [demo / f"history_{y}.parquet" for y in (2023, 2024, 2025)]
    common = ["--hospitals", demo / "hospitals.csv", "--weights", "1,2,7", "--threshold", "15", "--scale", "1000"]
    a, b = tmp_path / "a", tmp_path / "b"
    code, out, err = run(["catalog", "build", "--history", *hist, *common, "--out", a / "rules",
                          "--pricing-out", a / "pricing"], capsys)
    assert code == 0, err
    code, _, err = run(["catalog", "build", *sum((["--history", h] for h in hist), []), *common,
                        "--out", b / "rules"], capsys)
    assert code == 0, err
    groups = (a / "rules" / "groups.csv").read_text(encoding="utf-8")
    assert groups == (b / "rules" / "groups.csv").read_text(encoding="utf-8")
    assert groups == (demo / "rules" / "groups.csv").read_text(encoding="utf-8")  # the defaults are 1,2,7/15/1000
    assert groups.splitlines()[0] == "dip_code,dip_name,group_type,dx_key,proc_expr,treat_class,score,avg_cost,n_cases"
    man = tomllib.loads((a / "rules" / "manifest.toml").read_text(encoding="utf-8"))
    for key in ("name", "version", "scheme", "effective_from", "effective_to", "source", "files"):
        assert key in man
    assert set(man["files"]) >= {"groups.csv"}
    assert (a / "pricing" / "same_level_avg.csv").read_text(encoding="utf-8").startswith("dip_code,level,avg_cost")
    policy = tomllib.loads((a / "pricing" / "policy.toml").read_text(encoding="utf-8"))
    assert policy["point_value"]["budget_value"] > 0 and policy["score_scale"] == 1000
    assert main(["rules", "check", str(a / "rules")]) == 0


# --- §1 rules check ----------------------------------------------------------------------------


def test_rules_check_lists_every_problem_and_exits_1(demo, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo / "rules", bad)
    lines = (bad / "groups.csv").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(",core,", ",bogus,").replace(",comprehensive,", ",bogus,")
    (bad / "groups.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run(["rules", "check", bad], capsys)
    assert code == 1 and "Traceback" not in err
    assert "groups.csv:3:group_type:" in out          # file, line, column
    assert any(line.startswith("groups.csv:") and "sha256" in line for line in out.splitlines())
    code, out, _ = run(["rules", "check", demo / "rules"], capsys)
    assert code == 0 and out.startswith("OK ")


# --- §1 group, §6.1, §7, §8.1 --------------------------------------------------------------------

GROUPS = [
    {"dip_code": "K35.8-47.0100", "dip_name": "阑尾炎:阑尾切除", "group_type": "core", "dx_key": "K35.8",
     "proc_expr": "47.0100", "treat_class": "surgery", "score": 1300.0, "avg_cost": 10400.0, "n_cases": 50},
    {"dip_code": "J18.9-C", "dip_name": "肺炎:保守", "group_type": "basic", "dx_key": "J18.9", "proc_expr": "",
     "treat_class": "conservative", "score": 862.5, "avg_cost": 6900.0, "n_cases": 80},
]
BLANK = {"dip_code": "BLANK", "dip_name": "空白病组", "group_type": "blank", "dx_key": "", "proc_expr": "",
         "treat_class": "conservative", "score": 1000.0, "avg_cost": 8000.0, "n_cases": 10}
META = {"name": "t", "version": "1", "scheme": "DIP-2.0-local", "effective_from": "2027-01-01",
        "effective_to": "2027-12-31", "source": "test"}
SMALL = """case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,main_proc,total_cost,ward
c1,H1,employee,440200,40,2027-01-03,2027-01-08,K35.800,47.0100,10400.00,a
c2,H1,resident,440200,70,2027-02-01,2027-02-11,J18.900,,3000.00,b
c3,H1,employee,440200,30,2027-02-10,2027-02-12,R10.400,,5000.00,c
c4,H1,employee,440200,30,2027-02-10,2027-02-12,Z51.100,,5000.00,d
c5,H9,employee,440200,30,2027-02-10,2027-02-12,K35.800,47.0100,9000.00,e
c6,H1,employee,440200,30,2027-02-10,2027-02-12,K35.,47.0100,9000.00,f
"""


@pytest.fixture
def small(tmp_path):
    tables = {"groups.csv": GROUPS, "excluded_dx.csv": [{"code": "Z51"}]}
    write_rule_set(tmp_path / "noblank", tables, META)
    write_rule_set(tmp_path / "blank", {**tables, "groups.csv": GROUPS + [BLANK]}, META)
    (tmp_path / "cases.csv").write_text(SMALL, encoding="utf-8")
    (tmp_path / "h.csv").write_text("hospital_id,name,level,region\nH1,a,3,440200\n", encoding="utf-8")
    return tmp_path


def test_group_output_is_contract_6_1(small, capsys):
    res = {}
    for rules in ("noblank", "blank"):
        out = small / f"{rules}.parquet"
        code, text, err = run(["group", "--rules", small / rules, "--input", small / "cases.csv", "--out", out,
                               "--hospitals", small / "h.csv"], capsys)
        assert code == 0, err
        t = pq.read_table(out)
        assert t.column_names[:len(GROUP_COLUMNS)] == GROUP_COLUMNS
        assert t.schema.field("base_score").type == pa.float64() and t.schema.field("aux_coef").type == pa.float64()
        res[rules] = t.to_pylist()
    rows = res["noblank"]
    assert [r["case_id"] for r in rows] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert [r["match_path"] for r in rows] == ["core", "basic", "rejected", "excluded", "rejected", "rejected"]
    assert [r["reason"] for r in rows] == [None, None, "NO_GROUP", "EXCLUDED_DX", "UNKNOWN_HOSPITAL", "INVALID_DX"]
    for r in rows[2:]:
        assert r["dip_code"] is None and r["base_score"] == 0.0 and r["aux_coef"] == 1.0 and r["reason_detail"]
    assert "H9" in rows[4]["reason_detail"] and "K35." in rows[5]["reason_detail"]
    assert rows[0]["dip_code"] == "K35.8-47.0100" and rows[0]["base_score"] == 1300.0
    blank = res["blank"]
    assert blank[2]["match_path"] == "blank" and blank[2]["dip_code"] == "BLANK" and blank[2]["reason"] is None
    assert [r["match_path"] for r in blank[3:]] == ["excluded", "rejected", "rejected"]


def test_group_csv_output_and_explain(small, capsys):
    out = small / "g.csv"
    code, text, _ = run(["group", "--rules", small / "blank", "--input", small / "cases.csv", "--out", out,
                         "--explain", "c1"], capsys)
    assert code == 0
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(f'"{c}"' for c in GROUP_COLUMNS + ["ward"])  # §6.1, then §2 extras
    assert "c1" in text and "K35.8-47.0100" in text


def test_group_output_carries_extra_columns(small, capsys):
    out = small / "g.parquet"
    assert main(["group", "--rules", str(small / "blank"), "--input", str(small / "cases.csv"),
                 "--out", str(out)]) == 0
    assert pq.read_table(out)["ward"].to_pylist() == ["a", "b", "c", "d", "e", "f"]


def test_group_explain_of_unknown_case_exits_1(small, capsys):
    code, _, err = run(["group", "--rules", small / "blank", "--input", small / "cases.csv",
                        "--out", small / "g.parquet", "--explain", "nope"], capsys)
    assert "nope" in err
    assert code == 1


# --- §1 settle, §6.2-§6.4, §8 --------------------------------------------------------------------


def test_settle_case_results_are_contract_6_2(demo, annual):
    src = pq.read_table(demo / "cases.parquet")
    t = pq.read_table(annual / "cases.parquet")
    assert in_order(t.column_names, CASE_RESULT_COLUMNS)
    assert t.column_names[:len(GROUP_COLUMNS)] == GROUP_COLUMNS
    assert t["case_id"].equals(src["case_id"])                  # §8.1 rows out = rows in, in order
    assert "planted_defect" in t.column_names                   # §2 extra columns carried through
    assert t["planted_defect"].equals(src["planted_defect"])
    for name in ("standard_fen", "patient_paid_fen", "fund_due_fen", "fund_paid_fen"):
        assert t.schema.field(name).type == pa.int64()
    rows = t.to_pylist()
    assert {r["match_path"] for r in rows} <= MATCH_PATHS
    assert {r["deviation"] for r in rows} <= DEVIATIONS | {None}
    assert {r["locality"] for r in rows} <= LOCALITIES | {None}
    assert {r["reason"] for r in rows} <= set(REASON_CODES) | {None}
    rejected = [r for r in rows if r["match_path"] == "rejected"]
    assert rejected and all(r["reason"] and r["case_points"] == 0 and r["standard_fen"] == 0 for r in rejected)
    assert all(r["reason"] is None for r in rows if r["match_path"] in ("core", "basic", "comprehensive", "blank"))


def test_settle_statements_are_contract_6_3_and_follow_the_bands(annual):
    stm = pq.read_table(annual / "hospitals.parquet")
    assert in_order(stm.column_names, STATEMENT_COLUMNS)
    money = [c for c in stm.column_names if c.endswith("_fen")]
    assert all(stm.schema.field(c).type == pa.int64() for c in money)
    assert set(stm["pool"].to_pylist()) <= set(POOLS)
    csv = pcsv.read_csv(annual / "hospitals.csv", convert_options=pcsv.ConvertOptions(
        column_types={"hospital_id": pa.string()}))
    assert csv.column_names == stm.column_names
    assert csv["final_fen"].to_pylist() == stm["final_fen"].to_pylist()
    bands = [  # demo pricing skeleton: the contract's example bands
        (Decimal("0.80"), "partial_retention"), (Decimal("1.00"), "pay_due"),
        (Decimal("1.10"), "share_overspend"), (None, "cap")]
    for r in stm.to_pylist():
        due = Decimal(r["fund_due_fen"]) * Decimal(repr(r["assessment_coef"]))
        rec = Decimal(r["recorded_fen"])
        if due <= 0:
            continue
        ratio = rec / due
        rule = next(name for upper, name in bands if upper is None or ratio <= upper)
        assert r["band"] == rule, r
        pay = {"partial_retention": rec + Decimal("0.8") * (due - rec), "pay_due": due,
               "share_overspend": due + Decimal("0.5") * (rec - due),
               "cap": due + Decimal("0.5") * Decimal("0.10") * due}[rule]
        expect = int(pay.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        assert abs(r["clearing_fen"] - expect) <= 1, (r, expect)   # due' itself is rounded to the fen once
        assert r["final_fen"] == r["clearing_fen"] - r["monthly_paid_fen"]


def test_annual_clearing_reconciles_to_the_budget_to_the_fen(demo, tmp_path, capsys):
    """§8.4: floating point value, no clamp -> Σ standard = total-cost budget, Σ fund due = fund budget."""
    import shutil

    from dipengine.manifest import read_manifest, write_manifest

    pricing = tmp_path / "pricing"
    shutil.copytree(demo / "pricing", pricing)
    text = (pricing / "policy.toml").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.startswith("band =")]
    assert len(lines) == len(text.splitlines()) - 1
    (pricing / "policy.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = read_manifest(pricing)
    write_manifest(pricing, {k: v for k, v in meta.items() if k != "files"}, list(meta["files"]))
    out = tmp_path / "annual"
    args = settle_args(demo, out)
    args[args.index("--pricing") + 1] = pricing
    code, _, err = run(args, capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    stm = pq.read_table(out / "hospitals.parquet")
    budget = json.loads((demo / "annual" / "manifest.json").read_text(encoding="utf-8"))["policy"]["budget_fen"]
    for pool in POOLS:
        info = m["pools"][pool]
        assert not info["clamped"]
        reserve = Decimal(budget[pool]) * (1 - Decimal("0.03"))  # the demo policy's reserve_rate
        assert info["fund_available_fen"] == int(reserve.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        sel = pc.equal(stm["pool"], pool)
        assert pc.sum(pc.filter(stm["standard_fen"], sel)).as_py() == info["total_cost_budget_fen"]
        assert pc.sum(pc.filter(stm["fund_due_fen"], sel)).as_py() == info["fund_available_fen"]


def test_settle_manifest_is_contract_6_4_and_reproducible(demo, annual, tmp_path, capsys):
    m = json.loads((annual / "manifest.json").read_text(encoding="utf-8"))
    from dipengine import __version__

    assert m["version"] == __version__ and m["command"] == "settle" and m["period"] == "2026"
    assert m["parameters"]["period"] == "2026" and len(m["parameters"]["monthly"]) == 12
    n = pq.read_metadata(demo / "cases.parquet").num_rows
    for key in ("match_path", "deviation", "reason"):
        assert sum(m["counts"][key].values()) == n
    stm = pq.read_table(annual / "hospitals.parquet")
    cases = pq.read_table(annual / "cases.parquet")
    total_e4 = 0
    for pool in POOLS:
        info = m["pools"][pool]
        assert info["budget_value_yuan"] > 0 and info["point_value_yuan"] > 0
        assert info["fund_budget_fen"] > 0 and info["total_cost_budget_fen"] > 0
        total_e4 += info["points_e4"]
    assert m["total_points"] == pytest.approx(total_e4 / 10_000, abs=1e-4)
    for name in ("standard_fen", "patient_paid_fen", "fund_due_fen", "fund_paid_fen"):
        assert m["sums"]["cases"][name] == pc.sum(cases[name]).as_py()
    for name in ("standard_fen", "fund_due_fen", "recorded_fen", "clearing_fen", "final_fen"):
        assert m["sums"]["hospitals"][name] == pc.sum(stm[name]).as_py()
    sha = m["sha256"]
    assert list(sha["inputs"]) == [str(demo / "cases.parquet")]
    assert {"groups.csv"} <= set(sha["rules"]) and {"policy.toml", "same_level_avg.csv"} <= set(sha["policy"])
    from dipengine.io import sha256_file

    assert sha["inputs"][str(demo / "cases.parquet")] == sha256_file(demo / "cases.parquet")
    assert sha["rules"]["groups.csv"] == sha256_file(demo / "rules" / "groups.csv")
    # same inputs -> same outputs, byte for byte
    again = tmp_path / "again"
    monthly = sum((["--monthly", d] for d in sorted((demo / "monthly").iterdir())), [])
    assert run(settle_args(demo, again, *monthly), capsys)[0] == 0
    for name in ("manifest.json", "cases.parquet", "hospitals.parquet", "hospitals.csv"):
        assert (again / name).read_bytes() == (annual / name).read_bytes(), name


def test_manifest_sums_every_statement_money_column(annual):
    m = json.loads((annual / "manifest.json").read_text(encoding="utf-8"))
    stm = pq.read_table(annual / "hospitals.parquet")
    for name in (c for c in stm.column_names if c.endswith("_fen")):
        assert m["sums"]["hospitals"].get(name) == pc.sum(stm[name]).as_py(), name


def test_manifest_records_the_command_parameters(demo, annual):
    m = json.loads((annual / "manifest.json").read_text(encoding="utf-8"))
    recorded = json.dumps(m["parameters"])
    for value in (demo / "rules", demo / "pricing", demo / "hospitals.csv", demo / "cases.parquet"):
        assert str(value) in recorded, value


def test_split_input_gives_the_same_case_results(demo, annual, tmp_path, capsys):
    """§8.3: results do not depend on the file split (inputs given by repeating --input)."""
    t = pq.read_table(demo / "cases.parquet")
    half = t.num_rows // 2
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    pq.write_table(t.slice(0, half), a)
    from dipengine.io import write_table

    write_table(t.slice(half), b)
    out = tmp_path / "split"
    monthly = sum((["--monthly", d] for d in sorted((demo / "monthly").iterdir())), [])
    code, _, err = run(settle_args(demo, out, *monthly, inputs=[a, b]), capsys)
    assert code == 0, err
    cols = CASE_RESULT_COLUMNS
    assert pq.read_table(out / "cases.parquet").select(cols).equals(pq.read_table(annual / "cases.parquet").select(cols))
    assert pq.read_table(out / "hospitals.parquet").equals(pq.read_table(annual / "hospitals.parquet"))


def test_settle_input_takes_several_files_after_one_flag(demo, tmp_path, capsys):
    t = pq.read_table(demo / "cases.parquet")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(t.slice(0, 1000), a)
    pq.write_table(t.slice(1000), b)
    args = settle_args(demo, tmp_path / "out")
    i = args.index("--input")
    args[i + 1:i + 2] = [a, b]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert pq.read_table(tmp_path / "out" / "cases.parquet")["case_id"].equals(t["case_id"])


def test_settle_monthly_takes_several_dirs_after_one_flag(demo, annual, tmp_path, capsys):
    months = sorted((demo / "monthly").iterdir())
    code, _, err = run(settle_args(demo, tmp_path / "out", "--monthly", *months), capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "hospitals.parquet").read_bytes() == (annual / "hospitals.parquet").read_bytes()


def test_monthly_settlement_writes_the_same_files(demo, tmp_path, capsys):
    out = tmp_path / "m"
    code, text, _ = run(settle_args(demo, out, period="2026-03"), capsys)
    assert code == 0 and "2026-03" in text
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["period"] == "2026-03" and m["kind"] == "monthly"
    t = pq.read_table(out / "cases.parquet")
    assert t.num_rows == pq.read_metadata(demo / "cases.parquet").num_rows  # other months: BAD_DATES, kept
    months = pc.month(pq.read_table(demo / "cases.parquet")["discharge_date"]).to_pylist()
    outside = [r for r, mo in zip(t["reason"].to_pylist(), months) if mo is not None and mo != 3]
    assert outside and set(outside) <= {"BAD_DATES", "DUPLICATE_CASE", "MISSING_FIELD", "BAD_VALUE",
                                        "INVALID_DX", "INVALID_PROC", "BAD_AMOUNT", "UNKNOWN_HOSPITAL"}
    assert in_order(pq.read_table(out / "hospitals.parquet").column_names, STATEMENT_COLUMNS)


# --- §8.7: atomic outputs ----------------------------------------------------------------------


def test_failed_runs_keep_the_previous_good_output(demo, small, tmp_path, capsys):
    tmp_path = tmp_path / "atomic"
    tmp_path.mkdir()
    out = tmp_path / "g.parquet"
    assert run(["group", "--rules", small / "blank", "--input", small / "cases.csv", "--out", out], capsys)[0] == 0
    before = out.read_bytes()
    code, _, _ = run(["group", "--rules", tmp_path / "missing", "--input", small / "cases.csv", "--out", out], capsys)
    assert code == 1 and out.read_bytes() == before
    sdir = tmp_path / "s"
    assert run(settle_args(demo, sdir, period="2026-01"), capsys)[0] == 0
    snapshot = {p.name: p.read_bytes() for p in sdir.iterdir()}
    assert run(settle_args(demo, sdir, period="2027"), capsys)[0] == 1
    assert {p.name: p.read_bytes() for p in sdir.iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.parquet", "s"]  # no temporary leftovers


# --- §1 benefits -------------------------------------------------------------------------------


def _split_benefits(demo: Path, tmp: Path) -> tuple[Path, Path]:
    text = (demo / "pricing" / "benefits.csv").read_text(encoding="utf-8").splitlines()
    local = [text[0]] + [ln for ln in text[1:] if ln.startswith("440200,")]
    other = [text[0]] + [ln for ln in text[1:] if not ln.startswith("440200,")]
    a, b = tmp / "local", tmp / "remote"
    for d, lines in ((a, local), (b, other)):
        d.mkdir()
        (d / "benefits.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return a, b


def test_benefits_columns_and_several_pricing_dirs_after_one_flag(demo, tmp_path, capsys):
    local, remote = _split_benefits(demo, tmp_path)
    base = ["--hospitals", demo / "hospitals.csv", "--input", demo / "cases.parquet"]
    whole = tmp_path / "whole.parquet"
    assert run(["benefits", "--pricing", demo / "pricing", *base, "--out", whole], capsys)[0] == 0
    split = tmp_path / "split.parquet"
    code, _, err = run(["benefits", "--pricing", local, remote, *base, "--out", split], capsys)
    assert code == 0, err
    repeated = tmp_path / "repeated.csv"
    assert run(["benefits", "--pricing", local, "--pricing", remote, *base, "--out", repeated], capsys)[0] == 0
    t = pq.read_table(whole)
    assert t.column_names[:len(BENEFIT_COLUMNS)] == BENEFIT_COLUMNS
    assert t.schema.field("cap_reached").type == pa.bool_()
    assert all(t.schema.field(c).type == pa.int64() for c in BENEFIT_COLUMNS if c.endswith("_fen"))
    assert t["case_id"].equals(pq.read_table(demo / "cases.parquet")["case_id"])
    assert pq.read_table(split).select(BENEFIT_COLUMNS).equals(t.select(BENEFIT_COLUMNS))
    rep = pcsv.read_csv(repeated, convert_options=pcsv.ConvertOptions(column_types={"case_id": pa.string()}))
    assert rep["fund_benefit_fen"].to_pylist() == t["fund_benefit_fen"].to_pylist()
    # the patient pays what the fund does not, to the fen
    ok = pc.is_valid(t["fund_benefit_fen"])
    total = pc.cast(pc.multiply(pq.read_table(demo / "cases.parquet")["total_cost"], 100), pa.int64())
    assert pc.all(pc.equal(pc.filter(pc.add(t["fund_benefit_fen"], t["patient_share_fen"]), ok),
                           pc.filter(total, ok))).as_py()
    # only the local region's table: remote insured regions get no computed benefit
    only_local = tmp_path / "local.parquet"
    assert run(["benefits", "--pricing", local, *base, "--out", only_local], capsys)[0] == 0
    lo = pq.read_table(only_local)
    remote_rows = pc.and_(pc.not_equal(pq.read_table(demo / "cases.parquet")["insured_region"], "440200"), ok)
    assert set(pc.filter(lo["benefit_note"], remote_rows).to_pylist()) == {"NO_BENEFIT_TABLE"}
    assert set(pc.filter(lo["fund_benefit_fen"], remote_rows).to_pylist()) == {0}


# --- §1 estimate ---------------------------------------------------------------------------------


def test_estimate_prints_the_contract_fields_as_json(demo, tmp_path, capsys):
    grouped = pq.read_table(demo / "annual" / "cases.parquet")
    row = next(r for r in grouped.to_pylist() if r["match_path"] == "core" and r["locality"] == "local")
    src = next(r for r in pq.read_table(demo / "cases.parquet").to_pylist() if r["case_id"] == row["case_id"])
    case = {k: (str(v) if v is not None and not isinstance(v, (int, list)) else v) for k, v in src.items()}
    (tmp_path / "case.json").write_text(json.dumps(case, ensure_ascii=False), encoding="utf-8")
    code, out, err = run(["estimate", "--rules", demo / "rules", "--pricing", demo / "pricing", "--hospitals",
                          demo / "hospitals.csv", "--case", tmp_path / "case.json"], capsys)
    assert code == 0, err
    est = json.loads(out)
    # group, match path, points, payment standard, patient share, fund share, deviation class, trace
    for key in ("dip_code", "match_path", "case_points", "standard_fen", "patient_share_fen", "fund_benefit_fen",
                "deviation", "trace"):
        assert key in est, key
    assert est["dip_code"] == row["dip_code"] and est["match_path"] == "core"
    assert est["case_points"] == pytest.approx(row["case_points"]) and est["deviation"] == row["deviation"]
    assert isinstance(est["standard_fen"], int) and isinstance(est["trace"], list) and est["trace"]


# --- §1 demo -------------------------------------------------------------------------------------


def test_demo_writes_the_contract_layout_and_provenance(demo):
    for name in ("rules/groups.csv", "rules/manifest.toml", "pricing/policy.toml", "pricing/same_level_avg.csv",
                 "hospitals.csv", "cases.parquet", "history_2023.parquet", "history_2024.parquet",
                 "history_2025.parquet"):
        assert (demo / name).is_file(), name
    folders = [demo / "annual"] + sorted((demo / "monthly").iterdir())
    assert [d.name for d in folders[1:]] == [f"2026-{m:02d}" for m in range(1, 13)]
    from dipengine.io import sha256_file

    for d in folders:
        assert sorted(p.name for p in d.iterdir()) == [".dipengine-output", "cases.parquet", "hospitals.csv",
                                                       "hospitals.parquet", "manifest.json", "special_review.parquet"]
        m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        # like `settle --out`: the sha256 of every input file, rule table and policy file
        assert m["sha256"]["inputs"] == {"cases.parquet": sha256_file(demo / "cases.parquet")}
        assert m["sha256"]["rules"]["groups.csv"] == sha256_file(demo / "rules" / "groups.csv")
        assert m["sha256"]["policy"]["policy.toml"] == sha256_file(demo / "pricing" / "policy.toml")
    # the rule manifest names the history by paths that exist after the run (no temporary dir)
    build = tomllib.loads((demo / "rules" / "manifest.toml").read_text(encoding="utf-8"))["build"]
    assert all((demo / f).is_file() for f in build["history_files"] + [build["hospitals_file"]])


def test_demo_prints_headline_and_is_reproducible(demo, tmp_path, capsys):
    out = tmp_path / "again"
    code, text, _ = run(["demo", "--cases", "2000", "--seed", "5", "--out", out], capsys)
    assert code == 0
    assert "cases 2,000" in text and "groups in catalogue" in text and "used" in text
    assert "budget value" in text and "settlement value" in text
    m = json.loads((out / "annual" / "manifest.json").read_text(encoding="utf-8"))
    for pool in POOLS:  # paid total = budget, unless the policy band clamped the point value
        clamped = m["pools"][pool]["clamped"]
        assert (f"{pool}: paid total = budget: yes, to the fen" in text) != clamped
        assert (f"{pool}: settlement value clamped" in text) == clamped
    for p in sorted(demo.rglob("*")):
        if p.is_file() and p.name != "manifest.toml":
            assert (out / p.relative_to(demo)).read_bytes() == p.read_bytes(), p


# --- §7 -------------------------------------------------------------------------------------------


def test_reason_codes_are_exactly_the_contracts():
    from dipengine import reasons

    assert sorted(n for n in reasons.NAMES if n) == sorted(REASON_CODES)


CONTRACT_OPTIONS = {  # §1, every option as the contract spells it
    ("demo",): {"--out", "--cases", "--seed"},
    ("synth",): {"--year", "--cases", "--out", "--seed", "--codes-icd10", "--codes-icd9"},
    ("validate",): {"--input", "--hospitals", "--out"},
    ("catalog", "build"): {"--history", "--hospitals", "--out", "--pricing-out", "--weights", "--threshold",
                           "--scale"},
    ("group",): {"--rules", "--input", "--out", "--hospitals", "--explain"},
    ("settle",): {"--rules", "--pricing", "--hospitals", "--input", "--period", "--out", "--monthly"},
    ("benefits",): {"--pricing", "--hospitals", "--input", "--out"},
    ("estimate",): {"--rules", "--pricing", "--hospitals", "--case"},
}


@pytest.mark.parametrize("path", sorted(CONTRACT_OPTIONS), ids=" ".join)
def test_commands_have_the_contracts_options(path):
    import click

    from dipengine.cli import cli

    cmd = cli
    for name in path:
        cmd = cmd.get_command(click.Context(cmd), name)
    opts = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
    assert CONTRACT_OPTIONS[path] <= opts


def test_rules_check_takes_the_directory_as_argument():
    import click

    from dipengine.cli import cli

    rules = cli.get_command(click.Context(cli), "rules")
    check = rules.get_command(click.Context(rules), "check")
    # one argument, the directory (options such as --strict are extensions)
    assert [p.name for p in check.params if isinstance(p, click.Argument)] == ["rules_dir"]


PROBE = """case_id,hospital_id,insurance_type,insured_region,sex,age,admit_date,discharge_date,main_dx,other_procs,discharge_mode,total_cost,fund_paid,patient_paid
R1,H1,employee,440200,m,40,2026-03-01,2026-03-06,K35.800,,1,100.00,50.00,49.00
R2,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,,1,100.00,50.00,48.99
R3,H1,employee,440200,M,,2026-03-01,2026-03-06,K35.800,,1,100.00,,
R4,H1,retired,440200,M,40,2026-03-01,2026-03-06,K35.800,,1,100.00,,
R5,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,,7,100.00,,
R6,H1,employee,440200,M,40,2026-02-30,2026-03-06,K35.800,,1,100.00,,
R7,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,47.01.00,1,100.00,,
R8,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,,1,abc,,
R9,H2,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,,1,100.00,,
R10,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.,,1,100.00,,
R11,H1,employee,440200,M,40,2026-03-07,2026-03-06,K35.800,,1,100.00,,
R11,H1,employee,440200,M,40,2026-03-01,2026-03-06,K35.800,,1,100.00,,
"""


def test_each_reason_code_of_section_7_when_the_contract_says(tmp_path, capsys):
    (tmp_path / "p.csv").write_text(PROBE, encoding="utf-8")
    (tmp_path / "h.csv").write_text("hospital_id,level,region\nH1,3,440200\n", encoding="utf-8")
    out = tmp_path / "p.parquet"
    code, text, _ = run(["validate", "--input", tmp_path / "p.csv", "--hospitals", tmp_path / "h.csv",
                         "--out", out], capsys)
    assert code == 0
    rows = pq.read_table(out).to_pylist()
    assert [r["reason"] for r in rows] == [
        None,                # within 1 yuan; sex matched case-insensitively
        "BAD_AMOUNT",        # fund + patient differ from total by more than 1 yuan
        "MISSING_FIELD", "BAD_VALUE", "BAD_VALUE", "BAD_DATES", "INVALID_PROC", "BAD_AMOUNT",
        "UNKNOWN_HOSPITAL", "INVALID_DX", "BAD_DATES", "DUPLICATE_CASE"]
    assert rows[0]["sex"] == "M"
    named = ["", "total_cost", "age", "insurance_type", "discharge_mode", "admit_date", "other_procs",
             "total_cost", "hospital_id", "main_dx", "discharge_date", "case_id"]
    for r, col in zip(rows[1:], named[1:]):
        assert col in r["reason_detail"], (r["case_id"], r["reason_detail"])


@pytest.mark.parametrize("key", ["quality_deposit", "low_ratio", "reserve_rate", "include_remote", "score_scale"])
def test_a_policy_lacking_a_parameter_is_an_error_naming_it(demo, tmp_path, key, capsys):
    """§5: the engine never silently invents a settlement parameter."""
    import shutil

    from dipengine.manifest import read_manifest, write_manifest

    pricing = tmp_path / "pricing"
    shutil.copytree(demo / "pricing", pricing)
    text = (pricing / "policy.toml").read_text(encoding="utf-8")
    (pricing / "policy.toml").write_text(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith(key)) + "\n", encoding="utf-8")
    args = settle_args(demo, tmp_path / "out", period="2026-01")
    args[args.index("--pricing") + 1] = pricing
    code, _, err = run(args, capsys)
    assert code == 1 and "sha256" in err and "policy.toml" in err    # edited without re-sealing
    meta = read_manifest(pricing)
    write_manifest(pricing, {k: v for k, v in meta.items() if k != "files"}, list(meta["files"]))
    code, _, err = run(args, capsys)
    assert code == 1 and key in err and "policy.toml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_outputs_are_parquet_unless_named_csv_and_independent_of_threads(small, capsys):
    base = ["group", "--rules", small / "blank", "--input", small / "cases.csv"]
    assert run([*base, "--out", small / "plain", "--threads", "1"], capsys)[0] == 0
    assert run([*base, "--out", small / "upper.CSV"], capsys)[0] == 0
    assert run([*base, "--out", small / "two.parquet", "--threads", "2"], capsys)[0] == 0
    plain = pq.read_table(small / "plain")                               # no .csv: Parquet
    assert plain.equals(pq.read_table(small / "two.parquet"))
    assert (small / "upper.CSV").read_text(encoding="utf-8").startswith('"case_id","dip_code"')


def test_multi_value_options_spread_like_repeated_flags():
    from dipengine.cli._common import spread_multi_values

    names = ("--input", "--monthly")
    assert spread_multi_values(["--input", "a", "b", "--out", "o", "--monthly", "m1", "m2"], names) == \
        ["--input", "a", "--input", "b", "--out", "o", "--monthly", "m1", "--monthly", "m2"]
    assert spread_multi_values(["--input=a", "b", "--period", "2026"], names) == \
        ["--input=a", "--input", "b", "--period", "2026"]
    assert spread_multi_values(["--input", "-", "--", "x"], names) == ["--input", "-", "--", "x"]
    assert spread_multi_values(["--out", "a", "b"], names) == ["--out", "a", "b"]  # others untouched


def test_demo_annual_folder_is_what_settle_out_writes(demo, annual):
    """§1 demo: each settlement folder as `settle --out` writes it (here: the same figures, too)."""
    for name in ("cases.parquet", "hospitals.parquet", "hospitals.csv"):
        assert (demo / "annual" / name).read_bytes() == (annual / name).read_bytes(), name
    a = json.loads((demo / "annual" / "manifest.json").read_text(encoding="utf-8"))
    b = json.loads((annual / "manifest.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in a.items() if k not in ("parameters", "sha256")} == \
        {k: v for k, v in b.items() if k not in ("parameters", "sha256")}
    assert set(a["sha256"]) == set(b["sha256"])
    for kind in a["sha256"]:  # same files and digests; the demo names them relative to its folder
        assert sorted(a["sha256"][kind].values()) == sorted(b["sha256"][kind].values()), kind
