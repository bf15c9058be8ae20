"""``dipengine rules import``: published catalogues into rule sets (dipengine.catalog_import), and the
complete-procedure-code check of ``check_rules`` (docs/rules-import.md)."""
from __future__ import annotations

import csv
import inspect
import io
import tomllib

import pyarrow as pa
import pytest
from click.testing import CliRunner

from dipengine.catalog_import import TARGETS, import_catalog, load_mapping, read_catalog
from dipengine.cli import cli, main
from dipengine.errors import DataError
from dipengine.grouper import group
from dipengine.io import read_table
from dipengine.rules import check_rules, is_complete_proc, load_rules, write_rule_set

HEADER = ["序号", "DIP编码", "DIP名称", "病种类型", "主要诊断编码", "主要诊断名称", "主要手术操作编码",
          "主要手术操作名称", "相关手术操作编码", "病例数", "次均费用", "病种分值"]
ROWS = [
    ["1", "K35.8-47.0100", "急性阑尾炎 腹腔镜阑尾切除", "核心病种", "K35.800x001", "急性阑尾炎", "47.0100、47.0101",
     "腹腔镜下阑尾切除术", "", "1,250", "12,345.60", "1,234.5678"],
    ["2", "K35.8-C", "急性阑尾炎 保守治疗", "核心", "K35.8", "急性阑尾炎", "保守治疗", "", "", "300", "5200", "520"],
    ["3", "K80.1-51.2300+51.8800", "胆囊结石 胆囊切除+胆总管探查", "核心病种", "k80.100", "胆囊结石", "51.2300", "",
     " 51.8800 / 51.1000 ", "40", "24600", "2460"],
    ["4", "K80.1-51.2200", "胆囊结石 开腹胆囊切除", "核心病种", "K80.100", "胆囊结石", "51.2200+54.5100", "", "",
     "25", "17900", "1790"],
    ["5", "J18.9-C", "肺炎 保守治疗", "基层病种", "J18.900", "肺炎", "无", "", "", "2,000", "6900", "690"],
    ["6", "J18.9-87.4100", "肺炎 胸部CT检查", "核心病种", "J18.900", "肺炎", "87.4100", "", "", "30", "11200", "1120"],
    ["7", "K35-S", "K35 综合 相关手术", "综合病种", "K35", "", "相关手术", "", "", "20", "11000", "1100"],
    ["8", "A00-B99-C", "A00-B99 综合 保守治疗", "综合", "A00～B99", "", "保守治疗", "", "", "30", "5800", "580"],
    ["9", "BLANK", "空白病组", "空白", "", "", "", "", "", "10", "8000", "800"],
]
EXPECTED = [  # dip_code, group_type, dx_key, proc_expr, treat_class, score, avg_cost, n_cases
    ("K35.8-47.0100", "core", "K35.8", "47.0100/47.0101", "surgery", 1234.5678, 12345.6, 1250),
    ("K35.8-C", "core", "K35.8", "", "conservative", 520.0, 5200.0, 300),
    ("K80.1-51.2300+51.8800", "core", "K80.1", "51.2300+51.8800/51.1000", "surgery", 2460.0, 24600.0, 40),
    ("K80.1-51.2200", "core", "K80.1", "51.2200+54.5100", "surgery", 1790.0, 17900.0, 25),
    ("J18.9-C", "basic", "J18.9", "", "conservative", 690.0, 6900.0, 2000),
    ("J18.9-87.4100", "core", "J18.9", "87.4100", "diagnostic", 1120.0, 11200.0, 30),
    ("K35-S", "comprehensive", "K35", "", "surgery", 1100.0, 11000.0, 20),
    ("A00-B99-C", "comprehensive", "A00-B99", "", "conservative", 580.0, 5800.0, 30),
    ("BLANK", "blank", "", "", "", 800.0, 8000.0, 10),
]

excel = pytest.mark.skipif("sheet" not in inspect.signature(read_table).parameters,
                           reason="dipengine.io.read_table has no 'sheet' keyword yet (Excel support pending)")


def write_csv(path, rows=ROWS, header=HEADER, encoding="utf-8", pre=()):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in (*pre, header, *rows):
        w.writerow(r)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def write_xlsx(path, rows=ROWS, header=HEADER, sheet="病种目录", numbers=True):
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.active.title = "说明"
    wb.active.append(["本表为示例"])
    ws = wb.create_sheet(sheet)
    ws.append(header)
    for r in rows:
        r = list(r)
        if numbers:  # as a bureau's workbook holds them: counts, costs and scores as numbers
            for k in (0, 9, 10, 11):
                r[k] = float(r[k].replace(",", "")) if "." in r[k] else int(r[k].replace(",", ""))
        ws.append(r)
    wb.save(path)
    return path


def rows_of(groups: pa.Table):
    return [(r["dip_code"], r["group_type"], r["dx_key"], r["proc_expr"], r["treat_class"], r["score"],
             r["avg_cost"], r["n_cases"]) for r in groups.to_pylist()]


def case(dx, main=None, others=(), cost=0.0):
    return dict(main_dx=dx, main_proc=main, other_procs=list(others), total_cost_fen=int(round(cost * 100)), los=5,
                age=40, age_days=None, discharge_mode=1, other_dx=[], reason=None)


def grouped(rules, *cases):
    schema = pa.schema([("case_id", pa.string()), ("main_dx", pa.string()), ("main_proc", pa.string()),
                        ("other_procs", pa.list_(pa.string())), ("other_dx", pa.list_(pa.string())),
                        ("total_cost_fen", pa.int64()), ("los", pa.int32()), ("age", pa.int32()),
                        ("age_days", pa.int32()), ("discharge_mode", pa.int8()), ("reason", pa.string())])
    rows = [dict(c, case_id=f"c{i}") for i, c in enumerate(cases)]
    return group(pa.Table.from_pylist(rows, schema=schema), rules)["dip_code"].to_pylist()


def error_of(fn, *a, **kw) -> DataError:
    with pytest.raises(DataError) as e:
        fn(*a, **kw)
    return e.value


# ------------------------------------------------------------------------------- the published layout


def test_published_csv_imports_checks_and_groups(tmp_path):
    src = write_csv(tmp_path / "目录.csv")
    out = tmp_path / "rules"
    groups = import_catalog(src, "published", out, name="city", effective_from="2027-01-01",
                            effective_to="2027-12-31", source_text="X医保发〔2026〕1号 附件1")
    assert rows_of(groups) == EXPECTED
    assert groups["dip_name"][0].as_py() == "急性阑尾炎 腹腔镜阑尾切除"
    assert groups.schema.field("n_cases").type == pa.int64()
    assert check_rules(out) == []
    manifest = tomllib.loads((out / "manifest.toml").read_text(encoding="utf-8"))
    assert (manifest["name"], manifest["version"], str(manifest["effective_from"])) == ("city", "2027.1", "2027-01-01")
    assert manifest["source"] == "X医保发〔2026〕1号 附件1"
    assert manifest["import"]["catalogue_file"] == "目录.csv" and manifest["import"]["mapping"] == "published"
    assert len(manifest["import"]["catalogue_sha256"]) == 64 and "groups.csv" in manifest["files"]

    rs = load_rules(out)
    assert grouped(
        rs,
        case("K35.800x001", "47.0100", cost=12000),          # core, main procedure
        case("K35.801", "47.0101"),                           # the other code of the 、 list
        case("K35.800"),                                      # conservative core
        case("K80.100", "51.2300", ["51.1000"]),              # main + related (any of 51.8800/51.1000)
        case("K80.100", "51.2200"),                           # 51.2200 alone: the + term is missing
        case("K80.100", "54.5100", ["51.2200"]),              # both terms of 51.2200+54.5100
        case("J18.900"),                                      # basic conservative
        case("K35.900", "47.0900"),                           # comprehensive K35 surgery
        case("A01.000"),                                      # range A00-B99 conservative
        case("M54.500"),                                      # nothing else: the blank group
    ) == ["K35.8-47.0100", "K35.8-47.0100", "K35.8-C", "K80.1-51.2300+51.8800", "BLANK", "K80.1-51.2200",
          "J18.9-C", "K35-S", "A00-B99-C", "BLANK"]


def test_gbk_csv_detected_or_named(tmp_path):
    src = write_csv(tmp_path / "gbk.csv", encoding="gbk")
    assert rows_of(read_catalog(src).groups) == EXPECTED
    assert rows_of(read_catalog(src, encoding="gbk").groups) == EXPECTED


def test_utf8_bom_and_title_rows_above_the_header(tmp_path):
    src = tmp_path / "t.csv"
    write_csv(src, pre=[["某市DIP病种目录（2027年）"] + [""] * (len(HEADER) - 1), [""] * len(HEADER)])
    src.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())
    cat = read_catalog(src)
    assert rows_of(cat.groups) == EXPECTED
    assert cat.header_line > 1 and cat.lines[0] == cat.header_line + 1


@excel
def test_xlsx_sheet_with_numeric_cells(tmp_path):
    src = write_xlsx(tmp_path / "目录.xlsx")
    cat = read_catalog(src, sheet="病种目录")
    assert rows_of(cat.groups) == EXPECTED
    assert cat.lines == list(range(2, 2 + len(ROWS)))
    assert rows_of(read_catalog(src, sheet=1).groups) == EXPECTED
    out = tmp_path / "rules"
    res = CliRunner().invoke(cli, ["rules", "import", "--from", str(src), "--out", str(out), "--sheet", "病种目录"])
    assert res.exit_code == 0, res.output
    assert "OK rules 1: 9 groups (5 core, 1 basic, 2 comprehensive, 1 blank)" in res.output


@excel
def test_xlsx_procedure_code_stored_as_a_number_is_a_prefix(tmp_path):
    """Excel shows 47.0100 typed as a number as 47.01: refused, never a silent NO_GROUP."""
    openpyxl = pytest.importorskip("openpyxl")
    src = write_xlsx(tmp_path / "n.xlsx")
    wb = openpyxl.load_workbook(src)
    wb["病种目录"]["G2"] = 47.01
    wb.save(src)
    e = error_of(read_catalog, src, sheet="病种目录")
    assert (e.row, e.column, e.value) == (2, "主要手术操作编码", "47.01")


def test_codes_are_normalised_and_full_width_is_folded(tmp_path):
    rows = [["1", " A1 ", "x", "核心病种", " ｋ３５．８００ｘ００１ ", "", "４７．０１００ ／ ４７．０９００X001；47.0901",
             "", "", "", "１，２００", "１２０"]]
    g = read_catalog(write_csv(tmp_path / "w.csv", rows)).groups.to_pylist()[0]
    assert (g["dip_code"], g["dx_key"], g["proc_expr"]) == ("A1", "K35.8", "47.0100/47.0900x001/47.0901")
    assert (g["score"], g["avg_cost"], g["n_cases"]) == (120.0, 1200.0, None)


def test_treat_class_heuristic_column_and_basic_flag(tmp_path):
    header = ["DIP编码", "病种类型", "主要诊断编码", "主要手术操作编码", "治疗方式", "次均费用", "病种分值", "是否基层病种"]
    rows = [
        ["A", "核心", "K25.0", "45.1300", "", "100", "1", "否"],        # heuristic: .1x of 45 = diagnostic
        ["B", "核心", "K25.0", "44.4100", "", "100", "1", ""],           # surgery
        ["C", "核心", "K25.0", "99.2500", "治疗性操作", "100", "1", ""],  # given
        ["D", "核心", "K25.0", "", "", "100", "1", "是"],                # basic flag
        ["E", "综合", "K25", "", "诊断性操作", "100", "1", ""],
    ]
    got = [(g["dip_code"], g["group_type"], g["treat_class"])
           for g in read_catalog(write_csv(tmp_path / "c.csv", rows, header)).groups.to_pylist()]
    assert got == [("A", "core", "diagnostic"), ("B", "core", "surgery"), ("C", "core", "therapeutic"),
                   ("D", "basic", "conservative"), ("E", "comprehensive", "diagnostic")]


def test_a_users_mapping_with_its_own_values(tmp_path):
    (tmp_path / "mine.csv").write_text(
        "column,header\n# a comment line\ndip_code,Code\ndip_name,Name\ngroup_type,Kind\ndx_key,Dx\n"
        "proc_expr,Proc\nscore,RW\navg_cost,Mean cost\n", encoding="utf-8")
    (tmp_path / "mine_values.csv").write_text("column,value,mapped\ngroup_type,C,core\ngroup_type,Z,comprehensive\n",
                                              encoding="utf-8")
    src = write_csv(tmp_path / "en.csv", [["G1", "g1", "C", "K35.8", "47.0100", "1.5", "9000"],
                                          ["G2", "g2", "Z", "K35", "", "1.0", "6000"],
                                          ["G3", "g3", "核心病种", "K35.8", "", "0.5", "3000"]],
                    ["Code", "Name", "Kind", "Dx", "Proc", "RW", "Mean cost (yuan)"])
    m = load_mapping(tmp_path / "mine.csv")
    assert m.headers["dip_code"] == ("Code",) and len(m.values_files) == 2
    out = tmp_path / "r"
    g = import_catalog(src, tmp_path / "mine.csv", out)
    assert g["group_type"].to_pylist() == ["core", "comprehensive", "core"]   # published words still apply
    assert g["avg_cost"].to_pylist() == [9000.0, 6000.0, 3000.0]             # "(yuan)" is ignored in a header
    assert check_rules(out) == []


def test_shipped_mapping_names_only_known_columns():
    m = load_mapping("published")
    assert set(m.headers) <= set(TARGETS)
    assert {"DIP编码", "病种编码", "病组编码"} <= set(m.headers["dip_code"])
    assert {"病种分值", "分值"} <= set(m.headers["score"]) and "相关手术操作编码" in m.headers["related_proc"]
    assert m.values["group_type"]["未入组"] == "blank" and m.values["group_type"]["综合病种"] == "comprehensive"


# ------------------------------------------------------------------------------- errors


def test_bad_score_names_file_line_column_value_and_writes_nothing(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[2][11] = "约2460"
    src = write_csv(tmp_path / "bad.csv", rows)
    out = tmp_path / "rules"
    e = error_of(import_catalog, src, "published", out)
    assert (e.file, e.row, e.column, e.value) == (str(src), 4, "病种分值", "约2460")
    assert "bad.csv, row 4, column '病种分值', value '约2460'" in str(e) and "not a number" in str(e)
    assert not out.exists()


def test_row_numbers_count_blank_lines_of_a_csv(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[4][11] = "n/a"
    src = write_csv(tmp_path / "b.csv", rows)
    lines = src.read_text(encoding="utf-8").split("\n")
    src.write_text("\n".join(lines[:3] + ["", ""] + lines[3:]), encoding="utf-8")   # two blank lines after row 3
    e = error_of(read_catalog, src)
    assert (e.row, e.value) == (8, "n/a")
    rows[4][11] = "690"
    cat = read_catalog(write_csv(tmp_path / "ok.csv", rows))
    assert cat.lines == list(range(2, 11))


@pytest.mark.parametrize("col, value, column, words", [
    (3, "特殊病种", "病种类型", "unknown group type"),
    (1, "", "DIP编码", "DIP code missing"),
    (4, "阑尾炎", "主要诊断编码", "not an ICD-10"),
    (6, "47.0100++47.0101", "主要手术操作编码", "empty code"),
    (6, "阑尾切除术", "主要手术操作编码", "not an ICD-9-CM-3"),
    (10, "", "次均费用", "avg_cost missing"),
    (9, "12.5", "病例数", "not a whole number"),
])
def test_unconvertible_cells(tmp_path, col, value, column, words):
    rows = [list(r) for r in ROWS]
    rows[0][col] = value
    e = error_of(read_catalog, write_csv(tmp_path / "x.csv", rows))
    assert (e.row, e.column, e.value) == (2, column, value)
    assert words in e.message


def test_missing_column_and_unknown_mapping_column(tmp_path):
    src = write_csv(tmp_path / "nocost.csv", [r[:10] + r[11:] for r in ROWS], HEADER[:10] + HEADER[11:])
    e = error_of(read_catalog, src)
    assert e.column == "avg_cost" and "次均费用" in e.message
    bad = tmp_path / "map.csv"
    bad.write_text("column,header\ndip_code,DIP编码\nscores,病种分值\n", encoding="utf-8")
    e = error_of(load_mapping, bad)
    assert (e.file, e.row, e.column, e.value) == (str(bad), 3, "column", "scores")
    assert "unknown rule-set column" in e.message
    e = error_of(load_mapping, "no-such-mapping")
    assert "published" in e.message
    (tmp_path / "m2.csv").write_text("column,header\ndip_code,X\n", encoding="utf-8")
    (tmp_path / "m2_values.csv").write_text("column,value,mapped\ngroup_type,甲,main\n", encoding="utf-8")
    e = error_of(load_mapping, tmp_path / "m2.csv")
    assert (e.row, e.column, e.value) == (2, "mapped", "main")


# ------------------------------------------------------------------------------- procedure-code prefixes


def test_prefix_is_refused_naming_the_line(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[3][6] = "51.22+54.5100"
    e = error_of(read_catalog, write_csv(tmp_path / "p.csv", rows))
    assert (e.row, e.column, e.value) == (5, "主要手术操作编码", "51.22+54.5100")
    assert "'51.22' is not a complete procedure code (a prefix?)" in e.message


def test_prefix_expands_into_the_listed_codes(tmp_path):
    codes = tmp_path / "icd9.tsv"
    codes.write_text("code\tname\n51.2200\ta\n51.2200x001\ta1\n51.2201\tb\n51.2300\tc\n54.5100\td\n", encoding="utf-8")
    rows = [list(r) for r in ROWS]
    rows[3][6] = "51.22+54.5100"
    src = write_csv(tmp_path / "p.csv", rows)
    e = error_of(read_catalog, src, proc_prefix="expand")
    assert e.row == 5 and "--codes-icd9" in e.message
    cat = read_catalog(src, proc_prefix="expand", codes_icd9=codes)
    assert cat.groups["proc_expr"][3].as_py() == "51.2200/51.2201+54.5100"   # the extension goes with its base
    assert cat.expanded == {"51.22": 2}
    rows[3][6] = "51.29"
    e = error_of(read_catalog, write_csv(tmp_path / "q.csv", rows), proc_prefix="expand", codes_icd9=codes)
    assert e.row == 5 and "matches no code" in e.message


def test_prefix_kept_for_prefix_matching(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[3][6] = "51.22+54.5100"
    out = tmp_path / "rs"
    res = CliRunner().invoke(cli, ["rules", "import", "--from", str(write_csv(tmp_path / "p.csv", rows)),
                                   "--proc-prefix", "match", "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = tomllib.loads((out / "manifest.toml").read_text(encoding="utf-8"))
    assert manifest["options"] == {"proc_prefix": True} and manifest["import"]["proc_prefix"] == "match"
    from dipengine.rules import load_rules

    rs = load_rules(out)
    assert rs.groups["proc_expr"][3].as_py() == "51.22+54.5100" and rs.options["proc_prefix"] is True


def test_prefix_expansion_with_the_official_list(tmp_path, icd9_path):
    rows = [list(r) for r in ROWS]
    rows[0][6] = "47.0"
    cat = read_catalog(write_csv(tmp_path / "o.csv", rows), proc_prefix="expand", codes_icd9=icd9_path)
    assert cat.groups["proc_expr"][0].as_py() == "47.0100/47.0900/47.0901/47.0902/47.0903"


def test_check_rules_refuses_a_prefix_term(tmp_path):
    groups = [dict(dip_code="A", dip_name="a", group_type="core", dx_key="K35.8", proc_expr="47.0100",
                   treat_class="surgery", score=1.0, avg_cost=1.0, n_cases=1),
              dict(dip_code="B", dip_name="b", group_type="core", dx_key="K35.8", proc_expr="47.0900/47.09+54.51",
                   treat_class="surgery", score=1.0, avg_cost=1.0, n_cases=1)]
    d = write_rule_set(tmp_path / "r", {"groups.csv": groups}, {"name": "p", "version": "1"})
    problems = check_rules(d)
    assert [(p.file, p.line, p.column) for p in problems] == [("groups.csv", 3, "proc_expr")] * 2
    assert "'47.09' is not a complete procedure code (a prefix?)" in problems[0].message
    assert "'54.51'" in problems[1].message
    res = CliRunner().invoke(cli, ["rules", "check", str(d)])
    assert res.exit_code == 1 and res.output.startswith("groups.csv:3:proc_expr: '47.09' is not a complete")
    d2 = write_rule_set(tmp_path / "r2", {"groups.csv": groups[:1]},
                        {"name": "p", "version": "1", "options": {"proc_prefix": "match"}})
    problems = check_rules(d2)
    assert [(p.file, p.column) for p in problems] == [("manifest.toml", "proc_prefix")]
    assert "must be true or false" in problems[0].message
    # with prefix matching named, the same prefixes are what the terms mean
    d3 = write_rule_set(tmp_path / "r3", {"groups.csv": groups},
                        {"name": "p", "version": "1", "options": {"proc_prefix": True}})
    assert check_rules(d3) == []


def test_every_official_procedure_code_is_complete(icd9_path):
    codes = read_table(str(icd9_path))["code"].to_pylist()
    assert len(codes) > 13000
    assert [c for c in codes if not is_complete_proc(c)] == []
    assert not any(is_complete_proc(c) for c in ("47", "47.0", "47.01", "47.010", "47.0100x", "47.0100x01"))


def test_catalog_build_never_keys_a_group_on_a_prefix(tmp_path):
    """History coded with a prefix (well-formed, so the reader passes it): no core group on it."""
    import datetime as dt

    from dipengine import catalog
    from dipengine.catalog import build_catalog
    from dipengine.catalog_reference import reference_catalog

    hosp = pa.table({"hospital_id": ["H1"], "name": ["a"], "level": ["3"], "region": ["440200"]})
    rows = ([dict(main_dx="K35.800", main_proc="47.01", other_procs=[], cost=9000)] * 20
            + [dict(main_dx="K35.800", main_proc="47.0100", other_procs=["54.51"], cost=15000)] * 20
            + [dict(main_dx="K35.800", main_proc="47.0100", other_procs=[], cost=8000)] * 20)
    hist = []
    for r in rows:
        hist.append(dict(case_id=str(len(hist)), hospital_id="H1", insurance_type="employee", insured_region="440200",
                         age=40, age_days=None, los=5, discharge_date=dt.date(2026, 6, 30), discharge_mode=1,
                         main_dx=r["main_dx"], main_proc=r["main_proc"], other_dx=[], other_procs=r["other_procs"],
                         total_cost_fen=r["cost"] * 100, fund_paid_fen=0, patient_paid_fen=r["cost"] * 100,
                         reason=None))
    out = tmp_path / "built"
    res = build_catalog([pa.Table.from_pylist(hist)], hosp, out, threshold=15, trim=None)
    exprs = res.groups["proc_expr"].to_pylist()
    assert "47.0100" in exprs and not any("47.01" in e.split("+") or "54.51" in e.split("+") for e in exprs)
    assert check_rules(out) == []
    proc_class = {"47.01": "surgery", "47.0100": "surgery", "54.51": "surgery"}
    cci = catalog.load_prefix_table(catalog.DATA_DIR / "cci_weights.csv", "weight")
    sev = catalog.load_prefix_table(catalog.DATA_DIR / "severity_dx.csv", "level", allowed={"II", "III"})
    slow = reference_catalog([hist], {"H1": 3}, proc_class, cci=cci, severity=sev, weights=(1,), threshold=15,
                             trim=None)
    assert set(slow["groups"]) == set(res.groups["dip_code"].to_pylist())


# ------------------------------------------------------------------------------- the command


def test_cli_import_ok_and_exit_codes(tmp_path, capsys):
    src = write_csv(tmp_path / "c.csv")
    out = tmp_path / "city"
    res = CliRunner().invoke(cli, ["rules", "import", "--from", str(src), "--map", "published", "--out", str(out),
                                   "--version", "2027.1", "--effective-from", "2027-01-01",
                                   "--effective-to", "2027-12-31", "--source", "notice 1"])
    assert res.exit_code == 0, res.output
    assert "read 9 groups" in res.output and "dip_code <- DIP编码" in res.output
    assert res.output.splitlines()[-1] == "OK city 2027.1: 9 groups (5 core, 1 basic, 2 comprehensive, 1 blank)"
    assert main(["rules", "check", str(out)]) == 0

    rows = [list(r) for r in ROWS]
    rows[1][3] = "特殊"
    bad = write_csv(tmp_path / "bad.csv", rows)
    capsys.readouterr()
    assert main(["rules", "import", "--from", str(bad), "--out", str(tmp_path / "never")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv, row 3, column '病种类型', value '特殊'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "never").exists()

    # converted, but the rule set does not check: problems listed with the catalogue row, exit 1
    rows = [list(r) for r in ROWS]
    rows[5][1] = rows[4][1]
    dup = write_csv(tmp_path / "dup.csv", rows)
    assert main(["rules", "import", "--from", str(dup), "--out", str(tmp_path / "dup")]) == 1
    cap = capsys.readouterr()
    assert "groups.csv:7:dip_code: duplicate dip_code 'J18.9-C' (first on line 6) [dup.csv row 7]" in cap.out
    assert "1 problem(s)" in cap.err

    assert main(["rules", "import", "--from", str(src), "--out", str(tmp_path / "x"), "--map",
                 str(tmp_path / "missing.csv")]) == 1
    assert "mapping not found" in capsys.readouterr().err
    res = CliRunner().invoke(cli, ["rules", "import", "--from", str(src), "--out", str(tmp_path / "y"),
                                   "--proc-prefix", "glob"])
    assert res.exit_code == 2


def test_cli_expand_prefix(tmp_path, capsys):
    codes = tmp_path / "icd9.tsv"
    codes.write_text("code\tname\n51.2200\ta\n51.2201\tb\n54.5100\td\n", encoding="utf-8")
    rows = [list(r) for r in ROWS]
    rows[3][6] = "51.22+54.5100"
    src = write_csv(tmp_path / "p.csv", rows)
    assert main(["rules", "import", "--from", str(src), "--out", str(tmp_path / "a")]) == 1
    assert "not a complete procedure code" in capsys.readouterr().err
    assert main(["rules", "import", "--from", str(src), "--out", str(tmp_path / "b"), "--proc-prefix", "expand",
                 "--codes-icd9", str(codes)]) == 0
    out = capsys.readouterr().out
    assert "expanded 1 code prefix(es) into 2 codes" in out and "OK b 1:" in out
    manifest = tomllib.loads((tmp_path / "b" / "manifest.toml").read_text(encoding="utf-8"))
    assert manifest["import"]["proc_prefix"] == "expand" and manifest["import"]["codes_icd9_file"] == "icd9.tsv"
