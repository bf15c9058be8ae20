"""Case points (dip-rules §6): coefficients, cost deviation, locality and fund pool per case.

:func:`case_points` works column-wise on the normalised case table and the grouping output
(docs/architecture.md) and never loops in Python per case: strings become integer codes through
Arrow (``pc.index_in``), the arithmetic runs in :func:`dipengine._libs.scoring.score_cases`.
:func:`points_one` is the plain, readable twin of that kernel for one case, and
:func:`case_points_reference` applies it row by row; the tests hold the two paths equal.

Points are fixed-point: each case's points are rounded half up to 4 decimals and carried as
``points_e4`` (int64, 1/10,000 point) so every total is an exact integer sum (contract §8.5).
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine._libs.scoring import score_cases
from dipengine.errors import DataError
from dipengine.money import yuan_float_to_fen, yuan_to_fen
from dipengine.policy import POOLS, Policy, check_reference_table

LOCALITIES = ("local", "in_province", "cross_province")
DEVIATIONS = ("normal", "low", "high", "extreme")
REF_SOURCES = ("same_level", "group_avg", "none")
SCORED_PATHS = ("core", "basic", "comprehensive", "blank")
GROUPING_COLUMNS = ("case_id", "dip_code", "dip_name", "group_type", "match_path", "treat_class",
                    "base_score", "aux_subtype", "aux_coef", "reason", "reason_detail")
_REMOTE_ALLOWED = {"none": (0,), "in_province": (0, 1), "all": (0, 1, 2)}


def _np(col, dtype, fill):
    """A column as a contiguous numpy array of ``dtype`` with nulls replaced by ``fill``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        col = pc.fill_null(col, fill)
    return np.ascontiguousarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _codes(values, vocab) -> np.ndarray:
    """int32 index of each value in ``vocab`` (-1 when absent or null), via Arrow."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        idx = pc.index_in(values.dictionary.cast(pa.string()), value_set=vocab)
        idx = pc.take(idx, values.indices)
    else:
        idx = pc.index_in(values.cast(pa.string()), value_set=vocab)
    return _np(idx, np.int32, -1)


def _strings(codes: np.ndarray, names) -> pa.Array:
    """int codes -> Arrow strings (null where the code is -1)."""
    dictionary = pa.array(list(names), type=pa.string())
    mask = codes < 0
    return dictionary.take(pa.array(np.where(mask, 0, codes), mask=mask)).cast(pa.string())


def _as_table(obj) -> pa.Table:
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    return pa.Table.from_pandas(obj, preserve_index=False)


def reference_costs(dip_code, level, policy: Policy, same_level_avg=None, groups=None, pool=None):
    """Reference cost (fen) of each case and where it came from.

    The same-level average of the case's group at its hospital's level (and, with
    ``[deviation] reference_by = "level_pool"``, in the case's fund pool); when that row is
    missing, the group's ``avg_cost`` in the rule set (``groups``); else none (0).

    Parameters
    ----------
    pool : int ndarray, optional
        Index of each case's pool in :data:`dipengine.policy.POOLS` (-1 none); required with
        ``reference_by = "level_pool"`` (a case without a pool has no same-level row).

    Returns
    -------
    ref_fen : int64 ndarray (0 = none)
    ref_source : int8 ndarray (0 same_level, 1 group_avg, 2 none)
    """
    sla = policy.same_level_avg if same_level_avg is None else same_level_avg
    by_pool = policy.deviation.reference_by == "level_pool"
    if same_level_avg is not None:
        check_reference_table(policy.deviation.reference_by, sla, name="same_level_avg")
    if by_pool and pool is None:
        raise ValueError('reference_by = "level_pool" needs each case\'s pool')
    parts = [sla["dip_code"].combine_chunks()]
    if groups is not None:
        parts.append(groups["dip_code"].combine_chunks().cast(pa.string()))
    vocab = pc.unique(pa.concat_arrays([p.cast(pa.string()) for p in parts]))
    n_g = len(vocab)
    # column level (+ 4 × pool with reference_by = "level_pool"); the last column stays 0 (no pool);
    # row n_g: unknown group
    table = np.zeros((n_g + 1, 9 if by_pool else 4), dtype=np.int64)
    g = _codes(sla["dip_code"], vocab)
    col = _np(sla["level"], np.int64, 0)
    if by_pool:
        sla_pool = _codes(sla["pool"], pa.array(POOLS)).astype(np.int64)
        if (sla_pool < 0).any():
            i = int(np.flatnonzero(sla_pool < 0)[0])
            raise DataError(f"pool must be {' or '.join(POOLS)}", file="same_level_avg", column="pool",
                            value=sla["pool"][i].as_py())
        col = col + 4 * sla_pool
    table[g, col] = _np(sla["avg_cost_fen"], np.int64, 0)
    fallback = np.zeros(n_g + 1, dtype=np.int64)
    if groups is not None:
        fb, _ = yuan_to_fen(groups["avg_cost"])  # yuan -> fen, exact, half up (as the compiled rules)
        fallback[_codes(groups["dip_code"], vocab)] = np.where(fb > 0, fb, 0)
    case_g = _codes(dip_code, vocab)
    case_g = np.where(case_g < 0, n_g, case_g)
    lvl = np.clip(level.astype(np.int64), 0, 3)
    if by_pool:
        p = np.asarray(pool, dtype=np.int64)
        lvl = np.where(p >= 0, lvl + 4 * p, 8)
    same = table[case_g, lvl]
    fb = fallback[case_g]
    ref = np.where(same > 0, same, fb)
    source = np.where(same > 0, 0, np.where(fb > 0, 1, 2)).astype(np.int8)
    return ref.astype(np.int64), source


def case_points(cases, grouped, hospitals, policy: Policy, same_level_avg=None, *, groups=None) -> pa.Table:
    """Score grouped cases: level, locality, pool, deviation ratio and class, case points.

    Parameters
    ----------
    cases : pa.Table
        Normalised case table (``hospital_id``, ``insurance_type``, ``insured_region``,
        ``total_cost_fen`` int64, ``patient_paid_fen``, ``fund_paid_fen``, ``reason``).
    grouped : pa.Table
        Grouping output of the same rows, in the same order (contract §6.1).
    hospitals : pa.Table
        The registry (:func:`dipengine.hospitals.read_hospitals`).
    policy : Policy
    same_level_avg : pa.Table, optional
        Reference costs (``dip_code, level, avg_cost_fen``, and ``pool`` with ``[deviation]
        reference_by = "level_pool"``); default ``policy.same_level_avg``.
    groups : pa.Table, optional
        The rule set's groups (``dip_code``, ``avg_cost`` yuan): fallback reference cost.

    Returns
    -------
    pa.Table
        The grouping columns plus ``hospital_id``, ``level`` int8, ``locality``, ``pool``,
        ``in_pool`` bool, ``ratio`` float64 (total cost / reference), ``deviation``,
        ``special_review`` bool (extreme cases), ``ref_source``, ``level_coef`` float64,
        ``case_points`` float64 and ``points_e4`` int64 (case points × 10,000, exact).
        Rejected and excluded rows keep their place with zero points; a hospital missing from
        the registry rejects the row with ``UNKNOWN_HOSPITAL``. Extra grouping columns are kept.
    """
    cases = _as_table(cases)
    grouped = _as_table(grouped)
    if cases.num_rows != grouped.num_rows:
        raise ValueError(f"cases has {cases.num_rows} rows but grouped has {grouped.num_rows}")
    n = cases.num_rows
    hosp_ids = hospitals["hospital_id"].combine_chunks()
    h = _codes(cases["hospital_id"], hosp_ids)
    known = h >= 0
    hh = np.where(known, h, 0)
    h_level = _np(hospitals["level"], np.int8, 0)
    h_coef = _np(hospitals["coefficient"], np.float64, np.nan)
    level = np.where(known, h_level[hh] if len(h_level) else 0, 0).astype(np.int8)

    # locality from insured_region vs the hospital's region (contract §3), on strings via Arrow
    h_region = hospitals["region"].combine_chunks()
    case_hregion = pc.take(h_region, pa.array(np.where(known, h, 0).astype(np.int32), mask=~known)) \
        if len(h_region) else pa.nulls(n, pa.string())
    ins = cases["insured_region"].combine_chunks().cast(pa.string())
    same_region = _np(pc.equal(ins, case_hregion), np.bool_, False)
    same_prov = _np(pc.equal(pc.utf8_slice_codeunits(ins, 0, 2),
                             pc.utf8_slice_codeunits(case_hregion, 0, 2)), np.bool_, False)
    has_loc = _np(pc.and_(pc.is_valid(ins), pc.is_valid(case_hregion)), np.bool_, False)
    locality = np.where(same_region, 0, np.where(same_prov, 1, 2)).astype(np.int8)
    locality[~has_loc] = -1

    pool = _codes(cases["insurance_type"], pa.array(POOLS))

    # which rows carry points: grouped, not rejected, hospital known
    path = grouped["match_path"].combine_chunks().cast(pa.string())
    scored = _np(pc.is_in(path, pa.array(SCORED_PATHS)), np.bool_, False)
    reason = grouped["reason"].combine_chunks().cast(pa.string())
    reason_detail = grouped["reason_detail"].combine_chunks().cast(pa.string())
    newly_unknown = scored & ~known
    if newly_unknown.any():
        reason = pc.if_else(pa.array(newly_unknown), pa.scalar("UNKNOWN_HOSPITAL"), reason)
        reason_detail = pc.if_else(
            pa.array(newly_unknown),
            pc.binary_join_element_wise(pa.scalar("hospital_id: "),
                                        pc.fill_null(cases["hospital_id"].combine_chunks().cast(pa.string()), ""),
                                        pa.scalar(" is not in the hospital registry"), ""),
            reason_detail)
        path = pc.if_else(pa.array(newly_unknown), pa.scalar("rejected"), path)
    scored &= known
    gtype = grouped["group_type"].combine_chunks().cast(pa.string())
    is_blank = _np(pc.equal(path, "blank"), np.bool_, False) | _np(pc.equal(gtype, "blank"), np.bool_, False)
    is_basic = _np(pc.equal(gtype, "basic"), np.bool_, False)
    kind = np.where(scored, np.where(is_blank, 2, 1), 0).astype(np.int8)

    lc = np.array([0.0] + [policy.level_coef[lv] for lv in (1, 2, 3)])
    level_coef = lc[level]
    inst = np.where(known, h_coef[hh] if len(h_coef) else np.nan, np.nan)
    level_coef = np.where(np.isnan(inst), level_coef, inst)
    level_coef = np.where(is_basic, policy.basic_group_coef, level_coef)
    level_coef = np.where(scored, level_coef, np.nan)

    ref_fen, ref_source = reference_costs(grouped["dip_code"], level, policy, same_level_avg, groups, pool)
    ref_source = np.where(scored, ref_source, -1).astype(np.int8)

    d = policy.deviation
    thresholds = [np.array([0.0] + [t[lv] for lv in (1, 2, 3)]) for t in (d.low_ratio, d.high_ratio, d.extreme_ratio)]
    ratio = np.empty(n, dtype=np.float64)
    deviation = np.empty(n, dtype=np.int8)
    points_e4 = np.empty(n, dtype=np.int64)
    score_cases(
        kind,
        _np(grouped["base_score"], np.float64, 0.0),
        _np(grouped["aux_coef"], np.float64, 1.0),
        np.ascontiguousarray(np.nan_to_num(level_coef, nan=0.0)),
        _np(cases["total_cost_fen"], np.int64, 0),
        ref_fen,
        level,
        *thresholds,
        0 if d.high_formula == "ratio_minus_1" else 1,
        d.apply_level_coef_to_outliers,
        d.blank_group_factor,
        0 if d.extreme_rule == "high_formula" else 1,
        d.low_inclusive,
        d.high_inclusive,
        ratio,
        deviation,
        points_e4,
    )
    allowed = np.isin(locality, _REMOTE_ALLOWED[policy.include_remote])
    in_pool = scored & (pool >= 0) & allowed

    cols = {}
    for name in grouped.column_names:
        cols[name] = grouped[name]
    cols["match_path"] = path
    cols["reason"] = reason
    cols["reason_detail"] = reason_detail
    cols["hospital_id"] = cases["hospital_id"]
    cols["level"] = pa.array(level, mask=~known)
    cols["locality"] = _strings(locality, LOCALITIES)
    cols["pool"] = _strings(pool, POOLS)
    cols["in_pool"] = pa.array(in_pool)
    cols["ratio"] = pa.array(ratio, mask=np.isnan(ratio))
    cols["deviation"] = _strings(deviation, DEVIATIONS)
    cols["special_review"] = pa.array(deviation == 3)
    cols["ref_source"] = _strings(ref_source, REF_SOURCES)
    cols["level_coef"] = pa.array(level_coef, mask=np.isnan(level_coef))
    cols["case_points"] = pa.array(points_e4 / 10000.0)
    cols["points_e4"] = pa.array(points_e4)
    return pa.table(cols)


# --------------------------------------------------------------------------------------------
# The readable twin


def points_one(*, kind: str, base_score: float, aux_coef: float, level_coef: float,
               total_cost_fen: int, ref_fen: int, level: int, policy: Policy):
    """One case's ratio, deviation class and points ×10,000, straight from dip-rules §6.4.

    ``kind`` is ``"none"`` (rejected/excluded), ``"group"`` or ``"blank"``.
    Returns ``(ratio or nan, deviation name or None, points_e4 int)``.
    """
    if kind == "none":
        return math.nan, None, 0
    d = policy.deviation
    lv = level if level in (1, 2, 3) else 3
    ratio = total_cost_fen / ref_fen if ref_fen > 0 else math.nan
    deviation = "normal"
    if not math.isnan(ratio):
        low = d.low_ratio[lv]
        if ratio < low or (d.low_inclusive and ratio == low):
            deviation = "low"
        elif ratio > d.extreme_ratio[lv]:
            deviation = "extreme"
        elif ratio > d.high_ratio[lv] or (d.high_inclusive and ratio == d.high_ratio[lv]):
            deviation = "high"
    outlier_coef = level_coef if d.apply_level_coef_to_outliers else 1.0
    if kind == "blank":
        points = base_score * d.blank_group_factor * (1.0 if math.isnan(ratio) else ratio)
    elif deviation == "low":
        points = base_score * ratio * outlier_coef
    elif deviation == "high" or (deviation == "extreme" and d.extreme_rule == "high_formula"):
        if d.high_formula == "ratio_minus_1":
            points = base_score * (ratio - 1.0) * outlier_coef
        else:
            points = base_score * (ratio - 2.0 + level_coef)
    else:  # normal, or extreme paid as normal pending special review
        points = base_score * aux_coef * level_coef
    return ratio, deviation, int(math.floor(points * 10000.0 + 0.5))


def case_points_reference(cases, grouped, hospitals, policy: Policy, same_level_avg=None, *,
                          groups=None) -> list[dict]:
    """Row-by-row twin of :func:`case_points` (small inputs only; for tests and explanations).

    Returns one dict per case with ``level, locality, pool, in_pool, ratio, deviation,
    ref_source, level_coef, points_e4``.
    """
    cases = _as_table(cases).to_pylist()
    grouped = _as_table(grouped).to_pylist()
    registry = {r["hospital_id"]: r for r in hospitals.to_pylist()}
    sla = policy.same_level_avg if same_level_avg is None else same_level_avg
    by_pool = policy.deviation.reference_by == "level_pool"
    if same_level_avg is not None:
        check_reference_table(policy.deviation.reference_by, sla, name="same_level_avg")
    same_level = {(r["dip_code"], r["level"], r["pool"] if by_pool else None): r["avg_cost_fen"]
                  for r in sla.to_pylist()}
    group_avg = {}
    if groups is not None:
        for r in groups.to_pylist():
            fen = yuan_float_to_fen(r["avg_cost"]) if r["avg_cost"] is not None else 0
            group_avg[r["dip_code"]] = fen if fen > 0 else 0
    allowed = {"none": {"local"}, "in_province": {"local", "in_province"},
               "all": {"local", "in_province", "cross_province"}}[policy.include_remote]
    out = []
    for case, g in zip(cases, grouped):
        hosp = registry.get(case["hospital_id"])
        scored = g["match_path"] in SCORED_PATHS and hosp is not None
        level = hosp["level"] if hosp else None
        locality = None
        if hosp and case["insured_region"] and hosp["region"]:
            if case["insured_region"] == hosp["region"]:
                locality = "local"
            elif case["insured_region"][:2] == hosp["region"][:2]:
                locality = "in_province"
            else:
                locality = "cross_province"
        pool = case["insurance_type"] if case["insurance_type"] in POOLS else None
        if not scored:
            out.append(dict(level=level, locality=locality, pool=pool, in_pool=False, ratio=math.nan,
                            deviation=None, ref_source=None, level_coef=math.nan, points_e4=0))
            continue
        if g["group_type"] == "basic":
            coef = policy.basic_group_coef
        elif hosp["coefficient"] is not None and not math.isnan(hosp["coefficient"]):
            coef = hosp["coefficient"]
        else:
            coef = policy.level_coef[level]
        ref = same_level.get((g["dip_code"], level, pool if by_pool else None), 0)  # no pool: no row
        source = "same_level"
        if ref <= 0:
            ref = group_avg.get(g["dip_code"], 0)
            source = "group_avg" if ref > 0 else "none"
        kind = "blank" if (g["match_path"] == "blank" or g["group_type"] == "blank") else "group"
        ratio, deviation, pe4 = points_one(
            kind=kind, base_score=g["base_score"] or 0.0,
            aux_coef=1.0 if g["aux_coef"] is None else g["aux_coef"], level_coef=coef,
            total_cost_fen=case["total_cost_fen"] or 0, ref_fen=ref, level=level, policy=policy)
        out.append(dict(level=level, locality=locality, pool=pool,
                        in_pool=pool is not None and locality in allowed, ratio=ratio,
                        deviation=deviation, ref_source=source, level_coef=coef, points_e4=pe4))
    return out


__all__ = ["case_points", "case_points_reference", "points_one", "reference_costs"]
