"""Outputs that never destroy data (issue 15, deliver 1, 2 and 9): what an output path may be, the
directory swap, one-line operating-system errors, formula-safe CSV and the cleaning of killed runs'
temporary outputs (``dipengine.io``; docs/formats.md "Outputs")."""
from __future__ import annotations

import csv
import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dipengine import io
from dipengine.cli import main
from dipengine.errors import DataError

ROOT = Path(__file__).resolve().parents[1]

CASES = """case_id,hospital_id,insurance_type,insured_region,age,admit_date,discharge_date,main_dx,main_proc,total_cost,ward
c1,H1,employee,440200,45,2027-03-01,2027-03-05,K35.800x001,47.0100,10400.00,=1+2
c2,H1,resident,440200,70,2027-03-02,2027-03-09,K80.100,51.2300,25000.50,-12.50
c3,H1,employee,440200,30,2027-03-02,2027-03-04,K35.800,,5000.00,@SUM(A1)
"""


def _table(n=3):
    return pa.table({"k": [f"r{i}" for i in range(n)], "v": list(range(n))})


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _write_dir(path, files=None, **kw):
    with io.atomic_dir(path, **kw) as tmp:
        for name, text in (files or {"a.txt": "new"}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return path


@pytest.fixture()
def cases_csv(tmp_path):
    p = tmp_path / "in" / "cases.csv"
    p.parent.mkdir()
    p.write_text(CASES, encoding="utf-8")
    return p


# ------------------------------------------------------------------ 1. which directories are replaced


def test_a_directory_dipengine_did_not_write_is_never_replaced(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    (own / "thesis.docx").write_text("years of work")
    with pytest.raises(DataError, match=r"mine.*not a dipengine output.*--force"):
        _write_dir(own)
    assert (own / "thesis.docx").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left either


def test_refused_before_the_work_is_done(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes").write_text("x")
    ran = []
    with pytest.raises(DataError):
        with io.atomic_dir(own):
            ran.append(1)
    assert ran == []


def test_dipengine_output_empty_dir_and_force_are_replaced(tmp_path):
    out = _write_dir(tmp_path / "out", {"a.txt": "1", "sub/b.txt": "2"})
    assert (out / io.OUTPUT_MARKER).is_file()
    _write_dir(out, {"c.txt": "3"})  # its own output: replaced whole
    assert sorted(p.name for p in out.iterdir()) == [io.OUTPUT_MARKER, "c.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_dir(empty)
    assert (empty / "a.txt").read_text() == "new"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    _write_dir(foreign, force=True)
    assert not (foreign / "x").exists()
    foreign2 = tmp_path / "foreign2"
    foreign2.mkdir()
    (foreign2 / "x").write_text("x")
    with io.replace_allowed():  # what --force sets for the library calls below a command
        _write_dir(foreign2)
    assert not (foreign2 / "x").exists()


@pytest.mark.parametrize("change", ["added", "edited", "symlink"])
def test_an_output_with_files_added_or_changed_is_not_replaced(tmp_path, change):
    out = _write_dir(tmp_path / "out", {"policy.toml": "a = 1\n", "rules/groups.csv": "x\n"})
    if change == "added":
        (out / "rules" / "my-notes.txt").write_text("keep me")
    elif change == "edited":
        (out / "policy.toml").write_text("a = 0.95  # reviewed\n")
    else:
        (out / "link").symlink_to(tmp_path)
    with pytest.raises(DataError, match="not a dipengine output"):
        _write_dir(out)
    assert (out / "policy.toml").exists()


def test_an_edit_of_the_same_size_is_seen_by_its_time(tmp_path):
    out = _write_dir(tmp_path / "out", {"policy.toml": "a = 1\n"})
    later = time.time() + 10
    (out / "policy.toml").write_text("a = 2\n")
    os.utime(out / "policy.toml", (later, later))
    with pytest.raises(DataError, match="policy.toml was changed"):
        _write_dir(out)


def test_nested_outputs_stay_replaceable(tmp_path):
    """A directory written inside another output (the demo's rules/) and edited by it before the
    outer swap can still be replaced on its own later."""
    with io.atomic_dir(tmp_path / "demo") as tmp:
        _write_dir(tmp / "rules", {"manifest.toml": "a = 1\n"})
        time.sleep(0.01)
        (tmp / "rules" / "manifest.toml").write_text("a = 22\n")  # as demo._relative_build_paths does
    _write_dir(tmp_path / "demo" / "rules", {"manifest.toml": "b = 1\n"})
    _write_dir(tmp_path / "demo", {"x": "1"})
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [io.OUTPUT_MARKER, "x"]


def test_a_file_where_a_directory_goes_needs_force(tmp_path):
    f = tmp_path / "out"
    f.write_text("a file")
    with pytest.raises(DataError, match="is a file"):
        _write_dir(f)
    _write_dir(f, force=True)
    assert (f / "a.txt").exists()


def test_marker_is_deterministic(tmp_path):
    a = _write_dir(tmp_path / "a", {"x.csv": "1,2\n", "d/y.csv": "3\n"})
    time.sleep(0.01)
    b = _write_dir(tmp_path / "b", {"x.csv": "1,2\n", "d/y.csv": "3\n"})
    assert (a / io.OUTPUT_MARKER).read_bytes() == (b / io.OUTPUT_MARKER).read_bytes()


def test_demo_refuses_a_foreign_directory_and_says_so(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "photo.jpg").write_bytes(b"\xff\xd8")
    assert main(["demo", "--out", str(home), "--cases", "1000"]) == 1
    line = _one_line_error(capsys)
    assert str(home) in line and "--force" in line
    assert (home / "photo.jpg").read_bytes() == b"\xff\xd8"


def test_catalog_build_and_rules_import_refuse_a_foreign_directory(tmp_path, capsys):
    own = tmp_path / "rules"
    own.mkdir()
    (own / "groups.csv").write_text("hand made\n")
    src = tmp_path / "c.csv"
    src.write_text("x\n")
    hosp = tmp_path / "h.csv"
    hosp.write_text("hospital_id\n")
    assert main(["catalog", "build", "--history", str(src), "--hospitals", str(hosp), "--out", str(own)]) == 1
    assert "not a dipengine output" in _one_line_error(capsys)
    assert main(["rules", "import", "--from", str(src), "--out", str(own)]) == 1
    assert "not a dipengine output" in _one_line_error(capsys)
    assert (own / "groups.csv").read_text() == "hand made\n"


def test_catalog_build_refuses_overlapping_or_input_holding_outputs(tmp_path, capsys):
    demo = _write_dir(tmp_path / "demo", {"history_2025.parquet": "x", "hospitals.csv": "h"})
    hist, hosp = demo / "history_2025.parquet", demo / "hospitals.csv"
    args = ["catalog", "build", "--history", str(hist), "--hospitals", str(hosp)]
    assert main(args + ["--out", str(demo)]) == 1
    assert "inside this output directory" in _one_line_error(capsys)
    assert main(args + ["--out", str(tmp_path / "r"), "--pricing-out", str(tmp_path / "r" / "p")]) == 1
    assert "two separate directories" in _one_line_error(capsys)
    assert sorted(p.name for p in demo.iterdir()) == [io.OUTPUT_MARKER, "history_2025.parquet", "hospitals.csv"]


def test_rules_import_force_replaces(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_catalog_import import write_csv
    finally:
        sys.path.remove(str(ROOT / "tests"))
    src = write_csv(tmp_path / "c.csv")
    own = tmp_path / "city"
    own.mkdir()
    (own / "old.txt").write_text("x")
    assert main(["rules", "import", "--from", str(src), "--out", str(own)]) == 1
    assert main(["rules", "import", "--from", str(src), "--out", str(own), "--force"]) == 0
    assert not (own / "old.txt").exists() and (own / "groups.csv").exists()
    assert main(["rules", "import", "--from", str(src), "--out", str(own)]) == 0  # now its own output
    assert main(["rules", "check", str(own)]) == 0  # the marker is no table of the rule set


# ------------------------------------------------------------------ 1. outputs that are inputs


def test_output_equal_to_an_input_is_refused(cases_csv, tmp_path, capsys):
    before = cases_csv.read_bytes()
    assert main(["validate", "--input", str(cases_csv), "--out", str(cases_csv)]) == 1
    assert "also an input" in _one_line_error(capsys)
    assert main(["group", "--rules", str(ROOT / "tests/data/rules_features"), "--input", str(cases_csv),
                 "--out", str(cases_csv)]) == 1
    assert "also an input" in _one_line_error(capsys)
    assert cases_csv.read_bytes() == before


def test_output_through_a_symlink_to_the_input_is_refused(cases_csv, tmp_path, capsys):
    link = tmp_path / "link.csv"
    link.symlink_to(cases_csv)
    assert main(["validate", "--input", str(cases_csv), "--out", str(link)]) == 1
    assert "also an input" in _one_line_error(capsys)


def test_output_inside_an_input_directory_is_refused(tmp_path, capsys):
    d = tmp_path / "dataset"
    d.mkdir()
    pq.write_table(_table(), d / "part-0.parquet")
    assert main(["validate", "--input", str(d), "--out", str(d / "checked.parquet")]) == 1
    assert "inside the input directory" in _one_line_error(capsys)


def test_directory_output_holding_an_input_is_refused(tmp_path):
    out = _write_dir(tmp_path / "out", {"cases.parquet": "x"})
    with pytest.raises(DataError, match="inside this output directory"):
        io.check_output(out, [out / "cases.parquet"], directory=True)
    (tmp_path / "a.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="also an input"):  # through a glob; None and tables are no paths
        io.check_output(tmp_path / "a.parquet", [str(tmp_path / "*.parquet"), None, _table()])
    io.check_output(tmp_path / "b.parquet", ["demo", tmp_path / "a.parquet"])  # a shipped name, another file


# ------------------------------------------------------------------ 1. only regular files and directories


@pytest.mark.parametrize("minor", [3, 7], ids=["null", "full"])
def test_device_nodes_are_never_written_or_replaced(minor, cases_csv, tmp_path, capsys):
    """``--out /dev/null`` and ``--out /dev/full`` as root, on copies of those device nodes made for the
    test (a broken implementation replaces the node: never risk the machine's own)."""
    dev = tmp_path / "dev" / ("null" if minor == 3 else "full")
    dev.parent.mkdir()
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("making a device node needs root")
    before = os.stat(dev)
    assert main(["validate", "--input", str(cases_csv), "--out", str(dev)]) == 1
    assert "is a device" in _one_line_error(capsys)
    after = os.stat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    with pytest.raises(DataError, match="is a device"):
        io.write_table(_table(), dev)
    with pytest.raises(DataError, match="is a device"):
        with io.atomic_dir(dev, force=True):
            pass
    assert os.listdir(dev.parent) == [dev.name] and stat.S_ISCHR(os.stat(dev).st_mode)


def test_fifo_and_stdout_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="FIFO"):
        io.write_table(_table(), fifo)
    with pytest.raises(DataError, match="FIFO"):
        io.write_batches([_table()], fifo, _table().schema)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    r, w = os.pipe()
    try:
        with pytest.raises(DataError, match="FIFO"):
            io.write_table(_table(), f"/proc/self/fd/{w}")
    finally:
        os.close(r)
        os.close(w)


def test_a_directory_where_a_file_goes_is_a_clean_error(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        io.write_table(_table(), tmp_path)
    with pytest.raises(DataError, match="is a directory"):
        io.write_table(_table(), ".")


# ------------------------------------------------------------------ 1. the swap


def test_the_final_path_always_holds_a_complete_result(tmp_path):
    out = tmp_path / "out"
    _write_dir(out, {"a.txt": "0", "b.txt": "0"})
    stop, seen, missing = threading.Event(), [], []

    def watch():  # opens by path, as a reader of the result does
        while not stop.is_set():
            for name in (io.OUTPUT_MARKER, "a.txt", "b.txt"):
                try:
                    seen.append((out / name).read_text())
                except FileNotFoundError as e:
                    missing.append(e)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(1, 40):
            _write_dir(out, {"a.txt": str(i), "b.txt": str(i)})
    finally:
        stop.set()
        t.join()
    assert len(seen) > 100 and not missing, missing[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_without_an_exchange_a_failure_between_the_renames_puts_the_old_back(tmp_path, monkeypatch):
    out = _write_dir(tmp_path / "out", {"a.txt": "old"})
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # moving the new one in
            raise OSError(errno.EIO, "Input/output error", str(a))
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        _write_dir(out, {"a.txt": "new"})
    monkeypatch.setattr(os, "rename", real_rename)
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _write_dir(out, {"a.txt": "new"})  # the fallback path works
    assert (out / "a.txt").read_text() == "new"


def test_a_run_killed_between_the_renames_is_undone_by_the_next(tmp_path):
    """Without an exchange, a kill after the old result was set aside leaves it as
    ``.<name>.<pid>-<host>.<random>.old``: the next run puts it back before anything else."""
    old = _write_dir(tmp_path / "out", {"a.txt": "old"})
    aside = tmp_path / f".out.{_dead_pid()}-{io._host_tag()}.abcd1234.old"
    os.rename(old, aside)
    io.clean_stale(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "old" and not aside.exists()


# ------------------------------------------------------------------ 2. operating-system errors, one line


def test_output_below_a_regular_file_is_one_line(cases_csv, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["validate", "--input", str(cases_csv), "--out", str(tmp_path / "afile" / "x.parquet")]) == 1
    line = _one_line_error(capsys)
    assert "afile" in line and "not a directory" in line


def test_unwritable_place_is_one_line(cases_csv, tmp_path, capsys):
    # root may write anywhere on disk; /proc refuses to create files even for root
    assert main(["validate", "--input", str(cases_csv), "--out", "/proc/x.parquet"]) == 1
    line = _one_line_error(capsys)
    assert line.startswith("error: /proc/x.parquet: cannot write:")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["validate", "--input", str(cases_csv), "--out", str(ro / "x.parquet")]) == 1
        assert "Permission denied" in _one_line_error(capsys)


def test_permission_error_reading_is_one_line(cases_csv, tmp_path, monkeypatch, capsys):
    import dipengine.reader as reader

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(cases_csv))

    monkeypatch.setattr(reader, "read_cases", refuse)
    assert main(["validate", "--input", str(cases_csv)]) == 1
    assert _one_line_error(capsys) == f"error: {cases_csv}: Permission denied"


def test_full_disk_is_one_line_and_leaves_nothing(cases_csv, tmp_path, monkeypatch, capsys):
    """A write that meets ENOSPC (the bytes go to /dev/full instead of the temporary file)."""
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not the full device here")
    real = pq.write_table

    def to_dev_full(table, where, **kw):
        fd = os.open("/dev/full", os.O_WRONLY)  # never O_CREAT: nothing is made if it is not the device
        with os.fdopen(fd, "wb") as f:
            real(table, f, **kw)

    monkeypatch.setattr(io.pq, "write_table", to_dev_full)
    out = tmp_path / "x.parquet"
    assert main(["validate", "--input", str(cases_csv), "--out", str(out)]) == 1
    assert _one_line_error(capsys) == f"error: {out}: cannot write: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_file_size_limit_mid_write_is_one_line(cases_csv, tmp_path):
    """A real kernel write failure (EFBIG under RLIMIT_FSIZE) in a real process: one line, exit 1."""
    out = tmp_path / "x.csv"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    p = subprocess.run([sys.executable, "-m", "dipengine", "validate", "--input", str(cases_csv), "--out", str(out)],
                       capture_output=True, text=True, preexec_fn=limit, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: {out}: cannot write: File too large"
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_missing_parent_directories_are_created(cases_csv, tmp_path):
    out = tmp_path / "a" / "b" / "checked.csv"
    assert main(["validate", "--input", str(cases_csv), "--out", str(out)]) == 0
    assert out.is_file()


def test_empty_rules_manifest_is_one_line(tmp_path, capsys, cases_csv):
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "tests" / "data" / "rules_features", rules)
    (rules / "manifest.toml").write_text("")
    assert main(["rules", "check", str(rules)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.err.strip().splitlines()[-1].startswith("error: ")
    assert "manifest.toml" in out.out
    assert main(["group", "--rules", str(rules), "--input", str(cases_csv), "--out", str(tmp_path / "g.parquet")]) == 1
    assert "manifest.toml" in _one_line_error(capsys)


def test_toml_and_arrow_parse_errors_reaching_the_cli_are_one_line(monkeypatch, capsys):
    import tomllib

    import dipengine.cli._app as app

    def boom(*a, **k):
        tomllib.loads("x = ")

    monkeypatch.setattr(app, "_main", boom)
    assert main(["rules", "check", "x"]) == 1
    assert _one_line_error(capsys).startswith("error: Invalid value")

    def arrow(*a, **k):
        raise pa.ArrowInvalid("Parquet magic bytes not found in footer.\nEither the file is corrupted")

    monkeypatch.setattr(app, "_main", arrow)
    assert main([]) == 1
    assert _one_line_error(capsys) == "error: Parquet magic bytes not found in footer. Either the file is corrupted"
    monkeypatch.setenv("DIPENGINE_DEBUG", "1")
    with pytest.raises(pa.ArrowInvalid):
        main([])


def test_os_error_line_names_the_file():
    from dipengine.cli._app import os_error_line

    assert os_error_line(PermissionError(13, "Permission denied", "/x/y")) == "/x/y: Permission denied"
    two = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert os_error_line(two) == "/a -> /b: Invalid cross-device link"
    assert os_error_line(OSError("Arrow says no")) == "Arrow says no"


def test_a_truncated_parquet_input_is_one_line(tmp_path, capsys):
    src = tmp_path / "cases.parquet"
    pq.write_table(pa.table({"case_id": [str(i) for i in range(1000)]}), src)
    src.write_bytes(src.read_bytes()[:300])
    assert main(["validate", "--input", str(src)]) == 1
    assert str(src) in _one_line_error(capsys)


# ------------------------------------------------------------------ 9. formula-safe CSV


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_cells_a_spreadsheet_would_evaluate_are_escaped(tmp_path):
    text = ["=1+2", "@SUM(A1)", "+cmd", "-2+3", "\tx", "\rx", "-12.50", "+3", "1e5", "K35.8", "", None, "a=b"]
    t = pa.table({"s": text, "n": pa.array([-5] * len(text), pa.int64()),
                  "d": pa.array(["=x"] * len(text)).dictionary_encode(),
                  "l": pa.array([["=a", "b"]] * len(text)), "=bad name": ["x"] * len(text)})
    for write in (lambda p: io.write_table(t, p), lambda p: io.write_batches([t], p, t.schema)):
        out = tmp_path / "t.csv"
        write(out)
        rows = _csv_rows(out)
        assert rows[0] == ["s", "n", "d", "l", "'=bad name"]
        assert [r[0] for r in rows[1:]] == ["'=1+2", "'@SUM(A1)", "'+cmd", "'-2+3", "'\tx", "'\rx", "-12.50",
                                           "+3", "1e5", "K35.8", "", "", "a=b"]
        assert {r[1] for r in rows[1:]} == {"-5"}  # numbers stay numbers
        assert {r[2] for r in rows[1:]} == {"'=x"} and {r[3] for r in rows[1:]} == {"'=a|b"}


def test_parquet_outputs_and_reading_are_not_escaped(tmp_path):
    t = pa.table({"s": ["=1+2", "-x"]})
    io.write_table(t, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet")["s"].to_pylist() == ["=1+2", "-x"]
    mixed = io._unify_types([pa.table({"s": ["=1"]}), pa.table({"s": [1]})])
    assert mixed[0]["s"].to_pylist() == ["=1"]


def test_validate_csv_output_escapes_carried_columns(cases_csv, tmp_path):
    out = tmp_path / "checked.csv"
    assert main(["validate", "--input", str(cases_csv), "--out", str(out)]) == 0
    rows = _csv_rows(out)
    ward = rows[0].index("ward")
    assert [r[ward] for r in rows[1:]] == ["'=1+2", "-12.50", "'@SUM(A1)"]


# ------------------------------------------------------------------ 9. stale temporary outputs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporaries_of_killed_runs_are_cleaned_by_the_next_run(tmp_path):
    host = io._host_tag()
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = time.time() - 2 * io.STALE_SECONDS
        entries = {
            f".out.parquet.{dead}-{host}.abcd_123.tmp": True,          # its process is gone
            f".out.parquet.{live.pid}-{host}.abcd_124.tmp": False,     # a run still writing
            f".out.parquet.{dead}-abcdef.abcd_125.tmp": False,         # another machine's, recent
            f".out.parquet.{dead}-abcdef.abcd_126.tmp": "old",         # another machine's, long untouched
            ".out.parquet.k2j3h4g5.tmp": "old",                        # an older dipengine's
            ".out.parquet.k2j3h4g6.tmp": False,                        # ... recent
            ".out.parquet.notes.tmp": "old",                           # not this module's name
            f".other.parquet.{dead}-{host}.abcd_127.tmp": None,  # another output's (left)
            "out.parquet.bak": "old",
        }
        for name, how in entries.items():
            p = tmp_path / name
            if "125" in name:
                p.mkdir()
                (p / "partial").write_text("x")
            else:
                p.write_bytes(b"partial")
            if how == "old":
                os.utime(p, (old, old))
        (tmp_path / f".out.parquet.{dead}-{host}.abcd_128.tmp").mkdir()  # a killed directory write
        (tmp_path / f".out.parquet.{dead}-{host}.abcd_128.tmp" / "cases.parquet").write_bytes(b"x")
        io.write_table(_table(), tmp_path / "out.parquet")
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["out.parquet", f".out.parquet.{live.pid}-{host}.abcd_124.tmp",
                               f".out.parquet.{dead}-abcdef.abcd_125.tmp", ".out.parquet.k2j3h4g6.tmp",
                               ".out.parquet.notes.tmp", f".other.parquet.{dead}-{host}.abcd_127.tmp",
                               "out.parquet.bak"])
    finally:
        live.kill()
        live.wait()


def test_directory_outputs_clean_their_stale_temporaries(tmp_path):
    stale = tmp_path / f".out.{_dead_pid()}-{io._host_tag()}.zzzzzzzz.tmp"
    stale.mkdir()
    (stale / "cases.parquet").write_bytes(b"x" * 1000)
    _write_dir(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporary_names_carry_the_pid(tmp_path, monkeypatch):
    seen = []
    real = pq.write_table
    monkeypatch.setattr(io.pq, "write_table", lambda t, where, **kw: (seen.append(where), real(t, where, **kw)))
    io.write_table(_table(), tmp_path / "o.parquet")
    assert Path(seen[0]).name.startswith(f".o.parquet.{os.getpid()}-{io._host_tag()}.")
