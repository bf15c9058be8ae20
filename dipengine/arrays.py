"""Small Arrow array helpers shared by the batch paths (no Python loop per value)."""
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


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 of length n + 1, valid uint8) of a text array, for kernels.

    Views of the array's buffers where they allow (a ``large_string`` array is not copied).
    """
    arr = arr.cast(pa.large_string())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1 + arr.offset)[arr.offset:] if bufs[1] is not None \
        else np.zeros(n + 1, np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and len(bufs[2]) else np.zeros(1, np.uint8)
    if arr.null_count:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), np.uint8)
    else:
        valid = np.ones(n, np.uint8)
    return data, np.ascontiguousarray(offsets), np.ascontiguousarray(valid)
