"""Money: exact yuan -> integer fen, half-up rounding, largest-remainder reconciliation.

Amounts are int64 fen everywhere (suffix ``_fen``); yuan appear only at I/O boundaries.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine._libs.money import parse_fen

OK, NULL, MALFORMED, NEGATIVE, TOO_LARGE = 0, 1, 2, 3, 4


def _as_text(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_large_string(t):
        return arr
    if pa.types.is_string(t):
        return arr.cast(pa.large_string())
    if pa.types.is_dictionary(t):
        return _as_text(arr.dictionary_decode())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.large_string())
    if pa.types.is_floating(t):
        # Arrow prints the shortest text that round-trips, so 12345678.905 stays "12345678.905"
        # and becomes 1,234,567,891 fen, not the ...904999 fen of the binary value.
        nan = pc.is_nan(arr)
        arr = pc.if_else(nan, pa.scalar(None, t), arr)
    return pc.cast(arr, pa.large_string())


def yuan_to_fen(arr) -> tuple[np.ndarray, np.ndarray]:
    """Convert yuan (text, decimal, integer or float column) to int64 fen, half up at the fen.

    Returns
    -------
    fen : int64 ndarray
        Fen per row (0 where the status is not OK/NEGATIVE).
    status : int8 ndarray
        0 ok, 1 null/empty, 2 malformed, 3 negative, 4 too large.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    text = _as_text(arr)
    n = len(text)
    out = np.zeros(n, dtype=np.int64)
    status = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out, status
    bufs = text.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1 + text.offset)[text.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    valid = np.asarray(pc.is_valid(text), dtype=np.uint8) if text.null_count else np.ones(n, np.uint8)
    parse_fen(np.ascontiguousarray(data), np.ascontiguousarray(offsets), valid, out, status)
    return out, status


def round_half_up(x: np.ndarray) -> np.ndarray:
    """Round non-negative float amounts (fen) half up to int64; negatives round half away from zero."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def largest_remainder(shares: np.ndarray, total_fen: int, keys=None) -> np.ndarray:
    """Split ``total_fen`` in proportion to non-negative ``shares`` so the parts add up exactly.

    Each part is floored to whole fen; the leftover fen go one each to the largest
    remainders, ties broken by ``keys`` (then position), so the result is deterministic.
    """
    shares = np.asarray(shares, dtype=np.float64)
    n = len(shares)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    s = shares.sum()
    if s <= 0:
        raise ValueError("largest_remainder: shares sum to zero")
    exact = shares / s * float(total_fen)
    base = np.floor(exact).astype(np.int64)
    left = int(total_fen - base.sum())
    if left:
        rem = exact - base
        order = np.lexsort((np.arange(n), keys if keys is not None else np.arange(n), -rem))
        if left > 0:
            base[order[:left]] += 1
        else:
            base[order[::-1][: -left]] -= 1
    return base
