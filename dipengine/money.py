"""Money: exact yuan -> integer fen, half-up rounding, largest-remainder reconciliation.

Amounts are int64 fen everywhere (suffix ``_fen``); yuan appear only at I/O boundaries, and
every conversion between the two goes through this module:

- columns: :func:`yuan_to_fen` (text, decimal, integer or float columns; a Cython parser of the
  decimal text, never float arithmetic);
- one value: :func:`yuan_text_to_fen` (decimal text), :func:`yuan_value_to_fen` (a TOML/JSON value:
  text, int, float or ``Decimal``), :func:`yuan_float_to_fen` (a float through its shortest
  round-trip text, as a CSV or TOML writer printed it);
- back to text: :func:`fen_to_yuan_text` (``"12.30"``, or ``"12.3"`` / ``"12"`` trimmed),
  :func:`format_yuan` (``"1,234.50"`` for summaries).

Every rounding step is half up at the fen (half away from zero for negative amounts), exact:
``"1.005"`` yuan is 101 fen (the float ``1.005 * 100`` is 100.49999999999999).
"""
from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine._libs.money import parse_fen

OK, NULL, MALFORMED, NEGATIVE, TOO_LARGE = 0, 1, 2, 3, 4

#: Largest amount in fen the converters accept (10**15 fen = 10 trillion yuan), as the column parser.
FEN_LIMIT = 10**15

# The column parser's grammar: optional sign, digits (commas as thousands separators before the
# point), an optional fraction, an optional exponent; blanks around are ignored.
_YUAN_TEXT = re.compile(r"[+-]?(?:[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FEN = Decimal(100)


def yuan_text_to_decimal(text: str) -> Decimal:
    """The exact value of a yuan amount written as decimal text (``" 1,234.5 "``, ``"1e3"``).

    Raises
    ------
    ValueError
        Empty, malformed (``"1.2.3"``, ``"abc"``, ``"nan"``, ``"inf"``) or beyond :data:`FEN_LIMIT`.
    """
    if not isinstance(text, str):
        raise ValueError(f"not text: {text!r}")
    t = text.strip()
    if not t:
        raise ValueError("empty amount")
    if not _YUAN_TEXT.fullmatch(t):
        raise ValueError(f"{text!r} is not an amount in yuan")
    try:
        d = Decimal(t.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only Decimal syntax
        raise ValueError(f"{text!r} is not an amount in yuan") from None
    if d and d.adjusted() > 15:  # beyond 10**16 yuan: out of range whatever the fraction
        raise ValueError(f"{text!r} is too large (limit {FEN_LIMIT // 100:,} yuan)")
    return d


def _decimal_to_fen(d: Decimal, shown, max_decimals) -> int:
    if max_decimals is not None and (d * 10**max_decimals) != (d * 10**max_decimals).to_integral_value():
        raise ValueError(f"{shown!r} has more than {max_decimals} decimals")
    fen = int((d * _FEN).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if abs(fen) > FEN_LIMIT:
        raise ValueError(f"{shown!r} is too large (limit {FEN_LIMIT // 100:,} yuan)")
    return fen


def yuan_text_to_fen(text: str, *, max_decimals: int | None = None) -> int:
    """Yuan as decimal text -> int fen, exact, half up (``"1.005"`` -> 101, ``"-0.005"`` -> -1).

    Accepts what :func:`yuan_to_fen` accepts (blanks around, sign, thousands commas before the
    point, an exponent). ``max_decimals`` refuses text with more decimals (2: whole fen only).

    Raises
    ------
    ValueError
        Empty, malformed, too many decimals, or beyond :data:`FEN_LIMIT`.
    """
    return _decimal_to_fen(yuan_text_to_decimal(text), text, max_decimals)


def yuan_float_to_fen(x: float, *, max_decimals: int | None = None) -> int:
    """A float amount of yuan -> int fen, through its shortest round-trip text (``repr``).

    A float read from decimal text of at most 15 significant digits prints back as that text,
    so ``1.005`` gives 101 fen, where ``floor(1.005 * 100 + 0.5)`` gives 100.

    Raises
    ------
    ValueError
        Not finite, too many decimals, or beyond :data:`FEN_LIMIT`.
    """
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{x!r} is not a finite amount")
    return _decimal_to_fen(Decimal(repr(x)), x, max_decimals)


def yuan_value_to_fen(v, *, max_decimals: int | None = None) -> int:
    """A yuan value as a TOML/JSON/CSV reader gives it (str, int, float, ``Decimal``) -> int fen.

    Raises
    ------
    ValueError
        A bool, another type, a malformed or non-finite value, too many decimals, too large.
    """
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not an amount in yuan")
    if isinstance(v, int):
        return _decimal_to_fen(Decimal(v), v, max_decimals)
    if isinstance(v, float):
        return yuan_float_to_fen(v, max_decimals=max_decimals)
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise ValueError(f"{v!r} is not a finite amount")
        return _decimal_to_fen(v, v, max_decimals)
    if isinstance(v, str):
        return yuan_text_to_fen(v, max_decimals=max_decimals)
    raise ValueError(f"{v!r} is not an amount in yuan")


def fen_to_decimal(fen, valid=None) -> pa.Array:
    """int64 fen as exact ``decimal128(18, 2)`` yuan (the decimal's unscaled value *is* the fen).

    ``fen``: a numpy integer array, or an Arrow integer array whose nulls stay null; ``valid``: a
    bool mask (False -> null) for a numpy input.
    """
    if isinstance(fen, (pa.Array, pa.ChunkedArray)):
        if isinstance(fen, pa.ChunkedArray):
            fen = fen.combine_chunks()
        if fen.null_count:
            valid = np.asarray(pc.is_valid(fen), bool)
            fen = pc.fill_null(fen, 0)
        fen = fen.to_numpy(zero_copy_only=False)
    fen = np.ascontiguousarray(fen, np.int64)
    n = len(fen)
    words = np.empty((n, 2), np.int64)
    words[:, 0] = fen
    words[:, 1] = fen >> 63  # two's-complement sign extension to 128 bits
    bitmap, nulls = None, 0
    if valid is not None and not np.all(valid):
        bitmap = pa.py_buffer(np.packbits(np.asarray(valid, bool), bitorder="little"))
        nulls = int(n - np.count_nonzero(valid))
    return pa.Array.from_buffers(pa.decimal128(18, 2), n, [bitmap, pa.py_buffer(words)], null_count=nulls)


def fen_to_yuan_text(fen: int, *, trim: bool = False) -> str:
    """Int fen -> yuan text: ``1230`` -> ``"12.30"`` (``trim``: ``"12.3"``; ``1200`` -> ``"12"``).

    The inverse of :func:`yuan_text_to_fen` (``yuan_text_to_fen(fen_to_yuan_text(f)) == f``).
    """
    if isinstance(fen, (bool, float)) or not isinstance(fen, (int, np.integer)):
        raise TypeError(f"fen must be an integer, got {fen!r}")
    fen = int(fen)
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    if not trim:
        return f"{sign}{whole}.{cents:02d}"
    if cents == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{cents:02d}".rstrip("0")


def format_yuan(fen: int, *, grouping: bool = True) -> str:
    """Int fen -> yuan for people: ``123456789`` -> ``"1,234,567.89"`` (exact, no float)."""
    fen = int(fen)
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}" if grouping else f"{sign}{whole}.{cents:02d}"


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
