# cython: language_level=3
"""The DIP grouping kernel (dip-rules §2, §3.1) over integer codes.

Python (:mod:`dipengine.grouper`) maps strings to integer ids and compiles the rule set into
flat arrays (:func:`dipengine.rules.compile_rules`), wrapped once per rule set in a
:class:`CompiledRules` (declared in ``grouping.pxd``); :func:`group_cases` walks it per case
under ``prange``. Every case writes only its own ``out[i]`` slots, so results do not depend on the
thread count. ``-1`` means none everywhere.

Arrays are typed memoryviews throughout (the bounds-checked build, ``DIPENGINE_CYTHON_DEBUG=1``,
checks every access). Rule arrays are checked once when the :class:`CompiledRules` is built;
per-case lengths once per call; per-case indices (offsets, subcategory and category ids,
procedure classes) inside the loop where they are read, a case returning an error bit (before
it touches anything out of range) that is raised as a ``ValueError`` after the loop.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from _checks cimport check_len, offsets_error, range_error

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

# error bits of one case in group_cases (raised after the loop, in this order)
cdef enum:
    E_P_OFF = 1
    E_D_OFF = 2
    E_SUB_ID = 4
    E_CAT = 8
    E_P_CLASS = 16

cdef enum:
    N_CLASSES = 4          # treatment-class ranks 0-3: comp_lookup has four columns
    N_FIXED_SUBTYPES = 6   # auxiliary subtypes 0-5; 6 + k is age band k


cdef enum:
    N_TIE = 4              # tie-break criteria: 0 main procedure, 1 terms, 2 matched codes, 3 cost

def _frozen(a):
    """A read-only C-contiguous copy of ``a`` (its dtype kept)."""
    a = np.array(a, order="C", copy=True)
    a.setflags(write=False)
    return a


def _offsets(str name, a, Py_ssize_t n, Py_ssize_t total, str what):
    """Check CSR offsets: ``n + 1`` entries, never decreasing, from 0 to ``total``."""
    check_len(name, a.shape[0], n + 1, f"n + 1 = {n + 1} offsets")
    if n > 0 and bool((a[1:] < a[:n]).any()):
        raise offsets_error(name, a, 0, total, what)
    if a[0] != 0 or a[n] != total:
        raise ValueError(f"{name} runs from {a[0]} to {a[n]}, expected 0 to {total} ({what})")


def _within(str name, a, long long lo, long long hi):
    if a.shape[0] and (int(a.min()) < lo or int(a.max()) > hi):
        raise range_error(name, a, lo, hi)


cdef class CompiledRules:
    """A rule set's flat arrays, checked once and held read-only for :func:`group_cases`.

    Parameters (keyword only; dtypes exact, see :class:`dipengine.rules.Compiled`)
    ----------
    sub_off : int64[n_sub + 1]
        CSR offsets of each subcategory's candidates in ``sub_cand``.
    sub_cand : int32
        Candidate group indices (core/basic rows), by subcategory.
    sub_cons : int32[n_sub]
        The subcategory's one candidate without a procedure expression (-1 none, -2 several).
    g_type, g_rank, g_avg_fen : int8, int8, int64 [n_groups]
        Match path (0 core, 1 basic, 2 comprehensive, 3 blank), priority rank, average cost (fen).
    g_term_off : int64[n_groups + 1]
        CSR offsets of each group's expression terms in ``term_off``.
    term_off : int64[n_terms + 1]
        CSR offsets of each term's procedure ids in ``term_codes`` (int32).
    comp_lookup : int32[n_cat * 4]
        (category number, treatment class) -> comprehensive group (-1 none).
    blank : int
        The blank group's index (-1 none).
    aux_off : int64[n_groups + 1]
        CSR offsets of each group's auxiliary subtypes in ``aux_sub`` (int8: 0-5, or 6 + age
        band) and ``aux_coef`` (float64).
    band_lo, band_hi : int32[n_bands]
        Age-key limits of the age bands.
    cci_cuts : int32[3]
        CCI sums of levels 1, 2, 3.
    comp_rank : int8[4]
        Priority rank of a comprehensive group of each treatment class (as ``g_rank``).
    tie_order : int8[<= 4]
        Tie-breaks among core/basic candidates of one rank, in order, each at most once:
        0 keyed on the main procedure, 1 more terms, 2 more matched codes, 3 closest cost
        (then row order).
    proc_parent : int32[n_proc] or empty
        Prefix matching: the id of the longest other procedure code that is a prefix of each
        (-1 none; each smaller than its own id); empty: codes match whole.
    match_all, sev_los, death_mode, cons_max_class, cons_max_level, main_any : int
        Options (see ``docs/grouping.md``).

    Raises
    ------
    ValueError
        Naming the first array whose length, offsets or indices do not fit the others.
    """

    def __init__(self, *, const int64_t[::1] sub_off not None, const int32_t[::1] sub_cand not None,
                 const int32_t[::1] sub_cons not None, const int8_t[::1] g_type not None,
                 const int8_t[::1] g_rank not None, const int64_t[::1] g_avg_fen not None,
                 const int64_t[::1] g_term_off not None, const int64_t[::1] term_off not None,
                 const int32_t[::1] term_codes not None, const int32_t[::1] comp_lookup not None,
                 int32_t blank, const int64_t[::1] aux_off not None, const int8_t[::1] aux_sub not None,
                 const double[::1] aux_coef not None, const int32_t[::1] band_lo not None,
                 const int32_t[::1] band_hi not None, const int32_t[::1] cci_cuts not None,
                 int32_t match_all, int32_t sev_los, int32_t death_mode, int32_t cons_max_class,
                 int32_t cons_max_level, const int8_t[::1] comp_rank not None,
                 const int8_t[::1] tie_order not None, const int32_t[::1] proc_parent not None,
                 int32_t main_any):
        arrays = {name: _frozen(a) for name, a in (
            ("sub_off", sub_off), ("sub_cand", sub_cand), ("sub_cons", sub_cons), ("g_type", g_type),
            ("g_rank", g_rank), ("g_avg_fen", g_avg_fen), ("g_term_off", g_term_off), ("term_off", term_off),
            ("term_codes", term_codes), ("comp_lookup", comp_lookup), ("aux_off", aux_off),
            ("aux_sub", aux_sub), ("aux_coef", aux_coef), ("band_lo", band_lo), ("band_hi", band_hi),
            ("cci_cuts", cci_cuts), ("comp_rank", comp_rank), ("tie_order", tie_order),
            ("proc_parent", proc_parent))}
        a = arrays
        n_groups = a["g_type"].shape[0]
        n_sub = a["sub_cons"].shape[0]
        for name in ("g_rank", "g_avg_fen"):
            check_len(name, a[name].shape[0], n_groups, "one per group, as g_type")
        _offsets("sub_off", a["sub_off"], n_sub, a["sub_cand"].shape[0], "candidates in sub_cand")
        _within("sub_cand", a["sub_cand"], 0, n_groups - 1)
        _within("sub_cons", a["sub_cons"], -2, n_groups - 1)
        _within("g_type", a["g_type"], PATH_CORE, PATH_BLANK)
        if term_off.shape[0] == 0:
            raise ValueError("term_off has length 0, expected n_terms + 1 >= 1 offsets")
        _offsets("g_term_off", a["g_term_off"], n_groups, term_off.shape[0] - 1, "terms in term_off")
        _offsets("term_off", a["term_off"], term_off.shape[0] - 1, a["term_codes"].shape[0],
                 "procedure ids in term_codes")
        if comp_lookup.shape[0] % N_CLASSES:
            raise ValueError(f"comp_lookup has length {comp_lookup.shape[0]}, expected a multiple of {N_CLASSES} "
                             "(one column per treatment class)")
        _within("comp_lookup", a["comp_lookup"], -1, n_groups - 1)
        if blank < -1 or blank >= n_groups:
            raise ValueError(f"blank = {blank} is out of range [-1, {n_groups - 1}]")
        _offsets("aux_off", a["aux_off"], n_groups, a["aux_sub"].shape[0], "subtypes in aux_sub")
        check_len("aux_coef", aux_coef.shape[0], aux_sub.shape[0], "one per subtype entry, as aux_sub")
        check_len("band_hi", band_hi.shape[0], band_lo.shape[0], "one per age band, as band_lo")
        _within("aux_sub", a["aux_sub"], 0, N_FIXED_SUBTYPES + band_lo.shape[0] - 1)
        check_len("cci_cuts", cci_cuts.shape[0], 3, "the CCI sums of levels 1, 2, 3")
        check_len("comp_rank", comp_rank.shape[0], N_CLASSES, "one rank per treatment class")
        if tie_order.shape[0] > N_TIE:
            raise ValueError(f"tie_order has length {tie_order.shape[0]}, expected at most {N_TIE}")
        _within("tie_order", a["tie_order"], 0, N_TIE - 1)
        if len(set(a["tie_order"].tolist())) != tie_order.shape[0]:
            raise ValueError(f"tie_order {a['tie_order'].tolist()} names a tie-break twice")
        n_proc = proc_parent.shape[0]
        if n_proc:
            if int(a["term_codes"].max(initial=-1)) >= n_proc or int(a["term_codes"].min(initial=0)) < 0:
                raise range_error("term_codes", a["term_codes"], 0, n_proc - 1)
            if bool((a["proc_parent"] >= np.arange(n_proc)).any()) or int(a["proc_parent"].min()) < -1:
                raise ValueError("proc_parent: every entry must be -1 or a smaller id than its own "
                                 "(the longest prefix of a code sorts before it)")
        self.sub_off = a["sub_off"]
        self.sub_cand = a["sub_cand"]
        self.sub_cons = a["sub_cons"]
        self.g_type = a["g_type"]
        self.g_rank = a["g_rank"]
        self.g_avg_fen = a["g_avg_fen"]
        self.g_term_off = a["g_term_off"]
        self.term_off = a["term_off"]
        self.term_codes = a["term_codes"]
        self.comp_lookup = a["comp_lookup"]
        self.aux_off = a["aux_off"]
        self.aux_sub = a["aux_sub"]
        self.aux_coef = a["aux_coef"]
        self.band_lo = a["band_lo"]
        self.band_hi = a["band_hi"]
        self.comp_rank = a["comp_rank"]
        self.tie_order = a["tie_order"]
        self.proc_parent = a["proc_parent"]
        self.n_tie = <int32_t>tie_order.shape[0]
        self.n_proc = <int32_t>n_proc
        self.prefix = n_proc > 0
        self.main_any = main_any
        self.n_groups = <int32_t>n_groups
        self.n_sub = <int32_t>n_sub
        self.n_cat = <int32_t>(comp_lookup.shape[0] // N_CLASSES)
        self.n_bands = <int32_t>band_lo.shape[0]
        self.blank = blank
        self.cci1 = cci_cuts[0]
        self.cci2 = cci_cuts[1]
        self.cci3 = cci_cuts[2]
        self.match_all = match_all
        self.sev_los = sev_los
        self.death_mode = death_mode
        self.cons_max_class = cons_max_class
        self.cons_max_level = cons_max_level
        scalars = {"blank": blank, "match_all": match_all, "sev_los": sev_los, "death_mode": death_mode,
                   "cons_max_class": cons_max_class, "cons_max_level": cons_max_level, "main_any": main_any}
        self._arrays = {**arrays, **scalars}
        self._ready = True

    def as_dict(self) -> dict:
        """The constructor's keyword arguments (read-only copies of the arrays)."""
        if not self._ready:
            raise ValueError("CompiledRules was not initialised")
        return dict(self._arrays)

    def __reduce__(self):
        return _rebuild_compiled_rules, (self.as_dict(),)

    def __repr__(self):
        if not self._ready:
            return "CompiledRules(<not initialised>)"
        return (f"CompiledRules(n_groups={self.n_groups}, n_sub={self.n_sub}, n_cat={self.n_cat}, "
                f"n_bands={self.n_bands}, blank={self.blank})")


def _rebuild_compiled_rules(kwargs):
    return CompiledRules(**kwargs)


cdef class _Cases:
    """One call's per-case inputs and outputs (see :func:`group_cases`)."""
    cdef const int8_t[::1] pre_reason
    cdef const int8_t[::1] excluded
    cdef const int32_t[::1] sub_id
    cdef const int32_t[::1] cat
    cdef const int64_t[::1] p_off
    cdef const int32_t[::1] p_full
    cdef const int32_t[::1] p_base
    cdef const int8_t[::1] p_class
    cdef const int8_t[::1] p_level
    cdef const int8_t[::1] has_main
    cdef const int64_t[::1] total_fen
    cdef const int8_t[::1] dmode
    cdef const int32_t[::1] los
    cdef const int32_t[::1] age_key
    cdef const int64_t[::1] d_off
    cdef const int32_t[::1] d_cci_cat
    cdef const int32_t[::1] d_cci_w
    cdef const int8_t[::1] d_sev
    cdef int32_t[::1] group
    cdef int8_t[::1] path
    cdef int8_t[::1] reason
    cdef int8_t[::1] case_class
    cdef int8_t[::1] aux
    cdef double[::1] coef
    cdef int64_t n_p, n_d


cdef inline bint _is(CompiledRules R, _Cases C, int64_t j, int32_t code) noexcept nogil:
    """Does procedure entry ``j`` match procedure id ``code``: its full or base code, or with
    prefix matching any code on its chain of prefixes (``p_full`` is then the longest)?"""
    cdef int32_t x
    if not R.prefix:
        return C.p_full[j] == code or C.p_base[j] == code
    x = C.p_full[j]
    while x >= 0:
        if x == code:
            return True
        x = R.proc_parent[x]
    return False


cdef inline bint _present(CompiledRules R, _Cases C, int64_t j0, int64_t j1, int32_t code) noexcept nogil:
    """Is procedure id ``code`` among the counted procedures [j0, j1)?"""
    cdef int64_t j
    for j in range(j0, j1):
        if C.p_class[j] >= 0 and _is(R, C, j, code):
            return True
    return False


cdef inline bint _better(CompiledRules R, int rank, int64_t* v, int32_t g,
                         int b_rank, int64_t* bv, int32_t b) noexcept nogil:
    """Does candidate ``g`` beat the best so far: rank, then ``R.tie_order`` over the criteria
    ``v`` (larger wins: main procedure, terms, matched codes, minus the cost distance), then row?"""
    cdef int k, c
    if rank != b_rank:
        return rank < b_rank
    for k in range(R.n_tie):
        c = R.tie_order[k]
        if v[c] != bv[c]:
            return v[c] > bv[c]
    return g < b


cdef inline int _group_one(CompiledRules R, _Cases C, Py_ssize_t i) noexcept nogil:
    """Group case ``i``; 0, or an ``E_*`` bit when one of its indices is out of range (then
    nothing out of range has been read and the case's outputs say "no group")."""
    cdef int64_t j0, j1, j, k, t, c, d, d2, d0, d1
    cdef int32_t g, best = -1, s, sub, cat, cc, w
    cdef int8_t cls = 0, lvl = 0, rank, best_rank = 127, sev = 0, cci_level = 0, pc
    cdef int nterms, nmatch, hit, all_hit, counted = 0
    cdef int64_t diff, cci = 0
    cdef int64_t v[N_TIE]      # this candidate's tie-break criteria (larger wins)
    cdef int64_t bv[N_TIE]     # the best candidate's
    cdef bint cons_eq, has_main, ok, q, dup
    cdef double best_coef
    cdef int32_t best_sub, key

    C.group[i] = -1
    C.aux[i] = -1
    C.coef[i] = 1.0
    C.case_class[i] = -1
    # the case's indices, checked on every case (cheap, predictable branches)
    j0 = C.p_off[i]
    j1 = C.p_off[i + 1]
    if j0 < 0 or j1 < j0 or j1 > C.n_p:
        return E_P_OFF
    sub = C.sub_id[i]
    if sub < -1 or sub >= R.n_sub:
        return E_SUB_ID
    cat = C.cat[i]
    if cat < -1 or cat >= R.n_cat:
        return E_CAT
    if C.pre_reason[i] != 0:
        C.path[i] = PATH_REJECTED
        C.reason[i] = C.pre_reason[i]
        return 0
    if C.excluded[i]:
        C.path[i] = PATH_EXCLUDED
        C.reason[i] = R_EXCLUDED_DX
        return 0

    # treatment class: the highest class among counted procedures (dip-rules §2.6)
    for j in range(j0, j1):
        pc = C.p_class[j]
        if pc > cls:
            cls = pc
        if pc >= 0:
            counted += 1
            if C.p_level[j] > lvl:
                lvl = C.p_level[j]
    if cls >= N_CLASSES:  # negative classes are "not counted"; above 3 would index past comp_lookup
        return E_P_CLASS
    C.reason[i] = 0
    C.case_class[i] = cls
    cons_eq = cls <= R.cons_max_class and lvl <= R.cons_max_level
    has_main = C.has_main[i] != 0 and j1 > j0 and C.p_class[j0] >= 0

    # core and basic candidates of the subcategory
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
            v[0] = 0
            if nterms == 0:
                if not cons_eq:
                    continue
                nmatch = 0
            else:
                ok = True
                nmatch = 0
                for t in range(R.g_term_off[g], R.g_term_off[g + 1]):
                    hit = 0
                    all_hit = 1
                    for c in range(R.term_off[t], R.term_off[t + 1]):
                        if _present(R, C, j0, j1, R.term_codes[c]):
                            hit += 1
                        else:
                            all_hit = 0
                    nmatch += hit
                    if hit == 0 or (R.match_all and not all_hit):
                        ok = False
                        break
                if not ok:
                    continue
                if has_main:
                    # keyed on the main procedure: it matches the first term (or, main_any, any term)
                    t = R.g_term_off[g]
                    for c in range(R.term_off[t], R.term_off[R.g_term_off[g + 1] if R.main_any else t + 1]):
                        if _is(R, C, j0, R.term_codes[c]):
                            v[0] = 1
                            break
            diff = R.g_avg_fen[g] - C.total_fen[i]
            if diff < 0:
                diff = -diff
            v[1] = nterms
            v[2] = nmatch
            v[3] = -diff
            # priority, then the tie-breaks in the rule set's order, then row
            if best < 0 or _better(R, rank, v, g, best_rank, bv, best):
                best = g
                best_rank = rank
                bv[0] = v[0]
                bv[1] = v[1]
                bv[2] = v[2]
                bv[3] = v[3]

    # comprehensive fallback on the case's class (longest prefix, then range: precompiled)
    if cat >= 0:
        g = R.comp_lookup[cat * N_CLASSES + cls]
        if g >= 0 and R.comp_rank[cls] < best_rank:
            best = g
            best_rank = R.comp_rank[cls]
    if best < 0:
        best = R.blank
    if best < 0:
        C.path[i] = PATH_REJECTED
        C.reason[i] = R_NO_GROUP
        return 0
    C.group[i] = best
    C.path[i] = R.g_type[best]

    # auxiliary subtype (dip-rules §3.1): highest coefficient among those the case qualifies for
    if R.aux_off[best + 1] == R.aux_off[best]:
        return 0
    d0 = C.d_off[i]
    d1 = C.d_off[i + 1]
    if d0 < 0 or d1 < d0 or d1 > C.n_d:
        return E_D_OFF
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
        elif s < N_FIXED_SUBTYPES:
            q = cci_level >= 6 - s
        else:
            q = key >= 0 and R.band_lo[s - N_FIXED_SUBTYPES] <= key and key <= R.band_hi[s - N_FIXED_SUBTYPES]
        if q and (best_sub < 0 or R.aux_coef[k] > best_coef or (R.aux_coef[k] == best_coef and s < best_sub)):
            best_sub = s
            best_coef = R.aux_coef[k]
    if best_sub >= 0:
        C.aux[i] = <int8_t>best_sub
        C.coef[i] = best_coef
    return 0


def group_cases(
    CompiledRules rules not None,
    # cases
    const int8_t[::1] pre_reason not None, const int8_t[::1] excluded not None,
    const int32_t[::1] sub_id not None, const int32_t[::1] cat not None,
    const int64_t[::1] p_off not None, const int32_t[::1] p_full not None, const int32_t[::1] p_base not None,
    const int8_t[::1] p_class not None, const int8_t[::1] p_level not None, const int8_t[::1] has_main not None,
    const int64_t[::1] total_fen not None, const int8_t[::1] dmode not None, const int32_t[::1] los not None,
    const int32_t[::1] age_key not None, const int64_t[::1] d_off not None,
    const int32_t[::1] d_cci_cat not None, const int32_t[::1] d_cci_w not None, const int8_t[::1] d_sev not None,
    # outputs
    int32_t[::1] out_group not None, int8_t[::1] out_path not None, int8_t[::1] out_reason not None,
    int8_t[::1] out_class not None, int8_t[::1] out_aux not None, double[::1] out_coef not None,
    int n_threads=1,
):
    """Group ``n`` encoded cases against one rule set; see ``docs/grouping.md`` for every array.

    Parameters
    ----------
    rules : CompiledRules
        The rule set's checked flat arrays (built once per rule set).
    pre_reason, excluded : int8[n]
        Reason given before grouping (0 none; the case is then rejected with it) and 1 where the
        main diagnosis is on the excluded list.
    sub_id, cat : int32[n]
        Subcategory id (index into ``rules``' subcategories) and category number (0-2599) of the
        main diagnosis; -1 none.
    p_off : int64[n + 1]
        CSR offsets, from 0 to ``len(p_full)``, of each case's procedure entries ``p_full``,
        ``p_base`` (int32 ids, -1 unknown), ``p_class`` (int8 treatment-class rank 0-3; -1, or
        any negative, not counted) and ``p_level`` (int8); the main procedure first when ``has_main`` (int8[n]).
    total_fen, dmode, los, age_key : int64, int8, int32, int32 [n]
        Total cost (fen), discharge mode, length of stay, age key (-1 unknown).
    d_off : int64[n + 1]
        CSR offsets, from 0 to ``len(d_cci_cat)``, of each case's secondary diagnoses
        ``d_cci_cat`` (int32 CCI category, -1 none), ``d_cci_w`` (int32 weight), ``d_sev`` (int8
        severity level).
    out_group, out_path, out_reason, out_class, out_aux, out_coef : [n], written
        Group index (int32, -1 none), match path (int8: 0 core, 1 basic, 2 comprehensive,
        3 blank, 4 excluded, 5 rejected), reason code (int8, :mod:`dipengine.reasons`), case
        treatment class (int8, -1 when not grouped), auxiliary subtype index (int8, -1 none) and
        coefficient (float64, 1.0 none).
    n_threads : int
        OpenMP threads (results do not depend on it).

    Raises
    ------
    ValueError
        An array's length disagrees with the others, ``p_full`` holds an id outside the rules'
        procedure vocabulary under prefix matching, ``p_off``/``d_off`` do not run from 0 to
        their arrays' lengths, or an offset, ``sub_id``, ``cat`` or ``p_class`` read by the
        loop is out of range (every case's ``p_off``, ``sub_id``, ``cat``; ``p_class`` of the
        cases grouped; ``d_off`` of the cases whose group has auxiliary subtypes, the only ones
        that read it). The message names the first offending element; the outputs are then
        unspecified.
    """
    cdef Py_ssize_t i, n = pre_reason.shape[0]
    cdef int err = 0
    cdef _Cases C = _Cases.__new__(_Cases)
    if not rules._ready:
        raise ValueError("rules: CompiledRules was not initialised (build it with CompiledRules(...))")
    for name, m in (("excluded", excluded), ("sub_id", sub_id), ("cat", cat), ("has_main", has_main),
                    ("total_fen", total_fen), ("dmode", dmode), ("los", los), ("age_key", age_key),
                    ("out_group", out_group), ("out_path", out_path), ("out_reason", out_reason),
                    ("out_class", out_class), ("out_aux", out_aux), ("out_coef", out_coef)):
        check_len(name, len(m), n, "one per case, as pre_reason")
    check_len("p_off", p_off.shape[0], n + 1, "n + 1 offsets, n = len(pre_reason)")
    check_len("d_off", d_off.shape[0], n + 1, "n + 1 offsets, n = len(pre_reason)")
    for name, m in (("p_base", p_base), ("p_class", p_class), ("p_level", p_level)):
        check_len(name, len(m), p_full.shape[0], "one per procedure entry, as p_full")
    for name, m in (("d_cci_w", d_cci_w), ("d_sev", d_sev)):
        check_len(name, len(m), d_cci_cat.shape[0], "one per secondary diagnosis, as d_cci_cat")
    if p_off[0] != 0 or p_off[n] != p_full.shape[0]:
        raise ValueError(f"p_off runs from {p_off[0]} to {p_off[n]}, expected 0 to len(p_full) = {p_full.shape[0]}")
    if d_off[0] != 0 or d_off[n] != d_cci_cat.shape[0]:
        raise ValueError(f"d_off runs from {d_off[0]} to {d_off[n]}, expected 0 to len(d_cci_cat) = "
                         f"{d_cci_cat.shape[0]}")
    if rules.prefix and p_full.shape[0]:
        ids = np.asarray(p_full)
        if int(ids.max()) >= rules.n_proc or int(ids.min()) < -1:
            raise range_error("p_full", p_full, -1, rules.n_proc - 1)
    if n == 0:
        return
    C.pre_reason = pre_reason
    C.excluded = excluded
    C.sub_id = sub_id
    C.cat = cat
    C.p_off = p_off
    C.p_full = p_full
    C.p_base = p_base
    C.p_class = p_class
    C.p_level = p_level
    C.has_main = has_main
    C.total_fen = total_fen
    C.dmode = dmode
    C.los = los
    C.age_key = age_key
    C.d_off = d_off
    C.d_cci_cat = d_cci_cat
    C.d_cci_w = d_cci_w
    C.d_sev = d_sev
    C.group = out_group
    C.path = out_path
    C.reason = out_reason
    C.case_class = out_class
    C.aux = out_aux
    C.coef = out_coef
    C.n_p = p_full.shape[0]
    C.n_d = d_cci_cat.shape[0]
    if n_threads < 1:
        n_threads = 1
    for i in prange(n, nogil=True, schedule='static', num_threads=n_threads):
        err |= _group_one(rules, C, i)
    if err & E_P_OFF:
        raise offsets_error("p_off", p_off, 0, p_full.shape[0], "procedure entries p_full")
    if err & E_D_OFF:
        raise offsets_error("d_off", d_off, 0, d_cci_cat.shape[0], "secondary diagnoses d_cci_cat")
    if err & E_SUB_ID:
        raise range_error("sub_id", sub_id, -1, rules.n_sub - 1)
    if err & E_CAT:
        raise range_error("cat", cat, -1, rules.n_cat - 1)
    if err & E_P_CLASS:
        raise range_error("p_class", p_class, -128, N_CLASSES - 1)


def proc_csr(const int32_t[::1] m_idx not None, const int32_t[::1] m_full not None,
             const int32_t[::1] m_base not None, const int8_t[::1] m_cls not None, const int8_t[::1] m_lvl not None,
             const int64_t[::1] o_len not None, const int32_t[::1] o_idx not None, const int32_t[::1] o_full not None,
             const int32_t[::1] o_base not None, const int8_t[::1] o_cls not None, const int8_t[::1] o_lvl not None,
             int64_t[::1] p_off not None, int8_t[::1] has_main not None, int32_t[::1] p_full not None,
             int32_t[::1] p_base not None, int8_t[::1] p_class not None, int8_t[::1] p_level not None):
    """The per-case procedure CSR the kernel reads: the main procedure first, then the others.

    Parameters
    ----------
    m_idx : int32[n]
        Dictionary index of each case's main procedure (-1 none).
    m_full, m_base, m_cls, m_lvl
        Per distinct main procedure: full-code id, base-code id, class rank (-1 not counted),
        level.
    o_len : int64[n]
        Number of other procedures per case (>= 0, summing to ``len(o_idx)``); their dictionary
        indices ``o_idx`` follow case by case (-1 for a null element, which gets ids -1, class -1,
        level 0).
    o_full, o_base, o_cls, o_lvl
        The per-distinct-value tables of the other procedures' dictionary.
    p_off : int64[n + 1]
        Written: offsets of each case's entries.
    has_main : int8[n]
        Written: 1 when the case has a main procedure.
    p_full, p_base, p_class, p_level
        Written: one entry per procedure (length ``(m_idx >= 0).sum() + len(o_idx)``).

    Raises
    ------
    ValueError
        Lengths that disagree, an index outside its dictionary, or ``o_len`` not adding up.
    """
    cdef Py_ssize_t n = m_idx.shape[0], i
    cdef Py_ssize_t n_m = m_full.shape[0], n_o = o_full.shape[0], n_oi = o_idx.shape[0], n_p = p_full.shape[0]
    cdef int64_t k = 0, e = 0, t, ln
    cdef int32_t j
    cdef int err = 0
    for name, m in (("m_base", m_base), ("m_cls", m_cls), ("m_lvl", m_lvl)):
        check_len(name, len(m), n_m, "one per distinct main procedure, as m_full")
    for name, m in (("o_base", o_base), ("o_cls", o_cls), ("o_lvl", o_lvl)):
        check_len(name, len(m), n_o, "one per distinct other procedure, as o_full")
    check_len("o_len", o_len.shape[0], n, "one per case, as m_idx")
    check_len("has_main", has_main.shape[0], n, "one per case, as m_idx")
    check_len("p_off", p_off.shape[0], n + 1, "n + 1 offsets, n = len(m_idx)")
    for name, m in (("p_base", p_base), ("p_class", p_class), ("p_level", p_level)):
        check_len(name, len(m), n_p, "one per procedure entry, as p_full")
    with nogil:
        p_off[0] = 0
        for i in range(n):
            j = m_idx[i]
            if j >= 0:
                if j >= n_m:
                    err = 1
                    break
                if k >= n_p:
                    err = 4
                    break
                has_main[i] = 1
                p_full[k] = m_full[j]
                p_base[k] = m_base[j]
                p_class[k] = m_cls[j]
                p_level[k] = m_lvl[j]
                k += 1
            elif j == -1:
                has_main[i] = 0
            else:
                err = 1
                break
            ln = o_len[i]
            if ln < 0 or ln > n_oi - e:
                err = 2
                break
            if ln > n_p - k:
                err = 4
                break
            for t in range(ln):
                j = o_idx[e]
                e += 1
                if j >= 0 and j < n_o:
                    p_full[k] = o_full[j]
                    p_base[k] = o_base[j]
                    p_class[k] = o_cls[j]
                    p_level[k] = o_lvl[j]
                elif j == -1:
                    p_full[k] = -1
                    p_base[k] = -1
                    p_class[k] = -1
                    p_level[k] = 0
                else:
                    err = 3
                    break
                k += 1
            if err:
                break
            p_off[i + 1] = k
    if err == 0 and e != n_oi:
        err = 2
    if err == 0 and k != n_p:
        err = 4
    if err == 1:
        raise range_error("m_idx", m_idx, -1, n_m - 1)
    if err == 2:
        lens = np.asarray(o_len)
        if bool((lens < 0).any()):
            raise range_error("o_len", o_len, 0, n_oi)
        raise ValueError(f"o_len adds up to {int(lens.sum())}, expected len(o_idx) = {n_oi}")
    if err == 3:
        raise range_error("o_idx", o_idx, -1, n_o - 1)
    if err == 4:
        want = int(np.count_nonzero(np.asarray(m_idx) >= 0)) + n_oi
        raise ValueError(f"p_full has length {n_p}, expected {want} (one entry per main and other procedure)")


def case_codes(const int32_t[::1] dx_idx not None, const int32_t[::1] sub_u not None,
               const int32_t[::1] cat_u not None, const int8_t[::1] valid_u not None,
               const int8_t[::1] excl_u not None, const uint8_t[::1] rejected not None,
               const int32_t[::1] age not None, const int32_t[::1] age_days not None,
               int8_t invalid_dx, int8_t missing, int8_t kept,
               int32_t[::1] sub_id not None, int32_t[::1] cat not None, int8_t[::1] pre_reason not None,
               int8_t[::1] excluded not None, int32_t[::1] age_key not None):
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

    Raises
    ------
    ValueError
        Lengths that disagree, or a ``dx_idx`` outside the dictionary (``[-1, len(sub_u))``).
    """
    cdef Py_ssize_t n = dx_idx.shape[0], n_u = sub_u.shape[0], i
    cdef int32_t j
    cdef int8_t v, p
    cdef int64_t key
    cdef bint bad = False
    for name, m in (("cat_u", cat_u), ("valid_u", valid_u), ("excl_u", excl_u)):
        check_len(name, len(m), n_u, "one per distinct main diagnosis, as sub_u")
    for name, m in (("rejected", rejected), ("age", age), ("age_days", age_days), ("sub_id", sub_id),
                    ("cat", cat), ("pre_reason", pre_reason), ("excluded", excluded), ("age_key", age_key)):
        check_len(name, len(m), n, "one per case, as dx_idx")
    with nogil:
        for i in range(n):
            j = dx_idx[i]
            if j < 0 or j >= n_u:
                if j != -1:
                    bad = True
                    break
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
    if bad:
        raise range_error("dx_idx", dx_idx, -1, n_u - 1)


def secondary_codes(const int32_t[::1] d_idx not None, const int32_t[::1] cat_u not None,
                    const int32_t[::1] w_u not None, const int8_t[::1] sev_u not None,
                    int32_t[::1] d_cat not None, int32_t[::1] d_w not None, int8_t[::1] d_sev not None):
    """Per secondary diagnosis, from its dictionary index (-1 null) and per-distinct tables: CCI
    category (int32, -1 none), CCI weight (int32, 0) and severity level (int8, 0).

    Raises ``ValueError`` on lengths that disagree or a ``d_idx`` outside ``[-1, len(cat_u))``.
    """
    cdef Py_ssize_t n = d_idx.shape[0], n_u = cat_u.shape[0], i
    cdef int32_t j
    cdef bint bad = False
    for name, m in (("w_u", w_u), ("sev_u", sev_u)):
        check_len(name, len(m), n_u, "one per distinct secondary diagnosis, as cat_u")
    for name, m in (("d_cat", d_cat), ("d_w", d_w), ("d_sev", d_sev)):
        check_len(name, len(m), n, "one per secondary diagnosis, as d_idx")
    with nogil:
        for i in range(n):
            j = d_idx[i]
            if j < 0 or j >= n_u:
                if j != -1:
                    bad = True
                    break
                d_cat[i] = -1
                d_w[i] = 0
                d_sev[i] = 0
            else:
                d_cat[i] = cat_u[j]
                d_w[i] = w_u[j]
                d_sev[i] = sev_u[j]
    if bad:
        raise range_error("d_idx", d_idx, -1, n_u - 1)
