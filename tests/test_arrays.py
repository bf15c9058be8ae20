"""``arrays.sparse_strings`` equals the plain ``take`` it replaces (and reasons.to_strings its twin)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine import reasons
from dipengine.arrays import sparse_strings


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), data=st.data())
def test_sparse_strings_equals_take(n, data):
    rows = sorted(data.draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=n)) if n else [])
    texts = data.draw(st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=len(rows), max_size=len(rows)))
    pad = data.draw(st.integers(0, 3))  # a sliced input array (non-zero offset)
    arr = pa.array(["x"] * pad + texts, pa.string()).slice(pad)
    where = np.full(n, -1)
    where[rows] = np.arange(len(rows))
    expected = arr.take(pa.array(where, mask=where < 0)).to_pylist() if n else []
    got = sparse_strings(n, np.array(rows, np.int64), arr)
    got.validate(full=True)
    assert got.to_pylist() == expected


@given(st.lists(st.integers(0, len(reasons.NAMES) - 1), max_size=50))
def test_reason_strings(codes):
    got = reasons.to_strings(np.array(codes, np.int8))
    got.validate(full=True)
    assert got.to_pylist() == [reasons.NAMES[c] for c in codes]
