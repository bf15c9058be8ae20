"""``dipengine report``: the statements workbook, the HTML report, and the page in a real browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openpyxl import load_workbook

from dipengine import report
from dipengine.cli import main
from dipengine.demo import run_demo
from dipengine.errors import DataError
from dipengine.money import fen_to_yuan_text
from dipengine.report import write_report
from test_cli_settle import _args, region  # noqa: F401  (the settle fixture)

# 6,000 cases, seed 4 (as tests/test_demo.py): the employee pool's point value floats, the
# resident pool's is clamped by the policy band, so both ways of getting a standard are shown.
N_CASES, SEED = 6000, 4
MONEY_HEADERS = ["标准费用(元)", "患者负担(元)", "统筹应付(元)", "考核后应付(元)", "统筹记账(元)", "清算金额(元)",
                 "月度已拨付(元)", "质量保证金(元)", "本次拨付(元)"]
HEADER_FIELDS = {label: name for name, label, _k in report.STATEMENT_FIELDS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "dip-demo"
    run_demo(root, n_cases=N_CASES, seed=SEED)
    out = root.parent / "report"
    res = write_report(root / "annual", out)
    return root, out, res


def _yuan(fen):
    return None if fen is None else Decimal(fen).scaleb(-2)


def _as_decimal(v):
    return None if v is None else Decimal(str(v))


def _unescape(text: str) -> str:
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _rows(ws):
    return [list(r) for r in ws.iter_rows(values_only=True)]


def _find(rows, first):
    return next(i for i, r in enumerate(rows) if r and r[0] == first)


# ---- the workbook ---------------------------------------------------------------------------

def test_one_sheet_per_hospital_and_summary_figures(demo):
    root, out, res = demo
    stm = pq.read_table(root / "annual" / "hospitals.parquet").to_pylist()
    hospitals = list(dict.fromkeys(r["hospital_id"] for r in stm))
    wb = load_workbook(out / "statements.xlsx", read_only=True)
    assert wb.sheetnames == ["汇总"] + hospitals
    assert res.n_hospitals == len(hospitals) and res.n_statements == len(stm)
    rows = _rows(wb["汇总"])
    head_i = _find(rows, "医院编码")
    head = rows[head_i]
    for h in MONEY_HEADERS + ["总分值(分)", "点值(元/分)", "记账比 R", "清算区间", "清算−记账(元)"]:
        assert h in head, h
    body = rows[head_i + 1: head_i + 1 + len(stm)]
    for r, row in zip(stm, body):
        cells = dict(zip(head, row))
        assert cells["医院编码"] == r["hospital_id"] and cells["险种"] == {"employee": "职工", "resident": "居民"}[r["pool"]]
        for label in MONEY_HEADERS:
            # exact: the cell holds fen / 100 as written, never a float computation
            assert _as_decimal(cells[label]) == _yuan(r[HEADER_FIELDS[label]]), (r["hospital_id"], label)
        assert _as_decimal(cells["清算−记账(元)"]) == _yuan(r["clearing_fen"] - r["recorded_fen"])
        assert _as_decimal(cells["总分值(分)"]) == Decimal(r["points_e4"]).scaleb(-4)
        assert cells["入池病例数(例)"] == r["n_cases"]
        assert cells["清算区间"] == report.BAND_CN[r["band"]]
        assert cells["记账比 R"] == pytest.approx(r["ratio_R"], rel=1e-15)
    total = dict(zip(head, rows[head_i + 1 + len(stm)]))
    assert total["医院编码"] == "合计"
    for label in MONEY_HEADERS:
        assert _as_decimal(total[label]) == _yuan(sum(r[HEADER_FIELDS[label]] for r in stm))
    # the pools' point values and budgets
    m = json.loads((root / "annual" / "manifest.json").read_text(encoding="utf-8"))
    pool_head = rows[_find(rows, "险种")]
    for row in rows[_find(rows, "险种") + 1:][:2]:
        cells = dict(zip(pool_head, row))
        p = m["pools"][{"职工": "employee", "居民": "resident"}[cells["险种"]]]
        assert cells["结算点值(元/分)"] == pytest.approx(p["point_value_yuan"], rel=1e-15)
        assert _as_decimal(cells["总费用预算(元)"]) == _yuan(p["total_cost_budget_fen"])
        assert cells["点值封顶"] == ("是" if p["clamped"] else "否")


def test_money_cells_carry_the_yuan_number_format(demo):
    root, out, _res = demo
    wb = load_workbook(out / "statements.xlsx", read_only=True)
    rows = list(wb["汇总"].iter_rows())
    head_i = next(i for i, r in enumerate(rows) if r and r[0].value == "医院编码")
    head = [c.value for c in rows[head_i]]
    for label in MONEY_HEADERS:
        assert rows[head_i + 1][head.index(label)].number_format == "#,##0.00"
    assert rows[head_i + 1][head.index("总分值(分)")].number_format == "#,##0.0000"
    # no float drift in the file itself: the XML holds the decimal text of fen / 100
    with zipfile.ZipFile(out / "statements.xlsx") as z:
        xml = z.read("xl/worksheets/sheet1.xml").decode("utf-8")
    for r in pq.read_table(root / "annual" / "hospitals.parquet").to_pylist():
        for name in ("standard_fen", "fund_due_fen", "recorded_fen", "clearing_fen", "final_fen"):
            assert f"<v>{fen_to_yuan_text(r[name])}</v>" in xml, (r["hospital_id"], name)


def test_hospital_sheet_headline_band_computation_and_cases(demo):
    root, out, _res = demo
    stm = pq.read_table(root / "annual" / "hospitals.parquet").to_pylist()
    cases = pq.read_table(root / "annual" / "cases.parquet").to_pylist()
    wb = load_workbook(out / "statements.xlsx", read_only=True)
    seen_bands = set()
    for hid in list(dict.fromkeys(r["hospital_id"] for r in stm)):
        mine = [r for r in stm if r["hospital_id"] == hid]
        rows = _rows(wb[hid])
        assert rows[1][:2] == ["医院编码", hid]
        head = rows[_find(rows, "项目")]
        assert head[1:1 + len(mine)] == [{"employee": "职工", "resident": "居民"}[r["pool"]] for r in mine]
        assert head[1 + len(mine)] == "合计"
        by_label = {r[0]: r for r in rows[_find(rows, "项目") + 1:_find(rows, "项目") + 1 + len(report.STATEMENT_FIELDS)]
                    if r and r[0]}
        for label in MONEY_HEADERS:
            vals = by_label[label][1:1 + len(mine)]
            assert [_as_decimal(v) for v in vals] == [_yuan(r[HEADER_FIELDS[label]]) for r in mine], (hid, label)
            assert _as_decimal(by_label[label][1 + len(mine)]) == _yuan(sum(r[HEADER_FIELDS[label]] for r in mine))
        # the band computation, per pool: R, the band, and the clearing written out
        steps = rows[next(i for i, r in enumerate(rows) if r and str(r[0]).startswith("计算过程")):]
        text = [r for r in steps if r and r[0] in ("记账比 R", "清算区间", "清算金额", "本次拨付", "考核后应付 due'")]
        assert [r[0] for r in text].count("清算区间") == len(mine)
        for r, band_row in zip(mine, [t for t in text if t[0] == "清算区间"]):
            assert report.BAND_CN[r["band"]] in band_row[1] and r["band"] in band_row[1]
            assert band_row[2] == report.BAND_CN[r["band"]]
            seen_bands.add(r["band"])
        clear_rows = [t for t in text if t[0] == "清算金额"]
        assert [_as_decimal(t[2]) for t in clear_rows] == [_yuan(r["clearing_fen"]) for r in mine]
        assert all("与结算单不同" not in t[1] for t in clear_rows)  # the formula gives the statement's figure
        # the case list: every case of the hospital, in the order of cases.parquet
        ci = next(i for i, r in enumerate(rows) if r and r[0] == "病例编号")
        chead = rows[ci]
        for h in ("病种编码", "病种名称", "偏差类型", "费用偏差比", "病例分值(分)", "标准费用(元)", "统筹应付(元)"):
            assert h in chead
        listed = [r for r in rows[ci + 1:] if r and r[0] is not None]
        expect = [c for c in cases if c["hospital_id"] == hid]
        assert [r[0] for r in listed] == [c["case_id"] for c in expect]
        col = {h: i for i, h in enumerate(chead)}
        for r, c in zip(listed, expect):
            assert _as_decimal(r[col["标准费用(元)"]]) == _yuan(c["standard_fen"])
            assert _as_decimal(r[col["统筹应付(元)"]]) == _yuan(c["fund_due_fen"])
            assert _as_decimal(r[col["病例分值(分)"]]) == Decimal(c["points_e4"]).scaleb(-4)
            assert r[col["病种编码"]] == c["dip_code"] and r[col["病种名称"]] == c["dip_name"]
            if c["deviation"] is not None:
                assert r[col["偏差类型"]] == report.DEVIATION_CN[c["deviation"]]
    assert {"pay_due", "share_overspend"} <= seen_bands


def test_same_inputs_same_bytes_and_fixed_document_dates(demo, tmp_path):
    root, out, _res = demo
    again = tmp_path / "again"
    time.sleep(1.1)  # a clock-dependent byte would differ now
    write_report(root / "annual", again)
    for name in ("statements.xlsx", "report.html", "manifest.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    with zipfile.ZipFile(out / "statements.xlsx") as z:
        core = z.read("docProps/core.xml").decode("utf-8")
        assert {i.date_time for i in z.infolist()} == {(2026, 12, 31, 0, 0, 0)}
    assert "2026-12-31T00:00:00Z" in core and core.count("2026-12-31T00:00:00Z") == 2


def test_small_batches_and_few_open_sheets_give_the_same_workbook(demo, tmp_path, monkeypatch):
    """The case pass reads cases.parquet in batches and writes a bounded number of sheets at a
    time; neither changes a byte."""
    root, out, _res = demo
    monkeypatch.setattr(report, "BATCH_ROWS", 97)
    monkeypatch.setattr(report, "OPEN_SHEETS", 7)
    small = tmp_path / "small"
    write_report(root / "annual", small)
    assert (small / "statements.xlsx").read_bytes() == (out / "statements.xlsx").read_bytes()


# ---- the HTML report ------------------------------------------------------------------------

ANNUAL_CHARTS = ["chart-point-value", "chart-gain-loss", "chart-final", "chart-deviation", "chart-match-path"]


def test_html_is_self_contained_with_every_chart(demo):
    root, out, res = demo
    text = (out / "report.html").read_text(encoding="utf-8")
    assert res.charts == ANNUAL_CHARTS and res.months == [f"2026-{m:02d}" for m in range(1, 13)]
    assert '<meta charset="utf-8">' in text and '"Noto Sans CJK SC"' in text and "Microsoft YaHei" in text
    assert "<script src" not in text and "<link" not in text  # nothing to fetch
    assert text.count("plotly.js v") >= 1
    for cid in ANNUAL_CHARTS:
        assert f'id="{cid}"' in text and f'Plotly.newPlot(                        "{cid}"' in text
    assert "<h2>点值走势</h2>" in text and "<h2>医院盈亏(清算 − 记账)</h2>" in text and "<h2>偏差类型构成</h2>" in text
    # the charts' own labels are in plotly's JSON (non-ASCII written as \\u escapes)
    chart_text = _unescape(text)
    for label in ("各统筹池点值(元/分)", "医院盈亏:清算金额 − 统筹记账(元)", "入组方式构成(病例数,按险种)", "职工", "居民"):
        assert label in chart_text, label
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["html"]["charts"] == ANNUAL_CHARTS and m["workbook"]["hospitals"] == res.n_hospitals
    assert m["sha256"]["outputs"]["report.html"] and m["kind"] == "annual"


def _indicators(path: Path, hospitals):
    path.mkdir()
    n = len(hospitals)
    pq.write_table(pa.table({
        "hospital_id": hospitals, "name": [f"医院{i}" for i in range(n)], "level": [3] * n,
        "n_cases": [100 + i for i in range(n)], "cmi": [0.8 + 0.01 * i for i in range(n)],
        "low_share": [0.05] * n, "high_share": [0.02] * n, "readmission_rate": [0.01 * (i % 5) for i in range(n)],
        "los_index": [1.0] * n, "n_flagged": [i % 7 for i in range(n)]}), path / "indicators.parquet")
    return path


def test_audit_indicators_chart(demo, tmp_path):
    root, _out, _res = demo
    hospitals = list(dict.fromkeys(pq.read_table(root / "annual" / "hospitals.parquet")["hospital_id"].to_pylist()))
    audit = _indicators(tmp_path / "audit", hospitals[:5])
    res = write_report(root / "annual", tmp_path / "rep", audit=audit)
    assert res.charts == ANNUAL_CHARTS + ["chart-audit"]
    text = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "<h2>审核指标</h2>" in text
    for label in ("病例组合指数 CMI", "再入院率", "标记病例数(例)"):
        assert label in _unescape(text), label
    # a column missing from indicators.parquet is a one-line error naming it
    pq.write_table(pa.table({"hospital_id": ["H1"], "cmi": [1.0]}), audit / "indicators.parquet")
    with pytest.raises(DataError, match="indicators.parquet.*'level'.*required column missing"):
        write_report(root / "annual", tmp_path / "rep2", audit=audit)


def test_monthly_settlement_report(demo, tmp_path):
    root, _out, _res = demo
    res = write_report(root / "monthly" / "2026-03", tmp_path / "m")
    assert res.kind == "monthly" and res.months == ["2026-03"]
    assert res.charts == ["chart-point-value", "chart-gain-loss", "chart-deviation", "chart-match-path"]
    wb = load_workbook(tmp_path / "m" / "statements.xlsx", read_only=True)
    rows = _rows(wb["汇总"])
    head = rows[_find(rows, "医院编码")]
    assert "清算金额(元)" not in head and "记账比 R" not in head and "月度已拨付(元)" in head
    hid = wb.sheetnames[1]
    lines = [r[0] for r in _rows(wb[hid]) if r and r[0]]
    assert "质量保证金" in lines and "月度拨付" in lines and "清算区间" not in lines
    with zipfile.ZipFile(tmp_path / "m" / "statements.xlsx") as z:
        assert {i.date_time for i in z.infolist()} == {(2026, 3, 31, 0, 0, 0)}


def test_monthly_dirs_found_beside_the_settlement_or_given(demo, tmp_path, monkeypatch):
    root, _out, _res = demo
    monkeypatch.chdir(tmp_path)  # the manifest's relative paths are the demo's own
    res = write_report(root / "annual", tmp_path / "a", monthly=[root / "monthly" / "2026-02",
                                                                 root / "monthly" / "2026-01"])
    assert res.months == ["2026-01", "2026-02"]
    with pytest.raises(DataError, match="month given twice"):
        write_report(root / "annual", tmp_path / "b", monthly=[root / "monthly" / "2026-01"] * 2)
    with pytest.raises(DataError, match="not a monthly statement of 2026"):
        write_report(root / "annual", tmp_path / "b", monthly=[root / "annual"])
    # a copy of the annual output without its monthly runs: say where to give them
    alone = tmp_path / "alone" / "annual"
    shutil.copytree(root / "annual", alone)
    with pytest.raises(DataError, match="monthly run monthly/2026-01 .* give the monthly output directories "
                                        "with --monthly"):
        write_report(alone, tmp_path / "b")
    assert not (tmp_path / "b").exists()


# ---- the clearing workflow's columns --------------------------------------------------------

def test_clearing_workflow_columns(region, tmp_path, capsys):  # noqa: F811
    tmp = region["tmp"]
    (tmp / "hospitals.csv").write_text("hospital_id,name,level,region,coefficient,assessment_coef,assessment_score\n"
                                       "H1,甲医院,3,440200,,0.98,84\nH2,乙医院,2,440200,,,70.5\n", encoding="utf-8")
    dirs = []
    for month in ("2027-01", "2027-02", "2027-03"):
        assert main(_args(region, month, tmp / month)) == 0
        dirs += ["--monthly", str(tmp / month)]
    p = tmp / "pricing" / "policy.toml"
    p.write_text(p.read_text(encoding="utf-8").rstrip("\n")
                 + '\ndeposit_release = "by_score"\ndeposit_release_scores = [60, 90]\n', encoding="utf-8")
    (tmp / "prepayments.csv").write_text("hospital_id,amount,pool,note\nH1,1000.00,employee,Q1\nH2,500,,\n",
                                         encoding="utf-8")
    (tmp / "deductions.csv").write_text("hospital_id,amount,reason\nH1,123.45,高套病种\nH2,10.01,\n", encoding="utf-8")
    annual = tmp / "annual"
    assert main(_args(region, "2027", annual, *dirs, "--prepayments", str(tmp / "prepayments.csv"),
                      "--deductions", str(tmp / "deductions.csv"))) == 0
    capsys.readouterr()
    out = tmp / "report"
    assert main(["report", str(annual), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "statements.xlsx: summary + 2 hospital sheets" in said and "point values of 3 months" in said
    stm = pq.read_table(annual / "hospitals.parquet").to_pylist()
    wb = load_workbook(out / "statements.xlsx", read_only=True)
    assert wb.sheetnames == ["汇总", "H1", "H2"]
    rows = _rows(wb["汇总"])
    head = rows[_find(rows, "医院编码")]
    extra = ["审核扣款(元)", "扣款后应付(元)", "考核得分(分)", "保证金返还(元)", "预付金抵扣(元)"]
    assert all(h in head for h in extra)
    body = rows[_find(rows, "医院编码") + 1:][:len(stm)]
    for r, row in zip(stm, body):
        cells = dict(zip(head, row))
        assert cells["医院名称"] == {"H1": "甲医院", "H2": "乙医院"}[r["hospital_id"]]  # from the registry
        for label in extra + MONEY_HEADERS:
            name = HEADER_FIELDS[label]
            want = r[name] if name == "assessment_score" else _yuan(r[name])
            got = cells[label] if name == "assessment_score" else _as_decimal(cells[label])
            assert got == want, (r["hospital_id"], r["pool"], label)
    h1 = _rows(wb["H1"])
    labels = [r[0] for r in h1 if r and r[0]]
    assert "扣款后应付 due''" in labels and "清算金额" in labels
    chains = [r[1] for r in h1 if r and r[0] == "本次拨付"]
    assert chains and all("预付金" in c and "返还" in c for c in chains)
    clear = [r for r in h1 if r and r[0] == "清算金额"]
    assert all("与结算单不同" not in r[1] for r in clear)
    mine = [r for r in stm if r["hospital_id"] == "H1"]
    assert [_as_decimal(r[2]) for r in clear] == [_yuan(r["clearing_fen"]) for r in mine]


# ---- bad inputs, outputs ----------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(demo, tmp_path, capsys):
    root, _out, _res = demo
    out = tmp_path / "never"
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    broken = tmp_path / "broken"
    shutil.copytree(root / "annual", broken)
    (broken / "cases.parquet").unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"command": "group"}', encoding="utf-8")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{nope", encoding="utf-8")
    cases = [
        (tmp_path / "missing", "no such directory"),
        (tmp_path / "empty", "not a settlement output (manifest.json missing)"),
        (tmp_path / "file.txt", "not a settlement output directory"),
        (broken, "cases.parquet: missing from the settlement output"),
        (other, "not a settlement manifest"),
        (bad_json, "malformed JSON"),
    ]
    for settle_dir, message in cases:
        assert main(["report", str(settle_dir), "--out", str(out)]) == 1, settle_dir
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert main(["report", str(root / "annual"), "--out", str(out), "--audit", str(tmp_path / "empty")]) == 1
    assert "indicators.parquet: missing" in capsys.readouterr().err
    assert not out.exists()


def test_never_over_an_input(demo, capsys):
    root, _out, _res = demo
    assert main(["report", str(root / "annual"), "--out", str(root / "annual")]) == 1
    assert "the output is also an input" in capsys.readouterr().err
    assert main(["report", str(root / "annual"), "--out", str(root)]) == 1
    assert "is inside this output directory" in capsys.readouterr().err
    assert (root / "annual" / "manifest.json").is_file()


def test_command_is_listed(capsys):
    assert main(["--help"]) == 0
    assert "report" in capsys.readouterr().out


# ---- in a real browser ------------------------------------------------------------------------

def _browser() -> str | None:
    for name in (os.environ.get("DIPENGINE_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _DevTools:
    """A headless Chromium and a Chrome DevTools Protocol session on one page."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,900"]

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="dipengine-chromium-")
        self.proc = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.events = []
        self._id = 0
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode("utf-8", "replace")[-2000:] if self.proc.poll() is not None else ""
                self.close()
                raise AssertionError(f"Chromium did not start its DevTools endpoint: {err}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        deadline = time.monotonic() + 10
        while True:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        import websocket  # websocket-client, of the test extra

        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)

    def send(self, method: str, **params):
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise AssertionError(f"no {method} within {timeout} s")

    def close(self):
        if getattr(self, "ws", None) is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


CHECK_CHARTS = r"""
new Promise((resolve) => {
  const t0 = Date.now();
  (function check() {
    const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
    const ready = divs.length > 0 && divs.every(d => d._fullLayout && d.querySelector('.main-svg'));
    if (!ready && Date.now() - t0 < 15000) { setTimeout(check, 50); return; }
    resolve(JSON.stringify({
      ready: ready,
      charset: document.characterSet,
      title: document.title,
      font: getComputedStyle(document.body).fontFamily,
      headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
      charts: divs.map(d => ({
        id: d.id,
        traces: (d.data || []).length,
        points: (d.data || []).map(t => (t.y || t.values || []).filter(v => v !== null && v !== undefined).length),
        drawn: d.querySelectorAll('.bars .point, .scatterlayer .trace').length,
      })),
    }));
  })();
})
"""


def test_report_in_a_headless_browser(demo):
    """The page loads in Chromium with no console error and no request leaving the file, and
    every chart has traces with data, drawn."""
    binary = _browser()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium found in CI (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium browser found (apt-get install chromium, or set DIPENGINE_CHROMIUM)")
    root, out, res = demo
    with tempfile.TemporaryDirectory() as d:
        audit = _indicators(Path(d) / "audit", ["H44020000001", "H44020000002", "H44020000003"])
        page = Path(d) / "rep"
        write_report(root / "annual", page, audit=audit)
        t0 = time.monotonic()
        cdp = _DevTools(binary)
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                cdp.send(f"{domain}.enable")
            url = (page / "report.html").resolve().as_uri()
            cdp.send("Page.navigate", url=url)
            cdp.wait_event("Page.loadEventFired")
            got = cdp.send("Runtime.evaluate", expression=CHECK_CHARTS, awaitPromise=True, returnByValue=True)
            state = json.loads(got["result"]["value"])
            cdp.send("Runtime.evaluate", expression="1")  # collect the events queued meanwhile
        finally:
            cdp.close()
        seconds = time.monotonic() - t0
    errors = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests
    assert state["ready"] and state["charset"] == "UTF-8" and "结算报告" in state["title"]
    assert "Noto Sans CJK SC" in state["font"]
    assert "点值走势" in state["headings"] and "审核指标" in state["headings"]
    assert [c["id"] for c in state["charts"]] == ANNUAL_CHARTS + ["chart-audit"]
    for c in state["charts"]:
        assert c["traces"] > 0 and all(n > 0 for n in c["points"]) and c["drawn"] > 0, c
    assert seconds < 60
