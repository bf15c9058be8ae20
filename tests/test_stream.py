"""``stream.group_file`` (what ``dipengine group`` runs): same rows as ``group(read_cases(...))``
whatever the batch size, thread count or prefetching; honest summaries; clean failures; and the
command runs without importing pandas."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dipengine.cli import main
from dipengine.errors import DataError
from dipengine.grouper import MATCH_PATHS, group
from dipengine.reader import ParquetPrefetch, read_cases
from dipengine.rules import load_rules
from dipengine.stream import GroupRun, group_file, prefetch
from dipengine.synth import synth_region


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    cases, _ = synth_region(2026, 2500, seed=11, bad_rows=0.05)
    path = tmp_path_factory.mktemp("stream") / "cases.parquet"
    pq.write_table(cases, path, row_group_size=900)
    return path


@pytest.fixture(scope="module")
def expected(region, rules_features):
    """``group(read_cases(...))`` plus the input's extra column: what the file must hold."""
    out = group(read_cases(region), load_rules(rules_features))
    return out.append_column("planted_defect", pq.read_table(region)["planted_defect"])


def _decoded(path) -> pa.Table:
    return pq.read_table(path)  # dictionary columns come back as strings


@pytest.mark.parametrize("batch_size,threads,prefetched", [(300, 1, False), (128, 2, True), (5000, 2, False)])
def test_group_file_equals_group(region, rules_features, expected, tmp_path, batch_size, threads, prefetched):
    out = tmp_path / "grouped.parquet"
    source = ParquetPrefetch(str(region), batch_size, lean=True, depth=2) if prefetched else region
    run = group_file(source, rules_features, out, threads=threads, batch_size=batch_size)
    got = _decoded(out)
    assert got.column_names == expected.column_names
    for name in expected.column_names:
        assert got[name].to_pylist() == expected[name].to_pylist(), name
    assert isinstance(run, GroupRun) and run.rows == expected.num_rows
    assert list(run.by_match_path) == list(MATCH_PATHS)
    counts = pc.value_counts(expected["match_path"]).to_pylist()
    assert run.by_match_path == {p: next((c["counts"] for c in counts if c["values"] == p), 0) for p in MATCH_PATHS}
    reasons = {c["values"]: c["counts"] for c in pc.value_counts(expected["reason"].drop_null()).to_pylist()}
    assert run.by_reason == dict(sorted(reasons.items())) and sum(reasons.values()) > 0


def test_group_file_takes_a_loaded_rule_set_and_keeps_the_explained_rows(region, rules_features, tmp_path):
    rs = load_rules(rules_features)
    case_id = pq.read_table(region, columns=["case_id"])["case_id"][1234].as_py()
    run = group_file(str(region), rs, tmp_path / "g.csv", explain_id=case_id, batch_size=500)
    assert run.rules is rs
    assert run.explain is not None and run.explain["case_id"].to_pylist() == [case_id]
    assert (tmp_path / "g.csv").read_text(encoding="utf-8").count("\n") == run.rows + 1
    assert group_file(str(region), rs, tmp_path / "h.parquet", explain_id="no such case").explain is None


def test_a_bad_rule_set_writes_nothing_and_stops_the_prefetch(region, tmp_path):
    before = threading.active_count()
    out = tmp_path / "never.parquet"
    with pytest.raises(DataError):
        group_file(prefetch(region), tmp_path / "missing-rules", out)
    assert not out.exists()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before


def test_prefetch_only_wraps_a_single_parquet_file(region, tmp_path):
    p = prefetch(region)
    assert isinstance(p, ParquetPrefetch)
    p.close()
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id\n", encoding="utf-8")
    assert prefetch(str(csv)) == str(csv)
    assert prefetch(str(tmp_path)) == str(tmp_path)


def test_group_command_runs_without_pandas_and_writes_the_same(region, rules_features, tmp_path):
    # pyarrow would import pandas (0.2-0.4 s) on its first numpy conversion; the command keeps it
    # out of a fresh process, and the output is the same as in a process that has pandas loaded
    import pandas  # noqa: F401  (loaded here: the in-process run below takes the usual path)

    fresh, here = tmp_path / "fresh.parquet", tmp_path / "here.parquet"
    code = ("import sys; from dipengine.cli import main; "
            f"rc = main(['group', '--rules', {str(rules_features)!r}, '--input', {str(region)!r}, "
            f"'--out', {str(fresh)!r}]); print(rc, 'pandas' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split()[-2:] == ["0", "False"]
    assert main(["group", "--rules", str(rules_features), "--input", str(region), "--out", str(here)]) == 0
    assert pq.read_table(fresh).equals(pq.read_table(here))


def test_the_program_flushes_its_report_and_output_before_it_exits(region, rules_features, tmp_path):
    # `python -m dipengine` runs cli.run: its own pool and BLAS settings, then exit_now (no teardown)
    prog, here = tmp_path / "prog.parquet", tmp_path / "here.parquet"
    res = subprocess.run([sys.executable, "-m", "dipengine", "group", "--rules", str(rules_features), "--input",
                          str(region), "--out", str(prog)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("grouped 2,500 cases") and lines[1].startswith("by match_path: core ")
    assert main(["group", "--rules", str(rules_features), "--input", str(region), "--out", str(here)]) == 0
    assert pq.read_table(prog).equals(pq.read_table(here))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_exit_now_keeps_the_usual_exit_under_a_trace_function():
    code = ("import sys; from dipengine.cli import exit_now; import atexit; "
            "atexit.register(lambda: print('hooks ran')); sys.settrace(lambda *a: None); print('x'); exit_now(3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 3 and res.stdout.split() == ["x", "hooks", "ran"]
    fast = subprocess.run([sys.executable, "-c", code.replace("sys.settrace(lambda *a: None); ", "")],
                          capture_output=True, text=True)
    assert fast.returncode == 3 and fast.stdout.split() == ["x"]  # flushed, no teardown


def test_without_pandas_hides_pandas_only_while_open():
    code = """
import sys
from dipengine.cli._common import without_pandas
with without_pandas():
    try:
        import pandas
        print("imported")
    except ModuleNotFoundError:
        print("hidden")
import pandas
print("back" if "pandas" in sys.modules else "missing")
with without_pandas():
    import pandas.api
    print("loaded stays usable")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split("\n")[:3] == ["hidden", "back", "loaded stays usable"]


def test_retaining_memory_pool_is_jemalloc_while_open_and_restored_after():
    import pyarrow as pa

    from dipengine.cli._common import retaining_memory_pool

    before = pa.default_memory_pool().backend_name
    try:
        pa.jemalloc_memory_pool()
        expected = "jemalloc"
    except NotImplementedError:  # a pyarrow built without it: nothing changes
        expected = before
    with retaining_memory_pool():
        assert pa.default_memory_pool().backend_name == expected
        assert pa.array(["x"] * 10).to_pylist() == ["x"] * 10
    assert pa.default_memory_pool().backend_name == before


def test_row_groups_keep_order_and_write_the_last_batch_on_its_own():
    from dipengine.stream import _row_groups

    tables = [pa.table({"x": list(range(10 * k, 10 * k + 10))}) for k in range(10)]
    left = [100]

    def stream():
        for t in tables:
            left[0] -= t.num_rows
            yield t

    groups = list(_row_groups(stream(), 40, 10, lambda: left[0]))
    assert [g.num_rows for g in groups] == [40, 40, 10, 10]
    assert pa.concat_tables(groups)["x"].to_pylist() == list(range(100))
    # rows still to come unknown: groups of 40, then the rest
    assert [g.num_rows for g in _row_groups(iter(tables), 40)] == [40, 40, 20]


def test_group_file_output_row_groups(region, rules_features, tmp_path):
    out = tmp_path / "o.parquet"
    group_file(region, rules_features, out, batch_size=256, threads=2)
    md = pq.ParquetFile(out).metadata
    sizes = [md.row_group(k).num_rows for k in range(md.num_row_groups)]
    assert sum(sizes) == 2500
    assert sizes[-1] <= 256  # the last batch on its own: little left to write after grouping
    assert all(s >= 4 * 256 or k >= len(sizes) - 2 for k, s in enumerate(sizes))


def test_the_program_asks_openblas_for_one_thread_unless_told():
    from dipengine.cli import single_threaded_blas

    env = {}
    if "numpy" in sys.modules:  # too late to matter: left alone
        single_threaded_blas(env)
        assert env == {}
    code = ("import os, sys; from dipengine.cli import single_threaded_blas; e = {}; single_threaded_blas(e); "
            "f = {'OPENBLAS_NUM_THREADS': '4'}; single_threaded_blas(f); print(e, f)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "{'OPENBLAS_NUM_THREADS': '1'} {'OPENBLAS_NUM_THREADS': '4'}"


def test_the_program_streams_with_jemalloc_unless_told():
    from dipengine.cli import allocators_for_streaming

    code = ("import sys; from dipengine.cli import allocators_for_streaming as j; "
            "a, b, c, d = {}, {}, {}, {'ARROW_DEFAULT_MEMORY_POOL': 'system'}; "
            "j(['group', '--rules', 'x'], a); j(['settle', '--cases', 'x'], b); j(['--help'], c); "
            "j(['group'], d); print(a, b, c, d)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    want = "{'ARROW_DEFAULT_MEMORY_POOL': 'jemalloc'}" if sys.platform.startswith("linux") else "{}"
    assert res.stdout.strip() == f"{want} {{}} {{}} {{'ARROW_DEFAULT_MEMORY_POOL': 'system'}}"
    if "pyarrow" in sys.modules:  # too late to matter: left alone
        env = {}
        allocators_for_streaming(["group"], env)
        assert env == {}


def test_one_malloc_arena_takes_on_glibc():
    code = "from dipengine.cli import one_malloc_arena; print(one_malloc_arena())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert res.stdout.strip() == str(glibc)


def test_read_ahead_starts_before_click_and_the_command_takes_it_over(region, tmp_path):
    # the program (cli.run) starts decoding `group --input F.parquet` before importing click
    code = ("import sys; from dipengine.cli import read_ahead; from dipengine import parquet_source as ps; "
            f"ok = read_ahead(['group', '--rules', 'r', '--input', {str(region)!r}, '--out', 'o.parquet']); "
            "print(ok, 'click' in sys.modules, sorted(ps._AHEAD) == [sys.argv[1]], "
            "read_ahead(['validate', '--input', sys.argv[1]]), read_ahead(['group', '--input=missing.parquet'])); "
            "p = ps.prefetch(sys.argv[1]); print(type(p).__name__, ps._AHEAD == {})")
    res = subprocess.run([sys.executable, "-c", code, str(region)], capture_output=True, text=True, check=True)
    assert res.stdout.split("\n")[:2] == ["True False True False False", "ParquetPrefetch True"]


def test_the_program_reads_ahead_and_writes_the_same_as_the_library(region, rules_features, tmp_path):
    prog, lib = tmp_path / "prog.parquet", tmp_path / "lib.parquet"
    res = subprocess.run([sys.executable, "-m", "dipengine", "group", f"--input={region}", "--rules",
                          str(rules_features), "--out", str(prog)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    group_file(region, rules_features, lib)
    assert pq.read_table(prog).equals(pq.read_table(lib))


def test_parquet_source_imports_pyarrow_alone():
    # `dipengine group` starts decoding right after this import, before the rest of dipengine
    code = ("import sys, dipengine.parquet_source; "
            "print([m for m in ('pyarrow.compute', 'pyarrow.dataset', 'pandas', 'dipengine.reader') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
