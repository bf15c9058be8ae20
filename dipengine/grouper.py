"""The DIP grouper front end: strings to integer codes through Arrow, then the Cython kernel.

:func:`group` takes the normalised case table (``reader.read_cases`` output) and returns the
grouping columns of contract §6.1, one row per case in input order. Codes are mapped to the
rule set's vocabulary per distinct value (``pc.index_in`` on a dictionary's uniques, then
``take``), never per row in Python; :func:`group_arrays` exposes the integer results
(``group_index`` etc.) for settlement. The pure-Python twin is :mod:`dipengine.reference`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine import codes as _codes
from dipengine import reasons as _reasons
from dipengine.arrays import string_buffers
from dipengine.io import read_table
from dipengine.rules import TREAT_CLASSES, RuleSet, cci_category_names, load_rules, longest_prefix

MATCH_PATHS = ("core", "basic", "comprehensive", "blank", "excluded", "rejected")
OUTPUT_COLUMNS = ("case_id", "dip_code", "dip_name", "group_type", "match_path", "treat_class", "base_score",
                  "aux_subtype", "aux_coef", "reason", "reason_detail")
# 医保版 extension of a procedure code: "51.2300x001" -> base "51.2300" ("56.0x00" has none)
_EXT = r"^([0-9]{2}\.[0-9A-Zx]{4})x[0-9]+$"
_MARK = 127  # pre-reason marker: the reader already rejected the row


# --------------------------------------------------------------------------- input


def _strings(col, n) -> pa.Array:
    if col is None:
        return pa.nulls(n, pa.string())
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(pa.string())


def _code_column(col, n) -> pa.DictionaryArray:
    """Dictionary-encoded, normalised codes (normalisation runs on the uniques only)."""
    arr = _strings(col, n)
    return _codes.normalize(pc.dictionary_encode(arr))


def _code_lists(col, n) -> pa.ListArray:
    """list<string> of normalised codes; a ``|``/``,`` separated string column is split."""
    if col is None:
        return pa.array([[]] * n, pa.list_(pa.string()))
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
        col = pc.split_pattern_regex(col.cast(pa.string()), r"[|,]")
    flat = pc.list_flatten(col)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int32)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = _codes.normalize(pc.dictionary_encode(_strings(flat, len(flat)))).dictionary_decode()
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string()))


def _ints(col, n, dtype, default=None) -> pa.Array:
    if col is None:
        return pa.array(np.full(n, default), dtype) if default is not None else pa.nulls(n, dtype)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    out = pc.cast(col, dtype)
    return pc.fill_null(out, default) if default is not None else out


def input_columns(schema: pa.Schema) -> list[str]:
    """The input columns ``dipengine group`` reads from a file of this schema (all it validates
    or carries through: every column but ``patient_id``)."""
    from dipengine.reader import lean_columns

    return lean_columns(schema)


def _lean_prepared(t: pa.Table) -> pa.Table:
    """A lean reader batch (``reader.LEAN_SCHEMA``, codes already normalised) as prepared columns."""
    from dipengine.reader import LEAN_COLUMNS

    return t.select(list(LEAN_COLUMNS))


def prepare_cases(cases, *, normalised: bool = False) -> pa.Table:
    """The columns the groupers read, typed and normalised (shared by both groupers).

    Returns ``case_id, main_dx, main_proc`` (dictionary<string>), ``other_dx, other_procs``
    (list<string>), ``total_cost_fen`` (int64, 0 when null), ``discharge_mode`` (int8,
    default 1), ``los, age, age_days`` (int32, nullable), ``reason, reason_detail`` (string;
    empty -> null). Absent columns take those defaults; codes are put in 医保版 normal form.

    With ``normalised=True``, ``cases`` is a lean batch of ``reader.iter_cases(lean=True)``
    (codes already normalised, lists of dictionary codes): its columns are used as they are.
    """
    t = read_table(cases)
    if normalised:
        return _lean_prepared(t)
    n = t.num_rows

    def col(name):
        return t[name] if name in t.column_names else None

    def text(name):
        arr = _strings(col(name), n)
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)

    return pa.table({
        "case_id": _strings(col("case_id"), n),
        "main_dx": _code_column(col("main_dx"), n),
        "main_proc": _code_column(col("main_proc"), n),
        "other_dx": _code_lists(col("other_dx"), n),
        "other_procs": _code_lists(col("other_procs"), n),
        "total_cost_fen": _ints(col("total_cost_fen"), n, pa.int64(), 0),
        "discharge_mode": _ints(col("discharge_mode"), n, pa.int8(), 1),
        "los": _ints(col("los"), n, pa.int32()),
        "age": _ints(col("age"), n, pa.int32()),
        "age_days": _ints(col("age_days"), n, pa.int32()),
        "reason": text("reason"),
        "reason_detail": text("reason_detail"),
    })


# --------------------------------------------------------------------------- messages
# The same texts are written by dipengine.reference (the agreement tests compare them).

def detail_missing() -> str:
    return "main_dx is empty"


def detail_invalid(code: str) -> str:
    return f"main_dx {code!r} is not a well-formed ICD-10 医保版 code"


def detail_excluded(code: str, prefix: str) -> str:
    return f"main_dx {code!r} is on the not-groupable list (excluded_dx.csv {prefix!r})"


def detail_no_group(code: str) -> str:
    return f"main_dx {code!r}: no group matched and the rule set has no blank group"


# --------------------------------------------------------------------------- encoding


def _np(arr, dtype, fill) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
        fill = int(fill)
    if arr.null_count:
        arr = pc.fill_null(arr, fill)
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=dtype)


def _class_rank(classes) -> np.ndarray:
    """Rank in ``TREAT_CLASSES`` of each treatment class name (int8; 0, conservative, when null)."""
    rank = pc.index_in(classes, value_set=pa.array(TREAT_CLASSES, pa.string()))
    return _np(rank, np.int8, 0)


def category_numbers(cats: pa.Array) -> np.ndarray:
    """:func:`dipengine.rules.category_number` of each 类目 key of a string array (int32, -1 none)."""
    out = np.full(len(cats), -1, np.int32)
    ok = _np(pc.match_substring_regex(cats, r"^[A-Z][0-9]{2}$"), bool, False)
    if ok.any():
        data, offsets, _ = string_buffers(cats)
        at = offsets[:-1][ok]
        digits = data[at + 1].astype(np.int32) * 10 + data[at + 2] - 11 * 48
        out[ok] = (data[at].astype(np.int32) - 65) * 100 + digits
    return out


def _proc_maps(u: pa.Array, rs: RuleSet):
    """Per distinct procedure code: full id, base id, class rank (-1 not counted), level."""
    comp = rs.compiled
    base = pc.replace_substring_regex(u, _EXT, r"\1")
    if rs.options["proc_prefix"]:
        # the longest expression code the procedure starts with (the kernel walks its prefixes)
        full_id = longest_prefix(u, comp.proc_vocab.to_pylist())
        base_id = np.full(len(u), -1, np.int32)
    else:
        full_id = _np(pc.index_in(u, value_set=comp.proc_vocab), np.int32, -1)
        base_id = _np(pc.index_in(base, value_set=comp.proc_vocab), np.int32, -1)
    pcodes = rs.procedures["code"]
    row = _np(pc.index_in(u, value_set=pcodes), np.int32, -1)
    row_b = _np(pc.index_in(base, value_set=pcodes), np.int32, -1)
    row = np.where(row >= 0, row, row_b)
    listed_cls = np.append(_class_rank(rs.procedures["class"]), 0).astype(np.int8)
    listed_lvl = np.append(rs.procedures["level"].to_numpy(zero_copy_only=False), 0).astype(np.int8)
    heur_cls = _class_rank(_codes.proc_class_heuristic(u))  # per unique
    cls = np.where(row >= 0, listed_cls[row], heur_cls).astype(np.int8)
    lvl = np.where(row >= 0, listed_lvl[row], 0).astype(np.int8)
    dropped = longest_prefix(u, rs.excluded_proc["code"].to_pylist()) >= 0
    cls[dropped | np.asarray(pc.is_null(u).to_numpy(zero_copy_only=False), bool)] = -1
    return full_id, base_id, cls, lvl


def _dx_maps(u: pa.Array, rs: RuleSet):
    """Per distinct main diagnosis: subcategory id, category number, valid (1/0/-1 null), excluded."""
    main = _codes.main_code(u)
    sub_u = _np(pc.index_in(_codes.subcategory(u), value_set=rs.compiled.sub_vocab), np.int32, -1)
    cat_u = category_numbers(_codes.category(u))
    valid_u = _np(_codes.is_valid_dx(u), np.int8, -1)
    excl_u = (longest_prefix(main, rs.excluded_dx["code"].to_pylist()) >= 0).astype(np.int8)
    return [sub_u, cat_u, valid_u, excl_u]


def _secondary_maps(u: pa.Array, rs: RuleSet):
    """Per distinct secondary diagnosis: CCI category (-1 none), CCI weight, severity level (0 none)."""
    comp = rs.compiled
    du = _codes.main_code(u)
    cci_names = cci_category_names(rs)
    cat_index = {c: k for k, c in enumerate(comp.cci_categories)}
    cci_row = longest_prefix(du, rs.cci_weights["dx_prefix"].to_pylist())
    cci_cat_of_row = np.array([cat_index[c] for c in cci_names] + [-1], np.int32)
    cci_w_of_row = np.append(rs.cci_weights["weight"].to_numpy(zero_copy_only=False), 0).astype(np.int32)
    sev_row = longest_prefix(du, rs.severity_dx["dx_prefix"].to_pylist())
    sev_of_row = np.append(rs.severity_dx["level"].to_numpy(zero_copy_only=False), 0).astype(np.int8)
    return [cci_cat_of_row[cci_row], cci_w_of_row[cci_row], sev_of_row[sev_row]]


_CACHE = None


def _cached(kind: str, u: pa.Array, rs: RuleSet, compute):
    """``compute(u, rs)``, computed once per dictionary (batches of one Parquet row group share
    theirs; see ``reader.DictionaryCache``) and rule set."""
    global _CACHE
    if _CACHE is None:
        from dipengine.reader import DictionaryCache

        _CACHE = DictionaryCache(32)
    owner, value = _CACHE.get((kind, id(rs)), u, lambda a: (rs, compute(a, rs)))
    # an entry keeps its rule set alive, so id(rs) cannot name another rule set while it exists
    return value if owner is rs else compute(u, rs)


def _map_dict(d: pa.DictionaryArray, per_unique: list[np.ndarray], fills: list):
    """Per-row values of per-unique arrays (``fills`` where the row is null)."""
    indices = d.indices
    if indices.null_count:
        idx = _np(indices, np.int64, -1)
        idx[idx < 0] = len(d.dictionary)  # the fill value, appended after the uniques
    else:
        idx = indices.to_numpy()
    out = []
    for arr, fill in zip(per_unique, fills):
        # all per-unique arrays have one entry per dictionary value
        a = np.append(arr, fill).astype(arr.dtype, copy=False).take(idx) if len(arr) else \
            np.full(len(idx), fill, arr.dtype)
        out.append(a)
    return out


def _case_codes(dx_idx, dx_maps, rejected, age, age_days):
    """``(sub_id, cat, pre_reason, excluded, age_key)`` per case, in one pass of
    ``_libs.grouping.case_codes``; :func:`_case_codes_numpy` is its plain twin.

    ``dx_idx``: int32 dictionary indices of the main diagnoses (-1 null); ``dx_maps``:
    :func:`_dx_maps` of their dictionary; ``rejected``: uint8, 1 where the reader gave a reason;
    ``age``, ``age_days``: int32 (-1 null).
    """
    from dipengine._libs.grouping import case_codes

    n = len(dx_idx)
    sub_id, cat, age_key = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32)
    pre, excluded = np.empty(n, np.int8), np.empty(n, np.int8)
    tabs = [np.ascontiguousarray(a, dt) for a, dt in zip(dx_maps, (np.int32, np.int32, np.int8, np.int8))]
    case_codes(np.ascontiguousarray(dx_idx, np.int32), *tabs, np.ascontiguousarray(rejected, np.uint8),
               np.ascontiguousarray(age, np.int32), np.ascontiguousarray(age_days, np.int32),
               _reasons.INVALID_DX, _reasons.MISSING_FIELD, _MARK, sub_id, cat, pre, excluded, age_key)
    return sub_id, cat, pre, excluded, age_key


def _case_codes_numpy(dx_idx, dx_maps, rejected, age, age_days):
    """:func:`_case_codes` with numpy gathers (the readable twin)."""
    dx_idx = np.asarray(dx_idx, np.int64)
    at = np.where(dx_idx < 0, len(dx_maps[0]), dx_idx)  # null rows read the fill appended below
    sub_id, cat, valid, excluded = (np.append(a, fill).astype(dt)[at] for a, fill, dt in
                                    zip(dx_maps, (-1, -1, -1, 0), (np.int32, np.int32, np.int8, np.int8)))
    pre = np.zeros(len(dx_idx), np.int8)
    pre[valid == 0] = _reasons.INVALID_DX
    pre[valid == -1] = _reasons.MISSING_FIELD
    pre[np.asarray(rejected, bool)] = _MARK
    age, age_days = np.asarray(age, np.int64), np.asarray(age_days, np.int64)
    age_key = np.where(age < 0, -1, np.where((age == 0) & (age_days >= 0), age_days,
                                             np.where(age == 0, -1, age * 365))).astype(np.int32)
    return sub_id, cat, pre, excluded, age_key


def _secondary_codes(d_idx, d_maps):
    """``(cci category, cci weight, severity)`` per secondary diagnosis (``_libs.grouping.secondary_codes``;
    the twin is :func:`_map_dict` with fills ``-1, 0, 0``). ``d_idx``: int32 dictionary indices
    (-1 null); ``d_maps``: :func:`_secondary_maps` of their dictionary."""
    from dipengine._libs.grouping import secondary_codes

    n = len(d_idx)
    d_cat, d_w, d_sev = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int8)
    tabs = [np.ascontiguousarray(a, dt) for a, dt in zip(d_maps, (np.int32, np.int32, np.int8))]
    secondary_codes(np.ascontiguousarray(d_idx, np.int32), *tabs, d_cat, d_w, d_sev)
    return d_cat, d_w, d_sev


def _flat_dict(lists: pa.ListArray):
    flat = pc.list_flatten(lists)
    if lists.null_count == 0 and isinstance(lists, pa.ListArray):  # lengths straight from the offsets
        lengths = np.diff(lists.offsets.to_numpy(zero_copy_only=False)).astype(np.int64)
    else:
        lengths = _np(pc.list_value_length(lists), np.int64, 0)
    return (flat if pa.types.is_dictionary(flat.type) else pc.dictionary_encode(flat)), lengths


_PROC_DTYPES = (np.int32, np.int32, np.int8, np.int8)  # full id, base id, class rank, level


def _proc_csr(m_idx, m_maps, o_len, o_idx, o_maps):
    """``(p_off, has_main, [full, base, class, level])``: the kernel's procedure CSR (main first).

    ``m_idx``/``o_idx``: int32 dictionary indices (-1 null) of the main procedures and of the
    flattened other procedures (``o_len`` int64 per case); ``*_maps``: :func:`_proc_maps` of
    their dictionaries. One pass in ``_libs.grouping.proc_csr``; :func:`_proc_csr_numpy` is
    its plain twin.
    """
    from dipengine._libs.grouping import proc_csr

    n = len(m_idx)
    o_len = np.ascontiguousarray(o_len, np.int64)
    if int(o_len.sum()) != len(o_idx):
        raise ValueError("o_len does not add up to the number of other procedures")
    total = int(np.count_nonzero(m_idx >= 0)) + len(o_idx)
    p_off = np.empty(n + 1, np.int64)
    has_main = np.empty(n, np.int8)
    cols = [np.empty(total, dt) for dt in _PROC_DTYPES]
    m_tabs = [np.ascontiguousarray(a, dt) for a, dt in zip(m_maps, _PROC_DTYPES)]
    o_tabs = [np.ascontiguousarray(a, dt) for a, dt in zip(o_maps, _PROC_DTYPES)]
    proc_csr(np.ascontiguousarray(m_idx, np.int32), *m_tabs, o_len, np.ascontiguousarray(o_idx, np.int32), *o_tabs,
             p_off, has_main, *cols)
    return p_off, has_main, cols


def _proc_csr_numpy(m_idx, m_maps, o_len, o_idx, o_maps):
    """:func:`_proc_csr` with numpy gathers and scatters (the readable twin)."""
    fills = (-1, -1, -1, 0)
    m_idx = np.asarray(m_idx, np.int64)
    o_idx = np.asarray(o_idx, np.int64)
    m_vals = [np.append(a, f).astype(dt)[np.where(m_idx < 0, len(a), m_idx)]
              for a, f, dt in zip(m_maps, fills, _PROC_DTYPES)]
    o_vals = [np.append(a, f).astype(dt)[np.where(o_idx < 0, len(a), o_idx)]
              for a, f, dt in zip(o_maps, fills, _PROC_DTYPES)]
    has_main = (m_idx >= 0).astype(np.int8)
    p_off = np.zeros(len(m_idx) + 1, np.int64)
    np.cumsum(np.asarray(o_len, np.int64) + has_main, out=p_off[1:])
    with_main = has_main == 1
    main_pos = p_off[:-1][with_main]
    is_main = np.zeros(int(p_off[-1]), bool)
    is_main[main_pos] = True
    other_pos = np.flatnonzero(~is_main)
    cols = []
    for m, o, dt in zip(m_vals, o_vals, _PROC_DTYPES):
        a = np.empty(len(is_main), dt)
        a[main_pos] = m[with_main]
        a[other_pos] = o
        cols.append(a)
    return p_off, has_main, cols


@dataclass
class GroupArrays:
    """Integer results of the kernel, one entry per case (see ``docs/grouping.md``).

    group_index int32 (row of ``rules.groups``, -1 none); match_path int8 (index into
    :data:`MATCH_PATHS`); reason int8 (:mod:`dipengine.reasons`, 127 = kept from the input);
    case_class int8 (rank in ``TREAT_CLASSES``, -1 when not grouped); aux_index int8 (index in
    ``rules.subtypes``, -1 none); aux_coef float64 (1.0 none).
    """

    group_index: np.ndarray
    match_path: np.ndarray
    reason: np.ndarray
    case_class: np.ndarray
    aux_index: np.ndarray
    aux_coef: np.ndarray


def encode(prep: pa.Table, rs: RuleSet) -> dict:
    """Integer arrays of the kernel's case inputs, from a :func:`prepare_cases` table."""
    n = prep.num_rows
    dx = prep["main_dx"].combine_chunks() if isinstance(prep["main_dx"], pa.ChunkedArray) else prep["main_dx"]
    sub_id, cat, pre, excluded, age_key = _case_codes(
        _np(dx.indices, np.int32, -1), _cached("dx", dx.dictionary, rs, _dx_maps),
        _np(pc.is_valid(prep["reason"]), np.uint8, 0), _np(prep["age"], np.int32, -1),
        _np(prep["age_days"], np.int32, -1))

    # procedures: CSR over [main_proc] + other_procs
    mp = prep["main_proc"].combine_chunks() if isinstance(prep["main_proc"], pa.ChunkedArray) else prep["main_proc"]
    op = prep["other_procs"].combine_chunks() if isinstance(prep["other_procs"], pa.ChunkedArray) else prep["other_procs"]
    od, olen = _flat_dict(op)
    m_maps = _cached("proc", mp.dictionary, rs, _proc_maps)
    o_maps = _cached("proc", od.dictionary, rs, _proc_maps)
    p_off, has_main, cols = _proc_csr(_np(mp.indices, np.int32, -1), m_maps, olen, _np(od.indices, np.int32, -1),
                                      o_maps)

    # secondary diagnoses: CCI category and weight, severity level
    sd = prep["other_dx"].combine_chunks() if isinstance(prep["other_dx"], pa.ChunkedArray) else prep["other_dx"]
    dd, dlen = _flat_dict(sd)
    d_cat, d_w, d_sev = _secondary_codes(_np(dd.indices, np.int32, -1), _cached("dx2", dd.dictionary, rs,
                                                                                _secondary_maps))
    d_off = np.zeros(n + 1, np.int64)
    np.cumsum(dlen, out=d_off[1:])

    return {
        "pre_reason": pre, "excluded": excluded, "sub_id": sub_id, "cat": cat,
        "p_off": p_off, "p_full": cols[0], "p_base": cols[1], "p_class": cols[2], "p_level": cols[3],
        "has_main": has_main,
        "total_fen": _np(prep["total_cost_fen"], np.int64, 0), "dmode": _np(prep["discharge_mode"], np.int8, 1),
        "los": _np(prep["los"], np.int32, -1), "age_key": age_key,
        "d_off": d_off, "d_cci_cat": d_cat, "d_cci_w": d_w, "d_sev": d_sev,
    }


def effective_threads(n_threads, n_cases: int) -> int:
    """Threads to use: ``n_threads`` if given, else OMP_NUM_THREADS or the CPUs available;
    one thread for small batches (under 20,000 cases)."""
    if n_threads is not None:
        return max(1, int(n_threads))
    if n_cases < 20_000:
        return 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def kernel_rules(rs: RuleSet):
    """The rule set's :class:`dipengine._libs.grouping.CompiledRules`: ``rs.compiled``'s flat
    arrays, checked and copied once, then cached on ``rs.compiled`` (a new ``Compiled`` object, as
    a fresh compile or a cache load makes, gets its own)."""
    c = rs.compiled
    k = c.__dict__.get("_kernel_rules")
    if k is None:
        from dipengine._libs.grouping import CompiledRules

        k = CompiledRules(
            sub_off=c.sub_off, sub_cand=c.sub_cand, sub_cons=c.sub_cons, g_type=c.g_type, g_rank=c.g_rank,
            g_avg_fen=c.g_avg_fen, g_term_off=c.g_term_off, term_off=c.term_off, term_codes=c.term_codes,
            comp_lookup=c.comp_lookup, blank=int(c.blank), aux_off=c.aux_off, aux_sub=c.aux_sub,
            aux_coef=c.aux_coef, band_lo=c.band_lo, band_hi=c.band_hi, cci_cuts=c.cci_cuts,
            match_all=int(c.match_all), sev_los=int(c.severity_min_los), death_mode=int(c.death_mode),
            cons_max_class=int(c.cons_max_class), cons_max_level=int(c.cons_max_level), comp_rank=c.comp_rank,
            tie_order=c.tie_order, proc_parent=c.proc_parent, main_any=int(c.main_any))
        c.__dict__["_kernel_rules"] = k  # not a dataclass field: never written to the rules cache
    return k


def run_kernel(enc: dict, rs: RuleSet, n_threads: int = 1) -> GroupArrays:
    """Run the Cython kernel on encoded cases (numpy arrays only; usable from benchmarks)."""
    from dipengine._libs.grouping import group_cases

    n = len(enc["pre_reason"])
    out = GroupArrays(np.full(n, -1, np.int32), np.zeros(n, np.int8), np.zeros(n, np.int8),
                      np.full(n, -1, np.int8), np.full(n, -1, np.int8), np.ones(n, np.float64))
    group_cases(kernel_rules(rs), **enc, out_group=out.group_index, out_path=out.match_path, out_reason=out.reason,
                out_class=out.case_class, out_aux=out.aux_index, out_coef=out.aux_coef, n_threads=int(n_threads))
    return out


def group_arrays(cases, rules, *, n_threads=None) -> GroupArrays:
    """Group and return the integer results (for settlement): see :class:`GroupArrays`."""
    rs = rules if isinstance(rules, RuleSet) else load_rules(rules)
    prep = cases if _is_prepared(cases) else prepare_cases(cases)
    return run_kernel(encode(prep, rs), rs, effective_threads(n_threads, prep.num_rows))


def _is_prepared(t) -> bool:
    return isinstance(t, pa.Table) and t.column_names == [
        "case_id", "main_dx", "main_proc", "other_dx", "other_procs", "total_cost_fen", "discharge_mode",
        "los", "age", "age_days", "reason", "reason_detail"]


# --------------------------------------------------------------------------- output


def _detail_texts(u: pa.Array, rs: RuleSet):
    """Per distinct main_dx: texts for INVALID_DX, EXCLUDED_DX and NO_GROUP."""
    main = _codes.main_code(u)
    prefixes = rs.excluded_dx["code"].to_pylist()
    row = longest_prefix(main, prefixes)
    vals = u.to_pylist()
    inv = [detail_invalid(v) if v is not None else None for v in vals]
    exc = [detail_excluded(v, prefixes[r]) if r >= 0 and v is not None else None for v, r in zip(vals, row)]
    nog = [detail_no_group(v) if v is not None else None for v in vals]
    return pa.array(inv, pa.string()), pa.array(exc, pa.string()), pa.array(nog, pa.string())


def _dict_indices(indices: np.ndarray) -> pa.Array:
    """int32 dictionary indices (index -1 -> null)."""
    none = indices < 0
    if not none.any():
        return pa.array(indices.astype(np.int32, copy=False), pa.int32())
    return pa.array(np.where(none, 0, indices).astype(np.int32), pa.int32(), mask=none)


def _dict(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    """values[indices] as a dictionary array (index -1 -> null): no string copied per row."""
    return pa.DictionaryArray.from_arrays(_dict_indices(indices), values, safe=False)


def _chunk(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _assemble_dictionary(prep: pa.Table, res: GroupArrays, rs: RuleSet, reason, detail) -> pa.Table:
    """:func:`assemble`'s table with the low-cardinality text columns as dictionary arrays."""
    groups = rs.groups
    gi = res.group_index
    none = gi < 0
    g_cls = np.append(rs.compiled.g_class, -1).astype(np.int32)  # treat_class rank per group, -1 none
    treat = np.where(res.match_path == 3, res.case_class, g_cls[np.where(none, len(g_cls) - 1, gi)])
    score = np.append(groups["score"].to_numpy(), 0.0)
    g_idx = _dict_indices(gi)  # shared by the three group columns
    return pa.table({
        "case_id": prep["case_id"],
        "dip_code": pa.DictionaryArray.from_arrays(g_idx, _chunk(groups["dip_code"]), safe=False),
        "dip_name": pa.DictionaryArray.from_arrays(g_idx, _chunk(groups["dip_name"]), safe=False),
        "group_type": pa.DictionaryArray.from_arrays(g_idx, _chunk(groups["group_type"]), safe=False),
        "match_path": _dict(res.match_path, pa.array(MATCH_PATHS, pa.string())),
        "treat_class": _dict(treat, pa.array(TREAT_CLASSES, pa.string())),
        "base_score": pa.array(score[np.where(none, len(score) - 1, gi)], pa.float64()),
        "aux_subtype": _dict(res.aux_index, pa.array(rs.subtypes, pa.string())),
        "aux_coef": pa.array(res.aux_coef, pa.float64()),
        "reason": reason,
        "reason_detail": detail,
    })


def assemble(prep: pa.Table, res: GroupArrays, rs: RuleSet, *, dictionary: bool = False) -> pa.Table:
    """The contract §6.1 columns from the kernel results (vectorised).

    With ``dictionary=True`` the text columns ``dip_code, dip_name, group_type, match_path,
    treat_class, aux_subtype`` are dictionary arrays (same values; cheap to build and to write).
    """
    reason_in = prep["reason"].combine_chunks() if isinstance(prep["reason"], pa.ChunkedArray) else prep["reason"]
    own = np.where(res.reason == _MARK, 0, res.reason)
    own_any = bool(own.any())  # usually not: the reader has rejected the bad rows already
    if own_any or not pa.types.is_string(reason_in.type):
        reason = pc.coalesce(reason_in, _reasons.to_strings(own)).cast(pa.string())
    else:
        reason = reason_in

    # the grouper's own detail text: one take over [invalid | excluded | no group | missing] texts
    dx = prep["main_dx"].combine_chunks() if isinstance(prep["main_dx"], pa.ChunkedArray) else prep["main_dx"]
    if own_any:
        inv_u, exc_u, nog_u = _cached("detail", dx.dictionary, rs, _detail_texts)
        nu = len(inv_u)
        pick = np.full(len(own), -1, np.int64)
        idx = _np(dx.indices, np.int64, -1)
        for k, code in enumerate((_reasons.INVALID_DX, _reasons.EXCLUDED_DX, _reasons.NO_GROUP)):
            m = (own == code) & (idx >= 0)
            pick[m] = k * nu + idx[m]
        pick[own == _reasons.MISSING_FIELD] = 3 * nu
        texts = pa.concat_arrays([inv_u, exc_u, nog_u, pa.array([detail_missing()], pa.string())])
        new = texts.take(pa.array(pick, mask=pick < 0))
    else:
        new = pa.nulls(len(own), pa.string())
    old = prep["reason_detail"].combine_chunks() if isinstance(prep["reason_detail"], pa.ChunkedArray) else prep["reason_detail"]
    if own_any or not pa.types.is_string(old.type):
        detail = pc.coalesce(pc.binary_join_element_wise(old, new, pa.scalar("; ")), old, new)
    else:
        detail = old  # nothing to append
    if dictionary:
        return _assemble_dictionary(prep, res, rs, reason, detail)

    gi = res.group_index
    none = gi < 0
    gidx = pa.array(gi, mask=none)
    groups = rs.groups
    path = res.match_path
    blank = path == 3
    case_cls = pa.array(TREAT_CLASSES).take(pa.array(res.case_class, mask=res.case_class < 0))
    treat = pc.if_else(pa.array(blank), case_cls, groups["treat_class"].combine_chunks().take(gidx))
    treat = pc.if_else(pc.equal(treat, ""), pa.scalar(None, pa.string()), treat)
    score = groups["score"].to_numpy()
    base_score = np.where(none, 0.0, score[np.where(none, 0, gi)] if len(score) else 0.0)
    subtypes = pa.array(rs.subtypes, pa.string())
    aux = subtypes.take(pa.array(res.aux_index, mask=res.aux_index < 0))

    return pa.table({
        "case_id": prep["case_id"],
        "dip_code": groups["dip_code"].combine_chunks().take(gidx),
        "dip_name": groups["dip_name"].combine_chunks().take(gidx),
        "group_type": groups["group_type"].combine_chunks().take(gidx),
        "match_path": pa.array(MATCH_PATHS, pa.string()).take(pa.array(path.astype(np.int64))),
        "treat_class": treat,
        "base_score": pa.array(base_score, pa.float64()),
        "aux_subtype": aux,
        "aux_coef": pa.array(res.aux_coef, pa.float64()),
        "reason": reason,
        "reason_detail": detail,
    })


def output_schema(dictionary: bool = False) -> pa.Schema:
    """Arrow schema of the grouping output (:data:`OUTPUT_COLUMNS`)."""
    text = pa.dictionary(pa.int32(), pa.string()) if dictionary else pa.string()
    return pa.schema([("case_id", pa.string()), ("dip_code", text), ("dip_name", text), ("group_type", text),
                      ("match_path", text), ("treat_class", text), ("base_score", pa.float64()),
                      ("aux_subtype", text), ("aux_coef", pa.float64()), ("reason", pa.string()),
                      ("reason_detail", pa.string())])


def _prefetch(iterator, depth: int = 2):
    """Run ``iterator`` in a background thread, ``depth`` items ahead (order kept; errors re-raised).

    Arrow and numpy release the GIL, so reading and validating the next batch overlaps with
    grouping and writing this one.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # handed to the consumer
            q.put((done, e))

    worker = threading.Thread(target=run, name="dipengine-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        worker.join()


def group_stream(batches, rules, *, n_threads=None, dictionary: bool = False, prefetch: int = 2):
    """Group a stream of normalised case batches (``reader.iter_cases``), batch by batch.

    Yields ``(cases_batch, output_table, GroupArrays)`` per batch, in order; the output is that
    of :func:`group` (with ``dictionary=True``: :func:`assemble`'s dictionary columns, same
    values). Results do not depend on how the input is split. With ``prefetch > 0`` the input
    iterator runs that many batches ahead in a background thread.
    """
    rs = rules if isinstance(rules, RuleSet) else load_rules(rules)
    source = _prefetch(iter(batches), prefetch) if prefetch > 0 else batches
    for batch in source:
        out, res = group_batch(batch, rs, n_threads=n_threads, dictionary=dictionary)
        yield batch, out, res


def group_batch(batch, rs: RuleSet, *, n_threads=None, dictionary: bool = False, normalised: bool = False):
    """Group one batch of normalised cases: ``(output table, GroupArrays)``.

    ``normalised=True`` takes a lean batch of ``reader.iter_cases(lean=True)`` /
    ``reader.map_cases(lean=True)`` as it is (see :func:`prepare_cases`). Thread-safe: the
    CLI runs it on several batches at once.
    """
    prep = prepare_cases(batch, normalised=normalised)
    res = run_kernel(encode(prep, rs), rs, effective_threads(n_threads, prep.num_rows))
    return assemble(prep, res, rs, dictionary=dictionary), res


def group(cases, rules, *, n_threads=None, explain=False):
    """Group cases into DIP groups (dip-rules §2-3; contract §6.1).

    Parameters
    ----------
    cases : pa.Table, pa.RecordBatch or pandas.DataFrame
        The normalised case table (``reader.read_cases``); missing optional columns take
        the defaults of :func:`prepare_cases`.
    rules : RuleSet or path
        A loaded rule set (compiled once) or its directory.
    n_threads : int, optional
        Kernel threads (default: all available; one for small batches). Results never
        depend on it.
    explain : bool
        Also return a ``trace`` column (text, from the pure-Python reference; slow, meant for
        a few cases).

    Returns
    -------
    Same kind as ``cases``: ``case_id, dip_code, dip_name, group_type, match_path,
    treat_class, base_score`` (float64 points, 0.0 when no group), ``aux_subtype``,
    ``aux_coef`` (float64, 1.0 when none), ``reason``, ``reason_detail`` — one row per case,
    in input order.
    """
    rs = rules if isinstance(rules, RuleSet) else load_rules(rules)
    prep = prepare_cases(cases)
    res = run_kernel(encode(prep, rs), rs, effective_threads(n_threads, prep.num_rows))
    out = assemble(prep, res, rs)
    if explain:
        from dipengine.reference import group_case

        traces = ["\n".join(group_case(c, rs)["trace"]) for c in prep.to_pylist()]
        out = out.append_column("trace", pa.array(traces, pa.string()))
    if isinstance(cases, pa.RecordBatch):
        return out.combine_chunks().to_batches()[0] if out.num_rows else pa.RecordBatch.from_pylist([], schema=out.schema)
    if type(cases).__name__ == "DataFrame":
        return out.to_pandas()
    return out
