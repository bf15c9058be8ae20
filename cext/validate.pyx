# cython: language_level=3
"""Kernels of the case validator.

``SeenSet`` is an exact set of byte strings that survives across record batches, so that the
second and later occurrences of a ``case_id`` in a whole run are found in one pass, in O(total
bytes), without a Python loop per row. Strings arrive as Arrow ``large_string`` buffers (data
bytes, int64 offsets, one validity byte per row).
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy

from _checks cimport check_len, offsets_error, offsets_ok


cdef extern from *:
    """
    #define DIP_PREFETCH(p) __builtin_prefetch((const void*)(p))
    """
    void DIP_PREFETCH(const void* p) noexcept nogil

cdef enum:
    PREFETCH_AHEAD = 16

cdef extern from *:
    """
    #include <string.h>
    /* 8 bytes at a time (unaligned loads through memcpy), each word mixed by a multiply and a
       shift, then a splitmix64 finaliser so the low bits index the table well. */
    static inline uint64_t dip_hash_bytes(const uint8_t* p, int64_t n) {
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
    uint64_t _hash "dip_hash_bytes" (const uint8_t* p, int64_t n) noexcept nogil


cdef class SeenSet:
    """Set of the strings seen so far in a run (open addressing, linear probing).

    Keys are copied into an arena, so the caller's buffers may be freed after each call. A
    slot holds ``(hash >> 32) << 32 | (key number + 1)`` (0 = empty), so a probe touches only
    the slot table unless the 32-bit fingerprints agree. Memory is about (key bytes + 24) per
    distinct key; :meth:`reserve` sizes the tables up front when the run's size is known.
    """
    cdef object _arena      # uint8: key bytes, back to back
    cdef object _starts     # int64: start of key k in the arena (k + 1 entries used)
    cdef object _slots      # uint64: fingerprint << 32 | (key number + 1), 0 empty; power-of-two size
    cdef int64_t _count
    cdef int64_t _nbytes

    def __cinit__(self):
        self._arena = np.zeros(1 << 16, dtype=np.uint8)
        self._starts = np.zeros(1 << 12, dtype=np.int64)
        self._slots = np.zeros(1 << 13, dtype=np.uint64)
        self._count = 0
        self._nbytes = 0

    def __len__(self):
        return self._count

    def reserve(self, int64_t more_keys, int64_t more_bytes):
        """Make room for ``more_keys`` further keys of ``more_bytes`` bytes in all (an upper bound)."""
        self._reserve(max(more_keys, 0), max(more_bytes, 0))

    cdef void _reserve(self, int64_t more_keys, int64_t more_bytes) except *:
        cdef int64_t need_keys = self._count + more_keys
        cdef int64_t cap, target
        if need_keys > 0x3FFFFFFF:
            raise OverflowError("SeenSet holds at most 2**30 distinct keys")
        if self._nbytes + more_bytes > self._arena.shape[0]:
            target = self._nbytes + more_bytes
            if self._count > 0:
                # room for every key reserved so far at the mean length seen: one copy instead
                # of one per doubling (pages not yet written cost no memory)
                target = max(target, min((self._nbytes // self._count + 1) * (self._starts.shape[0] - 1),
                                         4 * target))
            cap = self._arena.shape[0]
            while cap < target:
                cap *= 2
            grown = np.empty(cap, dtype=np.uint8)
            grown[: self._nbytes] = self._arena[: self._nbytes]
            self._arena = grown
        if need_keys + 1 > self._starts.shape[0]:
            cap = self._starts.shape[0]
            while cap < need_keys + 1:
                cap *= 2
            starts = np.empty(cap, dtype=np.int64)
            starts[: self._count + 1] = self._starts[: self._count + 1]
            self._starts = starts
        if 2 * need_keys > self._slots.shape[0]:
            cap = self._slots.shape[0]
            while 2 * need_keys > cap:
                cap *= 2
            self._slots = np.zeros(cap, dtype=np.uint64)
            self._rehash()

    cdef void _rehash(self) except *:
        # hashes are recomputed from the arena: rare (reserve sizes the table up front), and
        # not storing them saves 8 bytes per key
        cdef uint64_t[::1] slots = self._slots
        cdef uint8_t[::1] arena = self._arena
        cdef int64_t[::1] starts = self._starts
        cdef uint64_t mask = slots.shape[0] - 1
        cdef uint64_t s, h
        cdef int64_t k
        with nogil:
            for k in range(self._count):
                h = _hash(&arena[0] + starts[k], starts[k + 1] - starts[k])
                s = h & mask
                while slots[s] != 0:
                    s = (s + 1) & mask
                slots[s] = (h & 0xFFFFFFFF00000000ULL) | <uint64_t>(k + 1)

    def mark(self, const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
             const uint8_t[::1] valid not None, uint8_t[::1] out not None):
        """Mark rows whose string was seen before (in an earlier row or an earlier call).

        Parameters
        ----------
        data : uint8[:]
            String bytes (Arrow ``large_string`` data buffer).
        offsets : int64[:]
            ``n + 1`` offsets into ``data``.
        valid : uint8[:]
            1 where the row is not null; null rows are never marked and not remembered.
        out : uint8[:]
            Written: 1 where the row repeats an earlier string, else 0.

        Raises
        ------
        ValueError
            ``valid`` not as long as ``out``, ``offsets`` not ``n + 1`` long, or ``offsets``
            decreasing or pointing outside ``data`` (checked before anything is remembered).
        """
        cdef Py_ssize_t n = out.shape[0], r
        check_len("valid", valid.shape[0], n, "one per row, as out")
        check_len("offsets", offsets.shape[0], n + 1, "n + 1 offsets, n = len(out)")
        if n == 0:
            return
        cdef uint64_t h, s, v, fp
        cdef int64_t a, b, length, k, nd = data.shape[0]
        cdef bint found, ok = True
        cdef const uint8_t* base = &data[0] if data.shape[0] > 0 else NULL
        row_hash_arr = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] row_hash = row_hash_arr
        if offsets[0] < 0:
            raise offsets_error("offsets", offsets, 0, nd, "bytes in data")
        with nogil:
            # hashes first, so that the slot of a row PREFETCH_AHEAD rows on can be prefetched;
            # the offsets are checked on the way (the arena is sized from them)
            for r in range(n):
                a = offsets[r]
                b = offsets[r + 1]
                if b < a or b > nd:
                    ok = False
                    break
                row_hash[r] = _hash(base + a, b - a)
        if not ok:
            raise offsets_error("offsets", offsets, 0, nd, "bytes in data")
        self._reserve(n, offsets[n] - offsets[0])
        cdef uint8_t[::1] arena = self._arena
        cdef int64_t[::1] starts = self._starts
        cdef uint64_t[::1] slots = self._slots
        cdef uint64_t mask = slots.shape[0] - 1
        with nogil:
            for r in range(n):
                out[r] = 0
                if r + PREFETCH_AHEAD < n:
                    DIP_PREFETCH(&slots[row_hash[r + PREFETCH_AHEAD] & mask])
                if valid[r] == 0:
                    continue
                a = offsets[r]
                length = offsets[r + 1] - a
                h = row_hash[r]
                fp = h & 0xFFFFFFFF00000000ULL
                s = h & mask
                found = False
                while True:
                    v = slots[s]
                    if v == 0:
                        break
                    if (v & 0xFFFFFFFF00000000ULL) == fp:
                        k = <int64_t>(v & 0xFFFFFFFFULL) - 1
                        if (starts[k + 1] - starts[k] == length
                                and (length == 0 or memcmp(&arena[starts[k]], base + a, length) == 0)):
                            found = True
                            break
                    s = (s + 1) & mask
                if found:
                    out[r] = 1
                    continue
                k = self._count
                if length > 0:
                    memcpy(&arena[self._nbytes], base + a, length)
                self._nbytes += length
                starts[k + 1] = self._nbytes
                slots[s] = fp | <uint64_t>(k + 1)
                self._count += 1


cdef inline bint _trimmable(uint8_t c) noexcept nogil:
    # 9-13 and 28-32 are the ASCII characters utf8_trim_whitespace strips; a non-ASCII byte
    # may start or end Unicode whitespace (U+0085, U+3000, ...): the slow path decides
    return (9 <= c <= 13) or (28 <= c <= 32) or c >= 0x80


def needs_trim(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
               const uint8_t[::1] valid not None):
    """True if some valid string is empty or starts or ends with a character that Arrow's
    ``utf8_trim_whitespace`` may strip (ASCII 9-13, 28-32, or any non-ASCII byte), i.e. when
    trimming and empty -> null could change the array.

    Raises ``ValueError`` when ``offsets`` is not ``len(valid) + 1`` long or a valid row's offsets
    (up to the first hit) are not an increasing range inside ``data``."""
    check_len("offsets", offsets.shape[0], valid.shape[0] + 1, "n + 1 offsets, n = len(valid)")
    cdef Py_ssize_t n = valid.shape[0], r
    cdef int64_t a, b, nd = data.shape[0]
    cdef bint hit = False, bad = False
    with nogil:
        for r in range(n):
            if valid[r] == 0:
                continue
            a = offsets[r]
            b = offsets[r + 1]
            if a < 0 or b < a or b > nd:
                bad = True
                break
            if b == a:
                hit = True
                break
            if _trimmable(data[a]) or _trimmable(data[b - 1]):
                hit = True
                break
    if bad:
        raise offsets_error("offsets", offsets, 0, nd, "bytes in data")
    return hit


cdef inline int _sep_len(const uint8_t* p, int64_t left) noexcept nogil:
    """Length in bytes of a list separator at p (``|``, ``,``, full-width ``，`` or ``｜``), else 0."""
    if p[0] == 124 or p[0] == 44:  # '|' ','
        return 1
    if left >= 3 and p[0] == 0xEF:
        if p[1] == 0xBC and p[2] == 0x8C:  # U+FF0C
            return 3
        if p[1] == 0xBD and p[2] == 0x9C:  # U+FF5C
            return 3
    return 0


cdef inline bint _blank(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef int64_t _split_pass(const uint8_t* data, const int64_t[::1] offsets, const uint8_t[::1] valid,
                         uint8_t* out_data, int64_t* out_offsets, int32_t* counts) noexcept nogil:
    """Split every row; with out_data NULL only count. Returns the number of elements."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, r
    cdef int64_t i, stop, a, b, k = 0, pos = 0
    cdef int s
    for r in range(n):
        if counts != NULL:
            counts[r] = 0
        if valid[r] == 0:
            continue
        i = offsets[r]
        stop = offsets[r + 1]
        a = i
        while True:
            s = _sep_len(data + i, stop - i) if i < stop else -1
            if s != 0:
                # element [a, i): trim blanks, keep when not empty
                b = i
                while a < b and _blank(data[a]):
                    a += 1
                while b > a and _blank(data[b - 1]):
                    b -= 1
                if b > a:
                    if out_data != NULL:
                        memcpy(out_data + pos, data + a, b - a)
                        pos += b - a
                        out_offsets[k + 1] = pos
                        counts[r] += 1
                    k += 1
                if s < 0:
                    break
                i += s
                a = i
            else:
                i += 1
    return k


def split_codes(const uint8_t[::1] data not None, const int64_t[::1] offsets not None,
                const uint8_t[::1] valid not None):
    """Split text cells on ``|``, ``,``, ``，`` or ``｜`` into trimmed, non-empty elements.

    Parameters
    ----------
    data, offsets, valid
        An Arrow ``large_string`` array as raw buffers (``n + 1`` offsets; 1 byte per row).

    Returns
    -------
    elem_data : uint8 ndarray
        The element bytes, back to back.
    elem_offsets : int64 ndarray
        ``n_elements + 1`` offsets into ``elem_data``.
    counts : int32 ndarray
        Elements per row (0 for null rows).

    Raises
    ------
    ValueError
        ``offsets`` not ``len(valid) + 1`` long, decreasing, or pointing outside ``data``.
    """
    check_len("offsets", offsets.shape[0], valid.shape[0] + 1, "n + 1 offsets, n = len(valid)")
    cdef Py_ssize_t n = valid.shape[0]
    cdef bint ok
    with nogil:
        ok = offsets_ok(offsets, data.shape[0])
    if not ok:
        raise offsets_error("offsets", offsets, 0, data.shape[0], "bytes in data")
    cdef int64_t total, nbytes = offsets[n] - offsets[0] if n > 0 else 0
    cdef const uint8_t* base = &data[0] if data.shape[0] > 0 else NULL
    counts_arr = np.zeros(max(n, 0), dtype=np.int32)
    cdef int32_t[::1] counts = counts_arr
    with nogil:
        total = _split_pass(base, offsets, valid, NULL, NULL, NULL)
    elem_data_arr = np.empty(max(nbytes, 1), dtype=np.uint8)
    elem_offsets_arr = np.zeros(total + 1, dtype=np.int64)
    cdef uint8_t[::1] elem_data = elem_data_arr
    cdef int64_t[::1] elem_offsets = elem_offsets_arr
    if n > 0:
        with nogil:
            _split_pass(base, offsets, valid, &elem_data[0], &elem_offsets[0], &counts[0])
    return elem_data_arr[: elem_offsets_arr[total]], elem_offsets_arr, counts_arr
