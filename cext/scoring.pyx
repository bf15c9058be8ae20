# cython: language_level=3
"""Case points and exact grouped sums (dip-rules §6.1, §6.4; contract §8.5).

Kernels read numpy views (``const`` for read-only Arrow buffers), write into caller-allocated
``out`` arrays and run without the GIL. The pure-Python twin is
:func:`dipengine.scoring.points_one`.
"""
from libc.math cimport floor, isnan, NAN
from libc.stdint cimport int8_t, int32_t, int64_t

# kind of a case: 0 carries no points (rejected/excluded), 1 grouped, 2 blank group
# deviation: -1 none, 0 normal, 1 low, 2 high, 3 extreme
# high_formula: 0 ratio_minus_1, 1 ratio_minus_2_plus_coef
# extreme_rule: 0 high_formula, 1 review_normal_pay


def score_cases(
    const int8_t[::1] kind,
    const double[::1] base_score,
    const double[::1] aux_coef,
    const double[::1] level_coef,
    const int64_t[::1] total_cost_fen,
    const int64_t[::1] ref_fen,
    const int8_t[::1] level,
    const double[::1] low_ratio,
    const double[::1] high_ratio,
    const double[::1] extreme_ratio,
    int high_formula,
    bint apply_coef_to_outliers,
    double blank_factor,
    int extreme_rule,
    bint low_inclusive,
    double[::1] ratio_out,
    int8_t[::1] deviation_out,
    int64_t[::1] points_e4_out,
):
    """Deviation ratio, class and case points (int64, 1/10,000 point, half up) per case.

    ``low_ratio``/``high_ratio``/``extreme_ratio`` are indexed by hospital level (length 4,
    index 0 unused). ``ref_fen`` <= 0 means no reference cost: ratio NaN, class normal.
    """
    cdef Py_ssize_t i, n = kind.shape[0]
    cdef double r, pts, coef, out_coef
    cdef int8_t dev, lvl
    with nogil:
        for i in range(n):
            if kind[i] == 0:
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
                elif r > high_ratio[lvl]:
                    dev = 2
            coef = level_coef[i]
            out_coef = coef if apply_coef_to_outliers else 1.0
            if kind[i] == 2:
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


def sum_by_label(const int32_t[::1] labels, const int64_t[::1] values, int64_t[::1] out):
    """``out[labels[i]] += values[i]`` exactly in int64; rows with ``labels[i] < 0`` are skipped."""
    cdef Py_ssize_t i, n = labels.shape[0]
    cdef int32_t lab
    with nogil:
        for i in range(n):
            lab = labels[i]
            if lab >= 0:
                out[lab] += values[i]


def count_by_label(const int32_t[::1] labels, int64_t[::1] out):
    """``out[labels[i]] += 1``; rows with ``labels[i] < 0`` are skipped."""
    cdef Py_ssize_t i, n = labels.shape[0]
    cdef int32_t lab
    with nogil:
        for i in range(n):
            lab = labels[i]
            if lab >= 0:
                out[lab] += 1
