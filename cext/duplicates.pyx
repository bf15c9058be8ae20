# cython: language_level=3
"""Kernel of the bounded-memory duplicate pass (``dipengine.duplicates``).

``partition_rows`` spreads the rows of one batch of strings over ``P`` hash partitions, so that
equal strings always land in the same partition and each partition can be checked alone (with a
fresh ``SeenSet``) in a fraction of the memory. Strings arrive as Arrow ``large_string`` buffers
(data bytes, int64 offsets, one validity byte per row), as for ``validate.SeenSet``.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

from _checks cimport check_len, offsets_error, offsets_ok


cdef extern from *:
    """
    #include <string.h>
    /* The byte hash of validate.pyx (dip_hash_bytes), under its own name. */
    static inline uint64_t dip_dup_hash_bytes(const uint8_t* p, int64_t n) {
        uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, w;
        while (n >= 8) {
            memcpy(&w, p, 8);
            h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
            h ^= h >> 29;
            p += 8;
            n -= 8;
        }
        if (n > 0) {
            w = 0;
            memcpy(&w, p, (size_t)n);
            h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
            h ^= h >> 29;
        }
        h ^= h >> 30;
        h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 27;
        h *= 0x94d049bb133111ebULL;
        h ^= h >> 31;
        return h;
    }
    """
    uint64_t _hash "dip_dup_hash_bytes" (const uint8_t* p, int64_t n) noexcept nogil


cdef enum:
    MAX_PARTITIONS = 1 << 30


def partition_rows(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
                   const uint8_t[::1] valid not None, uint64_t salt,
                   int64_t[::1] order not None, int64_t[::1] starts not None):
    """Group the valid rows of a string batch by hash partition, keeping row order in each.

    The partition of a string depends only on its bytes and ``salt``: equal strings share a
    partition in every call. It is taken from a remix of the hash (by ``salt``), not from the bits
    ``SeenSet`` indexes its slots by, so the strings of one partition still fill a ``SeenSet``
    evenly; a different ``salt`` splits a partition again.

    Parameters
    ----------
    data : uint8[:]
        String bytes (Arrow ``large_string`` data buffer).
    offsets : int64[:]
        ``n + 1`` offsets into ``data``.
    valid : uint8[:]
        ``n`` bytes, non-zero where the row is not null; null rows belong to no partition.
    salt : uint64
        Chooses the hash-to-partition map.
    order : int64[:]
        Written: its first ``k`` entries are the valid rows (0-based, within the batch), those of
        partition 0 first, each partition's rows ascending; the rest is left as it was.
    starts : int64[:]
        ``P + 1`` entries for ``P`` partitions (1 <= P <= 2**30); written: partition ``p`` is
        ``order[starts[p]:starts[p + 1]]``, ``starts[0] == 0``, ``starts[P] == k``.

    Returns
    -------
    int
        ``k``, the number of valid rows.

    Raises
    ------
    ValueError
        ``offsets`` not ``n + 1`` long, ``order`` not ``n`` long, ``starts`` shorter than 2 or
        longer than 2**30 + 1, or ``offsets`` decreasing or pointing outside ``data`` (all
        checked before anything is written).
    """
    cdef Py_ssize_t n = valid.shape[0], r
    check_len("offsets", offsets.shape[0], n + 1, "n + 1 offsets, n = len(valid)")
    check_len("order", order.shape[0], n, "one per row, as valid")
    cdef int64_t n_parts = starts.shape[0] - 1
    if n_parts < 1 or n_parts > MAX_PARTITIONS:
        raise ValueError(f"starts has length {starts.shape[0]}, expected 2 to {MAX_PARTITIONS + 1} "
                         f"(number of partitions + 1)")
    cdef int64_t nd = data.shape[0]
    cdef bint ok
    with nogil:
        ok = offsets_ok(offsets, nd)
    if not ok:
        raise offsets_error("offsets", offsets, 0, nd, "bytes in data")
    part_arr = np.empty(n, dtype=np.int32)
    cursor_arr = np.empty(n_parts, dtype=np.int64)
    cdef int32_t[::1] part = part_arr
    cdef int64_t[::1] cursor = cursor_arr
    cdef const uint8_t* base = &data[0] if nd > 0 else NULL
    cdef uint64_t h, g
    cdef int64_t p, a
    with nogil:
        for p in range(n_parts + 1):
            starts[p] = 0
        for r in range(n):
            if valid[r] == 0:
                part[r] = -1
                continue
            a = offsets[r]
            h = _hash(base + a, offsets[r + 1] - a)
            g = (h ^ salt) * 0x9E3779B97F4A7C15ULL
            g ^= g >> 29
            g *= 0xbf58476d1ce4e5b9ULL
            # top 32 bits scaled to [0, P): no modulo, no bias worth the name
            p = <int64_t>(((g >> 32) * <uint64_t>n_parts) >> 32)
            part[r] = <int32_t>p
            starts[p + 1] += 1
        for p in range(n_parts):
            starts[p + 1] += starts[p]
            cursor[p] = starts[p]
        for r in range(n):
            p = part[r]
            if p >= 0:
                order[cursor[p]] = r
                cursor[p] += 1
    return starts[n_parts]
