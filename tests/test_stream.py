"""``stream.group_file`` (what ``dipengine group`` runs): same rows as ``group(read_cases(...))``
whatever the batch size, thread count or prefetching; honest summaries; clean failures; the same bytes
from the program and the library."""
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


def test_group_command_in_a_fresh_process_writes_the_same_bytes(region, rules_features, tmp_path):
    # a fresh process (pandas not loaded) and this one (pandas loaded) write the same file
    import pandas  # noqa: F401

    fresh, here = tmp_path / "fresh.parquet", tmp_path / "here.parquet"
    code = ("import sys; from dipengine.cli import main; "
            f"rc = main(['group', '--rules', {str(rules_features)!r}, '--input', {str(region)!r}, "
            f"'--out', {str(fresh)!r}]); print(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split()[-1] == "0"
    assert main(["group", "--rules", str(rules_features), "--input", str(region), "--out", str(here)]) == 0
    assert fresh.read_bytes() == here.read_bytes()


def test_the_program_flushes_its_report_and_output_before_it_exits(region, rules_features, tmp_path):
    # `python -m dipengine` runs cli.run: main, then a normal exit
    prog, here = tmp_path / "prog.parquet", tmp_path / "here.parquet"
    res = subprocess.run([sys.executable, "-m", "dipengine", "group", "--rules", str(rules_features), "--input",
                          str(region), "--out", str(prog)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("grouped 2,500 cases") and lines[1].startswith("by match_path: core ")
    assert main(["group", "--rules", str(rules_features), "--input", str(region), "--out", str(here)]) == 0
    assert pq.read_table(prog).equals(pq.read_table(here))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_row_groups_are_cut_at_fixed_rows_whatever_the_batches():
    from dipengine.stream import _row_groups

    tables = [pa.table({"x": list(range(10 * k, 10 * k + 10))}) for k in range(10)]
    groups = list(_row_groups(iter(tables), 40, 10, lambda: 100))
    assert [g.num_rows for g in groups] == [40, 40, 10, 10]  # the last 10 rows on their own
    assert pa.concat_tables(groups)["x"].to_pylist() == list(range(100))
    # other batches, same cuts
    odd = [pa.table({"x": list(range(a, min(a + 7, 100)))}) for a in range(0, 100, 7)]
    assert [g.num_rows for g in _row_groups(iter(odd), 40, 10, lambda: 100)] == [40, 40, 10, 10]
    odd95 = [pa.table({"x": list(range(a, min(a + 7, 95)))}) for a in range(0, 95, 7)]
    assert [g.num_rows for g in _row_groups(iter(odd95), 40, 10, lambda: 95)] == [40, 40, 10, 5]
    # total unknown: groups of 40, then the rest
    assert [g.num_rows for g in _row_groups(iter(tables), 40)] == [40, 40, 20]
    assert [g.num_rows for g in _row_groups(iter(odd), 40, 10, lambda: None)] == [40, 40, 20]


def test_row_groups_write_unique_dictionaries():
    from dipengine.stream import _row_groups

    values = pa.array(["core", "basic", "core", "blank", "basic"])  # as the rule set's group_type
    batches = [pa.table({"g": pa.DictionaryArray.from_arrays(pa.array([0, 2, None, 4, 3], pa.int32()), values)})
               for _ in range(3)]
    (t,) = _row_groups(iter(batches), 100)
    col = t["g"]
    assert all(c.dictionary.to_pylist() == ["core", "basic", "blank"] for c in col.chunks)
    assert col.to_pylist() == ["core", "core", None, "basic", "blank"] * 3
    # chunks with different dictionaries: one dictionary, in order of first appearance
    other = pa.table({"g": pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), pa.array(["x", "core"]))})
    (t,) = _row_groups(iter([batches[0], other]), 100)
    assert t["g"].num_chunks == 1 and t["g"].chunk(0).dictionary.to_pylist() == ["core", "basic", "blank", "x"]
    assert t["g"].to_pylist() == ["core", "core", None, "basic", "blank", "core", "x"]


def test_group_file_output_row_groups(region, rules_features, tmp_path):
    sizes = {}
    for batch_size in (256, 1000):
        out = tmp_path / f"o{batch_size}.parquet"
        group_file(region, rules_features, out, batch_size=batch_size, threads=2)
        md = pq.ParquetFile(out).metadata
        sizes[batch_size] = [md.row_group(k).num_rows for k in range(md.num_row_groups)]
    assert sizes[256] == sizes[1000] == [2500]  # cut at fixed rows (524,288), not per batch
    assert (tmp_path / "o256.parquet").read_bytes() == (tmp_path / "o1000.parquet").read_bytes()


def test_the_program_writes_the_same_as_the_library(region, rules_features, tmp_path):
    prog, lib = tmp_path / "prog.parquet", tmp_path / "lib.parquet"
    res = subprocess.run([sys.executable, "-m", "dipengine", "group", f"--input={region}", "--rules",
                          str(rules_features), "--out", str(prog)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    group_file(region, rules_features, lib)
    assert prog.read_bytes() == lib.read_bytes()


def test_parquet_source_imports_pyarrow_alone():
    # a caller can start decoding right after this import, before the rest of dipengine
    code = ("import sys, dipengine.parquet_source; "
            "print([m for m in ('pyarrow.compute', 'pyarrow.dataset', 'pandas', 'dipengine.reader') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
