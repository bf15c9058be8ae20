# cython: language_level=3
"""Case points and exact grouped sums (dip-rules §6.1, §6.4; contract §8.5).

Kernels read numpy views (``const`` for read-only Arrow buffers), write into caller-allocated
``out`` arrays and run without the GIL. The pure-Python twin is
:func:`dipengine.scoring.points_one`.
"""
from libc.math cimport floor, isnan, NAN
from libc.stdint cimport int8_t, int32_t, int64_t

from _checks cimport check_len, range_error

# threshold arrays are indexed by hospital level 1-3 (index 0 unused)
cdef enum:
    N_LEVEL_SLOTS = 4

# kind of a case: 0 carries no points (rejected/excluded), 1 grouped, 2 blank group
# deviation: -1 none, 0 normal, 1 low, 2 high, 3 extreme
# high_formula: 0 ratio_minus_1, 1 ratio_minus_2_plus_coef
# extreme_rule: 0 high_formula, 1 review_normal_pay


def score_cases(
    const int8_t[::1] kind not None,
    const double[::1] base_score not None,
    const double[::1] aux_coef not None,
    const double[::1] level_coef not None,
    const int64_t[::1] total_cost_fen not None,
    const int64_t[::1] ref_fen not None,
    const int8_t[::1] level not None,
    const double[::1] low_ratio not None,
    const double[::1] high_ratio not None,
    const double[::1] extreme_ratio not None,
    int high_formula,
    bint apply_coef_to_outliers,
    double blank_factor,
    int extreme_rule,
    bint low_inclusive,
    bint high_inclusive,
    double[::1] ratio_out not None,
    int8_t[::1] deviation_out not None,
    int64_t[::1] points_e4_out not None,
):
    """Deviation ratio, class and case points (int64, 1/10,000 point, half up) per case.

    ``low_ratio``/``high_ratio``/``extreme_ratio`` are indexed by hospital level (length 4,
    index 0 unused). ``ref_fen`` <= 0 means no reference cost: ratio NaN, class normal. ``kind``:
    0 no points, 1 grouped, 2 blank group; ``level`` outside 1-3 counts as 3. Classes: low when
    ``r < low`` (``r <= low`` with ``low_inclusive``), else extreme when ``r > extreme``, else high
    when ``r > high`` (``r >= high`` with ``high_inclusive``), else normal.

    Raises ``ValueError`` when a per-case array's length differs from ``kind``'s, a threshold
    array does not have 4 entries, or a ``kind`` is not 0, 1 or 2.
    """
    cdef Py_ssize_t i, n = kind.shape[0]
    cdef double r, pts, coef, out_coef
    cdef int8_t dev, lvl, kd
    cdef bint bad = False
    for name, m in (("base_score", base_score), ("aux_coef", aux_coef), ("level_coef", level_coef),
                    ("total_cost_fen", total_cost_fen), ("ref_fen", ref_fen), ("level", level),
                    ("ratio_out", ratio_out), ("deviation_out", deviation_out), ("points_e4_out", points_e4_out)):
        check_len(name, len(m), n, "one per case, as kind")
    for name, m in (("low_ratio", low_ratio), ("high_ratio", high_ratio), ("extreme_ratio", extreme_ratio)):
        check_len(name, len(m), N_LEVEL_SLOTS, "indexed by hospital level 1-3, index 0 unused")
    with nogil:
        for i in range(n):
            kd = kind[i]
            if kd < 0 or kd > 2:
                bad = True
                break
            if kd == 0:
                ratio_out[i] = NAN
                deviation_out[i] = -1
                points_e4_out[i] = 0
                continue
            lvl = level[i]
            if lvl < 1 or lvl > 3:
                lvl = 3
            if ref_fen[i] > 0:
                r = <double>total_cost_fen[i] / <double>ref_fen[i]
            else:
                r = NAN
            dev = 0
            if not isnan(r):
                if r < low_ratio[lvl] or (low_inclusive and r == low_ratio[lvl]):
                    dev = 1
                elif r > extreme_ratio[lvl]:
                    dev = 3
                elif r > high_ratio[lvl] or (high_inclusive and r == high_ratio[lvl]):
                    dev = 2
            coef = level_coef[i]
            out_coef = coef if apply_coef_to_outliers else 1.0
            if kd == 2:
                pts = base_score[i] * blank_factor * (1.0 if isnan(r) else r)
            elif dev == 1:
                pts = base_score[i] * r * out_coef
            elif dev == 2 or (dev == 3 and extreme_rule == 0):
                if high_formula == 0:
                    pts = base_score[i] * (r - 1.0) * out_coef
                else:
                    pts = base_score[i] * (r - 2.0 + coef)
            else:
                pts = base_score[i] * aux_coef[i] * coef
            ratio_out[i] = r
            deviation_out[i] = dev
            points_e4_out[i] = <int64_t>floor(pts * 10000.0 + 0.5)
    if bad:
        raise range_error("kind", kind, 0, 2)


def sum_by_label(const int32_t[::1] labels not None, const int64_t[::1] values not None,
                 int64_t[::1] out not None):
    """``out[labels[i]] += values[i]`` exactly in int64; rows with ``labels[i] == -1`` are skipped.

    Raises ``ValueError`` when ``values`` is not as long as ``labels`` or a label is outside
    ``[-1, len(out))`` (``out`` is then partly summed).
    """
    cdef Py_ssize_t i, n = labels.shape[0], n_out = out.shape[0]
    cdef int32_t lab
    cdef bint bad = False
    check_len("values", values.shape[0], n, "one per row, as labels")
    with nogil:
        for i in range(n):
            lab = labels[i]
            if lab >= 0 and lab < n_out:
                out[lab] += values[i]
            elif lab != -1:
                bad = True
                break
    if bad:
        raise range_error("labels", labels, -1, n_out - 1)


def count_by_label(const int32_t[::1] labels not None, int64_t[::1] out not None):
    """``out[labels[i]] += 1``; rows with ``labels[i] == -1`` are skipped.

    Raises ``ValueError`` when a label is outside ``[-1, len(out))`` (``out`` is then partly
    counted).
    """
    cdef Py_ssize_t i, n = labels.shape[0], n_out = out.shape[0]
    cdef int32_t lab
    cdef bint bad = False
    with nogil:
        for i in range(n):
            lab = labels[i]
            if lab >= 0 and lab < n_out:
                out[lab] += 1
            elif lab != -1:
                bad = True
                break
    if bad:
        raise range_error("labels", labels, -1, n_out - 1)
