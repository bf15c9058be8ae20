"""Input files (dipengine.io): CSV encodings and line endings, .xlsx workbooks, file-type sniffing."""
from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import sys
import zipfile

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from dipengine import io
from dipengine.errors import DataError
from dipengine.io import iter_batches, read_table
from dipengine.reader import read_cases

TEXT = "case_id,性别,人员类别,code\nC1,男,职工,0310\nC2,女,居民,0042\n"
ROWS = [{"case_id": "C1", "性别": "男", "人员类别": "职工", "code": "0310"},
        {"case_id": "C2", "性别": "女", "人员类别": "居民", "code": "0042"}]


def write(tmp_path, data: bytes, name="cases.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- CSV encodings --------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_csv_encoding_is_detected(tmp_path, codec):
    t = read_table(write(tmp_path, TEXT.encode(codec)))
    assert t.column_names == ["case_id", "性别", "人员类别", "code"]  # no "\ufeffcase_id" from a BOM
    assert t.to_pylist() == ROWS
    assert all(pa.types.is_string(f.type) for f in t.schema)


def test_gb18030_beyond_gbk_is_read(tmp_path):
    # 𠀀 (U+20000) is a four-byte gb18030 sequence whose 2nd and 4th bytes are ASCII digits
    path = write(tmp_path, "case_id,name\nC1,𠀀林\n".encode("gb18030"))
    assert read_table(path).to_pylist() == [{"case_id": "C1", "name": "𠀀林"}]


def test_explicit_encoding(tmp_path):
    path = write(tmp_path, "case_id,name\nC1,café\n".encode("latin-1"))
    assert read_table(path, encoding="latin-1").to_pylist() == [{"case_id": "C1", "name": "café"}]
    gbk = write(tmp_path, TEXT.encode("gbk"), "gbk.csv")
    assert read_table(gbk, encoding="GBK").to_pylist() == ROWS
    assert list(iter_batches(gbk, encoding="gbk"))[0].to_pylist() == ROWS


def test_explicit_utf8_on_a_gbk_file_names_the_byte(tmp_path):
    path = write(tmp_path, TEXT.encode("gbk"))
    with pytest.raises(DataError, match=r"cases\.csv: cannot decode as utf-8 at byte 8 \(line 1\)"):
        read_table(path, encoding="utf-8")


def test_undecodable_file_names_file_byte_and_line(tmp_path):
    path = write(tmp_path, b"case_id,x\nC1,\x80\x80\n")
    with pytest.raises(DataError) as e:
        read_table(path)
    msg = str(e.value)
    assert msg.startswith(str(path))
    assert "not UTF-8" in msg and "cannot decode as gb18030 at byte 13 (line 2)" in msg


def test_unknown_encoding_name(tmp_path):
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        read_table(write(tmp_path, TEXT.encode()), encoding="klingon")


def test_gbk_after_an_ascii_sample_is_still_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "CSV_SAMPLE_BYTES", 64)
    ascii_rows = "".join(f"A{i},M,x,1\n" for i in range(20))
    path = write(tmp_path, ("case_id,sex,kind,code\n" + ascii_rows + "C1,男,职工,0310\n").encode("gbk"))
    t = read_table(path)
    assert t.num_rows == 21
    assert t.slice(20).to_pylist() == [{"case_id": "C1", "sex": "男", "kind": "职工", "code": "0310"}]


def test_a_character_cut_at_the_sample_end_is_not_an_error(tmp_path, monkeypatch):
    data = TEXT.encode("utf-8")
    cut = data.index("男".encode()) + 1  # inside the three bytes of 男
    monkeypatch.setattr(io, "CSV_SAMPLE_BYTES", cut)
    assert read_table(write(tmp_path, data)).to_pylist() == ROWS  # UTF-8, not gb18030 mojibake


def test_undecodable_byte_past_the_sample_is_located(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "CSV_SAMPLE_BYTES", 64)
    body = "case_id,x\n" + "".join(f"C{i},男\n" for i in range(30))
    data = body.encode("gbk") + b"C99,\x80\x80\n"
    with pytest.raises(DataError, match=f"cannot decode as gbk at byte {len(data) - 3} \\(line 32\\)"):
        read_table(write(tmp_path, data), encoding="gbk")
    with pytest.raises(DataError, match=f"cannot decode as gb18030 at byte {len(data) - 3} \\(line 32\\)"):
        read_table(write(tmp_path, data))


def test_gzip_csv_in_gbk(tmp_path):
    path = tmp_path / "cases.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(TEXT.encode("gbk"))
    assert read_table(path).to_pylist() == ROWS


@pytest.mark.parametrize("codec", ["utf-8", "gbk"])
def test_crlf_gives_the_same_table_as_lf(tmp_path, codec):
    text = TEXT + 'C3,男,"职工, 退休",7\n'
    lf = read_table(write(tmp_path, text.encode(codec), "lf.csv"))
    crlf = read_table(write(tmp_path, text.replace("\n", "\r\n").encode(codec), "crlf.csv"))
    assert crlf.equals(lf)
    assert crlf["code"].to_pylist() == ["0310", "0042", "7"]  # no "\r" left in the last column
    assert crlf["人员类别"][2].as_py() == "职工, 退休"


def test_gbk_cases_read_like_utf8_cases(tmp_path):
    text = ("case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,"
            "total_cost,姓名\nC1,H1,employee,440200,40,2027/3/1,20270305,K35.800x001,\"1,234.50\",张三\n")
    utf8 = read_cases(write(tmp_path, text.encode("utf-8"), "u.csv"))
    gbk = read_cases(write(tmp_path, text.replace("\n", "\r\n").encode("gbk"), "g.csv"))
    assert gbk.equals(utf8)
    assert gbk["姓名"].to_pylist() == ["张三"]
    assert gbk["total_cost_fen"].to_pylist() == [123450]
    assert gbk["reason"].to_pylist() == [None]


# --- Excel workbooks ------------------------------------------------------------------------

needs_calamine = pytest.mark.skipif(importlib.util.find_spec("python_calamine") is None,
                                    reason='python-calamine not installed (pip install -e ".[test]")')


def workbook(path, sheets: dict):
    """An .xlsx file written with openpyxl (a test dependency only)."""
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path


@needs_calamine
def test_xlsx_first_sheet_as_text(tmp_path):
    path = workbook(tmp_path / "cases.xlsx", {
        "cases": [["case_id", "insured_region", "age", "total_cost", "admit_date", "admit_time", "code", "note",
                   "flag"],
                  ["C1", 440200, 310.0, 1234.5, dt.date(2026, 1, 5), dt.datetime(2026, 1, 5, 8, 30), "0310", None,
                   True],
                  ["C2", "440200", 40, 0.1 + 0.2, dt.datetime(2026, 2, 1), dt.datetime(2026, 2, 1, 23, 59, 59),
                   310, "x", 1]],
        "other": [["x"], [1]],
    })
    t = read_table(path)
    assert t.column_names == ["case_id", "insured_region", "age", "total_cost", "admit_date", "admit_time",
                              "code", "note", "flag"]
    assert all(pa.types.is_string(f.type) for f in t.schema)
    assert t.to_pylist() == [
        {"case_id": "C1", "insured_region": "440200", "age": "310", "total_cost": "1234.5",
         "admit_date": "2026-01-05", "admit_time": "2026-01-05 08:30:00", "code": "0310", "note": "", "flag": "TRUE"},
        {"case_id": "C2", "insured_region": "440200", "age": "40", "total_cost": "0.3",
         "admit_date": "2026-02-01", "admit_time": "2026-02-01 23:59:59", "code": "310", "note": "x", "flag": "1"},
    ]


@needs_calamine
def test_xlsx_sheet_by_name_or_index(tmp_path):
    path = workbook(tmp_path / "cases.xlsm", {"a": [["x"], ["first"]], "结算清单": [["x"], ["second"]],
                                              "2026": [["x"], ["third"]]})
    for sheet in ("结算清单", 1, "1"):
        assert read_table(path, sheet=sheet)["x"].to_pylist() == ["second"], sheet
    assert read_table(path, sheet="A")["x"].to_pylist() == ["first"]  # sheet names ignore case, as in Excel
    assert read_table(path, sheet="2026")["x"].to_pylist() == ["third"]  # a name before an index
    assert read_table(path, sheet=2026)["x"].to_pylist() == ["third"]
    assert list(iter_batches(path, sheet=1))[0]["x"].to_pylist() == ["second"]


@needs_calamine
def test_unknown_sheet_lists_the_sheets(tmp_path):
    path = workbook(tmp_path / "cases.xlsx", {"一月": [["x"], [1]], "二月": [["x"], [2]]})
    with pytest.raises(DataError, match=r"cases\.xlsx: no sheet named 'March'; the sheets are '一月', '二月'"):
        read_table(path, sheet="March")
    with pytest.raises(DataError, match=r"no sheet 5 \(0-based\); the workbook has 2: '一月', '二月'"):
        read_table(path, sheet=5)


@needs_calamine
def test_xlsx_padding_rows_and_empty_sheets(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["case_id", "age"])
    ws.append(["C1", 4])
    ws.cell(row=9, column=1).number_format = "0.00"  # formatted, empty: inside Excel's used range
    ws.cell(row=9, column=4).number_format = "0.00"
    wb.create_sheet("empty")
    wb.save(tmp_path / "w.xlsx")
    t = read_table(tmp_path / "w.xlsx")
    assert t.column_names == ["case_id", "age"]
    assert t.to_pylist() == [{"case_id": "C1", "age": "4"}]
    with pytest.raises(DataError, match="sheet 'empty' is empty"):
        read_table(tmp_path / "w.xlsx", sheet="empty")


@needs_calamine
def test_xlsx_cases_read_like_csv_cases(tmp_path):
    header = ["case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
              "discharge_date", "main_dx", "total_cost", "fund_paid", "patient_paid"]
    path = workbook(tmp_path / "cases.xlsx", {"s": [
        header,
        ["C1", "H1", "employee", 440200, 40, dt.date(2027, 3, 1), dt.datetime(2027, 3, 5, 10, 0), "K35.800x001",
         1234.5, 1000, 234.5],
        ["C2", "H1", "resident", 440200, 3, dt.date(2027, 3, 9), dt.date(2027, 3, 5), "K35.800x001", 100, None,
         None],
    ]})
    csv = tmp_path / "cases.csv"
    csv.write_text(",".join(header) + "\nC1,H1,employee,440200,40,2027-03-01,2027-03-05 10:00:00,K35.800x001,"
                   "1234.50,1000,234.50\nC2,H1,resident,440200,3,2027-03-09,2027-03-05,K35.800x001,100,,\n")
    from_xlsx, from_csv = read_cases(path), read_cases(csv)
    assert from_xlsx.equals(from_csv)
    assert from_xlsx["total_cost_fen"].to_pylist() == [123450, 10000]
    assert from_xlsx["reason"].to_pylist() == [None, "BAD_DATES"]


def test_xlsx_without_calamine(tmp_path, monkeypatch):
    path = workbook(tmp_path / "cases.xlsx", {"s": [["x"], [1]]})
    monkeypatch.setitem(sys.modules, "python_calamine", None)  # import fails
    with pytest.raises(DataError, match=r'reading \.xlsx needs python-calamine: pip install "dipengine\[excel\]"'):
        read_table(path)


def test_old_xls_is_refused_with_advice(tmp_path):
    path = write(tmp_path, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504, "cases.xls")
    with pytest.raises(DataError, match=r"old \.xls workbooks are not read; save as \.xlsx or CSV"):
        read_table(path)


# --- file type from the first bytes ---------------------------------------------------------

def _zip(path, member):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, "x")
    return path


@pytest.mark.parametrize("make, text", [
    (lambda p: workbook(p, {"s": [["x"], [1]]}), r"it looks like an Excel workbook \(\.xlsx\); name it \.xlsx"),
    (lambda p: _zip(p, "cases.csv"), "it looks like a ZIP archive; unpack it first"),
    (lambda p: p.write_text("case_id,age\nC1,4\n"), r"it looks like a text \(CSV\) file; name it \.csv"),
    (lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504), r"an old Excel \.xls workbook"),
    (lambda p: p.write_bytes(gzip.compress(b"a,b\n1,2\n")), r"a gzip-compressed file; name it \.csv\.gz"),
    (lambda p: p.write_bytes(b""), "file is empty"),
])
def test_unknown_extension_says_what_the_file_looks_like(tmp_path, make, text):
    path = tmp_path / "cases.dat"
    make(path)
    with pytest.raises(DataError, match=text) as e:
        read_table(path)
    assert str(e.value).startswith(str(path))
    assert "magic bytes" not in str(e.value)
    with pytest.raises(DataError, match=text):
        list(iter_batches(path))


def test_unknown_extension_parquet_and_arrow_are_read_by_content(tmp_path):
    table = pa.table({"case_id": ["C1"], "age": [4]})
    pq.write_table(table, tmp_path / "cases.dat")
    feather.write_feather(table, tmp_path / "cases.bin")
    assert read_table(tmp_path / "cases.dat").equals(table)
    assert read_table(tmp_path / "cases.bin").equals(table)
    assert pa.Table.from_batches(list(iter_batches(tmp_path / "cases.dat"))).equals(table)


@pytest.mark.parametrize("name, make, text", [
    ("cases.parquet", lambda p: p.write_text("case_id\nC1\n"), r"not a Parquet file: it looks like a text \(CSV\)"),
    ("cases.csv", lambda p: workbook(p, {"s": [["x"], [1]]}), r"not a CSV text file: it looks like an Excel work"),
    ("cases.csv", lambda p: pq.write_table(pa.table({"a": [1]}), p), r"not a CSV text file: it looks like a Parq"),
    ("cases.xlsx", lambda p: pq.write_table(pa.table({"a": [1]}), p), r"not an \.xlsx workbook: it looks like a Par"),
    ("cases.xlsx", lambda p: p.write_text("a,b\n1,2\n"), r"not an \.xlsx workbook: it looks like a text \(CSV\)"),
    ("cases.arrow", lambda p: p.write_text("a,b\n1,2\n"), r"not an Arrow IPC file: it looks like a text \(CSV\)"),
])
def test_misnamed_file_says_what_it_looks_like(tmp_path, name, make, text):
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError, match=text):
        read_table(path)


def test_misnamed_parquet_through_iter_batches(tmp_path):
    path = tmp_path / "cases.parquet"
    path.write_text("case_id\nC1\n")
    with pytest.raises(DataError, match=r"not a Parquet file: it looks like a text \(CSV\) file; name it \.csv"):
        list(iter_batches(path))


def test_read_cases_names_a_misnamed_parquet_file(tmp_path):
    from dipengine.reader import read_cases

    p = tmp_path / "cases.parquet"
    p.write_text("case_id,hospital_id\n1,H1\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a Parquet file: it looks like a text"):
        read_cases(p)
