"""A bureau's national-format extract, end to end: GBK CSV and .xlsx files with national field names,
insurance types 310/390, sex 1/2 and 大病 money validate, group and settle exactly like their
contract-format twin (issue 14, "Done when")."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dipengine.cli import cli
from dipengine.io import _csv_ready
from dipengine.money import fen_to_decimal, yuan_to_fen
from dipengine.schemas import load_schema
from dipengine.synth import synth_region

N = 2500


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """Contract-format cases with 大病 money, and their national twins: GBK CSV (Chinese headers),
    .xlsx (national field names), Parquet (national field names)."""
    d = tmp_path_factory.mktemp("intake")
    cases, hospitals = synth_region(2026, N, seed=11)
    fund, _ = yuan_to_fen(cases["fund_paid"])
    big = (np.arange(N) % 7 == 0) & (np.asarray(pc.equal(cases["insurance_type"], "resident")))
    other = np.where(big, fund // 5, 0)  # a fifth of the pooled money paid by 大病 instead
    cases = cases.set_column(cases.column_names.index("fund_paid"), "fund_paid", fen_to_decimal(fund - other))
    cases = cases.append_column("other_fund_paid", fen_to_decimal(other, big))
    pq.write_table(cases, d / "contract.parquet")
    pcsv.write_csv(hospitals, d / "hospitals.csv")
    nhsa = load_schema("nhsa")
    zh = nhsa.export(cases, chinese=True, other_fund_part="大病保险支付")
    buf = io.BytesIO()
    pcsv.write_csv(_csv_ready(zh), buf)
    text = buf.getvalue().decode("utf-8").replace("\n", "\r\n")  # as a Windows export writes it
    (d / "national_gbk.csv").write_bytes(text.encode("gbk"))
    en = nhsa.export(cases, other_fund_part="hifmi_pay")
    pq.write_table(en, d / "national.parquet")
    openpyxl = pytest.importorskip("openpyxl", reason="openpyxl writes the .xlsx fixture (pip install -e '.[test]')")
    pytest.importorskip("python_calamine", reason="python-calamine reads .xlsx (pip install -e '.[test]')")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "结算清单"
    flat = _csv_ready(en)
    ws.append(flat.column_names)
    for row in zip(*(c.to_pylist() for c in flat.columns)):
        ws.append(["" if v is None else str(v) for v in row])
    wb.save(d / "national.xlsx")
    return d


def run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


NATIONAL = [("national_gbk.csv", ()), ("national.xlsx", ("--sheet", "结算清单")), ("national.parquet", ())]


@pytest.mark.parametrize("name,extra", NATIONAL)
def test_national_extract_validates_like_its_twin(region, name, extra):
    run("validate", "--input", region / "contract.parquet", "--hospitals", region / "hospitals.csv",
        "--out", region / "v_contract.parquet")
    out = run("validate", "--schema", "nhsa", "--input", region / name, *extra, "--hospitals",
              region / "hospitals.csv", "--out", region / f"v_{name}.parquet")
    a = pq.read_table(region / "v_contract.parquet")
    b = pq.read_table(region / f"v_{name}.parquet")
    assert b.num_rows == N
    # no row a bureau would accept is rejected: the reasons are those of the twin (none here)
    assert b["reason"].to_pylist() == a["reason"].to_pylist()
    assert a["reason"].null_count == N, pc.value_counts(a["reason"]).to_pylist()
    assert f"rows OK    {N:>12,}" in out
    for column in ("case_id", "insurance_type", "sex", "admit_date", "discharge_date", "main_dx", "other_dx",
                   "total_cost_fen", "fund_paid_fen", "other_fund_paid_fen", "patient_paid_fen"):
        assert b[column].equals(a[column]), column
    assert set(b["insurance_type"].to_pylist()) == {"employee", "resident"}
    assert b["other_fund_paid_fen"].drop_null().to_numpy().sum() > 0  # the 大病 money arrived


@pytest.mark.parametrize("name,extra", NATIONAL)
def test_national_extract_groups_and_settles_like_its_twin(region, name, extra):
    common = ("--rules", "demo", "--pricing", "440200/2026", "--hospitals", region / "hospitals.csv",
              "--period", "2026")
    if not (region / "s_contract").exists():
        run("group", "--rules", "demo", "--input", region / "contract.parquet", "--out", region / "g_contract.parquet")
        run("settle", *common, "--input", region / "contract.parquet", "--out", region / "s_contract")
    run("group", "--schema", "nhsa", "--rules", "demo", "--input", region / name, *extra,
        "--out", region / f"g_{name}.parquet")
    run("settle", "--schema", "nhsa", *common, "--input", region / name, *extra, "--out", region / f"s_{name}")
    ga, gb = pq.read_table(region / "g_contract.parquet"), pq.read_table(region / f"g_{name}.parquet")
    grouping = ["case_id", "dip_code", "match_path", "base_score", "aux_subtype", "aux_coef", "reason"]
    assert gb.select(grouping).equals(ga.select(grouping))
    ha = pq.read_table(region / "s_contract" / "hospitals.parquet")
    hb = pq.read_table(region / f"s_{name}" / "hospitals.parquet")
    assert hb.equals(ha)  # every hospital statement, to the fen
    ca = pq.read_table(region / "s_contract" / "cases.parquet")
    cb = pq.read_table(region / f"s_{name}" / "cases.parquet")
    money = [c for c in ca.column_names if c.endswith("_fen") or c in ("case_points", "deviation", "locality")]
    assert cb.select(["case_id"] + money).equals(ca.select(["case_id"] + money))
    ma = json.loads((region / "s_contract" / "manifest.json").read_text())
    mb = json.loads((region / f"s_{name}" / "manifest.json").read_text())
    for key in ("pools", "sums", "total_points", "counts"):  # point values, budgets, money sums, counts
        assert mb[key] == ma[key], key


def _content_hash(table: pa.Table) -> str:
    import hashlib

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def test_synth_national_twin_groups_and_settles_to_the_same_content_hash(tmp_path):
    for schema in ("contract", "nhsa"):
        run("synth", "--year", "2026", "--cases", "3000", "--seed", "5", "--schema", schema, "--out", tmp_path / schema)
    national = pq.read_table(tmp_path / "nhsa" / "cases.parquet")
    assert {"setl_id", "fixmedins_code", "hi_type", "gend", "adm_time", "medfee_sumamt"} <= set(national.column_names)
    assert set(national["hi_type"].to_pylist()) == {"310", "390"}
    hashes = {}
    for schema in ("contract", "nhsa"):
        d = tmp_path / schema
        run("group", "--schema", schema, "--rules", "demo", "--input", d / "cases.parquet", "--hospitals",
            d / "hospitals.csv", "--out", d / "grouped.parquet")
        run("settle", "--schema", schema, "--rules", "demo", "--pricing", "440200/2026", "--hospitals",
            d / "hospitals.csv", "--input", d / "cases.parquet", "--period", "2026", "--out", d / "annual")
        grouped = pq.read_table(d / "grouped.parquet").select(
            ["case_id", "dip_code", "dip_name", "group_type", "match_path", "treat_class", "base_score",
             "aux_subtype", "aux_coef", "reason", "reason_detail"])
        hashes[schema] = (_content_hash(grouped), _content_hash(pq.read_table(d / "annual" / "hospitals.parquet")))
    assert hashes["nhsa"] == hashes["contract"]
