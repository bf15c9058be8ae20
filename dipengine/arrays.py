"""Small Arrow array builders shared by the batch paths (numpy in, Arrow out, no Python loop)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def sparse_strings(n: int, rows: np.ndarray, texts: pa.Array) -> pa.Array:
    """A string array of length ``n`` holding ``texts[k]`` at row ``rows[k]`` and null elsewhere.

    ``rows`` must be ascending and distinct (int, ``len(texts)`` of them); a null text stays
    null. Built from buffers: a few passes over ``n`` int32 offsets, against a ``take`` with a
    mostly-null index (several times slower when, as for reasons, few rows carry a text).
    """
    rows = np.asarray(rows, np.int64)
    if len(rows) != len(texts):
        raise ValueError("rows and texts differ in length")
    if len(rows) == 0:
        return pa.nulls(n, pa.string())
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    _, offsets_buf, data = texts.buffers()
    offs = np.frombuffer(offsets_buf, np.int32, count=len(texts) + 1 + texts.offset)[texts.offset:]
    out = np.zeros(n + 1, np.int32)
    out[rows + 1] = np.diff(offs)
    np.cumsum(out, out=out)
    present = np.zeros(n, bool)
    present[rows] = True if texts.null_count == 0 else texts.is_valid().to_numpy(zero_copy_only=False)
    start, stop = int(offs[0]), int(offs[-1])
    data = data.slice(start, stop - start) if data is not None else pa.py_buffer(b"")
    bitmap = pa.py_buffer(np.packbits(present, bitorder="little"))
    return pa.StringArray.from_buffers(n, pa.py_buffer(out), data, bitmap, null_count=n - int(present.sum()))
