"""The bounded-memory duplicate pass (``dipengine.duplicates``, issue 16 item 2): the rows it marks
DUPLICATE_CASE are exactly those of the in-memory ``SeenSet`` pass, on every input, batch size and
partition count; the reader gives the same table either way; the spill folder never outlives the
pass; the kernel refuses bad arguments with a ValueError."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine import duplicates as D
from dipengine import reader as R
from dipengine._libs.duplicates import partition_rows
from dipengine.arrays import string_buffers
from dipengine.errors import DataError
from dipengine.reader import iter_cases, read_cases


def case_table(n=1, **cols):
    """A minimal valid case table of ``n`` rows, overridden by ``cols`` (lists)."""
    base = {
        "case_id": [f"C{i}" for i in range(n)],
        "hospital_id": ["H1"] * n,
        "insurance_type": ["employee"] * n,
        "insured_region": ["440200"] * n,
        "age": ["40"] * n,
        "admit_date": ["2027-03-01"] * n,
        "discharge_date": ["2027-03-05"] * n,
        "main_dx": ["K35.800x001"] * n,
        "total_cost": ["1000.00"] * n,
    }
    base.update(cols)
    return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in base.items()})


@pytest.fixture
def spied(monkeypatch):
    """Calls of ``find_repeats`` (so a test knows the spill path ran), with small partitions."""
    calls = []
    real = D.find_repeats

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(D, "find_repeats", spy)
    monkeypatch.setattr(D, "PARTITION_ROWS", 97)
    monkeypatch.setattr(D, "MAX_PARTITIONS", 5)
    return calls


# --- the two passes agree -----------------------------------------------------------------------

# near-equal ids: whitespace variants (ASCII and Unicode, trimmed by the reader), case, empties, CJK
_POOL = ["A", " A", "A ", "\tA\n", "a", "", "  ", "\u3000", "中", "中\u3000", " 中 ", "A B", "AB", "é", "e\u0301",
         "C0001", "C0001 ", "0", "x" * 9, "x" * 9 + " "]
_ids = st.lists(st.one_of(st.none(), st.sampled_from(_POOL), st.text(alphabet="aA中 \t\u3000é", max_size=4)),
                max_size=160)


def _batch(ids, as_dictionary=False) -> pa.RecordBatch:
    arr = pa.array(ids, pa.string())
    if as_dictionary:
        arr = pc.dictionary_encode(arr)
    return pa.record_batch([arr], names=["case_id"])


def _masks(ctx_seen, batch: pa.RecordBatch, batch_size: int) -> list[bool]:
    """The DUPLICATE_CASE mask of the reader's duplicate pass over ``batch`` cut into batches."""
    ctx = R._Context(None, None, None)
    ctx.seen = ctx_seen
    out = []
    for start in range(0, max(batch.num_rows, 1), batch_size):
        part = batch.slice(start, batch_size)
        if part.num_rows:
            _, dup, _ = R._mark_duplicates(part, ctx)
            out.extend(dup.astype(bool).tolist())
    return out


def _spill_marker(batch, chunk, **kw):
    """The reader's pre-pass over ``batch``'s case_id column, read back in ``chunk``-row pieces."""
    col = batch.column(0)
    columns = (col.slice(a, chunk) for a in range(0, len(col), chunk))
    rows, n = D.find_repeats(R._cleaned(columns), batch.num_rows, **kw)
    return D.RepeatMarker(rows, n)


@settings(max_examples=40, deadline=None)
@given(ids=_ids, as_dictionary=st.booleans(), chunk=st.sampled_from([1, 5, 64, 10_000]),
       layout=st.sampled_from([(1, 1), (3, 2), (8, 4), (40, 16), (1000, 256)]))
def test_spill_pass_marks_exactly_the_seen_set_rows(ids, as_dictionary, chunk, layout):
    from dipengine._libs.validate import SeenSet

    batch = _batch(ids, as_dictionary)
    per, most = layout
    for batch_size in (1, 7, 1000):
        expected = _masks(SeenSet(), batch, batch_size)
        got = _masks(_spill_marker(batch, chunk, partition_rows=per, max_partitions=most), batch, batch_size)
        assert got == expected
    # and the plain definition: a non-empty trimmed id seen in an earlier row
    seen, plain = set(), []
    for v in ids:
        key = None if v is None else v.strip(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\u3000") or None
        plain.append(key is not None and key in seen)
        if key is not None:
            seen.add(key)
    assert expected == plain


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.lists(st.one_of(st.none(), st.sampled_from(_POOL)), max_size=40), max_size=6),
       layout=st.sampled_from([(1, 1), (2, 3), (5, 2), (100, 256)]))
def test_find_repeats_equals_memory_repeats(batches, layout):
    arrays = [pa.array(b, pa.string()) for b in batches]
    per, most = layout
    rows, n = D.find_repeats(arrays, sum(map(len, batches)) or None, partition_rows=per, max_partitions=most)
    want, n_want = D.memory_repeats(arrays)
    assert n == n_want == sum(map(len, batches))
    assert rows.dtype == np.int64 and rows.tolist() == want.tolist()
    assert rows.tolist() == sorted(set(rows.tolist()))


def test_oversized_partitions_are_split_again_and_skew_is_handled():
    rng = np.random.default_rng(3)
    ids = [f"C{i}" for i in rng.integers(0, 3000, 20_000)] + ["same"] * 5000 + [None] * 100
    arrays = [pa.array(ids[a:a + 3000]) for a in range(0, len(ids), 3000)]
    want, _ = D.memory_repeats(arrays)
    # 2 partitions of at most 500 rows planned for 25,100 rows: each is split again, twice
    for per, most in ((500, 2), (1, 1), (25_100, 1)):
        rows, n = D.find_repeats(arrays, len(ids), partition_rows=per, max_partitions=most)
        assert n == len(ids) and np.array_equal(rows, want)


def test_partition_count():
    assert D.partition_count(0) == 1 and D.partition_count(1) == 1
    assert D.partition_count(2_000_000) == 2 and D.partition_count(2_000_001) == 3
    assert D.partition_count(10**12) == D.MAX_PARTITIONS
    assert D.partition_count(10, 3, 2) == 2
    with pytest.raises(ValueError):
        D.partition_count(10, 0)


# --- the reader ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cases():
    """Synthetic cases with planted duplicates, plus near-duplicate, empty and null ids."""
    from dipengine.synth import synth_region

    t, _ = synth_region(2026, 2400, seed=5, bad_rows=0.05)
    ids = t["case_id"].to_pylist()
    first = list(ids)
    rng = np.random.default_rng(9)
    for i in rng.choice(len(ids), 200, replace=False):
        j = first[int(rng.integers(0, len(ids)))]
        ids[i] = [" " + j, j + "\u3000", "", None, "  ", j][int(rng.integers(0, 6))]
    return t.set_column(t.column_names.index("case_id"), "case_id", pa.array(ids, pa.string()))


def _same(a: pa.Table, b: pa.Table):
    assert a.schema == b.schema
    assert a.equals(b)


def test_read_cases_spill_equals_memory_on_parquet(cases, tmp_path, spied):
    path = tmp_path / "cases.parquet"
    pq.write_table(cases, path, row_group_size=700)
    memory = read_cases(path, duplicates="memory")
    assert not spied
    n_dup = pc.sum(pc.equal(memory["reason"], "DUPLICATE_CASE")).as_py()
    assert n_dup > 100
    spill = read_cases(path, duplicates="spill", workers=2)
    assert len(spied) == 1
    _same(spill, memory)
    # streaming, one thread, odd batches: the running row offset
    one = pa.Table.from_batches(list(iter_cases(path, batch_size=333, duplicates="spill", workers=1)))
    _same(one.combine_chunks(), memory)
    assert len(spied) == 2


def test_read_cases_spill_equals_memory_on_datasets_ipc_and_nhsa(cases, tmp_path, spied):
    from dipengine.schemas import load_schema

    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(cases.slice(0, 1000), folder / "a.parquet")
    pq.write_table(cases.slice(1000), folder / "b.parquet", row_group_size=500)
    ipc = tmp_path / "cases.arrow"
    feather.write_feather(cases, ipc, chunksize=600)
    memory = read_cases(cases, duplicates="memory")
    for source in (folder, str(folder / "*.parquet"), ipc):
        before = len(spied)
        _same(read_cases(source, duplicates="spill"), memory)
        assert len(spied) == before + 1, source
    nhsa = load_schema("nhsa").export(cases)
    assert "setl_id" in nhsa.column_names
    pq.write_table(nhsa, tmp_path / "nhsa.parquet", row_group_size=800)
    pq.write_table(nhsa.slice(0, 1200), folder / "a.parquet")
    pq.write_table(nhsa.slice(1200), folder / "b.parquet")
    for source in (tmp_path / "nhsa.parquet", folder):
        before = len(spied)
        want = read_cases(source, schema="nhsa", duplicates="memory")
        assert pc.sum(pc.equal(want["reason"], "DUPLICATE_CASE")).as_py() > 100
        _same(read_cases(source, schema="nhsa", duplicates="spill"), want)
        assert len(spied) == before + 1, source


def test_other_sources_keep_the_in_memory_set(cases, tmp_path, spied):
    import pyarrow.csv as pcsv

    csv = tmp_path / "cases.csv"
    pcsv.write_csv(cases.drop_columns(["other_dx", "other_procs"]), csv)
    want = read_cases(csv, duplicates="memory")
    _same(read_cases(csv, duplicates="spill"), want)
    _same(read_cases(cases, duplicates="spill"), read_cases(cases, duplicates="memory"))
    assert not spied


def test_auto_spills_from_the_threshold(cases, tmp_path, spied, monkeypatch):
    path = tmp_path / "cases.parquet"
    pq.write_table(cases, path)
    want = read_cases(path, duplicates="memory")
    monkeypatch.setattr(R, "DUPLICATE_SPILL_ROWS", cases.num_rows + 1)
    _same(read_cases(path), want)
    assert not spied
    monkeypatch.setattr(R, "DUPLICATE_SPILL_ROWS", cases.num_rows)
    _same(read_cases(path), want)
    assert len(spied) == 1


def test_int_case_ids_and_empty_files(tmp_path, spied):
    t = case_table(6, case_id=pa.array([7, 8, None, 7, 8, 9], pa.int64()))
    pq.write_table(t, tmp_path / "ints.parquet")
    got = read_cases(tmp_path / "ints.parquet", duplicates="spill")
    assert got["reason"].to_pylist() == [None, None, "MISSING_FIELD", "DUPLICATE_CASE", "DUPLICATE_CASE", None]
    _same(got, read_cases(tmp_path / "ints.parquet", duplicates="memory"))
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    assert read_cases(tmp_path / "empty.parquet", duplicates="spill").num_rows == 0


def test_bad_files_fail_alike(cases, tmp_path):
    missing = tmp_path / "missing.parquet"
    pq.write_table(cases.drop_columns(["main_dx"]), missing)
    (tmp_path / "fake.parquet").write_text("case_id,hospital_id\nC1,H1\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(cases.slice(0, 100), mixed / "a.parquet")
    pq.write_table(cases.slice(100, 100).set_column(cases.column_names.index("age"), "age",
                                                     pa.array([[1]] * 100)), mixed / "b.parquet")
    for source in (missing, tmp_path / "fake.parquet", mixed):
        messages = []
        for mode in ("memory", "spill"):
            with pytest.raises(DataError) as e:
                read_cases(source, duplicates=mode)
            messages.append(str(e.value))
        assert messages[0] == messages[1], source


def test_unknown_mode_is_refused(cases):
    with pytest.raises(ValueError, match="duplicates must be one of"):
        read_cases(cases, duplicates="disk")


# --- the spill folder ----------------------------------------------------------------------------

def test_spill_folder_is_removed_after_success(cases, tmp_path, spied):
    path = tmp_path / "cases.parquet"
    pq.write_table(cases, path)
    spill = tmp_path / "spill"
    spill.mkdir()
    made = []
    real = D.tempfile.mkdtemp

    def mkdtemp(**kw):
        made.append(real(**kw))
        return made[-1]

    D.tempfile.mkdtemp, saved = mkdtemp, real
    try:
        read_cases(path, duplicates="spill", spill_dir=spill)
    finally:
        D.tempfile.mkdtemp = saved
    assert len(made) == 1 and os.path.dirname(made[0]) == str(spill)
    assert not os.path.exists(made[0]) and os.listdir(spill) == []


def test_spill_folder_is_removed_after_errors(tmp_path, monkeypatch):
    spill = tmp_path / "spill"
    spill.mkdir()

    def failing():
        yield pa.array(["a", "b", "a"])
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):  # the source's own error, unchanged
        D.find_repeats(failing(), 10, spill_dir=spill, partition_rows=1, max_partitions=3)
    assert os.listdir(spill) == []

    def disk_full(self, batch, nbytes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D._Part, "write", disk_full)
    with pytest.raises(DataError, match="No space left on device") as e:
        D.find_repeats([pa.array(["a", "b", "a"])], 3, spill_dir=spill)
    assert str(spill) in str(e.value)
    assert os.listdir(spill) == []
    # the reader: the same DataError stops the run before any batch
    t = case_table(4, case_id=["a", "b", "a", "c"])
    pq.write_table(t, tmp_path / "c.parquet")
    with pytest.raises(DataError, match="spill files"):
        next(iter_cases(tmp_path / "c.parquet", duplicates="spill", spill_dir=spill))
    assert os.listdir(spill) == []


def test_spill_file_altered_is_a_data_error(tmp_path, monkeypatch):
    spill = tmp_path / "spill"
    spill.mkdir()
    real = D._resolve

    def tamper(part, *args):
        with open(part.path, "r+b") as f:
            f.truncate(os.path.getsize(part.path) // 2)
        return real(part, *args)

    monkeypatch.setattr(D, "_resolve", tamper)
    with pytest.raises(DataError, match="spill"):
        D.find_repeats([pa.array(["a", "b", "a"] * 50)], 150, spill_dir=spill)
    assert os.listdir(spill) == []


def test_missing_spill_dir_is_a_data_error(tmp_path):
    gone = tmp_path / "no" / "such"
    with pytest.raises(DataError, match="cannot make a folder") as e:
        D.find_repeats([pa.array(["a"])], 1, spill_dir=gone)
    assert str(gone) in str(e.value)
    t = case_table(3, case_id=["a", "b", "a"])
    pq.write_table(t, tmp_path / "c.parquet")
    with pytest.raises(DataError, match="cannot make a folder"):
        read_cases(tmp_path / "c.parquet", duplicates="spill", spill_dir=gone)


# --- RepeatMarker and the kernel -----------------------------------------------------------------

def test_repeat_marker_checks_the_batches_fit():
    m = D.RepeatMarker(np.array([1, 3], np.int64), 4, label="x.parquet")
    out = np.zeros(2, np.uint8)
    m.mark(None, None, np.ones(2, np.uint8), out)
    assert out.tolist() == [0, 1] and m.offset == 2
    with pytest.raises(ValueError, match="valid has length"):
        m.mark(None, None, np.ones(3, np.uint8), out)
    with pytest.raises(DataError, match="changed while being read"):
        m.mark(None, None, np.array([1, 0], np.uint8), out)  # row 3 repeats, yet has no id now
    m = D.RepeatMarker(np.array([], np.int64), 2)
    with pytest.raises(DataError, match="changed while being read"):
        m.mark(None, None, np.ones(3, np.uint8), np.zeros(3, np.uint8))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.sampled_from(_POOL)), max_size=50), n_parts=st.integers(1, 9),
       salt=st.integers(0, 2**64 - 1))
def test_partition_rows_groups_equal_strings_in_row_order(values, n_parts, salt):
    data, offsets, valid = string_buffers(pa.array(values, pa.string()))
    order = np.full(len(values), -7, np.int64)
    starts = np.empty(n_parts + 1, np.int64)
    k = partition_rows(data, offsets, valid, salt, order, starts)
    valid_rows = [i for i, v in enumerate(values) if v is not None]
    assert k == len(valid_rows) == starts[-1] and starts[0] == 0 and (np.diff(starts) >= 0).all()
    assert sorted(order[:k].tolist()) == valid_rows and (order[k:] == -7).all()
    where = {}
    for p in range(n_parts):
        rows = order[starts[p]:starts[p + 1]].tolist()
        assert rows == sorted(rows)
        for r in rows:
            assert where.setdefault(values[r], p) == p  # equal strings share a partition


def test_partition_rows_refuses_bad_arguments():
    data, offsets, valid = string_buffers(pa.array(["ab", "c", None]))
    order, starts = np.zeros(3, np.int64), np.zeros(4, np.int64)
    partition_rows(data, offsets, valid, 0, order, starts)
    with pytest.raises(ValueError, match="offsets has length"):
        partition_rows(data, offsets[:-1], valid, 0, order, starts)
    with pytest.raises(ValueError, match="order has length"):
        partition_rows(data, offsets, valid, 0, order[:2], starts)
    with pytest.raises(ValueError, match="starts has length"):
        partition_rows(data, offsets, valid, 0, order, np.zeros(1, np.int64))
    bad = offsets.copy()
    bad[1] = 99
    with pytest.raises(ValueError, match=r"offsets\[0:2\]"):
        partition_rows(data, bad, valid, 0, order, starts)
    bad = offsets.copy()
    bad[2] = 0
    with pytest.raises(ValueError, match=r"offsets\[1:3\]"):
        partition_rows(data, bad, valid, 0, order, starts)
    with pytest.raises(ValueError, match="read-only|writable"):
        ro = np.zeros(3, np.int64)
        ro.flags.writeable = False
        partition_rows(data, offsets, valid, 0, ro, starts)
    with pytest.raises(TypeError):
        partition_rows(data, offsets, valid, 0, None, starts)
    with pytest.raises(OverflowError):
        partition_rows(data, offsets, valid, -1, order, starts)
    assert partition_rows(data[:0], np.zeros(1, np.int64), valid[:0], 0, order[:0], starts) == 0
