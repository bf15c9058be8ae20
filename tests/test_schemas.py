"""Input schemas (dipengine.schemas): national settlement-list extracts read as contract cases."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dipengine.case import read_cases_reference
from dipengine.errors import DataError
from dipengine.reader import read_cases
from dipengine.schemas import load_schema

HOSPITALS = pa.table({"hospital_id": ["H1", "H2"], "name": ["a", "b"], "level": [3, 2],
                      "region": ["440200", "440200"]})

BASE = {
    "case_id": "1", "hospital_id": "H1", "insurance_type": "employee", "insured_region": "440200", "sex": "M",
    "age": "40", "admit_date": "2026-01-03", "discharge_date": "2026-01-09", "main_dx": "K35.800x001",
    "total_cost": "10000.00", "fund_paid": "7000.00", "patient_paid": "3000.00",
}


def contract_cases(n=6):
    rows = []
    for i in range(n):
        r = dict(BASE)
        r["case_id"] = str(i + 1)
        r["insurance_type"] = "employee" if i % 2 == 0 else "resident"
        r["sex"] = "MF"[i % 2]
        rows.append(r)
    return pa.Table.from_pylist(rows)


def nhsa_row(**over):
    row = {
        "setl_id": "S1", "mdtrt_id": "M1", "fixmedins_code": "H1", "hi_type": "310", "insuplc": "440200",
        "gend": "1", "age": "40", "adm_time": "2026-01-03 08:30:00", "dscg_time": "2026-01-09 10:00:00",
        "dscg_way": "1", "main_dx": "K35.800x001", "medfee_sumamt": "10000.00", "hifp_pay": "6000.00",
        "hifmi_pay": "1000.00", "psn_selfpay": "2500.00", "psn_ownpay": "500.00",
    }
    row.update(over)
    return row


def test_shipped_schemas_load_with_hashes():
    nhsa = load_schema("nhsa")
    assert not nhsa.identity and nhsa.nested
    assert len(nhsa.sha256) == 64 and nhsa.files
    contract = load_schema()
    assert contract.identity and contract.name == "contract"
    assert "insurance_type" in contract.values  # national code values apply to the contract layout too


def test_national_extract_maps_fields_code_values_and_funds():
    t = pa.Table.from_pylist([nhsa_row(), nhsa_row(setl_id="S2", hi_type="390", gend="2")])
    out = read_cases(t, HOSPITALS, schema="nhsa")
    assert out["reason"].to_pylist() == [None, None]
    assert out["case_id"].to_pylist() == ["S1", "S2"]
    assert out["insurance_type"].to_pylist() == ["employee", "resident"]
    assert out["sex"].to_pylist() == ["M", "F"]
    assert out["admit_date"][0].as_py().isoformat() == "2026-01-03"
    assert out["fund_paid_fen"].to_pylist() == [600000, 600000]
    assert out["other_fund_paid_fen"].to_pylist() == [100000, 100000]
    assert out["patient_paid_fen"].to_pylist() == [300000, 300000]  # 个人自付 + 个人自费
    # the parts of a sum are kept (per-fund detail); mdtrt_id is carried as an extra column
    assert out["hifmi_pay"].to_pylist() == ["1000.00", "1000.00"]
    assert out["mdtrt_id"].to_pylist() == ["M1", "M1"]


def test_other_insurance_types_are_kept_and_reported():
    t = pa.Table.from_pylist([nhsa_row(hi_type="320"), nhsa_row(setl_id="S2", hi_type="999")])
    out = read_cases(t, HOSPITALS, schema="nhsa")
    assert out["reason"].to_pylist() == ["BAD_VALUE", "BAD_VALUE"]
    assert out["insurance_type"].to_pylist() == ["320", "999"]
    detail = out["reason_detail"].to_pylist()
    assert detail[0] == "insurance_type: '320' is 公务员医疗补助, not one of employee, resident"
    assert detail[1] == "insurance_type: '999' is not one of employee, resident"


def test_sex_codes_and_contract_values_stay_valid():
    rows = [dict(BASE, case_id=str(i), sex=s) for i, s in enumerate(["1", "2", "0", "9", "M", "f", "男", "女"])]
    out = read_cases(pa.Table.from_pylist(rows))
    assert out["sex"].to_pylist() == ["M", "F", "U", "U", "M", "F", "M", "F"]
    assert out["reason"].null_count == len(rows)


def test_insurance_code_values_in_the_contract_layout():
    rows = [dict(BASE, case_id=str(i), insurance_type=v) for i, v in enumerate(["310", "390", "391", "380", "职工"])]
    out = read_cases(pa.Table.from_pylist(rows))
    assert out["insurance_type"].to_pylist() == ["employee", "resident", "resident", "resident", "employee"]
    assert out["reason"].null_count == len(rows)


def test_other_funds_enter_the_balance_check():
    ok = dict(BASE, fund_paid="6000.00", other_fund_paid="1000.00")
    unbalanced = dict(BASE, case_id="2", fund_paid="6000.00")  # 1,000 yuan of 大病 money not declared
    out = read_cases(pa.Table.from_pylist([ok, unbalanced]))
    assert out["reason"].to_pylist() == [None, "BAD_AMOUNT"]
    assert out["other_fund_paid_fen"].to_pylist() == [100000, None]
    assert out["reason_detail"][1].as_py() == \
        "fund_paid + patient_paid = 9000.00 differs from total_cost = 10000.00 by more than 1 yuan"
    off = dict(BASE, case_id="3", fund_paid="6000.00", other_fund_paid="900.00")
    out = read_cases(pa.Table.from_pylist([off]))
    assert out["reason_detail"][0].as_py() == \
        "fund_paid + other_fund_paid + patient_paid = 9900.00 differs from total_cost = 10000.00 by more than 1 yuan"


def test_a_bad_part_of_a_sum_is_reported_with_its_field():
    t = pa.Table.from_pylist([nhsa_row(psn_ownpay="abc"), nhsa_row(setl_id="S2", psn_ownpay="1,000.50",
                                                                 psn_selfpay="1,999.50")])
    out = read_cases(t, HOSPITALS, schema="nhsa")
    assert out["reason"].to_pylist() == ["BAD_AMOUNT", None]
    assert out["reason_detail"][0].as_py() == "patient_paid: 'psn_ownpay=abc' is not a number"
    assert out["patient_paid_fen"][1].as_py() == 300000


def test_chinese_headers_are_aliases():
    row = {"结算ID": "S1", "定点医药机构编号": "H1", "险种类型": "390", "参保地": "440200", "性别": "女",
           "年龄": "30", "入院时间": "2026-02-01", "出院时间": "2026-02-05", "主要诊断编码": "K35.800x001",
           "医疗费总额": "5000", "统筹基金支付": "3000", "个人自付": "1500", "个人自费": "500"}
    out = read_cases(pa.Table.from_pylist([row]), HOSPITALS, schema="nhsa")
    assert out["reason"][0].as_py() is None
    assert (out["case_id"][0].as_py(), out["insurance_type"][0].as_py(), out["sex"][0].as_py()) == \
        ("S1", "resident", "F")
    assert out["patient_paid_fen"][0].as_py() == 200000


def test_a_contract_column_under_its_own_name_wins():
    t = pa.Table.from_pylist([dict(nhsa_row(), case_id="C1")])
    out = read_cases(t, HOSPITALS, schema="nhsa")
    assert out["case_id"][0].as_py() == "C1"
    assert out["setl_id"][0].as_py() == "S1"  # carried through


def test_fast_path_and_reference_agree_on_national_extracts():
    rows = [nhsa_row(setl_id=f"S{i}", hi_type=h, gend=g, psn_ownpay=p)
            for i, (h, g, p) in enumerate([("310", "1", "500"), ("390", "2", "x"), ("320", "9", "500"),
                                           ("391", "0", None), ("310", "1", "500")])]
    rows[4]["setl_id"] = "S0"  # a duplicate
    t = pa.Table.from_pylist(rows)
    fast = read_cases(t, HOSPITALS, schema="nhsa")
    slow = read_cases_reference(t, HOSPITALS, schema="nhsa")
    assert fast.equals(slow)


def test_export_round_trip_gives_the_same_cases():
    cases = contract_cases()
    nhsa = load_schema("nhsa")
    for chinese in (False, True):
        exported = nhsa.export(cases, chinese=chinese)
        assert "case_id" not in exported.column_names
        a = read_cases(cases, HOSPITALS)
        b = read_cases(exported, HOSPITALS, schema="nhsa")
        assert b.select(a.column_names).equals(a)


def test_nested_4101_tables_join_on_the_case_key(tmp_path):
    setl = [{k: v for k, v in nhsa_row(setl_id=f"S{i}").items() if k not in ("main_dx", "hifp_pay", "hifmi_pay")}
            for i in range(3)]
    pq.write_table(pa.Table.from_pylist(setl), tmp_path / "setlinfo.parquet")
    pq.write_table(pa.table({
        "setl_id": ["S1", "S0", "S0", "S0", "S2"],
        "maindiag_flag": ["0", "1", "0", "0", "1"],
        "diag_type": ["1", "1", "1", "2", "1"],  # the 中医 diagnosis (type 2) is not grouped
        "diag_code": ["I10.x00", "K35.800x001", "I10.x00", "BNG010", "K80.000x002"],
    }), tmp_path / "diseinfo.parquet")
    pq.write_table(pa.table({
        "setl_id": ["S0", "S0", "S1"], "main_oprn_flag": ["0", "1", "1"],
        "oprn_oprt_code": ["99.0400", "47.0100x001", "51.2300"],
    }), tmp_path / "oprninfo.parquet")
    pq.write_table(pa.table({
        "setl_id": ["S0", "S0", "S1", "S1", "S2", "S2"],
        "fund_pay_type": ["310100", "390200", "310100", "610100", "310100", "310200"],
        "fund_payamt": ["6000", "1000", "6500.50", "499.50", "7000", "300"],
    }), tmp_path / "payinfo.parquet")
    out = read_cases(tmp_path, HOSPITALS, schema="nhsa")
    assert out["case_id"].to_pylist() == ["S0", "S1", "S2"]
    assert out["main_dx"].to_pylist() == ["K35.800x001", None, "K80.000x002"]
    assert out["other_dx"].to_pylist() == [["I10.x00"], ["I10.x00"], []]
    assert out["main_proc"].to_pylist() == ["47.0100x001", "51.2300", None]
    assert out["other_procs"].to_pylist() == [["99.0400"], [], []]
    assert out["fund_paid_fen"].to_pylist() == [600000, 650050, 700000]
    assert out["other_fund_paid_fen"].to_pylist() == [100000, 49950, None]
    assert out["fund_390200"].cast(pa.string()).to_pylist() == ["1000.00", None, None]  # per-fund detail
    assert out["reason"].to_pylist() == [None, "MISSING_FIELD", None]


def test_bad_schema_tables_name_file_line_column_and_value(tmp_path):
    folder = tmp_path / "myschema"
    folder.mkdir()
    (folder / "fields.csv").write_text("column,source\ncase_id,setl_id\ncase_idd,x\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_schema(folder)
    assert "fields.csv" in str(e.value) and "line 3" in str(e.value) and "'case_idd'" in str(e.value)
    (folder / "fields.csv").write_text("column,source\nsex,a+b\n", encoding="utf-8")
    with pytest.raises(DataError, match="only money columns"):
        load_schema(folder)
    (folder / "fields.csv").write_text("column,source\ncase_id,my_id\n", encoding="utf-8")
    (folder / "code_values.csv").write_text("column,code,value\nsex,1,M\nsex,1,F\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3: code listed twice"):
        load_schema(folder)
    (folder / "code_values.csv").write_text("column,code,value\ninsurance_type,310,employe\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: not a value of insurance_type") as e:
        load_schema(folder)
    assert "'employe'" in str(e.value)
    with pytest.raises(DataError, match="no such schema"):
        load_schema(tmp_path / "missing")


def test_a_region_schema_folder(tmp_path):
    folder = tmp_path / "city"
    folder.mkdir()
    (folder / "fields.csv").write_text("column,source\ncase_id,单据号\nsex,性别代码\n", encoding="utf-8")
    (folder / "code_values.csv").write_text("column,code,value,label\nsex,A,M,\nsex,B,F,\n", encoding="utf-8")
    row = dict(BASE)
    del row["case_id"], row["sex"]
    row.update({"单据号": "X1", "性别代码": "B"})
    out = read_cases(pa.Table.from_pylist([row]), schema=folder)
    assert (out["case_id"][0].as_py(), out["sex"][0].as_py(), out["reason"][0].as_py()) == ("X1", "F", None)


def test_a_schema_folder_is_read_anew_after_an_edit(tmp_path):
    folder = tmp_path / "city"
    folder.mkdir()
    (folder / "fields.csv").write_text("column,source\ncase_id,单据号\n", encoding="utf-8")
    assert load_schema(folder).plan(["单据号"]) == {"case_id": "单据号"}
    (folder / "fields.csv").write_text("column,source\ncase_id,流水号\n", encoding="utf-8")
    assert load_schema(folder).plan(["流水号"]) == {"case_id": "流水号"}  # no stale copy
