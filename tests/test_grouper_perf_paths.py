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
from dipengine.reader import _fen_column, iter_cases, read_cases
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
    if suffix == ".parquet":
        got = pq.read_table(out)
        assert got.schema == output_schema()  # plain strings for readers, not dictionaries
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
