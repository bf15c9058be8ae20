"""Settlement policies: ``pricing_tables/<region>/<year>/policy.toml`` + ``same_level_avg.csv``.

A policy holds every settlement parameter of one pooling region and year (contract §5,
dip-rules §9). It is parsed strictly: a missing required key, a value of the wrong type or
outside its range, and an unknown key (a typo) are all reported together in one
:class:`~dipengine.errors.RuleSetError` naming each parameter, e.g.
``policy.toml: missing [deviation] high_ratio``. Nothing is evaluated, nothing unpickled.

The few keys beyond contract §5 (documented in ``docs/policy-format.md``) are optional; when one
is absent its documented default is used and recorded in :attr:`Policy.defaults_applied`, which
the settlement manifest reports, so no value is ever invented silently.
"""
from __future__ import annotations

import math
import os
import stat
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError, RuleSetError
from dipengine.io import read_table, sha256_file
from dipengine.manifest import read_manifest_text, verify_files
from dipengine.money import yuan_to_fen, yuan_value_to_fen
from dipengine.presets import PresetError, load_preset

POOLS = ("employee", "resident")
LEVELS = (1, 2, 3)
INCLUDE_REMOTE = ("none", "in_province", "all")
SETTLEMENT_METHODS = ("fund_plus_personal", "fund_over_share")
HIGH_FORMULAS = ("ratio_minus_1", "ratio_minus_2_plus_coef")
EXTREME_RULES = ("high_formula", "review_normal_pay")
REFERENCE_BY = ("level", "level_pool")
MONTHLY_METHODS = ("points", "recorded_advance")
BAND_RULES = {
    "partial_retention": ("share",),
    "pay_due": (),
    "share_overspend": ("fund_share",),
    "cap": ("cap_over", "fund_share"),
    "retain_share_of_due": ("share",),
}
DEPOSIT_RELEASES = ("full", "by_score")

#: Optional keys beyond contract §5 and their documented defaults (docs/policy-format.md).
OPTIONAL_DEFAULTS = {
    ("deviation", "extreme_rule"): "high_formula",
    ("deviation", "low_inclusive"): False,
    ("deviation", "high_inclusive"): False,
    ("deviation", "reference_by"): "level",
    ("settlement", "deposit_release"): "full",
    ("special_review", "quota"): 0.005,
}


@dataclass(frozen=True)
class Band:
    """One surplus/overspend band; applies for ``R <= upper`` (``upper`` None: no upper end)."""

    upper: float | None
    rule: str
    share: float | None = None
    fund_share: float | None = None
    cap_over: float | None = None


@dataclass(frozen=True)
class Deviation:
    """Cost-deviation parameters; the ratio thresholds are per hospital level (1, 2, 3).

    ``low_inclusive``/``high_inclusive``: the low class takes ratio <= low_ratio (else <), the
    high class ratio >= high_ratio (else >). ``reference_by``: ``"level"`` (same-level average
    per group × level) or ``"level_pool"`` (per group × level × fund pool).
    """

    low_ratio: dict
    high_ratio: dict
    extreme_ratio: dict
    high_formula: str
    apply_level_coef_to_outliers: bool
    blank_group_factor: float
    extreme_rule: str
    low_inclusive: bool
    high_inclusive: bool = False
    reference_by: str = "level"


@dataclass(frozen=True)
class Policy:
    """The parsed settlement policy of one region and year.

    Attributes
    ----------
    budget_fen : dict
        Fund budget per pool (``employee``, ``resident``), int fen, before the reserve.
    budget_value : dict
        Budget point value per pool, yuan per point (float), or None where the policy gives none
        (then only an annual clearing without a ``band`` can be run: see :meth:`require_budget_value`).
    level_coef : dict
        Level coefficient by hospital level 1, 2, 3; ``basic_group_coef`` for basic groups.
    same_level_avg : pa.Table
        ``dip_code`` string, ``level`` int8, ``avg_cost_fen`` int64; plus ``pool`` string when
        ``deviation.reference_by == "level_pool"``.
    sha256 : dict
        File name -> sha256 of ``policy.toml`` and ``same_level_avg.csv``.
    defaults_applied : list of str
        Optional keys that were absent and took their documented default.
    deposit_release, deposit_release_scores : str, tuple or None
        How the annual clearing releases the quality deposit: ``"full"`` (all of it), or
        ``"by_score"``, in proportion to the registry's ``assessment_score`` between
        ``deposit_release_scores = (lo, hi)`` (docs/settlement.md "Clearing workflow").
    review_quota : float
        ``[special_review] quota``: the share of a hospital's in-pool cases that may go to special
        review (``special_review.parquet`` marks the highest ratios within it).
    preset : dict or None
        The named preset (``name``, ``sha256``) whose ``[deviation]`` keys the policy took
        (docs/presets.md), or None.
    audit : dict or None
        The optional ``[audit]`` table: thresholds of ``dipengine audit`` (:class:`dipengine.audit.AuditOptions`).
    """

    path: Path
    region: str
    year: int
    score_scale: float
    budget_fen: dict
    reserve_rate: float
    include_remote: str
    settlement_method: str
    band: tuple | None
    budget_value: dict
    level_coef: dict
    basic_group_coef: float
    deviation: Deviation
    monthly_method: str
    monthly_advance_rate: float
    quality_deposit: float
    bands: tuple
    same_level_avg: pa.Table
    sha256: dict = field(default_factory=dict)
    defaults_applied: tuple = ()
    deposit_release: str = "full"
    deposit_release_scores: tuple | None = None
    review_quota: float = 0.005
    preset: dict | None = None
    audit: dict | None = None

    def require_budget_value(self, why: str) -> None:
        """Raise :class:`DataError` (naming ``policy.toml`` and the key) unless every pool has a
        budget point value; ``why`` says what needs it (a monthly run, an estimate)."""
        missing = [p for p in POOLS if self.budget_value.get(p) is None]
        if missing:
            raise DataError(f"{why} pays at the budget point value, but the policy gives none for pool "
                            f"{missing[0]} (set [point_value] budget_value)", file=self.path / "policy.toml",
                            column="point_value.budget_value")

    def fund_available_fen(self, pool: str) -> int:
        """Fund budget of ``pool`` net of the reserve, int fen (half up)."""
        exact = Decimal(self.budget_fen[pool]) * (1 - Decimal(repr(self.reserve_rate)))
        return int(exact.quantize(Decimal(1), rounding="ROUND_HALF_UP"))

    def as_dict(self) -> dict:
        """The parameters as plain JSON-able values (for the settlement manifest)."""
        d = self.deviation
        return {
            "region": self.region,
            "year": self.year,
            "score_scale": self.score_scale,
            "budget_fen": dict(self.budget_fen),
            "reserve_rate": self.reserve_rate,
            "include_remote": self.include_remote,
            "settlement_method": self.settlement_method,
            "band": list(self.band) if self.band else None,
            "budget_value_yuan": dict(self.budget_value),
            "level_coefficients": {str(k): v for k, v in self.level_coef.items()},
            "basic_group": self.basic_group_coef,
            "deviation": {
                "low_ratio": {str(k): v for k, v in d.low_ratio.items()},
                "high_ratio": {str(k): v for k, v in d.high_ratio.items()},
                "extreme_ratio": {str(k): v for k, v in d.extreme_ratio.items()},
                "high_formula": d.high_formula,
                "apply_level_coef_to_outliers": d.apply_level_coef_to_outliers,
                "blank_group_factor": d.blank_group_factor,
                "extreme_rule": d.extreme_rule,
                "low_inclusive": d.low_inclusive,
                "high_inclusive": d.high_inclusive,
                "reference_by": d.reference_by,
            },
            "monthly_method": self.monthly_method,
            "monthly_advance_rate": self.monthly_advance_rate,
            "quality_deposit": self.quality_deposit,
            "bands": [{k: v for k, v in b.__dict__.items() if v is not None} for b in self.bands],
            "deposit_release": self.deposit_release,
            "deposit_release_scores": list(self.deposit_release_scores) if self.deposit_release_scores else None,
            "special_review_quota": self.review_quota,
            "audit": dict(self.audit) if self.audit else None,
            "preset": dict(self.preset) if self.preset else None,
            "defaults_applied": list(self.defaults_applied),
        }


class _Reader:
    """Pulls typed values out of the TOML document, collecting every problem."""

    def __init__(self, doc: dict, fname: str):
        self.doc = doc
        self.fname = fname
        self.problems: list[str] = []
        self.used: dict[str | None, set] = {}
        self.defaults: list[str] = []

    @staticmethod
    def _where(section, key):
        return f"[{section}] {key}" if section else key

    def _raw(self, section, key, required=True):
        self.used.setdefault(section, set()).add(key)
        table = self.doc if section is None else self.doc.get(section)
        if table is None or not isinstance(table, dict) or key not in table:
            if required:
                self.problems.append(f"missing {self._where(section, key)}")
            return None
        return table[key]

    def bad(self, section, key, why):
        self.problems.append(f"invalid {self._where(section, key)}: {why}")

    def number(self, section, key, *, lo=None, hi=None, lo_open=False, required=True, value=None,
               name=None):
        v = self._raw(section, key, required) if value is None else value
        shown = name or key
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.bad(section, shown, f"{v!r} is not a finite number")
            return None
        if lo is not None and (v < lo or (lo_open and v == lo)):
            self.bad(section, shown, f"{v!r} must be {'>' if lo_open else '>='} {lo}")
            return None
        if hi is not None and v > hi:
            self.bad(section, shown, f"{v!r} must be <= {hi}")
            return None
        return float(v)

    def choice(self, section, key, options, *, required=True):
        v = self._raw(section, key, required)
        if v is None:
            if not required:
                default = OPTIONAL_DEFAULTS[(section, key)]
                self.defaults.append(f"[{section}] {key} = {default!r}")
                return default
            return None
        if v not in options:
            self.bad(section, key, f"{v!r} is not one of {', '.join(options)}")
            return None
        return v

    def boolean(self, section, key, *, required=True):
        v = self._raw(section, key, required)
        if v is None:
            if not required:
                default = OPTIONAL_DEFAULTS[(section, key)]
                self.defaults.append(f"[{section}] {key} = {str(default).lower()}")
                return default
            return None
        if not isinstance(v, bool):
            self.bad(section, key, f"{v!r} is not true or false")
            return None
        return v

    def per_level(self, section, key, *, lo_open=True):
        """A number, or a table ``{1 = .., 2 = .., 3 = ..}`` of one number per level."""
        v = self._raw(section, key)
        if v is None:
            return None
        if isinstance(v, dict):
            out = {}
            keys = {str(k) for k in v}
            if keys != {"1", "2", "3"}:
                self.bad(section, key, f"per-level table needs exactly the keys 1, 2, 3 (has {sorted(keys)})")
                return None
            for lvl in LEVELS:
                x = self.number(section, key, lo=0, lo_open=lo_open, value=v[str(lvl)],
                                name=f"{key}.{lvl}")
                if x is None:
                    return None
                out[lvl] = x
            return out
        x = self.number(section, key, lo=0, lo_open=lo_open, value=v)
        return None if x is None else {lvl: x for lvl in LEVELS}

    def unknown_keys(self, allowed_top: set):
        for key, val in self.doc.items():
            if isinstance(val, dict):
                if key not in self.used:
                    self.problems.append(f"unknown section [{key}]")
                    continue
                for sub in val:
                    if sub not in self.used[key]:
                        self.problems.append(f"unknown key [{key}] {sub}")
            elif key not in self.used.get(None, set()) and key not in allowed_top:
                self.problems.append(f"unknown key {key}")


def _yuan_to_fen_exact(v) -> int | None:
    """A budget in yuan (at most 2 decimals) -> int fen, exactly (:mod:`dipengine.money`)."""
    try:
        return yuan_value_to_fen(v, max_decimals=2)
    except ValueError:
        return None


def _parse_bands(r: _Reader) -> tuple:
    raw = r._raw("settlement", "bands")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        r.bad("settlement", "bands", "must be a non-empty list of tables")
        return ()
    bands = []
    prev = -math.inf
    for i, b in enumerate(raw):
        name = f"bands[{i}]"
        if not isinstance(b, dict):
            r.bad("settlement", name, "must be a table { upper = .., rule = .. }")
            return ()
        rule = b.get("rule")
        if rule not in BAND_RULES:
            r.bad("settlement", f"{name}.rule", f"{rule!r} is not one of {', '.join(BAND_RULES)}")
            continue
        allowed = {"upper", "rule", *BAND_RULES[rule]}
        for k in b:
            if k not in allowed:
                r.problems.append(f"unknown key [settlement] {name}.{k} (rule {rule} takes "
                                  f"{', '.join(sorted(allowed))})")
        params = {}
        for k in BAND_RULES[rule]:
            if k not in b:
                r.problems.append(f"missing [settlement] {name}.{k} (needed by rule {rule})")
                continue
            params[k] = r.number("settlement", k, lo=0, hi=1, value=b[k], name=f"{name}.{k}")
        upper = None
        if "upper" in b:
            upper = r.number("settlement", "upper", lo=0, value=b["upper"], name=f"{name}.upper")
            if upper is not None and upper <= prev:
                r.bad("settlement", f"{name}.upper", f"{upper!r} must be above the previous band's upper")
            prev = upper if upper is not None else prev
        if upper is None and i != len(raw) - 1 and "upper" not in b:
            r.bad("settlement", name, "only the last band may have no upper end")
        bands.append(Band(upper=upper, rule=rule, **params))
    if bands and raw and isinstance(raw[-1], dict) and "upper" in raw[-1]:
        r.bad("settlement", f"bands[{len(raw) - 1}]", "the last band must have no upper end "
              "(it takes every R above the previous band)")
    return tuple(bands)


def _parse_release_scores(r: _Reader, rule) -> tuple | None:
    """``[settlement] deposit_release_scores = [lo, hi]``: required with ``deposit_release =
    "by_score"`` (0 <= lo < hi <= 100), refused otherwise."""
    raw = r._raw("settlement", "deposit_release_scores", required=False)
    if rule != "by_score":
        if raw is not None:
            r.bad("settlement", "deposit_release_scores", 'applies only with deposit_release = "by_score"')
        return None
    if raw is None:
        r.problems.append('missing [settlement] deposit_release_scores (needed by deposit_release = "by_score")')
        return None
    if (not isinstance(raw, list) or len(raw) != 2
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in raw)
            or not 0 <= raw[0] < raw[1] <= 100):
        r.bad("settlement", "deposit_release_scores", f"{raw!r} must be [lo, hi] with 0 <= lo < hi <= 100")
        return None
    return (float(raw[0]), float(raw[1]))


def parse_policy(doc: dict, fname: str = "policy.toml") -> dict:
    """Check a policy document; return the keyword arguments of :class:`Policy` (no tables).

    Raises
    ------
    RuleSetError
        Listing every missing, invalid or unknown parameter.
    """
    preset = None
    if "preset" in doc:
        # a named preset's [deviation] keys, under the ones the policy writes itself (docs/presets.md)
        name = doc["preset"]
        try:
            ps = load_preset(name)
        except PresetError as e:
            raise RuleSetError(f"1 problem(s): invalid preset: {e}", problems=[f"invalid preset: {e}"],
                               file=fname) from None
        doc = {k: v for k, v in doc.items() if k != "preset"}
        doc["deviation"] = {**ps.deviation, **(doc.get("deviation") or {})}
        preset = {"name": ps.name, "sha256": ps.sha256}
    r = _Reader(doc, fname)
    region = r._raw(None, "region")
    if region is not None and not (isinstance(region, str) and len(region) == 6 and region.isdigit()):
        r.bad(None, "region", f"{region!r} is not a 6-digit region code (write it quoted)")
    year = r._raw(None, "year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1990 <= year <= 2200):
        r.bad(None, "year", f"{year!r} is not a year")
    score_scale = r.number(None, "score_scale", lo=0, lo_open=True)

    budget_fen = {}
    for pool in POOLS:
        v = r.number("budget", pool, lo=0)
        if v is not None:
            fen = _yuan_to_fen_exact(r.doc["budget"][pool])
            if fen is None:
                r.bad("budget", pool, "must be yuan with at most 2 decimals")
            budget_fen[pool] = fen
    reserve_rate = r.number("budget", "reserve_rate", lo=0, hi=1)
    if reserve_rate == 1.0:
        r.bad("budget", "reserve_rate", "1.0 would leave no budget")
    include_remote = r.choice("budget", "include_remote", INCLUDE_REMOTE)

    settlement_method = r.choice("point_value", "settlement_method", SETTLEMENT_METHODS)
    band = None
    raw_band = r._raw("point_value", "band", required=False)
    if raw_band is not None:
        if (not isinstance(raw_band, list) or len(raw_band) != 2
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in raw_band)
                or not 0 < raw_band[0] <= 1 <= raw_band[1]):
            r.bad("point_value", "band", f"{raw_band!r} must be [lo, hi] with 0 < lo <= 1 <= hi")
        else:
            band = (float(raw_band[0]), float(raw_band[1]))
    bv = r.number("point_value", "budget_value", lo=0, lo_open=True, required=False)
    budget_value = {}
    for pool in POOLS:
        own = r.number("point_value", f"budget_value_{pool}", lo=0, lo_open=True, required=False)
        budget_value[pool] = own if own is not None else bv
    if band is not None and any(v is None for v in budget_value.values()):
        missing = [p for p in POOLS if budget_value[p] is None]
        r.bad("point_value", "budget_value", f"missing (pool {missing[0]}): point_value.band clamps the "
              "settlement value around it")

    level_coef = {}
    for lvl in LEVELS:
        level_coef[lvl] = r.number("level_coefficients", str(lvl), lo=0, lo_open=True)
    basic = r.number("level_coefficients", "basic_group", lo=0, lo_open=True)

    low = r.per_level("deviation", "low_ratio")
    high = r.per_level("deviation", "high_ratio")
    extreme = r.per_level("deviation", "extreme_ratio")
    if low and high and extreme:
        for lvl in LEVELS:
            if not low[lvl] < 1 < high[lvl] < extreme[lvl]:
                r.bad("deviation", "low_ratio/high_ratio/extreme_ratio",
                      f"level {lvl} needs low < 1 < high < extreme (got {low[lvl]}, {high[lvl]}, {extreme[lvl]})")
    deviation = dict(
        low_ratio=low,
        high_ratio=high,
        extreme_ratio=extreme,
        high_formula=r.choice("deviation", "high_formula", HIGH_FORMULAS),
        apply_level_coef_to_outliers=r.boolean("deviation", "apply_level_coef_to_outliers"),
        blank_group_factor=r.number("deviation", "blank_group_factor", lo=0),
        extreme_rule=r.choice("deviation", "extreme_rule", EXTREME_RULES, required=False),
        low_inclusive=r.boolean("deviation", "low_inclusive", required=False),
        high_inclusive=r.boolean("deviation", "high_inclusive", required=False),
        reference_by=r.choice("deviation", "reference_by", REFERENCE_BY, required=False),
    )

    monthly_method = r.choice("settlement", "monthly_method", MONTHLY_METHODS)
    advance = r.number("settlement", "monthly_advance_rate", lo=0, hi=1)
    deposit = r.number("settlement", "quality_deposit", lo=0, hi=1)
    bands = _parse_bands(r)
    deposit_release = r.choice("settlement", "deposit_release", DEPOSIT_RELEASES, required=False)
    release_scores = _parse_release_scores(r, deposit_release)
    audit_opts = doc.get("audit")
    if audit_opts is not None:
        from dipengine.audit import options_from

        if not isinstance(audit_opts, dict):
            r.problems.append("invalid [audit]: must be a table")
            audit_opts = None
        else:
            r.used["audit"] = set(audit_opts)
            try:
                options_from(None, **audit_opts)
            except DataError as e:
                r.bad("audit", e.column, f"{e.value!r}: {e.message}")
                audit_opts = None
    quota = r.number("special_review", "quota", lo=0, hi=1, required=False)
    if quota is None:
        quota = OPTIONAL_DEFAULTS[("special_review", "quota")]
        r.defaults.append(f"[special_review] quota = {quota!r}")

    # Descriptive top-level strings a pricing builder may add; never used in calculations.
    r.unknown_keys(allowed_top={"name", "source", "description", "version", "notes"})
    if r.problems:
        raise RuleSetError(f"{len(r.problems)} problem(s): " + "; ".join(r.problems),
                           problems=r.problems, file=fname)
    return dict(
        region=region,
        year=year,
        score_scale=score_scale,
        budget_fen=budget_fen,
        reserve_rate=reserve_rate,
        include_remote=include_remote,
        settlement_method=settlement_method,
        band=band,
        budget_value=budget_value,
        level_coef=level_coef,
        basic_group_coef=basic,
        deviation=Deviation(**deviation),
        monthly_method=monthly_method,
        monthly_advance_rate=advance,
        quality_deposit=deposit,
        bands=bands,
        defaults_applied=tuple(r.defaults),
        deposit_release=deposit_release,
        deposit_release_scores=release_scores,
        review_quota=quota,
        preset=preset,
        audit=dict(audit_opts) if audit_opts else None,
    )


def read_same_level_avg(source, name="same_level_avg.csv") -> pa.Table:
    """Read ``same_level_avg.csv`` (``dip_code, level, avg_cost`` yuan, optionally ``pool``) strictly.

    Returns ``dip_code`` string, ``level`` int8, ``avg_cost_fen`` int64 (exact, half up), and
    ``pool`` string (``employee``/``resident``) when the file has that column: the reference is
    then keyed by group × level × pool (``[deviation] reference_by = "level_pool"``, checked by
    :func:`check_reference_table`).
    """
    t = read_table(source)
    for col in ("dip_code", "level", "avg_cost"):
        if col not in t.column_names:
            raise DataError("required column missing", file=name, column=col)
    extra = [c for c in t.column_names if c not in ("dip_code", "level", "avg_cost", "pool")]
    if extra:
        raise DataError("unknown column", file=name, column=extra[0])
    pool = None
    if "pool" in t.column_names:
        pool = pc.utf8_trim_whitespace(t["pool"].cast(pa.string()))
        ok = np.asarray(pc.fill_null(pc.is_in(pool, pa.array(POOLS)), False).combine_chunks())
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise DataError(f"pool must be {' or '.join(POOLS)}", file=name, column="pool",
                            value=pool[i].as_py() or "", row=i + 2)
    code = pc.utf8_trim_whitespace(t["dip_code"].cast(pa.string()))
    empty = np.asarray(pc.fill_null(pc.equal(code, ""), True).combine_chunks())
    if empty.any():
        raise DataError("empty value", file=name, column="dip_code", row=int(np.flatnonzero(empty)[0]) + 2)
    lvl_txt = pc.utf8_trim_whitespace(t["level"].cast(pa.string()))
    ok = np.asarray(pc.fill_null(pc.is_in(lvl_txt, pa.array(["1", "2", "3"])), False).combine_chunks())
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError("level must be 1, 2 or 3", file=name, column="level", value=lvl_txt[i].as_py(), row=i + 2)
    fen, status = yuan_to_fen(t["avg_cost"])
    bad = (status != 0) | (fen <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError("avg_cost must be a positive amount in yuan", file=name, column="avg_cost",
                        value=t["avg_cost"][i].as_py(), row=i + 2)
    cols = {"dip_code": code, "level": lvl_txt.cast(pa.int8()), "avg_cost_fen": pa.array(fen)}
    if pool is not None:
        cols["pool"] = pool
    out = pa.table(cols)
    keys = pc.binary_join_element_wise(out["dip_code"], lvl_txt, *([] if pool is None else [pool]), "|")
    if pc.count_distinct(keys).as_py() != out.num_rows:
        vc = pc.value_counts(keys).to_pylist()
        dup = next(d["values"] for d in vc if d["counts"] > 1)
        raise DataError("duplicate dip_code and level" + ("" if pool is None else " and pool"), file=name,
                        column="dip_code", value=dup)
    return out.combine_chunks()


def check_reference_table(reference_by: str, same_level_avg: pa.Table, name="same_level_avg.csv") -> None:
    """The same-level table must be keyed as ``[deviation] reference_by`` says.

    ``"level"``: no ``pool`` column; ``"level_pool"``: a ``pool`` column (every row names its
    pool). Raises :class:`DataError` naming the file and column ``pool`` otherwise.
    """
    has_pool = "pool" in same_level_avg.column_names
    if reference_by == "level_pool" and not has_pool:
        raise DataError('required column missing: policy.toml [deviation] reference_by = "level_pool" keys the '
                        "deviation reference by group, level and pool", file=name, column="pool")
    if reference_by != "level_pool" and has_pool:
        raise DataError('a pool column needs policy.toml [deviation] reference_by = "level_pool" (the reference '
                        "is keyed by group and level only)", file=name, column="pool")


def load_policy(path) -> Policy:
    """Load ``policy.toml`` and ``same_level_avg.csv`` from a pricing directory (or the toml path).

    ``path`` may also be ``REGION/YEAR`` of shipped tables (``"440200/2026"``): an existing path
    always wins (:func:`resolve_pricing_dir`, as ``--pricing`` on the command line). When the
    directory holds ``manifest.toml``, it is checked by :func:`check_pricing_manifest`.

    Raises
    ------
    DataError
        A missing or malformed file, a sha256 mismatch or a bad parameter (one message naming
        each problem; :class:`~dipengine.errors.RuleSetError` carries the list).
    """
    path = resolve_pricing_dir(path)
    directory = path.parent if path.suffix == ".toml" else path
    toml_path = path if path.suffix == ".toml" else directory / "policy.toml"
    _regular_file(toml_path, "policy file not found")
    check_pricing_manifest(directory)
    try:
        doc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"malformed TOML ({e})", file=toml_path) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", file=toml_path) from None
    kwargs = parse_policy(doc, fname=str(toml_path))
    sla_path = directory / "same_level_avg.csv"
    _regular_file(sla_path, "same-level cost table not found (the deviation reference)")
    sla = read_same_level_avg(sla_path, name=str(sla_path))
    check_reference_table(kwargs["deviation"].reference_by, sla, name=str(sla_path))
    sha = {"policy.toml": sha256_file(toml_path), "same_level_avg.csv": sha256_file(sla_path)}
    return Policy(path=directory, same_level_avg=sla, sha256=sha, **kwargs)


#: The files of a pricing directory that :func:`load_policy` reads: a manifest must list them.
SEALED_FILES = ("policy.toml", "same_level_avg.csv")


def _regular_file(path: Path, missing: str) -> None:
    """DataError naming ``path`` unless it is a regular file (checked before opening: a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(missing, file=path) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", file=path) from None
    if not stat.S_ISREG(mode):
        raise DataError("not a regular file", file=path)


def check_pricing_manifest(directory) -> dict | None:
    """Verify a pricing directory's ``manifest.toml`` when there is one; its document, else ``None``.

    Every ``[files]`` entry must be a relative path inside the directory naming a regular file whose
    sha256 matches (:func:`dipengine.manifest.check_files`), and ``policy.toml`` and
    ``same_level_avg.csv``, when present, must be listed. An empty or malformed manifest is a
    :class:`DataError` naming it.

    Raises
    ------
    RuleSetError
        Listing every problem as ``(file, message)``; a bad entry reads
        ``("manifest.toml", "line N: [files] '../x': ...")``.
    """
    directory = Path(directory)
    mpath = directory / "manifest.toml"
    if not os.path.lexists(mpath):
        return None
    manifest, text = read_manifest_text(directory)
    problems = verify_files(directory, manifest, text)
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else None
    if listed is not None:
        for fname in SEALED_FILES:
            if os.path.lexists(directory / fname) and fname not in listed:
                problems.append((fname, "not listed in manifest.toml [files] (no sha256)"))
    if problems:
        text = "; ".join(m if f == "manifest.toml" else f"{f}: {m}" for f, m in problems)
        raise RuleSetError(text, problems=problems, file=mpath)
    return manifest


def check_period(policy: Policy, period) -> str | None:
    """Why ``policy`` does not apply to the settlement ``period`` (``YYYY`` or ``YYYY-MM``); ``None``
    when the period lies in the policy's ``year``.

    Raises
    ------
    ValueError
        A malformed period.
    """
    from dipengine.rules import period_dates

    first, _last = period_dates(period)
    if first.year == policy.year:
        return None
    return f"pricing tables {policy.path} are for {policy.region} {policy.year}; period {str(period).strip()} is not in it"


def policy_from_dict(doc: dict, same_level_avg: pa.Table, *, path=".") -> Policy:
    """Build a :class:`Policy` from a parsed ``policy.toml`` document and a same-level table
    (``dip_code``, ``level`` int8, ``avg_cost_fen`` int64; ``pool`` string with ``[deviation]
    reference_by = "level_pool"``), with the checks of :func:`load_policy`."""
    kwargs = parse_policy(doc)
    check_reference_table(kwargs["deviation"].reference_by, same_level_avg)
    return Policy(path=Path(path), same_level_avg=same_level_avg, **kwargs)


def packaged_pricing_root() -> Path:
    """Folder of the pricing tables shipped with the package (``dipengine.pricing_tables``).

    Installed (wheel or editable) it is the ``dipengine.pricing_tables`` package; in a plain
    source checkout, where that package is not importable, ``pricing_tables/`` beside ``dipengine/``.
    """
    from importlib import resources

    try:
        return Path(str(resources.files("dipengine.pricing_tables")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "pricing_tables"


def resolve_pricing_dir(name_or_path) -> Path:
    """A pricing directory from a path or the short name ``<region>/<year>`` of shipped tables.

    An existing path always wins. Otherwise ``REGION/YEAR`` (6 digits, 4 digits) that names
    shipped tables (``pricing_tables/<region>/<year>/policy.toml``) resolves to them, so
    ``--pricing 440200/2026`` works anywhere. Anything else comes back unchanged (as a ``Path``),
    for the loader to report as not found.
    """
    import re

    path = Path(name_or_path)
    m = re.fullmatch(r"([0-9]{6})/([0-9]{4})", str(name_or_path))
    if path.exists() or m is None:
        return path
    shipped = packaged_pricing_root() / m.group(1) / m.group(2)
    return shipped if (shipped / "policy.toml").is_file() else path
