"""Reports a bureau hands out (issue 18 item 4): an Excel workbook of statements and an HTML report.

``dipengine report SETTLE_DIR --out DIR [--monthly DIR...] [--audit DIR]`` reads a settlement
output directory (``settle --out``: ``manifest.json``, ``hospitals.parquet``, ``cases.parquet``)
and writes, atomically into ``DIR`` (docs/report.md):

- ``statements.xlsx``: a summary sheet (``汇总``: the pools' point values and budgets, every
  hospital statement, the case counts) and one sheet per hospital: its headline figures per pool,
  the band computation written out (due', R, the band, the clearing, the final transfer) and its
  case list. Money is yuan from the integer fen columns, exactly (fen / 100 as a decimal, number
  format ``#,##0.00``). Written in openpyxl's write-only mode, the cases streamed from
  ``cases.parquet`` batch by batch, so memory does not grow with the cases.
- ``report.html``: one self-contained page (plotly.js inline, nothing fetched) with the charts:
  point value per pool over the months, hospitals' gain/loss against recorded, the deviation mix
  by hospital, the match-path mix by pool and, with ``--audit``, audit indicators by hospital.
- ``manifest.json``: what was read (sha256 of each input file) and what was written.

The same inputs give the same bytes: the workbook's document dates and its zip entries' times are
the end of the settled period, the charts' ids are fixed.
"""
from __future__ import annotations

import calendar
import copy
import datetime as _dt
import html
import json
import math
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dipengine.errors import DataError
from dipengine.io import atomic_dir, check_output, sha256_file
from dipengine.money import fen_to_yuan_text, format_yuan

WORKBOOK = "statements.xlsx"
HTML = "report.html"
MANIFEST = "manifest.json"
SUMMARY_SHEET = "汇总"

BATCH_ROWS = 65_536
"""Rows of ``cases.parquet`` read at a time (memory is bounded by this, not by the cases)."""
OPEN_SHEETS = 200
"""Hospital sheets written in one pass over the cases: each open write-only sheet holds a
temporary file, so a region with more hospitals is written in several passes."""

POOLS = ("employee", "resident")
POOL_CN = {"employee": "职工", "resident": "居民"}
BAND_CN = {
    "partial_retention": "结余部分留用",
    "pay_due": "结余留用(按应付拨付)",
    "share_overspend": "合理超支分担",
    "cap": "超支封顶",
    "retain_share_of_due": "结余留用(不超过应付额比例)",
}
DEVIATION_CN = {"normal": "正常", "low": "低倍率", "high": "高倍率", "extreme": "极端(特例)"}
DEVIATION_ORDER = ("normal", "low", "high", "extreme")
MATCH_CN = {"core": "核心病种", "basic": "基层病种", "comprehensive": "综合病种", "blank": "空白病种",
            "excluded": "不入组", "rejected": "校验不通过"}
MATCH_ORDER = ("core", "basic", "comprehensive", "blank", "excluded", "rejected")
LOCALITY_CN = {"local": "本地", "in_province": "省内异地", "cross_province": "跨省异地"}
REVIEW_CN = {"approved_points": "通过(改分值)", "approved_amount": "通过(按项目)", "rejected": "不通过"}

FONT_FAMILY = ('"Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Microsoft YaHei", '
               '"PingFang SC", "Hiragino Sans GB", "WenQuanYi Micro Hei", sans-serif')

# number formats
F_MONEY = "#,##0.00"
F_POINTS = "#,##0.0000"
F_RATIO = "0.0000"
F_VALUE = "0.0000"
F_COUNT = "#,##0"
F_COEF = "0.0000"
F_SCORE = "0.0#"

# the statement's columns: name -> (label, kind); in this order, each only when present
STATEMENT_FIELDS = [
    ("n_cases", "入池病例数(例)", "count"),
    ("n_out_of_pool", "池外病例数(例)", "count"),
    ("n_rejected", "校验不通过病例数(例)", "count"),
    ("points_e4", "总分值(分)", "points"),
    ("point_value", "点值(元/分)", "value"),
    ("standard_fen", "标准费用(元)", "money"),
    ("patient_paid_fen", "患者负担(元)", "money"),
    ("other_fund_paid_fen", "其他基金支付(元)", "money"),
    ("fund_due_fen", "统筹应付(元)", "money"),
    ("assessment_coef", "考核系数", "coef"),
    ("fund_due_assessed_fen", "考核后应付(元)", "money"),
    ("deduction_fen", "审核扣款(元)", "money"),
    ("fund_due_net_fen", "扣款后应付(元)", "money"),
    ("recorded_fen", "统筹记账(元)", "money"),
    ("ratio_R", "记账比 R", "ratio"),
    ("band", "清算区间", "band"),
    ("clearing_fen", "清算金额(元)", "money"),
    ("gain_fen", "清算−记账(元)", "money"),
    ("monthly_paid_fen", "月度已拨付(元)", "money"),
    ("deposit_fen", "质量保证金(元)", "money"),
    ("assessment_score", "考核得分(分)", "score"),
    ("deposit_release_fen", "保证金返还(元)", "money"),
    ("prepayment_fen", "预付金抵扣(元)", "money"),
    ("final_fen", "本次拨付(元)", "money"),
    ("n_special_review", "特例单议病例数(例)", "count"),
    ("n_review_approved", "特例单议通过(例)", "count"),
    ("review_amount_fen", "特例单议按项目付费(元)", "money"),
]
SUMMABLE = {"count", "points", "money"}

# the case list: name -> (label, kind); each only when the column is in cases.parquet
CASE_FIELDS = [
    ("case_id", "病例编号", "text"),
    ("pool", "险种", "pool"),
    ("locality", "就医地类型", "locality"),
    ("dip_code", "病种编码", "text"),
    ("dip_name", "病种名称", "text"),
    ("match_path", "入组方式", "match"),
    ("deviation", "偏差类型", "deviation"),
    ("ratio", "费用偏差比", "ratio"),
    ("level_coef", "级别系数", "coef"),
    ("points_e4", "病例分值(分)", "points"),
    ("standard_fen", "标准费用(元)", "money"),
    ("patient_paid_fen", "患者负担(元)", "money"),
    ("other_fund_paid_fen", "其他基金支付(元)", "money"),
    ("fund_due_fen", "统筹应付(元)", "money"),
    ("fund_paid_fen", "统筹记账(元)", "money"),
    ("in_pool", "入池", "bool"),
    ("special_review", "特例单议", "bool"),
    ("review", "评审结论", "review"),
    ("review_amount_fen", "按项目付费(元)", "money"),
    ("reason", "原因", "text"),
]
CASE_COUNT_COLUMNS = ("hospital_id", "pool", "in_pool", "deviation", "match_path")

AUDIT_COLUMNS = ("hospital_id", "level", "n_cases", "cmi", "low_share", "high_share", "readmission_rate",
                 "los_index", "n_flagged")


# ---- what is read -----------------------------------------------------------------------------

@dataclass
class Settlement:
    """A settlement output directory as the report reads it."""

    path: Path
    manifest: dict
    kind: str  # "annual" or "monthly"
    period: str
    year: int
    month: int | None
    statements: list[dict]  # hospitals.parquet rows, in file order
    columns: list[str]  # hospitals.parquet columns
    cases_path: Path

    @property
    def pools(self) -> dict:
        return self.manifest.get("pools") or {}

    def point_value(self, pool) -> float | None:
        return (self.pools.get(pool) or {}).get("point_value_yuan")

    def period_end(self) -> _dt.datetime:
        """The last day of the settled period, midnight: the workbook's fixed document time."""
        if self.month is None:
            return _dt.datetime(self.year, 12, 31)
        return _dt.datetime(self.year, self.month, calendar.monthrange(self.year, self.month)[1])


@dataclass
class Month:
    period: str
    path: Path
    pools: dict


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    out: Path
    workbook: Path
    html: Path
    period: str
    kind: str
    n_hospitals: int
    n_statements: int
    n_case_rows: int
    months: list[str]
    charts: list[str]
    audit: bool
    inputs: dict = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("not a settlement output (manifest.json missing)", file=path.parent) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"malformed JSON ({' '.join(str(e).split())})", file=path) from None
    except IsADirectoryError:
        raise DataError("not a settlement output (manifest.json is a directory)", file=path.parent) from None
    if not isinstance(doc, dict):
        raise DataError("malformed manifest (not a JSON object)", file=path)
    return doc


def _period(doc: dict, path: Path):
    from dipengine.settlement import parse_period

    period = doc.get("period")
    if not isinstance(period, str):
        raise DataError("not a settlement manifest (no period)", file=path, column="period")
    try:
        kind, year, month = parse_period(period)
    except DataError:
        raise DataError("not a settlement manifest (bad period)", file=path, column="period", value=period) from None
    return period, kind, year, month


def _parquet(path: Path, need=()) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError("missing from the settlement output" if not path.exists() else "not a file", file=path)
    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file ({' '.join(str(e).split())[:200]})", file=path) from None
    names = f.schema_arrow.names
    for col in need:
        if col not in names:
            raise DataError("required column missing", file=path, column=col)
    return f


def read_settlement(settle_dir) -> Settlement:
    """Read a ``settle --out`` directory (manifest, statements; the cases are streamed later).

    Raises :class:`DataError` (one line naming the file) when it is not a settlement output or a
    file is missing or unreadable.
    """
    d = Path(settle_dir)
    if not d.exists():
        raise DataError("no such directory", file=d)
    if not d.is_dir():
        raise DataError("not a settlement output directory (a file)", file=d)
    mpath = d / "manifest.json"
    doc = _read_json(mpath)
    if doc.get("command") != "settle" or not isinstance(doc.get("pools"), dict):
        raise DataError("not a settlement manifest (written by dipengine settle)", file=mpath,
                        column="command", value=doc.get("command"))
    period, kind, year, month = _period(doc, mpath)
    hf = _parquet(d / "hospitals.parquet", ("hospital_id", "pool", "n_cases", "standard_fen", "fund_due_fen",
                                            "recorded_fen", "final_fen"))
    statements = hf.read().to_pylist()
    _parquet(d / "cases.parquet", ("case_id", "hospital_id"))
    return Settlement(path=d, manifest=doc, kind=kind, period=period, year=year, month=month,
                      statements=statements, columns=hf.schema_arrow.names, cases_path=d / "cases.parquet")


def _candidates(settle: Settlement, recorded: str) -> list[Path]:
    """Where a path recorded in a manifest may be now: as recorded (relative to the working
    directory of that run), beside the settlement directory, inside it."""
    p = Path(recorded)
    if p.is_absolute():
        return [p]
    out = []
    for c in (p, settle.path.parent / p, settle.path / p):
        if c not in out:
            out.append(c)
    return out


def _read_month(d: Path, year: int | None) -> Month:
    mpath = d / "manifest.json"
    if not d.is_dir():
        raise DataError("not a monthly settlement output directory" if d.exists() else "no such directory", file=d)
    doc = _read_json(mpath)
    period, kind, y, _m = _period(doc, mpath)
    if doc.get("command") != "settle" or kind != "monthly" or (year is not None and y != year):
        want = f"a monthly statement of {year}" if year is not None else "a monthly statement"
        raise DataError(f"not {want}", file=mpath, column="period", value=period)
    return Month(period=period, path=d, pools=doc.get("pools") or {})


def monthly_runs(settle: Settlement, monthly=None) -> list[Month]:
    """The monthly runs whose point values the report plots, in month order.

    ``monthly`` (directories) when given; else the annual manifest's ``parameters.monthly``,
    each found as recorded, beside the settlement directory or inside it, and checked against
    the sha256 the clearing recorded; a monthly settlement directory stands for itself.
    """
    months = []
    if monthly:
        months = [_read_month(Path(d), settle.year) for d in monthly]
    elif settle.kind == "monthly":
        months = [Month(period=settle.period, path=settle.path, pools=settle.pools)]
    else:
        recorded = (settle.manifest.get("parameters") or {}).get("monthly") or []
        shas = (settle.manifest.get("sha256") or {}).get("monthly") or {}
        for rec in recorded:
            want = shas.get(str(Path(rec) / "hospitals.parquet"))
            found = None
            looked = _candidates(settle, rec)
            for c in looked:
                if (c / "manifest.json").is_file() and (
                        want is None or ((c / "hospitals.parquet").is_file()
                                         and sha256_file(c / "hospitals.parquet") == want)):
                    found = c
                    break
            if found is None:
                where = ", ".join(str(c) for c in looked)
                raise DataError(f"the monthly run {rec} of parameters.monthly is not found as the clearing used it "
                                f"(looked in {where}); give the monthly output directories with --monthly DIR...",
                                file=settle.path / "manifest.json")
            months.append(_read_month(found, settle.year))
    seen = {}
    for m in months:
        if m.period in seen:
            raise DataError(f"month given twice (also in {seen[m.period]})", file=m.path / "manifest.json",
                            column="period", value=m.period)
        seen[m.period] = str(m.path)
    return sorted(months, key=lambda m: m.period)


def read_indicators(audit_dir) -> pa.Table:
    """``indicators.parquet`` of a ``dipengine audit --out`` directory (the columns the report plots)."""
    d = Path(audit_dir)
    if not d.is_dir():
        raise DataError("not an audit output directory" if d.exists() else "no such directory", file=d)
    f = _parquet(d / "indicators.parquet", AUDIT_COLUMNS)
    cols = list(AUDIT_COLUMNS) + (["name"] if "name" in f.schema_arrow.names else [])
    return f.read(columns=cols)


def hospital_names(settle: Settlement, indicators: pa.Table | None = None) -> dict:
    """Hospital names from the registry the settlement read (found as for the monthly runs, and
    only when its sha256 matches), else from the audit indicators; ``{}`` when neither has them."""
    names = {}
    if indicators is not None and "name" in indicators.column_names:
        for h, n in zip(indicators["hospital_id"].to_pylist(), indicators["name"].to_pylist()):
            if h is not None and n:
                names[h] = str(n)
    recorded = (settle.manifest.get("parameters") or {}).get("hospitals") or []
    shas = (settle.manifest.get("sha256") or {}).get("hospitals") or {}
    for rec in [recorded] if isinstance(recorded, str) else recorded:
        want = shas.get(str(rec))
        found = next((c for c in _candidates(settle, str(rec)) if want and c.is_file() and sha256_file(c) == want),
                     None)
        if found is None:
            continue
        try:
            from dipengine.io import read_table

            t = read_table(str(found))
        except (DataError, pa.ArrowException, OSError, UnicodeDecodeError):
            continue
        if "hospital_id" in t.column_names and "name" in t.column_names:
            for h, n in zip(t["hospital_id"].to_pylist(), t["name"].to_pylist()):
                if h is not None and n not in (None, ""):
                    names[str(h)] = str(n)
    return names


def case_counts(settle: Settlement) -> dict:
    """Counts of the case rows: ``{(hospital_id, pool, in_pool, deviation, match_path): n}``, one
    pass over ``cases.parquet`` batch by batch."""
    f = pq.ParquetFile(settle.cases_path)
    cols = [c for c in CASE_COUNT_COLUMNS if c in f.schema_arrow.names]
    counts: dict = {}
    for b in f.iter_batches(batch_size=BATCH_ROWS, columns=cols):
        t = pa.Table.from_batches([b])
        g = t.group_by(cols, use_threads=False).aggregate([([], "count_all")])
        keys = [g[c].to_pylist() for c in cols]
        for i, n in enumerate(g["count_all"].to_pylist()):
            row = dict(zip(cols, (k[i] for k in keys)))
            key = tuple(row.get(c) for c in CASE_COUNT_COLUMNS)
            counts[key] = counts.get(key, 0) + n
    return counts


# ---- values for people ------------------------------------------------------------------------

def yuan(fen) -> Decimal | None:
    """Int fen -> exact yuan (a Decimal with 2 places): ``123456`` -> ``Decimal('1234.56')``."""
    return None if fen is None else Decimal(int(fen)).scaleb(-2)


def points(points_e4) -> Decimal | None:
    return None if points_e4 is None else Decimal(int(points_e4)).scaleb(-4)


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _plain_decimal(x) -> str:
    """A policy figure (0.5, 0.98) as written: repr of the float, no exponent."""
    d = Decimal(repr(float(x)))
    return format(d.normalize(), "f") if d != d.to_integral() else str(int(d))


def _pct(x) -> str:
    d = Decimal(repr(float(x))) * 100
    return (format(d.normalize(), "f") if d != d.to_integral() else str(int(d))) + "%"


def _gain(row: dict, kind: str) -> int | None:
    """A statement's gain (+) or loss (−) against what it recorded: clearing − recorded (annual);
    fund due − recorded in a monthly run (the projection the month gives)."""
    rec = row.get("recorded_fen")
    if rec is None:
        return None
    top = row.get("clearing_fen") if kind == "annual" else row.get("fund_due_fen")
    return None if top is None else int(top) - int(rec)


def _statement_value(settle: Settlement, row: dict, name: str):
    if name == "point_value":
        return settle.point_value(row.get("pool"))
    if name == "gain_fen":
        return _gain(row, settle.kind) if settle.kind == "annual" else None
    if name == "points_e4" and row.get("points_e4") is None and row.get("points") is not None:
        return int(Decimal(repr(float(row["points"]))).scaleb(4).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return row.get(name)


def statement_fields(settle: Settlement) -> list[tuple[str, str, str]]:
    """The statement figures this settlement has (a column present and not null in some row; the
    headline figures always), in :data:`STATEMENT_FIELDS` order."""
    out = []
    for name, label, kind in STATEMENT_FIELDS:
        if name == "point_value":
            present = True
        elif name == "gain_fen":
            present = settle.kind == "annual" and "clearing_fen" in settle.columns
        elif name == "points_e4":
            present = "points_e4" in settle.columns or "points" in settle.columns
        else:
            present = name in settle.columns
        if present and any(_statement_value(settle, r, name) is not None for r in settle.statements):
            out.append((name, label, kind))
        elif present and name in ("n_cases", "standard_fen", "fund_due_fen", "recorded_fen", "final_fen",
                                  "points_e4", "point_value"):
            out.append((name, label, kind))  # the headline figures are shown even when empty
    return out


# ---- the workbook -----------------------------------------------------------------------------

class _Styles:
    """Prototype cells per kind of value; a value's cell copies its prototype's style."""

    def __init__(self, ws):
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Alignment, Font, PatternFill

        self._Cell = WriteOnlyCell
        self.protos = {}
        fmts = {"money": F_MONEY, "points": F_POINTS, "ratio": F_RATIO, "value": F_VALUE, "count": F_COUNT,
                "coef": F_COEF, "score": F_SCORE}
        for kind, fmt in fmts.items():
            c = WriteOnlyCell(ws)
            c.number_format = fmt
            self.protos[kind] = c._style
            c = WriteOnlyCell(ws)
            c.number_format = fmt
            c.font = Font(bold=True)
            self.protos[kind + "+bold"] = c._style
        head = WriteOnlyCell(ws)
        head.font = Font(bold=True)
        head.fill = PatternFill("solid", fgColor="DDEBF7")
        head.alignment = Alignment(wrap_text=True, vertical="center")
        self.protos["head"] = head._style
        bold = WriteOnlyCell(ws)
        bold.font = Font(bold=True)
        self.protos["bold"] = bold._style
        title = WriteOnlyCell(ws)
        title.font = Font(bold=True, size=14)
        self.protos["title"] = title._style
        note = WriteOnlyCell(ws)
        note.font = Font(italic=True, color="595959")
        self.protos["note"] = note._style

    def cell(self, ws, value, style):
        c = self._Cell(ws, value)
        c._style = copy.copy(self.protos[style])
        return c

    def number(self, ws, text: str, style):
        """A number cell holding ``text`` exactly (see :func:`number_text`); ``style`` is shared,
        nothing changes a cell's style once it is written."""
        c = self._Cell(ws)
        c._value = text
        c.data_type = "n"
        c._style = style
        return c


def number_text(kind: str, v) -> str | None:
    """The exact text a number cell holds (``<v>`` in the sheet XML), or ``"∞"``, or None.

    Money is fen / 100 written out (``560547.57``), points ``points_e4 / 10,000``; floats
    (ratios, point values, coefficients) their shortest round-trip text. openpyxl would format a
    number with ``%.16g`` of a float, which turns 560547.57 into 560547.5699999999.
    """
    if v is None:
        return None
    if kind == "money":
        return fen_to_yuan_text(int(v))
    if kind == "points":
        return str(Decimal(int(v)).scaleb(-4))
    if kind == "count":
        return str(int(v))
    f = float(v)
    if math.isnan(f):
        return None
    if math.isinf(f):
        return "∞"
    return repr(f)


def _value(kind: str, v):
    """A statement or case value that is not a number, as the cell holds it."""
    if v is None:
        return None
    if kind == "band":
        return BAND_CN.get(v, str(v))
    if kind == "pool":
        return POOL_CN.get(v, str(v))
    if kind == "match":
        return MATCH_CN.get(v, str(v))
    if kind == "deviation":
        return DEVIATION_CN.get(v, str(v))
    if kind == "locality":
        return LOCALITY_CN.get(v, str(v))
    if kind == "review":
        return REVIEW_CN.get(v, str(v))
    if kind == "bool":
        return "是" if v else "否"
    return str(v)


NUMBER_KINDS = {"money", "points", "ratio", "value", "count", "coef", "score"}


def _styled(st: _Styles, ws, kind: str, v, bold=False):
    """The cell of a value: a number with its kind's format (bold in a total), else text."""
    if kind in NUMBER_KINDS:
        text = number_text(kind, v)
        if text is None or text == "∞":
            return text
        return st.number(ws, text, st.protos[kind + ("+bold" if bold else "")])
    val = _value(kind, v)
    if val is None:
        return None
    return st.cell(ws, val, "bold") if bold else val


def _sheet_title(name: str, used: set) -> str:
    bad = '[]:*?/\\'
    t = "".join("_" if ch in bad else ch for ch in str(name)).strip("'") or "_"
    t = t[:31]
    base, i = t, 2
    while t.lower() in used:
        suffix = f"~{i}"
        t = base[:31 - len(suffix)] + suffix
        i += 1
    used.add(t.lower())
    return t


def _kind_title(settle: Settlement) -> str:
    return f"DIP 年度清算 {settle.period}" if settle.kind == "annual" else f"DIP 月度预结算 {settle.period}"


def _write_summary(ws, st: _Styles, settle: Settlement, names: dict, counts: dict, fields, n_without: int):
    from openpyxl.utils import get_column_letter

    widths = [16, 22, 8, 8] + [16] * (len(fields) + 2)
    for i, w in enumerate(widths, 1):
        ws.column_dimensions[get_column_letter(i)].width = w
    m = settle.manifest
    pol = m.get("policy") or {}
    rules = m.get("rules") or {}
    ws.append([st.cell(ws, _kind_title(settle) + " 结算汇总", "title")])
    ws.append(["统筹区", pol.get("region"), "年度", settle.year, "期间", settle.period])
    ws.append(["分组方案", f"{rules.get('name', '')} {rules.get('version', '')}".strip(), "结算方法",
               pol.get("settlement_method"), "引擎", f"{m.get('engine', 'dipengine')} {m.get('version', '')}".strip()])
    ws.append([])
    # the pools
    ws.append([st.cell(ws, "统筹池", "bold")])
    pool_cols = [
        ("险种", "pool"), ("入池病例数(例)", "count"), ("总分值(分)", "points"), ("预算点值(元/分)", "value"),
        ("结算点值(元/分)", "value"), ("结算点值(未封顶)(元/分)", "value"), ("点值封顶", "text"),
        ("统筹基金预算(元)", "money"), ("可用基金(扣除风险金)(元)", "money"), ("总费用预算(元)", "money"),
        ("标准费用合计(元)", "money"), ("患者负担(元)", "money"), ("其他基金支付(元)", "money"),
        ("统筹记账(元)", "money"),
    ]
    ws.append([st.cell(ws, h, "head") for h, _k in pool_cols])
    for pool in POOLS:
        p = settle.pools.get(pool)
        if not p:
            continue
        clamped = p.get("clamped")
        vals = [pool, p.get("n_cases"), p.get("points_e4"), p.get("budget_value_yuan"),
                p.get("point_value_yuan") if settle.kind == "annual" else None,
                p.get("settlement_value_raw_yuan"), None if clamped is None else ("是" if clamped else "否"),
                p.get("fund_budget_fen"), p.get("fund_available_fen"), p.get("total_cost_budget_fen"),
                p.get("hospital_standard_fen"), p.get("patient_paid_fen"), p.get("other_fund_paid_fen"),
                p.get("recorded_fen")]
        ws.append([_styled(st, ws, k, v) for (_h, k), v in zip(pool_cols, vals)])
    ws.append([])
    # the hospital statements
    ws.append([st.cell(ws, "医院结算单", "bold"),
               st.cell(ws, "金额单位:元(由分精确换算);每家医院的明细、计算过程与病例清单见以医院编码命名的工作表", "note")])
    head = ["医院编码", "医院名称", "险种", "医院级别"] + [label for _n, label, _k in fields]
    ws.append([st.cell(ws, h, "head") for h in head])
    totals = {n: 0 for n, _l, k in fields if k in SUMMABLE}
    for r in settle.statements:
        row = [r["hospital_id"], names.get(r["hospital_id"]), POOL_CN.get(r["pool"], r["pool"]), r.get("level")]
        for name, _label, kind in fields:
            v = _statement_value(settle, r, name)
            row.append(_styled(st, ws, kind, v))
            if name in totals and v is not None:
                totals[name] += int(v)
        ws.append(row)
    total_row = [st.cell(ws, "合计", "bold"), None, None, None]
    for name, _label, kind in fields:
        total_row.append(_styled(st, ws, kind, totals[name], bold=True) if name in totals else None)
    ws.append(total_row)
    ws.append([])
    # the cases
    ws.append([st.cell(ws, "病例构成(病例数)", "bold")])
    by_dev: dict = {}
    by_match: dict = {}
    for (h, pool, in_pool, dev, mp), n in counts.items():
        if in_pool:
            by_dev[(pool, dev)] = by_dev.get((pool, dev), 0) + n
        by_match[(pool, mp)] = by_match.get((pool, mp), 0) + n
    ws.append([st.cell(ws, x, "head") for x in ["偏差类型(入池病例)"] + [POOL_CN[p] for p in POOLS] + ["合计"]])
    for dev in DEVIATION_ORDER + (None,):
        vals = [by_dev.get((p, dev), 0) for p in POOLS]
        if dev is None and not any(vals):
            continue
        ws.append([DEVIATION_CN.get(dev, "无(无参照)") if dev else "无(无参照)"]
                  + [_styled(st, ws, "count", v) for v in vals] + [_styled(st, ws, "count", sum(vals))])
    ws.append([st.cell(ws, x, "head") for x in ["入组方式(全部病例)"] + [POOL_CN[p] for p in POOLS] + ["无险种", "合计"]])
    for mp in MATCH_ORDER:
        vals = [by_match.get((p, mp), 0) for p in POOLS]
        other = sum(n for (p, x), n in by_match.items() if x == mp and p not in POOLS)
        if not any(vals) and not other:
            continue
        ws.append([MATCH_CN[mp]] + [_styled(st, ws, "count", v) for v in vals + [other, sum(vals) + other]])
    if n_without:
        ws.append([])
        ws.append([st.cell(ws, f"另有 {n_without:,} 例病例的医院不在结算单中(医院不在登记表等,均为校验不通过),"
                               "不列入医院工作表", "note")])
    ws.close()


def _band_formula(b, name: str) -> str:
    """A band rule's clearing formula in words (``name``: the banded due, due' or due'')."""
    d = _plain_decimal
    if b.rule == "partial_retention":
        return f"记账 + {d(b.share)} × ({name} − 记账)"
    if b.rule == "pay_due":
        return name
    if b.rule == "share_overspend":
        return f"{name} + {d(b.fund_share)} × (记账 − {name})"
    if b.rule == "cap":
        return f"{name} + {d(b.fund_share)} × {d(b.cap_over)} × {name}"
    if b.rule == "retain_share_of_due":
        return f"记账 + {d(b.share)} × {name}"
    return b.rule


def _band_lines(settle: Settlement, r: dict) -> list[tuple[str, str, str | None, object]]:
    """The computation of one statement, written out: ``(label, formula, kind, value)`` rows."""
    from dipengine.policy import Band
    from dipengine.settlement import clearing_amount

    g = lambda k: r.get(k)  # noqa: E731
    pol = settle.manifest.get("policy") or {}
    y = lambda fen: "—" if fen is None else format_yuan(fen)  # noqa: E731
    lines = []
    pv = settle.point_value(r.get("pool"))
    if g("points_e4") is not None and pv is not None:
        how = ("总费用预算按各医院分值比例分摊,最大余额法取整到分" if settle.kind == "annual"
               and (settle.pools.get(r.get("pool")) or {}).get("reconciled_to_budget") else "四舍五入到分")
        lines.append(("标准费用", f"总分值 {points(g('points_e4')):,} × 点值 {pv:.6f} 元/分({how})",
                      "money", g("standard_fen")))
    lines.append(("统筹应付", f"标准费用 {y(g('standard_fen'))} − 患者负担 {y(g('patient_paid_fen'))} − 其他基金 "
                               f"{y(g('other_fund_paid_fen') or 0)}", "money", g("fund_due_fen")))
    if settle.kind == "monthly":
        method = pol.get("monthly_method")
        if method == "recorded_advance":
            lines.append(("月度拨付", f"统筹记账 {y(g('recorded_fen'))} × 预拨比例 {_pct(pol.get('monthly_advance_rate'))}"
                                   "(四舍五入到分)", "money", g("monthly_paid_fen")))
            lines.append(("留待清算", f"统筹记账 {y(g('recorded_fen'))} − 月度拨付 {y(g('monthly_paid_fen'))}",
                          "money", g("deposit_fen")))
        else:
            gross = (g("monthly_paid_fen") or 0) + (g("deposit_fen") or 0)
            rate = pol.get("quality_deposit")
            lines.append(("质量保证金", f"(统筹应付) {y(gross)} × {_pct(rate) if rate is not None else '—'}"
                                     "(四舍五入到分)", "money", g("deposit_fen")))
            lines.append(("月度拨付", f"{y(gross)} − 质量保证金 {y(g('deposit_fen'))}", "money", g("monthly_paid_fen")))
        return lines
    lines.append(("考核后应付 due'", f"统筹应付 {y(g('fund_due_fen'))} × 考核系数 {_plain_decimal(g('assessment_coef') or 1)}"
                                    "(四舍五入到分)", "money", g("fund_due_assessed_fen")))
    due = g("fund_due_assessed_fen")
    if "fund_due_net_fen" in r:
        lines.append(("扣款后应付 due''", f"due' {y(due)} − 审核扣款 {y(g('deduction_fen') or 0)}", "money",
                      g("fund_due_net_fen")))
        due = g("fund_due_net_fen")
    name = "due''" if "fund_due_net_fen" in r else "due'"
    rec = g("recorded_fen")
    bands = [Band(**{k: b.get(k) for k in ("upper", "rule", "share", "fund_share", "cap_over")})
             for b in pol.get("bands") or []]
    R = _num(g("ratio_R"))
    idx = None
    if due is not None and rec is not None:
        if due > 0:
            lines.append(("记账比 R", f"统筹记账 {y(rec)} ÷ {name} {y(due)}", "ratio", R))
            r_dec = Decimal(int(rec)) / Decimal(int(due))
            idx = next((i for i, b in enumerate(bands)
                        if b.upper is None or r_dec <= Decimal(repr(float(b.upper)))), len(bands) - 1)
        elif rec > 0:
            lines.append(("记账比 R", f"{name} ≤ 0 且有记账: R = ∞,取最后一个区间", "ratio", R))
            idx = len(bands) - 1
        else:
            lines.append(("记账比 R", f"{name} ≤ 0 且无记账: 无 R,清算金额 = {name}", None, None))
    if idx is not None and bands:
        b = bands[idx]
        lower = bands[idx - 1].upper if idx > 0 else None
        if lower is None and b.upper is None:
            cond = "所有 R"
        else:
            cond = (f"{_plain_decimal(lower)} < R" if lower is not None else "R") + (
                f" ≤ {_plain_decimal(b.upper)}" if b.upper is not None else "")
        formula = _band_formula(b, name)
        lines.append(("清算区间", f"{cond}: {BAND_CN.get(b.rule, b.rule)}({b.rule}),清算 = {formula}",
                      None, BAND_CN.get(b.rule, b.rule)))
    if due is not None and rec is not None and bands:
        again = clearing_amount(due, rec, bands)[0]
        note = "" if again == g("clearing_fen") else f"(按公式重算 {y(again)},与结算单不同)"
        lines.append(("清算金额", f"按上式,{name} {y(due)},记账 {y(rec)}(四舍五入到分){note}", "money",
                      g("clearing_fen")))
    chain = f"清算 {y(g('clearing_fen'))} − 月度已拨付 {y(g('monthly_paid_fen'))}"
    if "deposit_release_fen" in r:
        chain += f" − (质量保证金 {y(g('deposit_fen'))} − 返还 {y(g('deposit_release_fen'))})"
    if "prepayment_fen" in r:
        chain += f" − 预付金 {y(g('prepayment_fen'))}"
    lines.append(("本次拨付", chain + "(负数为追回)", "money", g("final_fen")))
    return lines


def _write_hospital_head(ws, st: _Styles, settle: Settlement, hid: str, name, rows: list[dict], fields,
                         counts_h: dict, case_cols):
    from openpyxl.utils import get_column_letter

    widths = [18, 14, 12, 12, 24, 24, 12, 12, 12, 12, 16, 16, 16, 16, 16, 8, 8, 12, 14, 18]
    for i, w in enumerate(widths[:max(len(case_cols), 6)], 1):
        ws.column_dimensions[get_column_letter(i)].width = w
    level = next((r.get("level") for r in rows if r.get("level") is not None), None)
    ws.append([st.cell(ws, f"{_kind_title(settle)} 医院结算单", "title")])
    ws.append(["医院编码", hid, "医院名称", name or "", "医院级别", level])
    ws.append([])
    pools = [r["pool"] for r in rows]
    ws.append([st.cell(ws, x, "head") for x in ["项目"] + [POOL_CN.get(p, p) for p in pools] + ["合计"]])
    for fname, label, kind in fields:
        vals = [_statement_value(settle, r, fname) for r in rows]
        total = None
        if kind in SUMMABLE and any(v is not None for v in vals):
            total = sum(int(v) for v in vals if v is not None)
        ws.append([label] + [_styled(st, ws, kind, v) for v in vals] + [_styled(st, ws, kind, total, bold=True)])
    for r in rows:
        ws.append([])
        ws.append([st.cell(ws, f"计算过程 — {POOL_CN.get(r['pool'], r['pool'])}", "bold")])
        ws.append([st.cell(ws, x, "head") for x in ("项目", "计算", "金额/结果")])
        for label, formula, kind, value in _band_lines(settle, r):
            cell = _styled(st, ws, kind, value) if kind else value
            ws.append([label, formula, cell])
    ws.append([])
    dev = {}
    for (pool, in_pool, d, mp), n in counts_h.items():
        if in_pool:
            dev[d] = dev.get(d, 0) + n
    parts = [f"{DEVIATION_CN.get(d, d)} {dev[d]:,}" for d in DEVIATION_ORDER if dev.get(d)]
    n_all = sum(counts_h.values())
    ws.append([st.cell(ws, f"病例清单(共 {n_all:,} 例" + (f";入池病例 {', '.join(parts)}" if parts else "") + ")",
                       "bold")])
    ws.append([st.cell(ws, label, "head") for _n, label, _k in case_cols])


def _case_rows(ws, st: _Styles, t: pa.Table, case_cols):
    """Append the case rows of one hospital (a slice of a batch)."""
    number = st.number
    cols = []
    for name, _label, kind in case_cols:
        vals = t[name].to_pylist()
        if kind in NUMBER_KINDS:
            cols.append((st.protos[kind], [number_text(kind, v) for v in vals]))
        elif kind == "text":
            cols.append((None, vals))
        else:
            cols.append((None, [_value(kind, v) for v in vals]))
    for i in range(t.num_rows):
        row = []
        for style, vals in cols:
            v = vals[i]
            row.append(v if style is None or v is None or v == "∞" else number(ws, v, style))
        ws.append(row)


def write_workbook(settle: Settlement, path, *, names=None, counts=None) -> dict:
    """Write the statements workbook to ``path`` (a new file); returns ``{"sheets": [...], "case_rows": n}``."""
    from openpyxl import Workbook

    names = names or {}
    counts = counts if counts is not None else case_counts(settle)
    fields = statement_fields(settle)
    by_h: dict = {}
    for r in settle.statements:
        by_h.setdefault(r["hospital_id"], []).append(r)
    hospitals = list(by_h)
    wb = Workbook(write_only=True)
    summary = wb.create_sheet(SUMMARY_SHEET)
    st = _Styles(summary)
    counts_h: dict = {}
    n_without = 0
    for (h, pool, in_pool, dev, mp), n in counts.items():
        if h in by_h:
            d = counts_h.setdefault(h, {})
            d[(pool, in_pool, dev, mp)] = d.get((pool, in_pool, dev, mp), 0) + n
        else:
            n_without += n
    _write_summary(summary, st, settle, names, counts, fields, n_without)
    used = {SUMMARY_SHEET.lower()}
    sheets = {h: wb.create_sheet(_sheet_title(h, used)) for h in hospitals}
    f = pq.ParquetFile(settle.cases_path)
    have = f.schema_arrow.names
    case_cols = [c for c in CASE_FIELDS if c[0] in have]
    read_cols = sorted({"hospital_id", *(c[0] for c in case_cols)}, key=have.index)
    n_rows = 0
    for start in range(0, max(len(hospitals), 1), OPEN_SHEETS):
        chunk = hospitals[start:start + OPEN_SHEETS]
        if not chunk:
            break
        for h in chunk:
            _write_hospital_head(sheets[h], st, settle, h, names.get(h), by_h[h], fields, counts_h.get(h, {}),
                                 case_cols)
        lookup = pa.array(chunk, pa.string())
        for b in f.iter_batches(batch_size=BATCH_ROWS, columns=read_cols):
            hcol = b.column(b.schema.get_field_index("hospital_id"))
            if pa.types.is_dictionary(hcol.type):
                hcol = hcol.cast(pa.string())
            codes = pc.fill_null(pc.index_in(hcol, value_set=lookup), -1).to_numpy(zero_copy_only=False)
            sel = np.nonzero(codes >= 0)[0]
            if not len(sel):
                continue
            order = sel[np.argsort(codes[sel], kind="stable")]
            t = pa.Table.from_batches([b]).take(pa.array(order))
            cs = codes[order]
            bounds = np.flatnonzero(np.diff(cs)) + 1
            starts = np.concatenate([[0], bounds])
            ends = np.concatenate([bounds, [len(cs)]])
            for s, e in zip(starts, ends):
                h = chunk[int(cs[s])]
                _case_rows(sheets[h], st, t.slice(int(s), int(e - s)), case_cols)
                n_rows += int(e - s)
        for h in chunk:
            sheets[h].close()
    when = settle.period_end()
    _save(wb, Path(path), when)
    return {"sheets": [SUMMARY_SHEET] + [sheets[h].title for h in hospitals], "case_rows": n_rows}


class _FixedTimeZip(zipfile.ZipFile):
    """A zip archive whose entries all carry one date (openpyxl's carry the time of writing)."""

    def __init__(self, *args, date_time, **kw):
        super().__init__(*args, **kw)
        self._date_time = tuple(date_time)

    def _info(self, arcname: str, compress_type=None) -> zipfile.ZipInfo:
        zi = zipfile.ZipInfo(arcname, date_time=self._date_time)
        zi.compress_type = self.compression if compress_type is None else compress_type
        zi.external_attr = 0o644 << 16
        return zi

    def writestr(self, zinfo_or_arcname, data, compress_type=None, compresslevel=None):
        if not isinstance(zinfo_or_arcname, zipfile.ZipInfo):
            zinfo_or_arcname = self._info(zinfo_or_arcname, compress_type)
        else:
            zinfo_or_arcname.date_time = self._date_time
        return super().writestr(zinfo_or_arcname, data, compress_type, compresslevel)

    def write(self, filename, arcname=None, compress_type=None, compresslevel=None):
        zi = self._info(arcname or os.path.basename(filename), compress_type)
        with open(filename, "rb") as src, self.open(zi, "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _save(wb, path: Path, when: _dt.datetime) -> None:
    from openpyxl.writer.excel import ExcelWriter

    wb.properties.creator = "dipengine"
    wb.properties.lastModifiedBy = "dipengine"
    wb.properties.created = when
    wb.properties.modified = when
    wb.properties.title = None
    archive = _FixedTimeZip(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True, date_time=when.timetuple()[:6])
    try:
        ExcelWriter(wb, archive).save()
    finally:
        archive.close()


# ---- the HTML report --------------------------------------------------------------------------

HOSPITAL_AXIS = {"title": "医院", "type": "category", "tickangle": -60, "automargin": True}


def _layout(go, title: str, **kw):
    return go.Layout(title={"text": title, "x": 0.01}, template="plotly_white",
                     font={"family": FONT_FAMILY.replace('"', "'"), "size": 13},
                     margin={"l": 80, "r": 30, "t": 90, "b": 60},
                     legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"}, **kw)


def _chart_point_value(go, settle: Settlement, months: list[Month]):
    traces = []
    xs = [m.period for m in months]
    for pool in POOLS:
        ys = [(m.pools.get(pool) or {}).get("point_value_yuan") for m in months]
        if any(v is not None for v in ys):
            traces.append(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{POOL_CN[pool]} 月度点值",
                                     hovertemplate="%{x}: %{y:.4f} 元/分<extra>" + POOL_CN[pool] + "</extra>"))
        if settle.kind == "annual" and settle.point_value(pool) is not None:
            v = settle.point_value(pool)
            x_line = xs if len(xs) > 1 else [settle.period]
            traces.append(go.Scatter(x=x_line, y=[v] * len(x_line), mode="lines" if len(x_line) > 1 else "markers",
                                     line={"dash": "dash"}, name=f"{POOL_CN[pool]} 年度结算点值 {v:.4f}",
                                     hovertemplate=f"年度结算点值 {v:.4f} 元/分<extra>{POOL_CN[pool]}</extra>"))
    if not traces:
        return None
    return go.Figure(traces, _layout(go, "各统筹池点值(元/分)", xaxis={"title": "月份", "type": "category"},
                                     yaxis={"title": "元/分", "tickformat": ".4f"}))


def _by_hospital(settle: Settlement, fn) -> tuple[list[str], dict]:
    hosp, per = [], {}
    for r in settle.statements:
        if r["hospital_id"] not in per:
            hosp.append(r["hospital_id"])
            per[r["hospital_id"]] = {}
        per[r["hospital_id"]][r["pool"]] = fn(r)
    return hosp, per


def _chart_money_by_hospital(go, settle: Settlement, names: dict, fn, title: str, order_desc=True):
    hosp, per = _by_hospital(settle, fn)
    total = {h: sum(v for v in per[h].values() if v is not None) for h in hosp}
    if not hosp or all(all(v is None for v in per[h].values()) for h in hosp):
        return None
    hosp = sorted(hosp, key=lambda h: (-total[h] if order_desc else total[h], h))
    traces = []
    for pool in POOLS:
        vals = [per[h].get(pool) for h in hosp]
        if all(v is None for v in vals):
            continue
        traces.append(go.Bar(
            x=hosp, y=[None if v is None else float(yuan(v)) for v in vals], name=POOL_CN[pool],
            customdata=[[names.get(h, ""), "—" if v is None else format_yuan(v)] for h, v in zip(hosp, vals)],
            hovertemplate="%{x} %{customdata[0]}<br>%{customdata[1]} 元<extra>" + POOL_CN[pool] + "</extra>"))
    return go.Figure(traces, _layout(go, title, barmode="relative", xaxis=HOSPITAL_AXIS,
                                     yaxis={"title": "元", "tickformat": ",.0f"}))


def _chart_deviation(go, settle: Settlement, counts: dict, names: dict):
    in_h = {r["hospital_id"] for r in settle.statements}
    per: dict = {}
    for (h, _pool, in_pool, dev, _mp), n in counts.items():
        if in_pool and h in in_h and dev is not None:
            per.setdefault(h, {})
            per[h][dev] = per[h].get(dev, 0) + n
    if not per:
        return None
    hosp = sorted(per)
    traces = []
    for dev in DEVIATION_ORDER:
        ys = [per[h].get(dev, 0) for h in hosp]
        if any(ys):
            traces.append(go.Bar(x=hosp, y=ys, name=DEVIATION_CN[dev],
                                 customdata=[names.get(h, "") for h in hosp],
                                 hovertemplate="%{x} %{customdata}<br>%{y:,} 例<extra>" + DEVIATION_CN[dev]
                                               + "</extra>"))
    return go.Figure(traces, _layout(go, "偏差类型构成(入池病例数,按医院)", barmode="stack",
                                     xaxis=HOSPITAL_AXIS, yaxis={"title": "病例数(例)"}))


def _chart_match(go, counts: dict):
    per: dict = {}
    for (_h, pool, _in_pool, _dev, mp), n in counts.items():
        key = pool if pool in POOLS else None
        per[(key, mp)] = per.get((key, mp), 0) + n
    paths = [mp for mp in MATCH_ORDER if any(per.get((p, mp)) for p in (*POOLS, None))]
    paths += sorted({mp for (_p, mp) in per if mp not in MATCH_ORDER and mp is not None})
    if not paths:
        return None
    traces = []
    for pool in (*POOLS, None):
        ys = [per.get((pool, mp), 0) for mp in paths]
        if any(ys):
            label = POOL_CN[pool] if pool else "无险种"
            traces.append(go.Bar(x=[MATCH_CN.get(mp, mp) for mp in paths], y=ys, name=label,
                                 hovertemplate="%{x}: %{y:,} 例<extra>" + label + "</extra>"))
    return go.Figure(traces, _layout(go, "入组方式构成(病例数,按险种)", barmode="group",
                                     xaxis={"title": "入组方式", "type": "category"}, yaxis={"title": "病例数(例)"}))


def _chart_audit(go, indicators: pa.Table, names: dict):
    from plotly.subplots import make_subplots

    rows = [r for r in indicators.to_pylist() if r.get("hospital_id") is not None]
    if not rows:
        return None
    hosp = [r["hospital_id"] for r in rows]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("病例组合指数 CMI", "再入院率", "标记病例数(例)"))
    custom = [[names.get(h, "") or (r.get("name") or ""), r.get("level")] for h, r in zip(hosp, rows)]
    specs = [("cmi", "CMI", "%{y:.3f}"), ("readmission_rate", "再入院率", "%{y:.2%}"),
             ("n_flagged", "标记病例数", "%{y:,} 例")]
    for i, (col, label, fmt) in enumerate(specs, 1):
        ys = [_num(r.get(col)) for r in rows]
        fig.add_trace(go.Bar(x=hosp, y=ys, name=label, customdata=custom, showlegend=False,
                             hovertemplate="%{x} %{customdata[0]}(%{customdata[1]} 级)<br>" + fmt
                                           + "<extra>" + label + "</extra>"), row=i, col=1)
    fig.update_yaxes(tickformat=".0%", row=2, col=1)
    fig.update_layout(_layout(go, "审核指标(按医院)", height=760, bargap=0.25))
    fig.update_xaxes(type="category", tickangle=-60, automargin=True)
    fig.update_xaxes(title_text="医院", row=3, col=1)
    return fig


def _summary_html(settle: Settlement) -> str:
    e = html.escape
    m = settle.manifest
    pol = m.get("policy") or {}
    rows = []
    for pool in POOLS:
        p = settle.pools.get(pool)
        if not p:
            continue
        bv, pv = p.get("budget_value_yuan"), p.get("point_value_yuan")
        rows.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
            POOL_CN[pool], f"{p.get('n_cases', 0):,}",
            f"{points(p['points_e4']):,}" if p.get("points_e4") is not None else "—",
            "—" if bv is None else f"{bv:.4f}", "—" if pv is None else f"{pv:.4f}",
            "—" if p.get("hospital_standard_fen") is None else format_yuan(p["hospital_standard_fen"]),
            "—" if p.get("recorded_fen") is None else format_yuan(p["recorded_fen"]))) + "</tr>")
    sums = {}
    for r in settle.statements:
        for k in ("fund_due_fen", "recorded_fen", "clearing_fen", "monthly_paid_fen", "final_fen"):
            if r.get(k) is not None:
                sums[k] = sums.get(k, 0) + int(r[k])
    totals = [("统筹应付", "fund_due_fen"), ("统筹记账", "recorded_fen"), ("清算金额", "clearing_fen"),
              ("月度已拨付", "monthly_paid_fen"), ("本次拨付", "final_fen")]
    tot = "".join(f"<li>{e(label)}: <b>{format_yuan(sums[k])}</b> 元</li>" for label, k in totals if k in sums)
    rules = m.get("rules") or {}
    return (f"<p>统筹区 {e(str(pol.get('region', '')))} · 分组方案 {e(str(rules.get('name', '')))} "
            f"{e(str(rules.get('version', '')))} · 结算方法 {e(str(pol.get('settlement_method', '')))} · "
            f"{len({r['hospital_id'] for r in settle.statements}):,} 家医院,{len(settle.statements):,} 张结算单</p>"
            "<table class=\"summary\"><thead><tr><th>险种</th><th>入池病例数(例)</th><th>总分值(分)</th>"
            "<th>预算点值(元/分)</th><th>点值(元/分)</th><th>标准费用合计(元)</th><th>统筹记账(元)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><ul class=\"totals\">{tot}</ul>")


CSS = """
body { font-family: %s; margin: 24px auto; max-width: 1200px; color: #222; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table.summary { border-collapse: collapse; margin: 12px 0; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.summary th { background: #ddebf7; text-align: center; }
table.summary td:first-child { text-align: left; }
ul.totals { list-style: none; padding: 0; }
ul.totals li { display: inline-block; margin-right: 24px; }
p.note, p.empty { color: #666; font-size: 13px; }
.chart { width: 100%%; min-height: 460px; }
""" % FONT_FAMILY


def write_html(settle: Settlement, path, *, months=(), counts=None, indicators=None, names=None) -> list[str]:
    """Write the self-contained HTML report to ``path``; returns the chart ids (each with data)."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    names = names or {}
    counts = counts if counts is not None else case_counts(settle)
    charts = [
        ("chart-point-value", "点值走势",
         "各统筹池每月预结算使用的点值" + ("与年度结算点值(虚线)" if settle.kind == "annual" else "") + "。",
         _chart_point_value(go, settle, list(months))),
    ]
    if settle.kind == "annual":
        charts.append(("chart-gain-loss", "医院盈亏(清算 − 记账)",
                       "每家医院清算金额与统筹记账之差,按险种堆叠:正为结余留用,负为超支自担。",
                       _chart_money_by_hospital(go, settle, names, lambda r: _gain(r, "annual"),
                                                "医院盈亏:清算金额 − 统筹记账(元)")))
        charts.append(("chart-final", "本次拨付",
                       "清算后本次拨付(清算 − 月度已拨付 − 未返还保证金 − 预付金;负为追回)。",
                       _chart_money_by_hospital(go, settle, names, lambda r: r.get("final_fen"),
                                                "本次拨付(元)")))
    else:
        charts.append(("chart-gain-loss", "医院预计盈亏(统筹应付 − 记账)",
                       "月度预结算中每家医院的统筹应付与统筹记账之差(预计年终盈亏)。",
                       _chart_money_by_hospital(go, settle, names, lambda r: _gain(r, "monthly"),
                                                "预计盈亏:统筹应付 − 统筹记账(元)")))
    charts.append(("chart-deviation", "偏差类型构成", "入池病例按费用偏差类型计数:正常、低倍率、高倍率、极端(特例单议)。",
                   _chart_deviation(go, settle, counts, names)))
    charts.append(("chart-match-path", "入组方式构成", "全部病例按入组方式计数(含校验不通过的病例)。",
                   _chart_match(go, counts)))
    if indicators is not None:
        charts.append(("chart-audit", "审核指标", "审核结果的医院指标:病例组合指数、再入院率、标记病例数。",
                       _chart_audit(go, indicators, names)))
    config = {"displaylogo": False, "responsive": True}
    parts, ids = [], []
    for cid, heading, note, fig in charts:
        parts.append(f"<section id=\"{cid}-section\"><h2>{html.escape(heading)}</h2>"
                     f"<p class=\"note\">{html.escape(note)}</p>")
        if fig is None:
            parts.append("<p class=\"empty\">无数据</p></section>")
            continue
        height = int(fig.layout.height or 480)
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=cid, config=config,
                                 default_height=f"{height}px", validate=True))
        parts.append("</section>")
        ids.append(cid)
    title = f"{_kind_title(settle)} 结算报告"
    doc = ("<!DOCTYPE html>\n<html lang=\"zh-CN\">\n<head>\n<meta charset=\"utf-8\">\n"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
           f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n"
           f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n</head>\n<body>\n"
           f"<h1>{html.escape(title)}</h1>\n{_summary_html(settle)}\n" + "\n".join(parts)
           + f"\n<p class=\"note\">由 dipengine {html.escape(str(settle.manifest.get('version', '')))} 生成;"
             f"金额单位为元,由整数分精确换算。每家医院的结算单与病例清单见 {WORKBOOK}。</p>\n</body>\n</html>\n")
    Path(path).write_text(doc, encoding="utf-8")
    return ids


# ---- the whole report -------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return sha256_file(path)


def _shown(path, top) -> str:
    """``path`` as the manifest records it: relative to ``top`` when it lies inside it."""
    if top is not None and Path(path).resolve().is_relative_to(Path(top).resolve()):
        return Path(path).resolve().relative_to(Path(top).resolve()).as_posix()
    return str(path)


def write_report(settle_dir, out, *, monthly=None, audit=None, force=None, paths_relative_to=None) -> ReportResult:
    """Write the report of a settlement output directory into ``out`` (docs/report.md).

    ``monthly``: monthly output directories whose point values are plotted (default: the annual
    manifest's ``parameters.monthly``); ``audit``: a ``dipengine audit --out`` directory whose
    ``indicators.parquet`` is plotted. ``out`` is written atomically (``dipengine.io.atomic_dir``)
    and never over or around an input. Raises :class:`DataError` (one line) on a bad input.
    ``paths_relative_to``: a folder the manifest's input paths are written relative to (the demo's,
    so that two demo runs give the same bytes); default: as given.
    """
    settle = read_settlement(settle_dir)
    months = monthly_runs(settle, list(monthly) if monthly else None)
    indicators = read_indicators(audit) if audit is not None else None
    inputs = [str(settle.path)] + [str(m.path) for m in months] + ([str(audit)] if audit is not None else [])
    check_output(out, inputs, directory=True, force=force)
    names = hospital_names(settle, indicators)
    counts = case_counts(settle)
    with atomic_dir(out, force=force) as tmp:
        wb_info = write_workbook(settle, tmp / WORKBOOK, names=names, counts=counts)
        chart_ids = write_html(settle, tmp / HTML, months=months, counts=counts, indicators=indicators,
                               names=names)
        sha_in = {"settlement": {n: _sha(settle.path / n) for n in ("manifest.json", "hospitals.parquet",
                                                                   "cases.parquet")},
                  "monthly": {f"{m.period}/manifest.json": _sha(m.path / "manifest.json") for m in months}}
        if audit is not None:
            sha_in["audit"] = {"indicators.parquet": _sha(Path(audit) / "indicators.parquet")}
        from dipengine import __version__

        manifest = {
            "command": "report",
            "engine": "dipengine",
            "version": __version__,
            "kind": settle.kind,
            "period": settle.period,
            "parameters": {"settlement": _shown(settle_dir, paths_relative_to),
                           "monthly": [_shown(m.path, paths_relative_to) for m in months],
                           "audit": None if audit is None else _shown(audit, paths_relative_to)},
            "months": [m.period for m in months],
            "workbook": {"file": WORKBOOK, "sheets": len(wb_info["sheets"]), "hospitals": len(wb_info["sheets"]) - 1,
                         "statements": len(settle.statements), "case_rows": wb_info["case_rows"]},
            "html": {"file": HTML, "charts": chart_ids},
            "sha256": {"inputs": sha_in, "outputs": {WORKBOOK: _sha(tmp / WORKBOOK), HTML: _sha(tmp / HTML)}},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                                    encoding="utf-8")
    out_p = Path(out)
    return ReportResult(out=out_p, workbook=out_p / WORKBOOK, html=out_p / HTML, period=settle.period,
                        kind=settle.kind, n_hospitals=len(wb_info["sheets"]) - 1, n_statements=len(settle.statements),
                        n_case_rows=wb_info["case_rows"], months=[m.period for m in months], charts=chart_ids,
                        audit=audit is not None, inputs=sha_in)
