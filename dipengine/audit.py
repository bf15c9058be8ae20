"""Intelligent audit (智能审核, dip-rules §3.2, §6.5, §7): per-case flags with evidence, per-hospital
indicators against their level's peers, a ranked worklist (docs/audit.md).

The audit reads, groups and scores the cases as ``settle`` does (:func:`dipengine.pipeline.score_batch`,
batch by batch), keeps a compact table of what the patterns need (:func:`case_features`: about 60
bytes a case, strings dictionary-encoded), then flags the whole run at once with numpy
(:func:`flag_cases`: one sort by patient and date for the windows, one sort by group for the
length-of-stay norms; no Python loop per case). :func:`flag_cases_reference` is its plain,
slow twin; the property tests hold them equal.

Case patterns (each a boolean column of ``flags.parquet``, with its evidence text):

- ``readmission`` (分解住院 / 再入院): the patient's previous admission was discharged at most
  ``readmit_days`` days before this one was admitted, at the same hospital (``readmit_hospital =
  "same"``; ``"any"``), with the same main-diagnosis category (``readmit_group = "category"``;
  ``"group"``: same DIP group; ``"any"``);
- ``transfer_readmission``: the previous admission ended in a transfer out (离院方式 2 or 3) and the
  patient was back at the same hospital within ``readmit_days`` days;
- ``low_standard`` (低标入院): a stay of at most ``short_los`` days that costs below
  ``low_cost_ratio`` of the reference, or that lasts at most ``short_stay_share`` of the group's
  median LOS and costs below ``short_stay_cost_ratio``;
- ``over_long_stay``: LOS above ``long_los_factor`` × the ``long_los_quantile`` of the group's LOS
  in the run (groups of at least ``long_los_min_cases`` cases);
- ``low_risk_death``: died (离院方式 5) in a group whose death rate in the run is below
  ``low_risk_death_rate`` (groups of at least ``low_risk_min_cases`` cases; the case itself left out);
- ``inconsistent_coding``: main diagnosis against sex (female-only or male-only chapters) or age
  (perinatal P codes after the first year), or a surgical DIP group without a main procedure.

Hospital pattern: ``upcoding`` (高套分值): the hospital's share of cases with an auxiliary
subtype (CCI, severity, ...) is at least ``upcoding_factor`` × and ``upcoding_min_diff`` above its
level peers' pooled share (hospitals of at least ``upcoding_min_cases`` cases).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError

SCORED_PATHS = ("core", "basic", "comprehensive", "blank")
CASE_FLAGS = ("readmission", "transfer_readmission", "low_standard", "over_long_stay", "low_risk_death",
              "inconsistent_coding")
"""The per-case patterns, in the order of ``flags.parquet`` and of the ``flags`` text."""

FEMALE_ONLY = ("O", "N7", "N8", "N9", "C51", "C52", "C53", "C54", "C55", "C56", "C57", "C58", "D25", "D26",
               "D27", "D28")
MALE_ONLY = ("N40", "N41", "N42", "N43", "N44", "N45", "N46", "N47", "N48", "N49", "N50", "N51", "C60", "C61",
             "C62", "C63", "D29")
"""Main-diagnosis prefixes of one sex (ICD-10: pregnancy, female and male genital organs)."""


@dataclass(frozen=True)
class AuditOptions:
    """Thresholds of the audit patterns (days, ratios, shares); every one a named option."""

    readmit_days: int = 15
    readmit_hospital: str = "same"      # same | any
    readmit_group: str = "category"     # category | group | any
    low_cost_ratio: float = 0.35
    short_los: int = 2
    short_stay_share: float = 0.3           # a stay this short against the group's median LOS ...
    short_stay_cost_ratio: float = 0.8      # ... is low-standard below this cost ratio
    long_los_quantile: float = 0.5
    long_los_factor: float = 2.8
    long_los_min_cases: int = 20
    low_risk_death_rate: float = 0.002
    low_risk_min_cases: int = 50
    upcoding_factor: float = 1.5
    upcoding_min_diff: float = 0.10
    upcoding_min_cases: int = 100
    upcoding_min_shift: float = 0.10        # with a history: rise of the share that signals up-coding
    assessment_floor: float | None = None   # with it: suggested assessment coefficients
    assessment_per_flagged: float = 0.5      # coefficient lost per unit share of flagged cases
    assessment_upcoding: float = 0.02        # coefficient lost by an up-coding hospital

    def check(self) -> "AuditOptions":
        """Raise :class:`DataError` naming the first bad option."""
        def bad(name, why):
            raise DataError(why, column=name, value=getattr(self, name))

        if self.readmit_hospital not in ("same", "any"):
            bad("readmit_hospital", "must be same or any")
        if self.readmit_group not in ("category", "group", "any"):
            bad("readmit_group", "must be category, group or any")
        for name in ("readmit_days", "short_los", "long_los_min_cases", "low_risk_min_cases", "upcoding_min_cases"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, "must be a non-negative integer")
        for name in ("low_cost_ratio", "short_stay_share", "short_stay_cost_ratio", "long_los_factor",
                     "upcoding_factor", "upcoding_min_diff", "upcoding_min_shift",
                     "low_risk_death_rate", "assessment_per_flagged", "assessment_upcoding"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                bad(name, "must be a number >= 0")
        if not 0 < self.long_los_quantile <= 1:
            bad("long_los_quantile", "must be in (0, 1]")
        if self.assessment_floor is not None and not 0 < self.assessment_floor <= 1:
            bad("assessment_floor", "must be in (0, 1]")
        return self


def options_from(policy=None, **overrides) -> AuditOptions:
    """:class:`AuditOptions` from the policy's optional ``[audit]`` table, then ``overrides``
    (None values ignored), checked."""
    given = dict(getattr(policy, "audit", None) or {})
    given.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(AuditOptions)}
    for k in given:
        if k not in names:
            raise DataError("unknown audit option", column=k, value=given[k])
    return replace(AuditOptions(), **given).check()


# --------------------------------------------------------------------------- features (per batch)

FEATURES = pa.schema([
    ("case_id", pa.string()), ("patient_id", pa.string()), ("hosp", pa.int32()), ("level", pa.int8()),
    ("scored", pa.bool_()), ("group", pa.int32()), ("cat", pa.int32()), ("coding", pa.int8()),
    ("admit", pa.int32()), ("discharge", pa.int32()), ("los", pa.int32()), ("discharge_mode", pa.int8()),
    ("ratio", pa.float64()), ("deviation", pa.int8()), ("aux", pa.bool_()), ("base_score", pa.float64()),
    ("total_cost_fen", pa.int64()), ("special_review", pa.bool_()),
])
"""What the audit keeps of each case (:func:`case_features`): two strings and integer codes
(``hosp``: row of the registry, ``group``: row of the rule set's groups, ``cat``: main-diagnosis
category number, ``deviation``: :data:`DEVIATIONS` index; -1 none), dates as days since
1970-01-01, ``coding``: the bits of :data:`CODING_BITS`."""

DEVIATIONS = ("normal", "low", "high", "extreme")
CODING_BITS = {1: "main diagnosis of the other sex", 2: "perinatal main diagnosis after the first year",
               4: "surgical group without a main procedure"}
"""Bits of ``coding`` (the ``inconsistent_coding`` flag: any of them)."""


def _days(col) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_date32(col.type):
        return col.cast(pa.int32())
    if pa.types.is_timestamp(col.type) or pa.types.is_date64(col.type):
        return col.cast(pa.date32()).cast(pa.int32())
    return pc.cast(pc.cast(col, pa.date32()), pa.int32())


def _col(t: pa.Table, name: str, typ, default=None):
    if name in t.column_names:
        return t[name].cast(typ)
    return pa.nulls(t.num_rows, typ) if default is None else pa.array([default] * t.num_rows, typ)


def coding_bits(main_dx, sex, age, treat_class, has_main_proc) -> np.ndarray:
    """:data:`CODING_BITS` of each case (int8): the main diagnosis against the sex (pregnancy and
    female genital codes for a man, male genital codes for a woman) and the age (perinatal P
    codes from the first birthday), and a surgical group without a main procedure."""
    dx = pc.utf8_upper(main_dx)
    female, male = _np(pc.equal(sex, "F"), bool, False), _np(pc.equal(sex, "M"), bool, False)
    a = _np(age, np.int64, -1)
    bad_sex = (male & _starts_any(dx, FEMALE_ONLY)) | (female & _starts_any(dx, MALE_ONLY))
    bad_age = (a >= 1) & _starts_any(dx, ("P",))
    no_proc = _np(pc.equal(treat_class, "surgery"), bool, False) & ~_np(has_main_proc, bool, False)
    return (bad_sex * 1 + bad_age * 2 + no_proc * 4).astype(np.int8)


def case_features(cases: pa.Table, scored: pa.Table, hosp_ids: pa.Array, dip_codes: pa.Array) -> pa.Table:
    """The :data:`FEATURES` of a batch: normalised ``cases`` and their ``case_points`` output;
    ``hosp_ids``: the registry's ids, ``dip_codes``: the rule set's groups' codes (row order)."""
    from dipengine.grouper import category_numbers

    n = cases.num_rows
    main_dx = _col(cases, "main_dx", pa.string())
    main_proc = _col(cases, "main_proc", pa.string())
    has_main = pc.fill_null(pc.and_(pc.is_valid(main_proc), pc.not_equal(main_proc, "")), False)
    scored_mask = pc.fill_null(pc.is_in(scored["match_path"], pa.array(SCORED_PATHS)), False)
    group = pc.fill_null(pc.index_in(_col(scored, "dip_code", pa.string()), value_set=dip_codes), -1)
    group = pc.if_else(scored_mask, group, -1)
    dev = pc.fill_null(pc.index_in(_col(scored, "deviation", pa.string()), value_set=pa.array(DEVIATIONS)), -1)
    coding = coding_bits(main_dx, _col(cases, "sex", pa.string()), _col(cases, "age", pa.int32()),
                         _col(scored, "treat_class", pa.string()), has_main)
    coding = np.where(_np(scored_mask, bool, False), coding, 0).astype(np.int8)
    cat = category_numbers(pc.utf8_slice_codeunits(pc.utf8_upper(main_dx).combine_chunks()
                                                   if isinstance(main_dx, pa.ChunkedArray) else pc.utf8_upper(main_dx),
                                                   0, 3))
    return pa.table({
        "case_id": _col(cases, "case_id", pa.string()),
        "patient_id": _col(cases, "patient_id", pa.string()),
        "hosp": pc.fill_null(pc.index_in(_col(cases, "hospital_id", pa.string()), value_set=hosp_ids), -1),
        "level": _col(scored, "level", pa.int8()),
        "scored": scored_mask,
        "group": group.cast(pa.int32()),
        "cat": pa.array(cat, pa.int32()),
        "coding": pa.array(coding, pa.int8()),
        "admit": _days(cases["admit_date"]) if "admit_date" in cases.column_names else pa.nulls(n, pa.int32()),
        "discharge": (_days(cases["discharge_date"]) if "discharge_date" in cases.column_names
                      else pa.nulls(n, pa.int32())),
        "los": _col(cases, "los", pa.int32()),
        "discharge_mode": _col(cases, "discharge_mode", pa.int8()),
        "ratio": _col(scored, "ratio", pa.float64()),
        "deviation": dev.cast(pa.int8()),
        "aux": pc.is_valid(scored["aux_subtype"]) if "aux_subtype" in scored.column_names else pa.array([False] * n),
        "base_score": _col(scored, "base_score", pa.float64(), 0.0),
        "total_cost_fen": _col(cases, "total_cost_fen", pa.int64()),
        "special_review": pc.fill_null(_col(scored, "special_review", pa.bool_(), False), False),
    }, schema=FEATURES)


# --------------------------------------------------------------------------- flags (whole run)

def _np(col, dtype, fill):
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(pc.fill_null(col, fill).to_numpy(zero_copy_only=False), dtype=dtype)


def _codes(col) -> np.ndarray:
    """Exact int32 codes of a string column (null -> -1), through an Arrow dictionary."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    d = pc.dictionary_encode(col)
    return np.asarray(pc.fill_null(d.indices, -1).to_numpy(zero_copy_only=False), np.int64)


def _starts_any(col, prefixes) -> np.ndarray:
    """Whether each string starts with one of ``prefixes`` (one regex pass; null: False)."""
    import re

    pattern = "^(?:" + "|".join(re.escape(p) for p in prefixes) + ")"
    return _np(pc.match_substring_regex(col, pattern), bool, False)


@dataclass
class Flags:
    """What :func:`flag_cases` finds: one boolean array per :data:`CASE_FLAGS`, and the evidence
    of the windows (previous admission row, gap in days: -1 none) and of the norms (the group's
    LOS limit and median, its death rate: NaN none)."""

    masks: dict
    prev_row: np.ndarray
    gap: np.ndarray
    los_limit: np.ndarray
    group_death_rate: np.ndarray
    los_median: np.ndarray


def _group_quantile(key: np.ndarray, values: np.ndarray, q: float, min_n: int) -> np.ndarray:
    """Per row: the ``q`` quantile (lower, by rank ``ceil(q × n) − 1``) of ``values`` (int >= 0)
    over the rows of its ``key`` (-1 rows: none), NaN where the key has fewer than ``min_n``
    rows. One sort of packed ``key << 32 | value`` integers."""
    out = np.full(len(key), np.nan)
    ok = key >= 0
    if not ok.any():
        return out
    k = key[ok].astype(np.int64)
    srt = np.sort((k << 32) | np.clip(values[ok], 0, 2 ** 31 - 1).astype(np.int64))
    g_sorted, v_sorted = srt >> 32, srt & 0xFFFFFFFF
    first = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]
    size = np.diff(np.r_[first, len(srt)])
    pos = first + np.maximum(np.ceil(q * size).astype(np.int64) - 1, 0)
    per_group = np.full(int(k.max()) + 1, np.nan)
    per_group[g_sorted[first]] = np.where(size >= min_n, v_sorted[pos].astype(np.float64), np.nan)
    out[ok] = per_group[k]
    return out


def _patient_order(pid: np.ndarray, admit: np.ndarray, disch: np.ndarray) -> np.ndarray:
    """Order of the rows by patient, admission day, discharge day, then row: one stable sort
    of a packed int64 key when the ranges fit (27 + 18 + 18 bits), else a lexsort."""
    if len(pid) == 0:
        return np.zeros(0, np.int64)
    a, d = admit - admit.min(), disch - disch.min()
    if pid.max() < 2 ** 27 and a.max() < 2 ** 18 and d.max() < 2 ** 18:
        return np.argsort((pid << 36) | (a << 18) | d, kind="stable")
    return np.lexsort((np.arange(len(pid)), disch, admit, pid))


def flag_cases(f: pa.Table, opt: AuditOptions) -> Flags:
    """Flag every case of a run's :func:`case_features` (vectorised; see the module docstring)."""
    n = f.num_rows
    scored = _np(f["scored"], bool, False)
    pid = _codes(f["patient_id"])
    hosp = _np(f["hosp"], np.int64, -1)
    group = np.where(scored, _np(f["group"], np.int64, -1), -1)
    cat = _np(f["cat"], np.int64, -1)
    admit = _np(f["admit"], np.int64, 0)  # null dates: dates_ok False, never compared
    disch = _np(f["discharge"], np.int64, 0)
    dates_ok = _np(pc.and_(pc.is_valid(f["admit"]), pc.is_valid(f["discharge"])), bool, False)
    mode = _np(f["discharge_mode"], np.int64, 1)
    los = _np(f["los"], np.int64, -1)
    ratio = _np(f["ratio"], np.float64, np.nan)

    # windows over each patient's admissions: sorted by patient, admission, discharge, row
    prev_row = np.full(n, -1, np.int64)
    gap = np.full(n, -1, np.int64)
    cand = np.flatnonzero(scored & dates_ok & (pid >= 0))
    order = cand[_patient_order(pid[cand], admit[cand], disch[cand])]
    if len(order) > 1:
        cur, prev = order[1:], order[:-1]
        same = pid[cur] == pid[prev]
        cur, prev = cur[same], prev[same]
        prev_row[cur] = prev
        gap[cur] = admit[cur] - disch[prev]
    has_prev = prev_row >= 0
    p = np.where(has_prev, prev_row, 0)
    within = has_prev & (gap >= 0) & (gap <= opt.readmit_days)
    same_h = hosp[p] == hosp
    where = same_h if opt.readmit_hospital == "same" else np.ones(n, bool)
    if opt.readmit_group == "category":
        related = (cat[p] == cat) & (cat >= 0)
    elif opt.readmit_group == "group":
        related = group[p] == group
    else:
        related = np.ones(n, bool)
    readmission = within & where & related
    transfer = within & same_h & np.isin(mode[p], (2, 3))

    # norms over the run: LOS limit and death rate per DIP group
    q = _group_quantile(group, np.where(los >= 0, los, 0), opt.long_los_quantile, max(opt.long_los_min_cases, 1))
    los_limit = q * opt.long_los_factor
    over_long = scored & (los >= 0) & ~np.isnan(los_limit) & (los > los_limit)
    died = scored & (mode == 5)
    g_ok = group >= 0
    n_g = np.bincount(group[g_ok], minlength=1) if g_ok.any() else np.zeros(1, np.int64)
    d_g = np.bincount(group[g_ok], weights=died[g_ok], minlength=len(n_g)) if g_ok.any() else np.zeros(1)
    gi = np.where(g_ok, group, 0)
    others = n_g[gi] - 1  # the case itself left out
    rate = np.where(g_ok & (others > 0), (d_g[gi] - died) / np.maximum(others, 1), np.nan)
    big = g_ok & (n_g[gi] >= opt.low_risk_min_cases)
    low_risk_death = died & big & (rate < opt.low_risk_death_rate)
    group_rate = np.where(big, rate, np.nan)

    median = _group_quantile(group, np.where(los >= 0, los, 0), 0.5, max(opt.long_los_min_cases, 1))
    short = scored & ~np.isnan(ratio) & (los >= 0) & (los <= opt.short_los)
    far_shorter = ~np.isnan(median) & (los <= opt.short_stay_share * median) & (ratio < opt.short_stay_cost_ratio)
    low_standard = short & ((ratio < opt.low_cost_ratio) | far_shorter)

    inconsistent = scored & (_np(f["coding"], np.int64, 0) != 0)  # coding_bits, per batch

    masks = {"readmission": readmission, "transfer_readmission": transfer, "low_standard": low_standard,
             "over_long_stay": over_long, "low_risk_death": low_risk_death, "inconsistent_coding": inconsistent}
    return Flags(masks=masks, prev_row=prev_row, gap=gap, los_limit=los_limit, group_death_rate=group_rate,
                 los_median=median)


def flag_cases_reference(f: pa.Table, opt: AuditOptions) -> dict:
    """The plain twin of :func:`flag_cases`: ``{flag: list of bool}``, one Python loop per rule."""
    rows = f.to_pylist()
    n = len(rows)
    out = {k: [False] * n for k in CASE_FLAGS}
    ok = [r["scored"] is True for r in rows]

    # previous admission of the same patient (by admission, discharge, row)
    by_patient: dict = {}
    for i, r in enumerate(rows):
        if ok[i] and r["patient_id"] is not None and r["admit"] is not None and r["discharge"] is not None:
            by_patient.setdefault(r["patient_id"], []).append(i)
    for idx in by_patient.values():
        idx.sort(key=lambda i: (rows[i]["admit"], rows[i]["discharge"], i))
        for a, b in zip(idx, idx[1:]):
            prev, cur = rows[a], rows[b]
            g = cur["admit"] - prev["discharge"]
            if not 0 <= g <= opt.readmit_days:
                continue
            same_h = prev["hosp"] == cur["hosp"]
            where = same_h or opt.readmit_hospital == "any"
            if opt.readmit_group == "category":
                related = cur["cat"] is not None and cur["cat"] >= 0 and prev["cat"] == cur["cat"]
            elif opt.readmit_group == "group":
                related = prev["group"] == cur["group"]
            else:
                related = True
            out["readmission"][b] = where and related
            out["transfer_readmission"][b] = same_h and (prev["discharge_mode"] or 1) in (2, 3)

    # LOS limit and death rate per group
    groups: dict = {}
    for i, r in enumerate(rows):
        if ok[i] and r["group"] is not None and r["group"] >= 0:
            groups.setdefault(r["group"], []).append(i)
    median = [None] * n
    for idx in groups.values():
        stays = sorted(max(rows[i]["los"], 0) if rows[i]["los"] is not None else 0 for i in idx)
        if len(idx) >= max(opt.long_los_min_cases, 1):
            mid = stays[max(int(np.ceil(0.5 * len(stays))) - 1, 0)]
            for i in idx:
                median[i] = mid
            k = max(int(np.ceil(opt.long_los_quantile * len(stays))) - 1, 0)
            limit = stays[k] * opt.long_los_factor
            for i in idx:
                los = rows[i]["los"]
                out["over_long_stay"][i] = los is not None and los >= 0 and los > limit
        deaths = sum((rows[i]["discharge_mode"] or 1) == 5 for i in idx)
        if len(idx) >= opt.low_risk_min_cases and len(idx) > 1:
            for i in idx:
                if (rows[i]["discharge_mode"] or 1) == 5:
                    out["low_risk_death"][i] = (deaths - 1) / (len(idx) - 1) < opt.low_risk_death_rate

    for i, r in enumerate(rows):
        if not ok[i]:
            continue
        los, ratio = r["los"], r["ratio"]
        short = ratio is not None and not np.isnan(ratio) and los is not None and 0 <= los <= opt.short_los
        far_shorter = (median[i] is not None and los is not None and los <= opt.short_stay_share * median[i]
                       and ratio is not None and ratio < opt.short_stay_cost_ratio)
        out["low_standard"][i] = bool(short and (ratio < opt.low_cost_ratio or far_shorter))
        out["inconsistent_coding"][i] = bool(r["coding"])
    return out


def coding_bits_reference(main_dx, sex, age, treat_class, has_main_proc) -> int:
    """One case's :func:`coding_bits`, plainly."""
    dx = (main_dx or "").upper()
    bits = 0
    if (sex == "M" and dx.startswith(FEMALE_ONLY)) or (sex == "F" and dx.startswith(MALE_ONLY)):
        bits |= 1
    if age is not None and age >= 1 and dx.startswith("P"):
        bits |= 2
    if treat_class == "surgery" and not has_main_proc:
        bits |= 4
    return bits


# --------------------------------------------------------------------------- outputs

FLAGS_SCHEMA = pa.schema([
    ("case_id", pa.string()), ("hospital_id", pa.string()), ("patient_id", pa.string()), ("dip_code", pa.string()),
    *[(k, pa.bool_()) for k in CASE_FLAGS], ("flags", pa.string()), ("evidence", pa.string()),
])
"""``flags.parquet``: one row per input case, in input order."""


def _text(*parts) -> pa.Array:
    """Element-wise concatenation of arrays and literal strings (null when any array is null)."""
    arrays = [p if isinstance(p, (pa.Array, pa.ChunkedArray)) else pa.scalar(str(p)) for p in parts]
    return pc.binary_join_element_wise(*arrays, "")


def _join(parts, sep: str) -> pa.Array:
    """Element-wise join of string arrays by ``sep``, skipping nulls (vectorised: nulls become
    empty pieces between unit separators, which are then collapsed)."""
    us = "\x1f"
    joined = pc.binary_join_element_wise(*parts, us, null_handling="replace", null_replacement="")
    joined = pc.replace_substring_regex(joined, us + "{2,}", us)
    joined = pc.replace_substring_regex(joined, "^" + us + "|" + us + "$", "")
    return pc.replace_substring(joined, us, sep)


def _names(codes, vocab: pa.Array) -> pa.Array:
    """The strings of integer codes (-1: null)."""
    c = _np(codes, np.int64, -1)
    return pc.take(pa.concat_arrays([vocab.cast(pa.string()), pa.array([None], pa.string())]),
                   pa.array(np.where(c >= 0, c, len(vocab))))


def flags_table(f: pa.Table, fl: Flags, hosp_ids: pa.Array, dip_codes: pa.Array) -> pa.Table:
    """:data:`FLAGS_SCHEMA` rows of a run: the flags, their names joined by ``,`` and evidence
    texts joined by ``; `` (null where nothing is flagged). Vectorised string building, on the
    flagged rows only (a few per cent), scattered back into place."""
    n = f.num_rows
    m = fl.masks
    any_flag = np.any(np.stack([m[k] for k in CASE_FLAGS]), axis=0) if n else np.zeros(0, bool)
    rows = np.flatnonzero(any_flag)
    sub = f.take(pa.array(rows))
    sm = {k: m[k][rows] for k in CASE_FLAGS}
    prev = fl.prev_row[rows]
    prev = pa.array(np.where(prev >= 0, prev, 0))
    prev_case = pc.take(f["case_id"], prev)
    prev_dip = pc.fill_null(_names(pc.take(f["group"], prev), dip_codes), "-")
    gap = pa.array(fl.gap[rows]).cast(pa.string())
    los = pc.fill_null(sub["los"].cast(pa.string()), "?")
    lim = pa.array(np.round(np.nan_to_num(fl.los_limit[rows]), 1)).cast(pa.string())
    rate = pa.array(np.round(np.nan_to_num(fl.group_death_rate[rows]) * 100, 2)).cast(pa.string())
    ratio = pa.array(np.round(_np(sub["ratio"], np.float64, 0.0), 3)).cast(pa.string())
    med = fl.los_median[rows]
    med_txt = pc.if_else(pa.array(np.isnan(med)), pa.scalar("-"), pa.array(np.nan_to_num(med)).cast(pa.string()))

    def only(mask, text):
        """``text`` (an array, or one string for every row) where ``mask``, else null."""
        if isinstance(text, str):
            text = pa.scalar(text, pa.string())
        return pc.if_else(pa.array(mask), text, pa.scalar(None, pa.string()))

    k = len(rows)
    if k:
        ev = [
            only(sm["readmission"], _text("readmitted ", gap, " days after ", prev_case, " (", prev_dip, ")")),
            only(sm["transfer_readmission"], _text("back ", gap, " days after a transfer out (", prev_case, ")")),
            only(sm["low_standard"], _text("cost ratio ", ratio, " with a stay of ", los, " days (group median ",
                                       med_txt, ")")),
            only(sm["over_long_stay"], _text("LOS ", los, " days > limit ", lim, " of the group")),
            only(sm["low_risk_death"], _text("death in a group with a death rate of ", rate, " %")),
            only(sm["inconsistent_coding"], _join([
                only(_np(sub["coding"], np.int64, 0) & bit != 0, text)
                for bit, text in CODING_BITS.items()], ", ")),
        ]
        names = [only(sm[c], c) for c in CASE_FLAGS]
        flags_sub, ev_sub = _join(names, ","), _join(ev, "; ")
    else:
        flags_sub = ev_sub = pa.array([], pa.string())
    # scatter: row i takes its flagged row's text, or the null appended at position k
    pos = np.full(n, k, np.int64)
    pos[rows] = np.arange(k)
    null = pa.array([None], pa.string())

    def placed(sub_text):
        whole = sub_text.combine_chunks() if isinstance(sub_text, pa.ChunkedArray) else sub_text
        return pc.take(pa.concat_arrays([whole.cast(pa.string()), null]), pa.array(pos))

    flags_txt, evidence = placed(flags_sub), placed(ev_sub)
    cols = {"case_id": f["case_id"], "hospital_id": _names(f["hosp"], hosp_ids), "patient_id": f["patient_id"],
            "dip_code": _names(f["group"], dip_codes)}
    cols.update({c: pa.array(m[c]) for c in CASE_FLAGS})
    cols.update(flags=flags_txt, evidence=evidence)
    return pa.table(cols, schema=FLAGS_SCHEMA)


INDICATOR_COLUMNS = (
    "hospital_id", "name", "level", "n_cases", "cmi", "low_share", "high_share", "extreme_share",
    "readmission_rate", "transfer_readmission_rate", "avg_los", "los_index", "cost_index", "special_review_share",
    "aux_share", "peer_aux_share", "aux_share_history", "aux_shift", "high_score_share", "peer_high_score_share", "n_low_risk_deaths", "n_flagged", "flagged_share",
    "upcoding", "risk_score", "rank", "assessment_coef",
)


def indicators(f: pa.Table, fl: Flags, hospitals: pa.Table, opt: AuditOptions, history=None) -> pa.Table:
    """Per hospital of the registry (with scored cases): the indicators against the region and the
    hospital's level peers (docs/audit.md), the up-coding signal, a risk score and its rank.

    CMI = mean group score of the hospital's cases / mean over the region; the time and cost
    consumption indices = Σ LOS (cost) / Σ the group's regional mean LOS (cost) over its cases.
    ``history``: ``(cases, cases with an auxiliary subtype)`` per registry hospital (int arrays)
    of an earlier year (:func:`history_counts`): the share's rise is the year-on-year signal.
    """
    scored = _np(f["scored"], bool, False)
    hid_all = hospitals["hospital_id"].to_pylist()
    H = len(hid_all)
    h = _np(f["hosp"], np.int64, -1)
    use = scored & (h >= 0)
    hh = np.where(use, h, H)  # bucket H: not counted

    def per_h(w=None):
        return np.bincount(hh, weights=None if w is None else np.where(use, w, 0), minlength=H + 1)[:H]

    n = per_h()
    group = np.where(use, _np(f["group"], np.int64, -1), -1)
    g_ok = group >= 0
    gi = np.where(g_ok, group, 0)
    n_g = np.bincount(gi[g_ok], minlength=1).astype(np.float64) if g_ok.any() else np.ones(1)
    los = _np(f["los"], np.float64, 0.0)
    cost = _np(f["total_cost_fen"], np.float64, 0.0)
    mean_los_g = np.bincount(gi[g_ok], weights=los[g_ok], minlength=len(n_g)) / np.maximum(n_g, 1)
    mean_cost_g = np.bincount(gi[g_ok], weights=cost[g_ok], minlength=len(n_g)) / np.maximum(n_g, 1)
    score = _np(f["base_score"], np.float64, 0.0)
    dev = _np(f["deviation"], np.int64, -1)
    aux = _np(f["aux"], bool, False) & use
    region_score = score[use].mean() if use.any() else np.nan
    high_cut = np.quantile(score[use], 0.9) if use.any() else np.inf
    masks = fl.masks
    flagged = np.any(np.stack([masks[k] for k in CASE_FLAGS]), axis=0) & use if f.num_rows else np.zeros(0, bool)

    def share(mask):
        with np.errstate(invalid="ignore", divide="ignore"):
            return per_h(mask.astype(np.float64)) / n

    with np.errstate(invalid="ignore", divide="ignore"):
        cmi = per_h(score) / n / region_score
        los_index = per_h(los) / per_h(mean_los_g[gi])
        cost_index = per_h(cost) / per_h(mean_cost_g[gi])
        avg_los = per_h(los) / n
    level = np.asarray(pc.fill_null(hospitals["level"], 0).to_numpy(zero_copy_only=False), np.int64)
    aux_n = per_h(aux.astype(np.float64))
    def peer_share(count):
        """Per hospital: ``count`` pooled over the other hospitals of its level, per case."""
        out = np.full(H, np.nan)
        for lv in np.unique(level):  # three levels at most
            at = level == lv
            with np.errstate(invalid="ignore", divide="ignore"):
                out[at] = (count[at].sum() - count[at]) / (n[at].sum() - n[at])
        return out

    def far_above(mine, peers):
        return ((n >= opt.upcoding_min_cases) & ~np.isnan(peers) & (mine >= opt.upcoding_factor * peers)
                & (mine - peers >= opt.upcoding_min_diff))

    high = use & (score >= high_cut)
    peer = peer_share(aux_n)
    peer_high = peer_share(per_h(high.astype(np.float64)))
    aux_share, high_share = share(aux), share(high)
    upcoding = far_above(aux_share, peer) | far_above(high_share, peer_high)
    prev_share = np.full(H, np.nan)
    if history is not None:
        n_prev, aux_prev = (np.asarray(x, np.float64) for x in history)
        with np.errstate(invalid="ignore", divide="ignore"):
            prev_share = np.where(n_prev > 0, aux_prev / n_prev, np.nan)
        shift_signal = ((n >= opt.upcoding_min_cases) & (n_prev >= opt.upcoding_min_cases)
                        & (aux_share - prev_share >= opt.upcoding_min_shift))
        upcoding = upcoding | shift_signal
    shift = aux_share - prev_share
    flagged_share = share(flagged)
    risk = np.nan_to_num(flagged_share) + upcoding * np.maximum(np.nan_to_num(aux_share - peer),
                                                                np.nan_to_num(high_share - peer_high))
    present = n > 0
    order = np.lexsort((np.array(hid_all, dtype=object), -risk))
    order = order[present[order]]
    rank = np.zeros(H, np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    if opt.assessment_floor is not None:
        coef = np.maximum(opt.assessment_floor, 1.0 - opt.assessment_per_flagged * np.nan_to_num(flagged_share)
                          - opt.assessment_upcoding * upcoding)
        coef = np.round(coef, 4)
    else:
        coef = np.full(H, np.nan)
    names = hospitals["name"].to_pylist() if "name" in hospitals.column_names else [None] * H
    cols = {
        "hospital_id": hid_all, "name": names, "level": level.astype(np.int8), "n_cases": n.astype(np.int64),
        "cmi": cmi, "low_share": share(dev == DEVIATIONS.index("low")),
        "high_share": share(dev == DEVIATIONS.index("high")),
        "extreme_share": share(dev == DEVIATIONS.index("extreme")),
        "readmission_rate": share(masks["readmission"]), "transfer_readmission_rate": share(masks["transfer_readmission"]),
        "avg_los": avg_los, "los_index": los_index, "cost_index": cost_index,
        "special_review_share": share(_np(f["special_review"], bool, False)), "aux_share": aux_share,
        "peer_aux_share": peer, "aux_share_history": prev_share, "aux_shift": shift,
        "high_score_share": high_share, "peer_high_score_share": peer_high,
        "n_low_risk_deaths": per_h(masks["low_risk_death"].astype(np.float64)).astype(np.int64),
        "n_flagged": per_h(flagged.astype(np.float64)).astype(np.int64), "flagged_share": flagged_share,
        "upcoding": upcoding, "risk_score": np.round(risk, 6), "rank": rank, "assessment_coef": coef,
    }
    t = pa.table({k: cols[k] for k in INDICATOR_COLUMNS})
    t = t.filter(pa.array(present))
    floats = [c for c in INDICATOR_COLUMNS if pa.types.is_floating(t.schema.field(c).type)]
    for c in floats:  # NaN (no data) is null in the outputs
        i = t.schema.get_field_index(c)
        col = t[c]
        t = t.set_column(i, c, pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col))
    return t.take(pc.sort_indices(t["rank"]))


# --------------------------------------------------------------------------- the run

@dataclass
class AuditResult:
    """``flags`` (one row per input case), ``indicators`` (one row per hospital, ranked) and the manifest."""

    flags: pa.Table
    indicators: pa.Table
    manifest: dict


def history_counts(history, run, *, batch_size=None, n_threads=None, schema=None) -> tuple:
    """Per registry hospital: ``(grouped cases, cases with an auxiliary subtype)`` (int64 arrays)
    of an earlier year's cases ``history`` (grouped with the run's rule set; no date filter)."""
    from dipengine.grouper import group_batch
    from dipengine.pipeline import BATCH_SIZE, _workers
    from dipengine.reader import map_cases

    H = len(run.hosp_ids)

    def counts(b):
        t = pa.Table.from_batches([b])
        g, _ = group_batch(t, run.rules, n_threads=1)
        h = _np(pc.index_in(t["hospital_id"], value_set=run.hosp_ids), np.int64, -1)
        ok = _np(pc.is_in(g["match_path"], pa.array(SCORED_PATHS)), bool, False) & (h >= 0)
        aux = ok & _np(pc.is_valid(g["aux_subtype"]), bool, False)
        return (np.bincount(h[ok], minlength=H)[:H], np.bincount(h[aux], minlength=H)[:H])

    n, a = np.zeros(H, np.int64), np.zeros(H, np.int64)
    for cn, ca in map_cases(history, counts, run.hospitals, batch_size=batch_size or BATCH_SIZE,
                            workers=_workers(n_threads), schema=schema):
        n += cn
        a += ca
    return n, a


def audit(cases, rules, policy, hospitals, *, options: AuditOptions | None = None, n_threads=None,
          batch_size: int | None = None, progress=None, schema=None, encoding=None, sheet=None,
          period=None, history=None) -> AuditResult:
    """Read, group and score ``cases`` (as ``settle`` does), then flag them and compute the
    hospital indicators (contract-layout input, or any ``--schema``).

    ``period``: the year (default: the policy's) whose cases are read (others are rejected as
    ``BAD_DATES`` by the reader, as in ``settle``). ``options``: default :func:`options_from` the
    policy's ``[audit]``. ``history``: an earlier year's cases (paths), for the year-on-year
    up-coding signal (:func:`history_counts`).
    """
    from dipengine.pipeline import BATCH_SIZE, _input_files, _normalised_batches, _one_source, _workers, prepare
    from dipengine.pipeline import score_batch

    if not hasattr(policy, "year"):
        from dipengine.policy import load_policy

        policy = load_policy(policy)
    period = str(period or policy.year)
    run = prepare(rules, policy, hospitals, period, benefits=False)
    opt = options if options is not None else options_from(run.policy)
    cases = _one_source(cases)
    layout = dict(schema=schema, encoding=encoding, sheet=sheet)
    dip_codes = run.rules.groups["dip_code"].combine_chunks()
    parts = list(_normalised_batches(cases, run, lambda t: case_features(t, score_batch(t, run), run.hosp_ids,
                                                                         dip_codes),
                                     batch_size=batch_size or BATCH_SIZE, workers=_workers(n_threads),
                                     progress=progress, layout=layout))
    f = pa.concat_tables(parts) if parts else FEATURES.empty_table()
    f = f.combine_chunks()
    fl = flag_cases(f, opt)
    table = flags_table(f, fl, run.hosp_ids, dip_codes)
    hist = None if history is None else history_counts(history, run, batch_size=batch_size, n_threads=n_threads,
                                                       schema=schema)
    ind = indicators(f, fl, run.hospitals, opt, history=hist)
    counts = {k: int(fl.masks[k].sum()) for k in CASE_FLAGS}
    manifest = {
        "engine": "dipengine", "command": "audit", "period": period,
        "options": {k.name: getattr(opt, k.name) for k in fields(AuditOptions)},
        "counts": {"cases": f.num_rows, "scored": int(_np(f["scored"], bool, False).sum()),
                   "flagged": int(np.any(np.stack([fl.masks[k] for k in CASE_FLAGS]), axis=0).sum()) if f.num_rows
                   else 0, **counts},
        "hospitals": {"n": ind.num_rows, "upcoding": sorted(ind.filter(ind["upcoding"])["hospital_id"].to_pylist())},
        "parameters": {"rules": str(getattr(run.rules, "path", "")), "pricing": str(getattr(run.policy, "path", "")),
                       "hospitals": [str(x) for x in run.hospital_files],
                       "input": [str(x) for x in _input_files(cases, schema)],
                       "history": None if history is None else [str(x) for x in _input_files(_one_source(history), schema)]},
    }
    from dipengine import __version__

    manifest["version"] = __version__
    return AuditResult(flags=table, indicators=ind, manifest=manifest)


def worklist(ind: pa.Table, top: int | None = None) -> pa.Table:
    """The auditors' worklist: hospitals by rank with the reasons that put them there."""
    rows = []
    for r in ind.to_pylist():
        why = []
        if r["upcoding"]:
            why.append(f"auxiliary-subtype share {r['aux_share']:.1%} against {r['peer_aux_share']:.1%} at its level"
                       + (f", {r['aux_share_history']:.1%} the year before" if r["aux_share_history"] is not None
                          else ""))
        if r["n_flagged"]:
            why.append(f"{r['n_flagged']} flagged cases ({r['flagged_share']:.1%})")
        rows.append({"rank": r["rank"], "hospital_id": r["hospital_id"], "name": r["name"], "level": r["level"],
                     "risk_score": r["risk_score"], "reasons": "; ".join(why) or None})
    t = pa.Table.from_pylist(rows, schema=pa.schema([
        ("rank", pa.int64()), ("hospital_id", pa.string()), ("name", pa.string()), ("level", pa.int8()),
        ("risk_score", pa.float64()), ("reasons", pa.string())]))
    return t if top is None else t.slice(0, top)


def write_audit(result: AuditResult, out_dir, hospitals: pa.Table | None = None):
    """Write ``flags.parquet``, ``indicators.parquet`` / ``.csv``, ``worklist.csv``, with suggested
    assessment coefficients ``hospitals_assessed.csv`` (the registry with them, for ``settle
    --hospitals``), and ``manifest.json``, atomically."""
    import json
    from pathlib import Path

    from dipengine.io import atomic_dir, write_table

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_table(result.flags, tmp / "flags.parquet")
        write_table(result.indicators, tmp / "indicators.parquet")
        write_table(result.indicators, tmp / "indicators.csv")
        write_table(worklist(result.indicators), tmp / "worklist.csv")
        if hospitals is not None and result.manifest["options"]["assessment_floor"] is not None:
            write_table(assessed_registry(hospitals, result.indicators), tmp / "hospitals_assessed.csv")
        (tmp / "manifest.json").write_text(json.dumps(result.manifest, indent=2, ensure_ascii=False, sort_keys=True)
                                           + "\n", encoding="utf-8")
    return out_dir


def assessed_registry(hospitals: pa.Table, ind: pa.Table) -> pa.Table:
    """The registry with ``assessment_coef`` set to the audit's suggestion where there is one."""
    sug = dict(zip(ind["hospital_id"].to_pylist(), ind["assessment_coef"].to_pylist()))
    cur = hospitals["assessment_coef"].to_pylist()
    new = [sug.get(h) if sug.get(h) is not None else c for h, c in zip(hospitals["hospital_id"].to_pylist(), cur)]
    i = hospitals.schema.get_field_index("assessment_coef")
    out = hospitals.set_column(i, "assessment_coef", pa.array(new, pa.float64()))
    keep = [c for c in ("hospital_id", "name", "level", "region", "coefficient", "assessment_coef")
            if c in out.column_names]
    return out.select(keep)
