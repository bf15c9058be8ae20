# cython: language_level=3
"""Annual-cap accumulation for patient-side benefits (dip-rules §8.1).

The caller sorts the admissions of the year by patient and discharge order; this kernel walks
that order once, carrying each patient's fund benefit used so far, and writes the capped
benefit of every admission into caller-allocated outputs.
"""
from libc.stdint cimport int8_t, int64_t

from _checks cimport check_len, range_error


def accumulate_cap(const int64_t[::1] order not None, const int64_t[::1] patient not None,
                   const int64_t[::1] raw_fen not None, const int64_t[::1] cap_fen not None,
                   int64_t[::1] out_fen not None, int8_t[::1] out_reached not None):
    """Cap each admission's fund benefit by what the patient's annual cap has left.

    Parameters
    ----------
    order : int64[:]
        Row numbers of the admissions to walk, sorted by patient-year, then discharge order.
    patient : int64[:]
        Patient-year code per row (indexed by row number); a change along ``order`` starts a new
        patient with nothing used.
    raw_fen : int64[:]
        Fund benefit per row before the cap, fen (>= 0).
    cap_fen : int64[:]
        Annual cap per row, fen (>= 0); the row's own rule's cap.
    out_fen : int64[:]
        Written at each row in ``order``: ``min(raw, max(cap - used, 0))``, fen.
    out_reached : int8[:]
        Written at each row in ``order``: 1 when the patient's benefit used so far, this row
        included, has reached this row's cap; else 0. Other rows are left untouched.

    Raises
    ------
    ValueError
        ``patient``, ``raw_fen``, ``cap_fen``, ``out_fen``, ``out_reached`` of different lengths,
        or a row number in ``order`` outside ``[0, len(patient))`` (the outputs are then partly
        written).
    """
    cdef Py_ssize_t n = order.shape[0], m = patient.shape[0], j
    cdef int64_t i, used = 0, avail, f, prev = -1
    cdef bint first = True, bad = False
    for name, a in (("raw_fen", raw_fen), ("cap_fen", cap_fen), ("out_fen", out_fen), ("out_reached", out_reached)):
        check_len(name, len(a), m, "one per row, as patient")
    with nogil:
        for j in range(n):
            i = order[j]
            if i < 0 or i >= m:
                bad = True
                break
            if first or patient[i] != prev:
                used = 0
                prev = patient[i]
                first = False
            avail = cap_fen[i] - used
            if avail < 0:
                avail = 0
            f = raw_fen[i]
            if f > avail:
                f = avail
            out_fen[i] = f
            used += f
            out_reached[i] = 1 if used >= cap_fen[i] else 0
    if bad:
        raise range_error("order", order, 0, m - 1)
