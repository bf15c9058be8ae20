# cython: language_level=3
"""Exact yuan -> fen conversion of decimal text (Arrow string buffers).

Kernels read an Arrow ``large_string`` array as its raw buffers (data bytes, int64 offsets,
validity as one byte per row) and write into caller-allocated outputs.
"""
from libc.stdint cimport int8_t, int64_t, uint8_t

from _checks cimport check_len, offsets_error

cdef enum:
    ST_OK = 0
    ST_NULL = 1
    ST_MALFORMED = 2
    ST_NEGATIVE = 3
    ST_TOO_LARGE = 4

# 10**15 fen = 10 trillion yuan: no single admission costs that; beyond it int64 maths is at risk.
cdef int64_t FEN_LIMIT = 1000000000000000


cdef inline bint _is_space(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef inline int8_t _parse_one(const uint8_t[::1] data, int64_t start, int64_t stop,
                              int64_t* result) noexcept nogil:
    """Parse data[start:stop] as decimal yuan; store fen rounded half-up in *result."""
    cdef int64_t i = start, j
    cdef int64_t end = stop
    cdef bint negative = False
    cdef int64_t mant_start, mant_end, dot = -1
    cdef int64_t n_digits = 0, n_int = 0
    cdef int64_t exp = 0, exp_sign = 1, p, k = 0
    cdef int64_t acc = 0, last_p = 0
    cdef int d, round_digit = 0
    cdef bint any_digit_used = False
    cdef uint8_t c

    while i < end and _is_space(data[i]):
        i += 1
    while end > i and _is_space(data[end - 1]):
        end -= 1
    if i == end:
        return ST_NULL
    if data[i] == 45:  # '-'
        negative = True
        i += 1
    elif data[i] == 43:  # '+'
        i += 1
    mant_start = i
    while i < end:
        c = data[i]
        if 48 <= c <= 57:
            n_digits += 1
            if dot < 0:
                n_int += 1
        elif c == 46:  # '.'
            if dot >= 0:
                return ST_MALFORMED
            dot = i
        elif c == 44 and dot < 0:  # ',' thousands separator before the point
            pass
        else:
            break
        i += 1
    mant_end = i
    if n_digits == 0:
        return ST_MALFORMED
    if i < end:
        if data[i] != 101 and data[i] != 69:  # 'e' / 'E'
            return ST_MALFORMED
        i += 1
        if i < end and (data[i] == 45 or data[i] == 43):
            if data[i] == 45:
                exp_sign = -1
            i += 1
        if i == end:
            return ST_MALFORMED
        while i < end:
            c = data[i]
            if not (48 <= c <= 57):
                return ST_MALFORMED
            exp = exp * 10 + (c - 48)
            if exp > 400:
                return ST_TOO_LARGE if exp_sign > 0 else ST_MALFORMED
            i += 1
        exp *= exp_sign

    # Each mantissa digit k has decimal position p = n_int - 1 - k + exp (0 = yuan, -2 = fen).
    for j in range(mant_start, mant_end):
        c = data[j]
        if not (48 <= c <= 57):
            continue
        d = c - 48
        p = n_int - 1 - k + exp
        k += 1
        if p >= -2:
            acc = acc * 10 + d
            last_p = p
            any_digit_used = True
            if acc > FEN_LIMIT:
                return ST_TOO_LARGE
        elif p == -3:
            round_digit = d
            break
        else:
            break
    if any_digit_used:
        while last_p > -2:
            acc *= 10
            last_p -= 1
            if acc > FEN_LIMIT:
                return ST_TOO_LARGE
    if round_digit >= 5:
        acc += 1
    if negative and acc != 0:
        result[0] = -acc
        return ST_NEGATIVE
    result[0] = acc
    return ST_OK


def parse_fen(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
              const uint8_t[::1] valid not None, int64_t[::1] out not None, int8_t[::1] status not None):
    """Parse decimal yuan strings into integer fen, rounding half up at the fen.

    Parameters
    ----------
    data : uint8[:]
        The string bytes (an Arrow ``large_string`` data buffer, sliced to the array).
    offsets : int64[:]
        ``n + 1`` offsets into ``data``.
    valid : uint8[:]
        1 where the row is not null.
    out : int64[:]
        Fen per row (written; 0 where the status is not OK or NEGATIVE).
    status : int8[:]
        0 ok, 1 null or empty, 2 malformed, 3 negative (``out`` holds the value), 4 too large.

    Raises
    ------
    ValueError
        ``valid``, ``status`` not as long as ``out``, ``offsets`` not ``n + 1`` long, or a valid
        row's ``offsets[r], offsets[r + 1]`` not an increasing range inside ``data``.
    """
    cdef Py_ssize_t n = out.shape[0], r
    cdef int64_t value, a, b, nd = data.shape[0]
    cdef bint bad = False
    check_len("valid", valid.shape[0], n, "one per row, as out")
    check_len("status", status.shape[0], n, "one per row, as out")
    check_len("offsets", offsets.shape[0], n + 1, "n + 1 offsets, n = len(out)")
    with nogil:
        for r in range(n):
            value = 0
            if valid[r] == 0:
                status[r] = ST_NULL
            else:
                a = offsets[r]
                b = offsets[r + 1]
                if a < 0 or b < a or b > nd:
                    bad = True
                    break
                status[r] = _parse_one(data, a, b, &value)
            out[r] = value if (status[r] == ST_OK or status[r] == ST_NEGATIVE) else 0
    if bad:
        raise offsets_error("offsets", offsets, 0, nd, "bytes in data")


def decimal_fen(const int64_t[::1] words not None, Py_ssize_t offset, int64_t mult,
                const uint8_t[::1] valid not None, int64_t[::1] out not None, int8_t[::1] status not None):
    """Fen of an Arrow ``decimal128`` array of scale 0-2 and precision <= 18, from its unscaled integers.

    Parameters
    ----------
    words : int64[:]
        The array's value buffer as int64 words (two per value, little-endian: the low word of
        a value of precision <= 18 is the value itself).
    offset : int
        The array's offset (in values).
    mult : int
        ``10 ** (2 - scale)``: fen per unscaled unit.
    valid : uint8[:]
        1 where the value is not null (one byte per row).
    out : int64[:]
        Written: fen (0 where null or too large).
    status : int8[:]
        Written: OK, NULL, NEGATIVE or TOO_LARGE (beyond 10**15 fen), as :func:`parse_fen`.

    Raises
    ------
    ValueError
        ``valid``, ``status`` not as long as ``out``, ``mult`` below 1, a negative ``offset`` or
        ``words`` too short for ``offset + len(out)`` values.
    """
    cdef Py_ssize_t n = out.shape[0], i
    cdef int64_t v, limit
    check_len("valid", valid.shape[0], n, "one per row, as out")
    check_len("status", status.shape[0], n, "one per row, as out")
    if mult < 1:
        raise ValueError(f"mult = {mult}, expected >= 1 (10 ** (2 - scale), scale 0-2)")
    if offset < 0 or (n > 0 and (offset + n) * 2 > words.shape[0]):
        raise ValueError(f"words has {words.shape[0]} int64 words, too few for values {offset} to "
                         f"{offset + n - 1} (two words per value; offset = {offset})")
    limit = FEN_LIMIT // mult
    with nogil:
        for i in range(n):
            if valid[i] == 0:
                out[i] = 0
                status[i] = ST_NULL
                continue
            v = words[2 * (offset + i)]
            if v > limit or v < -limit:
                out[i] = 0
                status[i] = ST_TOO_LARGE
                continue
            out[i] = v * mult
            status[i] = ST_NEGATIVE if v < 0 else ST_OK
