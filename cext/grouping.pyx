# cython: language_level=3
"""The DIP grouping kernel (dip-rules §2, §3.1) over integer codes.

Python (:mod:`dipengine.grouper`) maps strings to integer ids and compiles the rule set into
flat arrays (:func:`dipengine.rules.compile_rules`); this kernel walks them per case under
``prange``. Every case writes only its own ``out[i]`` slots, so results do not depend on the
thread count. ``-1`` means none everywhere.
"""
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

cdef enum:
    PATH_CORE = 0
    PATH_BASIC = 1
    PATH_COMPREHENSIVE = 2
    PATH_BLANK = 3
    PATH_EXCLUDED = 4
    PATH_REJECTED = 5

cdef enum:
    R_EXCLUDED_DX = 9
    R_NO_GROUP = 10


cdef inline int8_t _comp_rank(int8_t cls) noexcept nogil:
    """Priority rank of a comprehensive group of class ``cls`` (dip-rules §2.5)."""
    return 11 if cls == 0 else 9 - cls

cdef struct Rules:
    const int64_t* sub_off
    const int32_t* sub_cand
    const int32_t* sub_cons
    const int8_t* g_type
    const int8_t* g_rank
    const int64_t* g_avg_fen
    const int64_t* g_term_off
    const int64_t* term_off
    const int32_t* term_codes
    const int32_t* comp_lookup
    int32_t blank
    const int64_t* aux_off
    const int8_t* aux_sub
    const double* aux_coef
    const int32_t* band_lo
    const int32_t* band_hi
    int32_t n_bands
    int32_t cci1, cci2, cci3
    int32_t match_all
    int32_t sev_los
    int32_t death_mode
    int32_t cons_max_class
    int32_t cons_max_level

cdef struct Cases:
    const int8_t* pre_reason
    const int8_t* excluded
    const int32_t* sub_id
    const int32_t* cat
    const int64_t* p_off
    const int32_t* p_full
    const int32_t* p_base
    const int8_t* p_class
    const int8_t* p_level
    const int8_t* has_main
    const int64_t* total_fen
    const int8_t* dmode
    const int32_t* los
    const int32_t* age_key
    const int64_t* d_off
    const int32_t* d_cci_cat
    const int32_t* d_cci_w
    const int8_t* d_sev

cdef struct Out:
    int32_t* group
    int8_t* path
    int8_t* reason
    int8_t* case_class
    int8_t* aux
    double* coef


cdef inline bint _present(const Cases* C, int64_t j0, int64_t j1, int32_t code) noexcept nogil:
    """Is procedure id ``code`` among the counted procedures [j0, j1) (full or base code)?"""
    cdef int64_t j
    for j in range(j0, j1):
        if C.p_class[j] >= 0 and (C.p_full[j] == code or C.p_base[j] == code):
            return True
    return False


cdef inline bint _better(int rank, int m_main, int nterms, int nmatch, int64_t diff, int32_t g,
                         int b_rank, int b_main, int b_nterms, int b_nmatch, int64_t b_diff,
                         int32_t b) noexcept nogil:
    """Does candidate ``g`` beat the best so far (dip-rules §2.5 order, then row index)?"""
    if rank != b_rank:
        return rank < b_rank
    if m_main != b_main:
        return m_main > b_main
    if nterms != b_nterms:
        return nterms > b_nterms
    if nmatch != b_nmatch:
        return nmatch > b_nmatch
    if diff != b_diff:
        return diff < b_diff
    return g < b


cdef inline void _group_one(const Rules* R, const Cases* C, Out* O, Py_ssize_t i) noexcept nogil:
    cdef int64_t j0, j1, j, k, t, c, c0, c1, d, d2, d0, d1
    cdef int32_t g, best = -1, s, sub, cat, cc, w
    cdef int8_t cls = 0, lvl = 0, rank, best_rank = 127, sev = 0, cci_level = 0
    cdef int best_main = 0, best_nterms = 0, best_nmatch = 0
    cdef int m_main, nterms, nmatch, hit, all_hit, counted = 0
    cdef int64_t diff, best_diff = 0, cci = 0
    cdef bint cons_eq, has_main, ok, q, dup
    cdef double best_coef
    cdef int32_t best_sub, key

    O.group[i] = -1
    O.aux[i] = -1
    O.coef[i] = 1.0
    O.case_class[i] = -1
    if C.pre_reason[i] != 0:
        O.path[i] = PATH_REJECTED
        O.reason[i] = C.pre_reason[i]
        return
    if C.excluded[i]:
        O.path[i] = PATH_EXCLUDED
        O.reason[i] = R_EXCLUDED_DX
        return
    O.reason[i] = 0

    # treatment class: the highest class among counted procedures (dip-rules §2.6)
    j0 = C.p_off[i]
    j1 = C.p_off[i + 1]
    for j in range(j0, j1):
        if C.p_class[j] > cls:
            cls = C.p_class[j]
        if C.p_class[j] >= 0:
            counted += 1
            if C.p_level[j] > lvl:
                lvl = C.p_level[j]
    O.case_class[i] = cls
    cons_eq = cls <= R.cons_max_class and lvl <= R.cons_max_level
    has_main = C.has_main[i] != 0 and j1 > j0 and C.p_class[j0] >= 0

    # core and basic candidates of the subcategory
    sub = C.sub_id[i]
    # Without a counted procedure only candidates without an expression can match: when the
    # subcategory has one, it is the answer (the loop below would find it, more slowly).
    g = R.sub_cons[sub] if sub >= 0 and counted == 0 else -2
    if g >= 0:
        if cons_eq:
            best = g
            best_rank = R.g_rank[g]
    elif g == -2 and sub >= 0:
        for k in range(R.sub_off[sub], R.sub_off[sub + 1]):
            g = R.sub_cand[k]
            rank = R.g_rank[g]
            t = R.g_term_off[g]
            nterms = <int>(R.g_term_off[g + 1] - t)
            if nterms == 0:
                if not cons_eq:
                    continue
                m_main = 0
                nmatch = 0
            else:
                ok = True
                nmatch = 0
                for t in range(R.g_term_off[g], R.g_term_off[g + 1]):
                    hit = 0
                    all_hit = 1
                    for c in range(R.term_off[t], R.term_off[t + 1]):
                        if _present(C, j0, j1, R.term_codes[c]):
                            hit += 1
                        else:
                            all_hit = 0
                    nmatch += hit
                    if hit == 0 or (R.match_all and not all_hit):
                        ok = False
                        break
                if not ok:
                    continue
                m_main = 0
                if has_main:
                    t = R.g_term_off[g]
                    for c in range(R.term_off[t], R.term_off[t + 1]):
                        if C.p_full[j0] == R.term_codes[c] or C.p_base[j0] == R.term_codes[c]:
                            m_main = 1
                            break
            diff = R.g_avg_fen[g] - C.total_fen[i]
            if diff < 0:
                diff = -diff
            # priority, then main procedure, more terms, more matched codes, closest cost, row
            if best < 0 or _better(rank, m_main, nterms, nmatch, diff, g,
                                   best_rank, best_main, best_nterms, best_nmatch, best_diff, best):
                best = g
                best_rank = rank
                best_main = m_main
                best_nterms = nterms
                best_nmatch = nmatch
                best_diff = diff

    # comprehensive fallback on the case's class (longest prefix, then range: precompiled)
    cat = C.cat[i]
    if cat >= 0:
        g = R.comp_lookup[cat * 4 + cls]
        if g >= 0 and _comp_rank(cls) < best_rank:
            best = g
            best_rank = _comp_rank(cls)
    if best < 0:
        best = R.blank
    if best < 0:
        O.path[i] = PATH_REJECTED
        O.reason[i] = R_NO_GROUP
        return
    O.group[i] = best
    O.path[i] = R.g_type[best]

    # auxiliary subtype (dip-rules §3.1): highest coefficient among those the case qualifies for
    if R.aux_off[best + 1] == R.aux_off[best]:
        return
    d0 = C.d_off[i]
    d1 = C.d_off[i + 1]
    for d in range(d0, d1):
        if C.d_sev[d] > sev:
            sev = C.d_sev[d]
        cc = C.d_cci_cat[d]
        if cc < 0:
            continue
        # one weight per comorbidity category: the maximum (first occurrence on ties)
        w = C.d_cci_w[d]
        dup = False
        for d2 in range(d0, d1):
            if d2 != d and C.d_cci_cat[d2] == cc and (C.d_cci_w[d2] > w or (C.d_cci_w[d2] == w and d2 < d)):
                dup = True
                break
        if not dup:
            cci += w
    if cci >= R.cci3:
        cci_level = 3
    elif cci >= R.cci2:
        cci_level = 2
    elif cci >= R.cci1:
        cci_level = 1
    if C.los[i] < R.sev_los:
        sev = 0
    key = C.age_key[i]
    best_sub = -1
    best_coef = 0.0
    for k in range(R.aux_off[best], R.aux_off[best + 1]):
        s = R.aux_sub[k]
        if s == 0:
            q = C.dmode[i] == R.death_mode
        elif s == 1:
            q = sev >= 3
        elif s == 2:
            q = sev >= 2
        elif s <= 5:
            q = cci_level >= 6 - s
        else:
            q = key >= 0 and R.band_lo[s - 6] <= key and key <= R.band_hi[s - 6]
        if q and (best_sub < 0 or R.aux_coef[k] > best_coef or (R.aux_coef[k] == best_coef and s < best_sub)):
            best_sub = s
            best_coef = R.aux_coef[k]
    if best_sub >= 0:
        O.aux[i] = <int8_t>best_sub
        O.coef[i] = best_coef


def group_cases(
    # rules
    const int64_t[::1] sub_off, const int32_t[::1] sub_cand, const int32_t[::1] sub_cons,
    const int8_t[::1] g_type, const int8_t[::1] g_rank, const int64_t[::1] g_avg_fen,
    const int64_t[::1] g_term_off, const int64_t[::1] term_off, const int32_t[::1] term_codes,
    const int32_t[::1] comp_lookup, int32_t blank,
    const int64_t[::1] aux_off, const int8_t[::1] aux_sub, const double[::1] aux_coef,
    const int32_t[::1] band_lo, const int32_t[::1] band_hi, const int32_t[::1] cci_cuts,
    int32_t match_all, int32_t sev_los, int32_t death_mode, int32_t cons_max_class, int32_t cons_max_level,
    # cases
    const int8_t[::1] pre_reason, const int8_t[::1] excluded, const int32_t[::1] sub_id, const int32_t[::1] cat,
    const int64_t[::1] p_off, const int32_t[::1] p_full, const int32_t[::1] p_base,
    const int8_t[::1] p_class, const int8_t[::1] p_level, const int8_t[::1] has_main,
    const int64_t[::1] total_fen, const int8_t[::1] dmode, const int32_t[::1] los, const int32_t[::1] age_key,
    const int64_t[::1] d_off, const int32_t[::1] d_cci_cat, const int32_t[::1] d_cci_w, const int8_t[::1] d_sev,
    # outputs
    int32_t[::1] out_group, int8_t[::1] out_path, int8_t[::1] out_reason, int8_t[::1] out_class,
    int8_t[::1] out_aux, double[::1] out_coef,
    int n_threads=1,
):
    """Group ``n`` encoded cases; see ``docs/grouping.md`` for every array.

    Rule arrays come from :class:`dipengine.rules.Compiled`; case arrays are per case
    (``n``), procedure entries (CSR ``p_off``, ``n + 1``; main procedure first when
    ``has_main``; ``p_class = -1`` marks a not-counted procedure) and secondary-diagnosis
    entries (CSR ``d_off``). Every array must have at least one element (pad empty ones).
    Outputs: group index (int32, -1 none), match path (int8: 0 core, 1 basic,
    2 comprehensive, 3 blank, 4 excluded, 5 rejected), reason code (int8,
    :mod:`dipengine.reasons`), case treatment class (int8, -1 when not grouped), auxiliary
    subtype index (int8, -1 none) and coefficient (float64, 1.0 none).
    """
    cdef Rules R
    cdef Cases C
    cdef Out O
    cdef Py_ssize_t i, n = out_group.shape[0]
    if n == 0:
        return
    R.sub_off = &sub_off[0]; R.sub_cand = &sub_cand[0]; R.sub_cons = &sub_cons[0]
    R.g_type = &g_type[0]; R.g_rank = &g_rank[0]; R.g_avg_fen = &g_avg_fen[0]
    R.g_term_off = &g_term_off[0]; R.term_off = &term_off[0]; R.term_codes = &term_codes[0]
    R.comp_lookup = &comp_lookup[0]; R.blank = blank
    R.aux_off = &aux_off[0]; R.aux_sub = &aux_sub[0]; R.aux_coef = &aux_coef[0]
    R.band_lo = &band_lo[0]; R.band_hi = &band_hi[0]; R.n_bands = <int32_t>band_lo.shape[0]
    R.cci1 = cci_cuts[0]; R.cci2 = cci_cuts[1]; R.cci3 = cci_cuts[2]
    R.match_all = match_all; R.sev_los = sev_los; R.death_mode = death_mode
    R.cons_max_class = cons_max_class; R.cons_max_level = cons_max_level
    C.pre_reason = &pre_reason[0]; C.excluded = &excluded[0]; C.sub_id = &sub_id[0]; C.cat = &cat[0]
    C.p_off = &p_off[0]; C.p_full = &p_full[0]; C.p_base = &p_base[0]
    C.p_class = &p_class[0]; C.p_level = &p_level[0]; C.has_main = &has_main[0]
    C.total_fen = &total_fen[0]; C.dmode = &dmode[0]; C.los = &los[0]; C.age_key = &age_key[0]
    C.d_off = &d_off[0]; C.d_cci_cat = &d_cci_cat[0]; C.d_cci_w = &d_cci_w[0]; C.d_sev = &d_sev[0]
    O.group = &out_group[0]; O.path = &out_path[0]; O.reason = &out_reason[0]
    O.case_class = &out_class[0]; O.aux = &out_aux[0]; O.coef = &out_coef[0]
    if n_threads < 1:
        n_threads = 1
    for i in prange(n, nogil=True, schedule='static', num_threads=n_threads):
        _group_one(&R, &C, &O, i)


def proc_csr(const int32_t[::1] m_idx, const int32_t[::1] m_full, const int32_t[::1] m_base,
             const int8_t[::1] m_cls, const int8_t[::1] m_lvl,
             const int64_t[::1] o_len, const int32_t[::1] o_idx, const int32_t[::1] o_full,
             const int32_t[::1] o_base, const int8_t[::1] o_cls, const int8_t[::1] o_lvl,
             int64_t[::1] p_off, int8_t[::1] has_main, int32_t[::1] p_full, int32_t[::1] p_base,
             int8_t[::1] p_class, int8_t[::1] p_level):
    """The per-case procedure CSR the kernel reads: the main procedure first, then the others.

    Parameters
    ----------
    m_idx : int32[n]
        Dictionary index of each case's main procedure (-1 none).
    m_full, m_base, m_cls, m_lvl
        Per distinct main procedure: full-code id, base-code id, class rank (-1 not counted),
        level.
    o_len : int64[n]
        Number of other procedures per case; their dictionary indices ``o_idx`` follow case by
        case (-1 for a null element, which gets ids -1, class -1, level 0).
    o_full, o_base, o_cls, o_lvl
        The per-distinct-value tables of the other procedures' dictionary.
    p_off : int64[n + 1]
        Written: offsets of each case's entries.
    has_main : int8[n]
        Written: 1 when the case has a main procedure.
    p_full, p_base, p_class, p_level
        Written: one entry per procedure (length ``has_main.sum() + o_len.sum()``).
    """
    cdef Py_ssize_t n = m_idx.shape[0], i
    cdef int64_t k = 0, e = 0, t
    cdef int32_t j
    with nogil:
        p_off[0] = 0
        for i in range(n):
            j = m_idx[i]
            if j >= 0:
                has_main[i] = 1
                p_full[k] = m_full[j]
                p_base[k] = m_base[j]
                p_class[k] = m_cls[j]
                p_level[k] = m_lvl[j]
                k += 1
            else:
                has_main[i] = 0
            for t in range(o_len[i]):
                j = o_idx[e]
                e += 1
                if j >= 0:
                    p_full[k] = o_full[j]
                    p_base[k] = o_base[j]
                    p_class[k] = o_cls[j]
                    p_level[k] = o_lvl[j]
                else:
                    p_full[k] = -1
                    p_base[k] = -1
                    p_class[k] = -1
                    p_level[k] = 0
                k += 1
            p_off[i + 1] = k


def case_codes(const int32_t[::1] dx_idx, const int32_t[::1] sub_u, const int32_t[::1] cat_u,
               const int8_t[::1] valid_u, const int8_t[::1] excl_u, const uint8_t[::1] rejected,
               const int32_t[::1] age, const int32_t[::1] age_days,
               int8_t invalid_dx, int8_t missing, int8_t kept,
               int32_t[::1] sub_id, int32_t[::1] cat, int8_t[::1] pre_reason, int8_t[::1] excluded,
               int32_t[::1] age_key):
    """The kernel's per-case inputs from the main diagnosis and the age, in one pass.

    Parameters
    ----------
    dx_idx : int32[n]
        Dictionary index of each case's main diagnosis (-1 null).
    sub_u, cat_u, valid_u, excl_u
        Per distinct main diagnosis: subcategory id (int32, -1 none), 类目 number (int32, -1),
        well-formed (int8: 1, 0, -1 null) and excluded (int8 0/1).
    rejected : uint8[n]
        1 where the reader already gave the case a reason.
    age, age_days : int32[n]
        Years and days (-1 null).
    invalid_dx, missing, kept
        Reason codes written for a malformed main diagnosis, a missing one, and a case the
        reader rejected (that one wins).
    sub_id, cat, pre_reason, excluded, age_key
        Written, per case. ``age_key``: ``age_days`` under one year (when known), else
        ``365 * age`` (-1 when unknown), so years and days order together.
    """
    cdef Py_ssize_t n = dx_idx.shape[0], i
    cdef int32_t j
    cdef int8_t v, p
    cdef int64_t key
    with nogil:
        for i in range(n):
            j = dx_idx[i]
            if j < 0:
                sub_id[i] = -1
                cat[i] = -1
                excluded[i] = 0
                p = missing
            else:
                sub_id[i] = sub_u[j]
                cat[i] = cat_u[j]
                excluded[i] = excl_u[j]
                v = valid_u[j]
                p = invalid_dx if v == 0 else (missing if v < 0 else 0)
            if rejected[i]:
                p = kept
            pre_reason[i] = p
            if age[i] < 0:
                key = -1
            elif age[i] == 0:
                key = age_days[i] if age_days[i] >= 0 else -1
            else:
                key = <int64_t>age[i] * 365
            age_key[i] = <int32_t>key


def secondary_codes(const int32_t[::1] d_idx, const int32_t[::1] cat_u, const int32_t[::1] w_u,
                    const int8_t[::1] sev_u, int32_t[::1] d_cat, int32_t[::1] d_w, int8_t[::1] d_sev):
    """Per secondary diagnosis, from its dictionary index (-1 null) and per-distinct tables: CCI
    category (int32, -1 none), CCI weight (int32, 0) and severity level (int8, 0)."""
    cdef Py_ssize_t n = d_idx.shape[0], i
    cdef int32_t j
    with nogil:
        for i in range(n):
            j = d_idx[i]
            if j < 0:
                d_cat[i] = -1
                d_w[i] = 0
                d_sev[i] = 0
            else:
                d_cat[i] = cat_u[j]
                d_w[i] = w_u[j]
                d_sev[i] = sev_u[j]
