"""The fast paths added for speed agree with the plain ones.

- ``reader._fen_column``: decimals converted from their unscaled integers == ``money.yuan_to_fen``;
- ``grouper.assemble(dictionary=True)``: dictionary columns decode to ``assemble()``'s strings;
- ``dipengine group`` streams batches (``group_stream`` + ``io.write_batches``): the file equals
  ``group(read_cases(...))`` whatever the batch size, and nothing is written when a batch fails.
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine.cli import main
from dipengine.errors import DataError
from dipengine.grouper import assemble, encode, group, group_stream, output_schema, prepare_cases, run_kernel
from dipengine.io import write_batches
from dipengine.money import yuan_to_fen
from dipengine.reader import (LEAN_COLUMNS, LEAN_SCHEMA, DictionaryCache, _fen_column, iter_cases, map_cases,
                              read_cases)
from dipengine.rules import load_rules
from dipengine.synth import synth_region


@settings(max_examples=60, deadline=None)
@given(scale=st.integers(0, 2), precision=st.integers(3, 18),
       values=st.lists(st.one_of(st.none(), st.integers(-10**17, 10**17)), max_size=40),
       offset=st.integers(0, 3))
def test_decimal_fen_fast_path_matches_yuan_to_fen(scale, precision, values, offset):
    limit = 10**precision - 1
    unscaled = [None if v is None else max(-limit, min(limit, v)) for v in values]
    dec = [None if v is None else Decimal(v).scaleb(-scale) for v in unscaled]
    arr = pa.array(dec, pa.decimal128(precision, scale)).slice(min(offset, len(dec)))
    fen, status = _fen_column(arr)
    ref_fen, ref_status = yuan_to_fen(arr)
    np.testing.assert_array_equal(status, ref_status)
    np.testing.assert_array_equal(fen, ref_fen)


def test_decimal_fen_fast_path_edges():
    arr = pa.array([Decimal("10000000000000.00"), Decimal("10000000000000.01"), Decimal("-0.00"),
                    Decimal("-12.30"), None], pa.decimal128(18, 2))
    fen, status = _fen_column(pa.chunked_array([arr]))
    ref_fen, ref_status = yuan_to_fen(arr)
    assert status.tolist() == ref_status.tolist() == [0, 4, 0, 3, 1]  # OK, TOO_LARGE, OK, NEGATIVE, NULL
    assert fen.tolist() == ref_fen.tolist()


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    cases, _ = synth_region(2026, 3000, seed=5, bad_rows=0.05)
    path = tmp_path_factory.mktemp("g") / "cases.parquet"
    pq.write_table(cases, path)
    return path


def test_dictionary_assemble_decodes_to_the_string_output(region, rules_features):
    rs = load_rules(rules_features)
    prep = prepare_cases(read_cases(region))
    res = run_kernel(encode(prep, rs), rs, 1)
    plain = assemble(prep, res, rs)
    dic = assemble(prep, res, rs, dictionary=True)
    assert dic.schema == output_schema(dictionary=True) and plain.schema == output_schema()
    for name in plain.column_names:
        assert dic[name].to_pylist() == plain[name].to_pylist(), name


@pytest.mark.parametrize("batch_size", [257, 100_000])
def test_group_stream_equals_group(region, rules_features, batch_size):
    rs = load_rules(rules_features)
    whole = group(read_cases(region), rs)
    parts = [out for _, out, _ in group_stream(iter_cases(region, batch_size=batch_size), rs, n_threads=2,
                                                dictionary=True)]
    streamed = pa.concat_tables(parts)
    assert streamed.num_rows == whole.num_rows
    for name in whole.column_names:
        assert streamed[name].to_pylist() == whole[name].to_pylist(), name


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_cli_file_equals_in_memory_group(region, rules_features, tmp_path, suffix):
    out = tmp_path / f"grouped{suffix}"
    assert main(["group", "--rules", str(rules_features), "--input", str(region), "--out", str(out)]) == 0
    expected = group(read_cases(region), load_rules(rules_features))
    # contract §2: the extra input columns follow the §6.1 columns, untouched
    expected = expected.append_column("planted_defect", pq.read_table(region)["planted_defect"])
    if suffix == ".parquet":
        got = pq.read_table(out)
        assert got.schema == output_schema().append(pq.read_schema(region).field("planted_defect"))
        assert got.equals(expected)
    else:
        ref = tmp_path / "ref.csv"
        from dipengine.io import write_table

        write_table(expected, ref)
        assert out.read_bytes() == ref.read_bytes()


def test_failed_stream_writes_nothing_and_reraises(region, rules_features, tmp_path):
    rs = load_rules(rules_features)

    def batches():
        yield from iter_cases(region, batch_size=500)
        raise DataError("cannot read dataset (broken)", file="x.parquet")

    out = tmp_path / "never.parquet"
    with pytest.raises(DataError, match="broken"):
        write_batches((o for _, o, _ in group_stream(batches(), rs, dictionary=True)), out,
                      output_schema(dictionary=True))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_empty_stream_writes_an_empty_file(tmp_path):
    out = tmp_path / "empty.parquet"
    assert write_batches([], out, output_schema(dictionary=True)) == 0
    t = pq.read_table(out)
    assert t.num_rows == 0 and t.schema == output_schema()


# --- the lean, threaded reader path that `dipengine group` uses ---------------------------------


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Cases with repeated case_ids across batches, padded and lower-case codes, text lists,
    several row groups: every branch of the fast reader."""
    cases, _ = synth_region(2026, 1500, seed=11, bad_rows=0.08)
    t = cases.to_pydict()
    for k in range(0, len(t["case_id"]), 97):  # repeats spread over batches
        t["case_id"][k] = t["case_id"][(k * 7) % 50]
    for k in range(0, len(t["main_dx"]), 13):
        if t["main_dx"][k]:
            t["main_dx"][k] = " " + t["main_dx"][k].lower() + " "
    table = pa.table(t, schema=cases.schema)
    path = tmp_path_factory.mktemp("m") / "messy.parquet"
    pq.write_table(table, path, row_group_size=400)
    return path


@pytest.mark.parametrize("workers,batch_size", [(1, 10_000), (2, 128), (3, 333)])
def test_lean_batches_equal_the_full_table(messy, workers, batch_size):
    full = read_cases(messy)
    lean = pa.Table.from_batches(list(iter_cases(messy, batch_size=batch_size, workers=workers, lean=True)))
    assert lean.column_names == list(LEAN_COLUMNS) + ["planted_defect"]
    assert lean.schema.field("main_dx").type == LEAN_SCHEMA.field("main_dx").type
    for name in LEAN_COLUMNS:
        want = full[name].to_pylist()
        if name == "discharge_mode":
            want = [1 if v is None else v for v in want]  # the grouper's default, filled early
        assert lean[name].to_pylist() == want, name
    assert lean["planted_defect"].equals(full["planted_defect"])


@pytest.mark.parametrize("workers", [1, 2])
def test_full_batches_do_not_depend_on_workers(messy, workers):
    whole = read_cases(messy)
    parts = pa.Table.from_batches(list(iter_cases(messy, batch_size=200, workers=workers)))
    assert parts.equals(whole)
    assert whole["reason"].to_pylist().count("DUPLICATE_CASE") >= 10


def test_lean_group_equals_group_of_full_table(messy, rules_features):
    from dipengine.grouper import group_batch

    rs = load_rules(rules_features)
    expected = group(read_cases(messy), rs)
    parts = list(map_cases(messy, lambda b: group_batch(b, rs, dictionary=True, normalised=True)[0],
                           batch_size=256, workers=2, lean=True))
    got = pa.concat_tables(parts)
    for name in expected.column_names:
        assert got[name].to_pylist() == expected[name].to_pylist(), name


def test_map_cases_reports_progress_in_order(messy):
    calls = []
    sizes = list(map_cases(messy, lambda b: b.num_rows, batch_size=300, workers=2,
                           progress=lambda done, total: calls.append((done, total))))
    assert max(sizes) <= 300 and len(sizes) >= 5
    assert calls == [(int(d), 1500) for d in np.cumsum(sizes)] and calls[-1] == (1500, 1500)


def test_dictionary_cache_keys_on_contents():
    cache = DictionaryCache(size=2)
    calls = []

    def compute(a):
        calls.append(a.to_pylist())
        return len(calls)

    a = pa.array(["x", "y", None])
    same = pa.array(["w", "x", "y", None]).slice(1)  # same contents, other buffers and offset
    assert cache.get("k", a, compute) == 1
    assert cache.get("k", same, compute) == 1
    assert cache.get("other", a, compute) == 2  # kinds do not share entries
    assert cache.get("k", pa.array(["x", "y", "z"]), compute) == 3
    assert cache.get("k", pa.array(["x", "y"]), compute) == 4
    assert len(calls) == 4


def test_group_cli_threads_and_extra_columns(messy, rules_features, tmp_path):
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"g{threads}.parquet"
        assert main(["group", "--rules", str(rules_features), "--input", str(messy), "--out", str(out),
                     "--threads", threads]) == 0
        outs.append(pq.read_table(out))
    assert outs[0].equals(outs[1])
    assert outs[0].column_names[-1] == "planted_defect"
    assert outs[0]["planted_defect"].equals(pq.read_table(messy)["planted_defect"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet=st.sampled_from(
    ["a", "Z", "0", " ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\u3000", "\u00a0", "é", "+"]), max_size=6)),
    max_size=30))
def test_text_column_fast_path_equals_trim(values):
    from dipengine.reader import _clean_text, _text_column

    arr = pa.array(values, pa.string())
    assert _text_column(arr, len(values)).to_pylist() == _clean_text(arr).to_pylist()


def test_seen_set_reserve_keeps_marks_exact():
    from dipengine._libs.validate import SeenSet

    from dipengine.arrays import string_buffers as _string_buffers

    keys = [f"k{i % 700}" for i in range(2000)]
    for reserve in (0, 5000):
        seen, expected, got = SeenSet(), set(), []
        seen.reserve(reserve, 0)
        for start in range(0, len(keys), 300):
            part = pa.array(keys[start:start + 300])
            out = np.zeros(len(part), np.uint8)
            seen.mark(*_string_buffers(part), out)
            got += out.tolist()
        for k in keys:
            got_k = k in expected
            expected.add(k)
            assert got.pop(0) == got_k
        assert len(seen) == 700


def test_map_cases_reraises_a_worker_error_and_stops(messy):
    import threading

    lock = threading.Lock()
    calls = []

    def fn(batch):
        with lock:
            calls.append(1)
            second = len(calls) == 2
        if second:
            raise DataError("boom in batch 2", file="x")
        return batch.num_rows

    before = threading.active_count()
    with pytest.raises(DataError, match="boom"):
        list(map_cases(messy, fn, batch_size=100, workers=2, depth=2))
    assert threading.active_count() <= before  # feeder and pool are gone


# --- ParquetPrefetch (decoding while `dipengine group` imports) and the procedure CSR kernel ---


@pytest.mark.parametrize("workers,batch_size", [(1, 300), (2, 128)])
def test_prefetched_source_gives_the_same_batches(messy, workers, batch_size):
    from dipengine.reader import ParquetPrefetch

    plain = pa.Table.from_batches(list(iter_cases(messy, batch_size=batch_size, workers=workers, lean=True)))
    pre = ParquetPrefetch(str(messy), batch_size, lean=True, depth=2)
    got = pa.Table.from_batches(list(iter_cases(pre, batch_size=batch_size, workers=workers, lean=True)))
    assert got.equals(plain)
    # a prefetch made for other batches is not used: still the same rows
    other = ParquetPrefetch(str(messy), batch_size + 1, lean=True)
    assert pa.Table.from_batches(list(iter_cases(other, batch_size=batch_size, lean=True))).equals(plain)


def test_prefetched_source_reports_a_bad_file_as_usual(tmp_path):
    from dipengine.reader import ParquetPrefetch

    bad = tmp_path / "cases.parquet"
    bad.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError) as plain:
        list(map_cases(str(bad), lean=True))
    with pytest.raises(DataError) as pre:
        list(map_cases(ParquetPrefetch(str(bad)), lean=True))
    assert str(pre.value) == str(plain.value)
    assert "cases.parquet" in str(pre.value)


def test_stopping_early_ends_the_prefetch_thread(messy):
    import threading
    import time

    from dipengine.reader import ParquetPrefetch

    before = threading.active_count()
    stream = map_cases(ParquetPrefetch(str(messy), 100, depth=1), batch_size=100, lean=True)
    next(stream)
    stream.close()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before


def test_reader_imports_without_pandas():
    # `dipengine group` starts decoding (ParquetPrefetch) with the reader imported: keep it light
    import subprocess
    import sys

    code = "import sys, dipengine.reader; print('pandas' in sys.modules, 'dipengine.io' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_reader_batch_size_is_io_batch_size():
    from dipengine import io, reader

    assert reader._BATCH_SIZE == io.BATCH_SIZE


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 30), n_main=st.integers(0, 6), n_other=st.integers(0, 6))
def test_proc_csr_kernel_matches_numpy(data, n, n_main, n_other):
    from dipengine.grouper import _proc_csr, _proc_csr_numpy

    def maps(k):
        return [np.array(data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)), dt)
                for lo, hi, dt in ((-1, 50, np.int32), (-1, 50, np.int32), (-1, 3, np.int8), (0, 4, np.int8))]

    m_maps, o_maps = maps(n_main), maps(n_other)
    m_idx = np.array(data.draw(st.lists(st.integers(-1, n_main - 1), min_size=n, max_size=n)), np.int32)
    o_len = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), np.int64)
    total = int(o_len.sum())
    o_idx = np.array(data.draw(st.lists(st.integers(-1, n_other - 1), min_size=total, max_size=total)), np.int32)
    got, want = _proc_csr(m_idx, m_maps, o_len, o_idx, o_maps), _proc_csr_numpy(m_idx, m_maps, o_len, o_idx, o_maps)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    for a, b in zip(got[2], want[2]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_dictionary_cache_computes_a_value_once_for_concurrent_threads():
    import threading
    import time

    cache = DictionaryCache()
    calls = []
    started = threading.Event()

    def compute(a):
        calls.append(1)
        started.set()
        time.sleep(0.05)
        return len(a)

    arr = pa.array(["a", "b", "c"])
    results = []
    t = threading.Thread(target=lambda: results.append(cache.get("k", arr, compute)))
    t.start()
    started.wait()
    results.append(cache.get("k", pa.array(["a", "b", "c"]), compute))  # waits for the first
    t.join()
    assert results == [3, 3] and len(calls) == 1

    def fail(a):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        cache.get("bad", arr, fail)
    assert cache.get("bad", arr, compute) == 3  # a failure is not remembered


def test_dictionary_cache_identity_shortcut_never_confuses_slices():
    # the digest is remembered per buffer identity; a slice shares the buffers, not the contents
    cache, calls = DictionaryCache(4), []

    def compute(a):
        calls.append(a.to_pylist())
        return a.to_pylist()

    arr = pa.array(["a", "b", "c"])
    assert cache.get("k", arr, compute) == ["a", "b", "c"]
    assert cache.get("k", arr, compute) == ["a", "b", "c"]
    assert cache.get("k", arr.slice(1), compute) == ["b", "c"]
    assert cache.get("k", pa.array(["b", "c"]), compute) == ["b", "c"]  # equal contents: a hit
    assert cache.get("other", arr, compute) == ["a", "b", "c"]  # another kind: its own entry
    assert calls == [["a", "b", "c"], ["b", "c"], ["a", "b", "c"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet="AKZaz09٣ .x-", max_size=4),
                          st.from_regex(r"[A-Z][0-9]{2}", fullmatch=True)), max_size=40))
def test_category_numbers_equal_category_number(cats):
    """The vectorised 类目 numbers used for comprehensive groups equal the readable rule."""
    from dipengine.grouper import category_numbers
    from dipengine.rules import category_number

    got = category_numbers(pa.array(cats, pa.string()))
    assert got.dtype == np.int32
    assert got.tolist() == [category_number(c) for c in cats]


def test_class_rank_of_names_and_nulls():
    from dipengine.grouper import _class_rank
    from dipengine.rules import TREAT_CLASSES

    names = list(TREAT_CLASSES) + [None, "surgery"]
    assert _class_rank(pa.array(names, pa.string())).tolist() == [0, 1, 2, 3, 0, 3]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(0, 40), n_dx=st.integers(0, 8))
def test_case_codes_kernel_matches_numpy(data, n, n_dx):
    """Main-diagnosis lookups, pre-reasons and age keys: the one-pass kernel equals the numpy twin."""
    from dipengine.grouper import _case_codes, _case_codes_numpy

    def column(lo, hi, k, dt):
        return np.array(data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)), dt)

    maps = [column(-1, 4000, n_dx, np.int32), column(-1, 2599, n_dx, np.int32), column(-1, 1, n_dx, np.int8),
            column(0, 1, n_dx, np.int8)]
    dx_idx = column(-1, n_dx - 1, n, np.int32)
    rejected = column(0, 1, n, np.uint8)
    age = column(-1, 200, n, np.int32)
    age_days = column(-1, 400, n, np.int32)
    got = _case_codes(dx_idx, maps, rejected, age, age_days)
    want = _case_codes_numpy(dx_idx, maps, rejected, age, age_days)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 40), k=st.integers(1, 8))
def test_secondary_codes_kernel_matches_map_dict(data, n, k):
    from dipengine.grouper import _map_dict, _secondary_codes

    maps = [np.array(data.draw(st.lists(st.integers(lo, hi), min_size=k, max_size=k)), dt)
            for lo, hi, dt in ((-1, 30, np.int32), (0, 6, np.int32), (0, 3, np.int8))]
    idx = data.draw(st.lists(st.one_of(st.none(), st.integers(0, k - 1)), min_size=n, max_size=n))
    d = pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array([f"D{j}" for j in range(k)]))
    got = _secondary_codes(np.array([-1 if i is None else i for i in idx], np.int32), maps)
    want = _map_dict(d, maps, [-1, 0, 0])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
