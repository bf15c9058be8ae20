# cython: language_level=3
"""Declarations of :mod:`dipengine._libs.grouping` (for ``cimport``; see ``grouping.pyx``)."""
from libc.stdint cimport int8_t, int32_t, int64_t


cdef class CompiledRules:
    """A rule set's flat arrays as the grouping kernel walks them: checked once, then immutable.

    Built once per rule set (``dipengine.grouper.kernel_rules`` caches it on ``RuleSet.compiled``);
    its constructor copies and checks every array (lengths, CSR offsets, group indices), so the
    per-case loop needs no check on rule-side indices.
    """
    cdef const int64_t[::1] sub_off      # [n_sub + 1] -> sub_cand
    cdef const int32_t[::1] sub_cand     # group indices
    cdef const int32_t[::1] sub_cons     # [n_sub]: the candidate without an expression (-1 none, -2 several)
    cdef const int8_t[::1] g_type        # [n_groups]: match path 0-3
    cdef const int8_t[::1] g_rank        # [n_groups]: priority rank
    cdef const int64_t[::1] g_avg_fen    # [n_groups]
    cdef const int64_t[::1] g_term_off   # [n_groups + 1] -> term_off
    cdef const int64_t[::1] term_off     # [n_terms + 1] -> term_codes
    cdef const int32_t[::1] term_codes   # procedure ids
    cdef const int32_t[::1] comp_lookup  # [n_cat * 4]: (category, class) -> group (-1 none)
    cdef const int64_t[::1] aux_off      # [n_groups + 1] -> aux_sub / aux_coef
    cdef const int8_t[::1] aux_sub       # subtype index: 0-5 fixed, 6 + k age band k
    cdef const double[::1] aux_coef
    cdef const int32_t[::1] band_lo      # [n_bands] age-key limits
    cdef const int32_t[::1] band_hi
    cdef const int8_t[::1] comp_rank     # [4]: priority rank of a comprehensive group per class
    cdef const int8_t[::1] tie_order     # tie-breaks in order: 0 main procedure, 1 terms, 2 matched, 3 cost
    cdef const int32_t[::1] proc_parent  # [n_proc] id of the longest prefix code (-1); empty: whole codes
    cdef readonly int32_t n_groups, n_sub, n_cat, n_bands
    cdef readonly int32_t blank          # blank group index, -1 none
    cdef readonly int32_t cci1, cci2, cci3
    cdef readonly int32_t match_all, sev_los, death_mode, cons_max_class, cons_max_level
    cdef readonly int32_t main_any, n_tie, n_proc
    cdef readonly bint prefix            # proc_expr codes match as prefixes (proc_parent given)
    cdef object _arrays                  # the constructor's arguments (for pickling and as_dict)
    cdef bint _ready                     # set when __init__ has checked everything
