"""The annual DIP settlement written in plain pandas, as an analyst would: the baseline of
``benchmarks/compare.py``.

One vectorised pandas step after the other (no Python loop per case, nothing imported from
``dipengine``): it reads the rule set, the pricing tables and the registry from their files
(``groups.csv``, ``procedures.csv``, ``aux_coefficients.csv``, ``cci_weights.csv``,
``severity_dx.csv``, ``manifest.toml`` ``[options]``; ``policy.toml``, ``same_level_avg.csv``;
``hospitals.csv``) and the cases from Parquet, then

1. **validates** the rows (contract §7, precedence as ``dipengine.reasons``): required fields,
   duplicate ``case_id``, enumerations, dates (order, period, length of stay), money (negative,
   absurd, fund + patient + other funds against the total), diagnosis and procedure code shapes,
   hospitals missing from the registry;
2. **groups** them by merges (dip-rules §2): procedures exploded to one row per (case, code),
   classes and levels from ``procedures.csv`` (full code, then the code without its ``x###``
   extension, else the chapter heuristic); core/basic candidates by merging the case's
   subcategory and codes with the groups' exploded expressions (``+`` terms, ``/`` lists),
   conservative groups for conservative-equivalent cases, the comprehensive fallback by the
   category's prefixes and ranges; the winner by the §2.5 priority and the tie-breaks (main
   procedure, terms, matched codes, average cost closest to the case's cost); the blank group
   for the rest; auxiliary subtypes (death, severity, CCI, age bands) by merges with the
   secondary diagnoses' longest prefixes;
3. **scores** them (dip-rules §6): level and institution coefficients, same-level averages
   (group average as fallback), deviation classes and formulas, points to 1/10,000 half up;
   locality, pool and ``include_remote``;
4. **settles** (dip-rules §5, §7): groupby sums per hospital and pool, total-cost budget and
   settlement point value per pool (band clamp), hospital standards (largest remainder when
   the value floats, else half-up points × value), fund due, assessment, the band rules.

Simplifications, stated: codes are taken as they are in the file (the synthetic data is in the
医保版 normal form; ``dipengine`` normalises them first); amounts go through float64 (exact for
these sizes) and the band rules are float arithmetic rounded half up (the engine uses
decimals: a result can differ by a fen at an exact half); no estimate mode (the patient-side
benefit calculator that ``dipengine settle`` also runs when the pricing dir has a
``benefits.csv``, which changes no statement when every case records its payments); no monthly
statements; CSV, Excel and national-schema inputs are not read.

Script: ``python benchmarks/pandas_settle.py --input CASES.parquet --rules DIR --pricing DIR
--hospitals F --period YYYY --out DIR`` writes ``cases.parquet``, ``hospitals.parquet`` and
``hospitals.csv`` into ``DIR`` and prints ``{"seconds": ..., "read_seconds": ...}`` (the time
after pandas is imported).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tomllib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

CLASSES = ["conservative", "diagnostic", "therapeutic", "surgery"]
PRIORITY = [  # dip-rules §2.5: the first kind with a candidate wins
    ("core", "surgery"), ("basic", "surgery"), ("core", "therapeutic"), ("basic", "therapeutic"),
    ("core", "diagnostic"), ("basic", "diagnostic"),
    ("comprehensive", "surgery"), ("comprehensive", "therapeutic"), ("comprehensive", "diagnostic"),
    ("core", "conservative"), ("basic", "conservative"), ("comprehensive", "conservative"),
]
POOLS = ["employee", "resident"]
SCORED = ["core", "basic", "comprehensive", "blank"]
REQUIRED = ["case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
            "discharge_date", "main_dx", "total_cost"]
DX_RE = (r"^[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?(x[0-9]{3})?\*?"
         r"(\+[A-Z][0-9]{2}(\.[0-9A-Zx]{1,4})?(x[0-9]{3})?\*?)?$")
PROC_RE = r"^[0-9]{2}(\.[0-9A-Zx]{1,5})?(x[0-9]{3,4})?$"
EXTENSION_RE = r"^([0-9]{2}\.[0-9A-Zx]{4})x[0-9]+$"
MAX_FEN = 10_000_000 * 100
INPUT_COLUMNS = {"case_id", "hospital_id", "patient_id", "insurance_type", "person_type", "insured_region",
                 "remote_filing", "sex", "age", "age_days", "admit_date", "discharge_date", "los", "discharge_mode",
                 "main_dx", "other_dx", "main_proc", "other_procs", "total_cost", "fund_paid", "patient_paid",
                 "out_of_catalogue_cost", "class_b_cost", "other_fund_paid"}
MONEY = ("total_cost", "fund_paid", "patient_paid", "other_fund_paid", "out_of_catalogue_cost", "class_b_cost")
DEFAULT_OPTIONS = {"match_mode": "any_of", "cci_levels": [1, 3, 5], "severity_min_los": 3,
                   "death_discharge_mode": 5, "conservative_max_class": "diagnostic",
                   "conservative_max_level": 2,
                   "age_bands": ["0_28d:0d:28d", "29d_1y:29d:364d", "1_6:1:6", "7_17:7:17", "65_69:65:69",
                                 "70_79:70:79", "80p:80:"]}


def half_up(x):
    """Round float amounts half up (half away from zero) to int64."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def dec_half_up(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def yuan_to_fen(s: pd.Series) -> pd.Series:
    """Yuan (decimal or float column) -> fen as float64 (NaN where null)."""
    return (s.astype("float64[pyarrow]") * 100).round().astype("float64")


def strings(s: pd.Series) -> pd.Series:
    """A text column with empty strings as missing."""
    return s.where(s != "")


# --------------------------------------------------------------------------- tables


def read_rules(rules_dir: Path) -> dict:
    def csv(name, **kw):
        p = rules_dir / name
        return pd.read_csv(p, dtype=str, keep_default_na=False, **kw) if p.exists() else None

    groups = csv("groups.csv")
    groups["score"] = groups["score"].astype(float)
    groups["avg_cost"] = groups["avg_cost"].replace("", "0").astype(float)
    groups["gid"] = np.arange(len(groups))
    groups["avg_fen"] = half_up(groups["avg_cost"] * 100)
    prio = pd.DataFrame(PRIORITY, columns=["group_type", "treat_class"]).reset_index(names="prio")
    groups["prio"] = groups.merge(prio, on=["group_type", "treat_class"], how="left")["prio"].fillna(
        len(PRIORITY)).astype(int).to_numpy()
    procs = csv("procedures.csv")
    if procs is None:
        procs = pd.DataFrame({"code": [], "class": [], "level": []}, dtype=str)
    if "level" not in procs:
        procs["level"] = ""
    procs["rank"] = procs["class"].map(CLASSES.index)
    procs["level"] = pd.to_numeric(procs["level"]).fillna(0).astype(int)
    aux = csv("aux_coefficients.csv")
    if aux is not None:
        aux["coefficient"] = aux["coefficient"].astype(float)
    cci = csv("cci_weights.csv")
    if cci is not None:
        cci["weight"] = cci["weight"].astype(int)
        cat = cci["category"] if "category" in cci else pd.Series("", index=cci.index)
        cci["category"] = cat.where(cat != "", cci["dx_prefix"])
    sev = csv("severity_dx.csv")
    if sev is not None:
        sev["level"] = sev["level"].map({"II": 2, "III": 3})
    with open(rules_dir / "manifest.toml", "rb") as f:
        options = {**DEFAULT_OPTIONS, **tomllib.load(f).get("options", {})}
    excl_dx, excl_proc = csv("excluded_dx.csv"), csv("excluded_proc.csv")
    return {"groups": groups, "procedures": procs, "aux": aux, "cci": cci, "severity": sev, "options": options,
            "excluded_dx": [] if excl_dx is None else list(excl_dx["code"]),
            "excluded_proc": [] if excl_proc is None else list(excl_proc["code"])}


def read_policy(pricing_dir: Path) -> dict:
    with open(pricing_dir / "policy.toml", "rb") as f:
        pol = tomllib.load(f, parse_float=Decimal)  # exact yuan amounts
    sla = pd.read_csv(pricing_dir / "same_level_avg.csv", dtype={"dip_code": str})
    sla["ref_fen"] = half_up(sla["avg_cost"] * 100)
    pol["same_level_avg"] = sla[["dip_code", "level", "ref_fen"] + (["pool"] if "pool" in sla else [])]
    return pol


def read_hospitals(path: Path) -> pd.DataFrame:
    h = pd.read_csv(path, dtype={"hospital_id": str, "region": str})
    for col, default in (("coefficient", np.nan), ("assessment_coef", 1.0)):
        h[col] = pd.to_numeric(h[col], errors="coerce") if col in h else default
    h["assessment_coef"] = h["assessment_coef"].fillna(1.0)
    h["level"] = h["level"].astype(int)
    return h[["hospital_id", "level", "region", "coefficient", "assessment_coef"]]


def by_level(value, level: pd.Series) -> pd.Series:
    """A policy number, or a per-level table ``{1 = .., 2 = .., 3 = ..}``, for each case's level."""
    if isinstance(value, dict):
        table = {int(k): float(v) for k, v in value.items()}
        return level.map(table).fillna(table[3])
    return pd.Series(float(value), index=level.index)


# --------------------------------------------------------------------------- 1. validation


def validate(df: pd.DataFrame, hospitals: pd.DataFrame, year: int) -> pd.Series:
    """The reason code of each row (None when the row is fine)."""
    n = len(df)
    none = np.zeros(n, dtype=bool)
    missing = none.copy()
    for c in REQUIRED:
        missing |= df[c].isna().to_numpy() if c in df else True

    dup = (df["case_id"].duplicated(keep="first") & df["case_id"].notna()).to_numpy()

    def outside(col, allowed):
        return (df[col].notna() & ~df[col].isin(allowed)).to_numpy() if col in df else none

    def col(name):
        return df[name] if name in df else pd.Series(np.nan, index=df.index)

    bad_value = (outside("insurance_type", ["employee", "resident"]) | outside("sex", ["M", "F", "U"])
                 | outside("person_type", ["in_service", "retired", "student", "child", "other"])
                 | outside("remote_filing", ["none", "long_term", "referral", "emergency", "temporary"])
                 | outside("discharge_mode", [1, 2, 3, 4, 5, 9])
                 | ((df["age"] < 0) | (df["age"] > 130) | (col("age_days") < 0) | (col("age_days") > 365)
                    | (col("los") < 0)).to_numpy()
                 | (df["insured_region"].notna() & ~df["insured_region"].str.fullmatch(r"[0-9]{6}")).to_numpy())

    admit, disch = df["admit_date_day"], df["discharge_date_day"]
    first = (pd.Timestamp(year, 1, 1) - pd.Timestamp(1970, 1, 1)).days
    last = (pd.Timestamp(year, 12, 31) - pd.Timestamp(1970, 1, 1)).days
    los = col("los")
    bad_dates = ((disch < admit) | (disch < first) | (disch > last)
                 | ((los >= 0) & (disch >= admit) & ((los - df["los_derived"]).abs() > 1))).to_numpy()

    bad_amount = none.copy()
    for c in MONEY:
        if c + "_fen" in df:
            bad_amount |= ((df[c + "_fen"] < 0) | (df[c + "_fen"] > MAX_FEN)).to_numpy()
    total = df["total_cost_fen"]
    paid = df["fund_paid_fen"] + df["patient_paid_fen"] + df["other_fund_paid_fen"].fillna(0)
    bad_amount |= ((paid - total).abs() > 100).to_numpy()  # NaN (a payment not recorded) compares False
    for c in ("out_of_catalogue_cost_fen", "class_b_cost_fen"):
        if c in df:
            bad_amount |= (df[c] > total).to_numpy()

    invalid_dx = (df["main_dx"].notna() & ~df["main_dx"].str.match(DX_RE)).to_numpy()
    invalid_proc = (df["main_proc"].notna() & ~df["main_proc"].str.match(PROC_RE)).to_numpy()
    other = df["other_procs"].explode().dropna().astype("str")
    other = other[other != ""]
    invalid_proc = invalid_proc | df.index.isin(other.index[~other.str.match(PROC_RE)])

    unknown = (df["hospital_id"].notna() & ~df["hospital_id"].isin(hospitals["hospital_id"])).to_numpy()
    conditions = [missing, dup, bad_value, bad_dates, bad_amount, invalid_dx, invalid_proc, unknown]
    names = ["MISSING_FIELD", "DUPLICATE_CASE", "BAD_VALUE", "BAD_DATES", "BAD_AMOUNT", "INVALID_DX",
             "INVALID_PROC", "UNKNOWN_HOSPITAL"]
    return pd.Series(np.select(conditions, names, default=None), index=df.index, dtype=object)


# --------------------------------------------------------------------------- 2. grouping


def heuristic_rank(code: pd.Series) -> pd.Series:
    """Class rank of procedures not in procedures.csv (``dipengine.codes.proc_class_heuristic``)."""
    chapter = pd.to_numeric(code.str.slice(0, 2), errors="coerce")
    sub = code.str.slice(3, 4)
    diagnostic = chapter.between(87, 91) | ((chapter == 92) & sub.isin(["0", "1"]))
    operative = chapter.between(1, 86)
    rank = np.select([chapter.isna(), diagnostic | (operative & (sub == "1")), operative], [0, 1, 3], default=2)
    return pd.Series(rank, index=code.index)


def starts_with_any(code: pd.Series, prefixes) -> pd.Series:
    hit = pd.Series(False, index=code.index)
    for length in sorted({len(p) for p in prefixes}):
        hit |= code.str.slice(0, length).isin([p for p in prefixes if len(p) == length])
    return hit


def longest_prefix(code: pd.Series, table: pd.DataFrame, value: str) -> pd.Series:
    """``table[value]`` of the longest ``table.dx_prefix`` each code starts with (NaN if none)."""
    out = pd.Series(np.nan, index=code.index, dtype=object)
    for length in sorted(table["dx_prefix"].str.len().unique(), reverse=True):
        rows = table[table["dx_prefix"].str.len() == length]
        found = code.str.slice(0, length).map(rows.set_index("dx_prefix")[value])
        out = out.where(out.notna(), found)
    return out


def age_band(text: str):
    name, lo, hi = text.split(":")

    def key(v):
        return int(v[:-1]) if v.endswith("d") else 365 * int(v)

    return "age_" + name, key(lo), (key(hi) if hi else 2**31 - 1)


def group(df: pd.DataFrame, rules: dict) -> pd.DataFrame:
    """Grouping output for the valid rows of ``df`` (``reason`` null); indexed like ``df``."""
    groups, opts = rules["groups"], rules["options"]
    cases = df[df["reason"].isna()]
    main = cases["main_dx"].str.replace(r"\+.*$", "", regex=True)
    sub, cat = main.str.slice(0, 5), main.str.slice(0, 3)
    res = pd.DataFrame(index=df.index, data={"gid": np.nan, "match_path": "rejected", "reason": df["reason"]})
    excluded = starts_with_any(main, rules["excluded_dx"]) if rules["excluded_dx"] else pd.Series(False, index=main.index)
    res.loc[excluded[excluded].index, ["match_path", "reason"]] = ["excluded", "EXCLUDED_DX"]
    keep = ~excluded
    cases, sub, cat = cases[keep], sub[keep], cat[keep]

    # procedures, long: one row per (case, code); the main procedure flagged
    mp = cases["main_proc"].dropna()
    op = cases["other_procs"].explode().dropna().astype("str")
    long = pd.concat([pd.DataFrame({"code": mp, "is_main": True}), pd.DataFrame({"code": op, "is_main": False})])
    long = long[long["code"] != ""]
    if rules["excluded_proc"]:
        long = long[~starts_with_any(long["code"], rules["excluded_proc"])]
    long["row"] = long.index
    long["base"] = long["code"].str.replace(EXTENSION_RE, r"\1", regex=True)
    procs = rules["procedures"][["code", "rank", "level"]]
    long = long.merge(procs, on="code", how="left")
    by_base = long[["base"]].merge(procs.rename(columns={"code": "base"}), on="base", how="left")
    long["rank"] = long["rank"].fillna(by_base["rank"])
    long["level"] = long["level"].fillna(by_base["level"]).fillna(0)
    long["rank"] = long["rank"].fillna(heuristic_rank(long["code"]))
    per_case = long.groupby("row").agg(rank=("rank", "max"), level=("level", "max"))
    case_rank = per_case["rank"].reindex(cases.index).fillna(0).astype(int)
    case_level = per_case["level"].reindex(cases.index).fillna(0)
    cons_equiv = (case_rank <= CLASSES.index(opts["conservative_max_class"])) & (
        case_level <= opts["conservative_max_level"])
    cost = cases["total_cost_fen"]

    # core/basic groups with an expression, long: one row per (group, term, code)
    cb = groups[groups["group_type"].isin(["core", "basic"])]
    expr = cb[cb["proc_expr"] != ""].copy()
    expr["term"] = expr["proc_expr"].str.split("+")
    expr["nterms"] = expr["term"].str.len()
    gt = expr[["gid", "dx_key", "term"]].explode("term")
    gt["t"] = gt.groupby("gid").cumcount()
    gt["tsize"] = gt["term"].str.count("/") + 1
    gt["ecode"] = gt["term"].str.split("/")
    gt = gt.explode("ecode")[["gid", "dx_key", "t", "tsize", "ecode"]]

    # a listed code is performed when a case code or its base code equals it
    lc = long[["row", "code", "base", "is_main"]].copy()
    lc["sub"] = sub.reindex(lc["row"]).to_numpy()
    hits = pd.concat([
        lc.merge(gt, left_on=["sub", "code"], right_on=["dx_key", "ecode"]),
        lc.merge(gt, left_on=["sub", "base"], right_on=["dx_key", "ecode"]),
    ])
    hits["main_first"] = hits["is_main"] & (hits["t"] == 0)
    keyed = hits.groupby(["row", "gid"])["main_first"].max()
    hits = hits.drop_duplicates(["row", "gid", "t", "ecode"])
    if opts["match_mode"] == "all_listed":
        per_term = hits.groupby(["row", "gid", "t"]).agg(n=("ecode", "size"), tsize=("tsize", "first"))
        hits = hits.set_index(["row", "gid", "t"]).loc[per_term.index[per_term["n"] == per_term["tsize"]]].reset_index()
    matched = hits.groupby(["row", "gid"]).agg(terms=("t", "nunique"), n_matched=("ecode", "size"))
    matched["keyed"] = keyed.reindex(matched.index).astype(int)
    matched = matched.reset_index().merge(expr[["gid", "nterms"]], on="gid")
    matched = matched[matched["terms"] == matched["nterms"]]

    cons_groups = cb[cb["proc_expr"] == ""][["gid", "dx_key"]]
    ce = pd.DataFrame({"row": cases.index[cons_equiv.to_numpy()], "sub": sub[cons_equiv]})
    cons = ce.merge(cons_groups, left_on="sub", right_on="dx_key")
    cons["nterms"] = cons["n_matched"] = cons["keyed"] = 0

    # comprehensive fallback: the case's class; category prefix longest first, then ranges
    comp = groups[groups["group_type"] == "comprehensive"].copy()
    comp["rank"] = comp["treat_class"].map(CLASSES.index)
    pairs = pd.DataFrame({"cat": cat, "rank": case_rank}).drop_duplicates()
    pairs["gid"] = np.nan
    plain = comp[~comp["dx_key"].str.contains("-")]
    for length in (3, 2, 1):
        key = pairs.assign(dx_key=pairs["cat"].str.slice(0, length)).merge(
            plain[["dx_key", "rank", "gid"]], on=["dx_key", "rank"], how="left", suffixes=("", "_c"))
        pairs["gid"] = pairs["gid"].fillna(pd.Series(key["gid_c"].to_numpy(), index=pairs.index))
    ranges = comp[comp["dx_key"].str.contains("-")].copy()
    if len(ranges) and pairs["gid"].isna().any():
        ranges[["lo", "hi"]] = ranges["dx_key"].str.split("-", expand=True)

        def num(s):
            return s.str.slice(0, 1).map(ord) * 100 + s.str.slice(1, 3).astype(int)

        ranges["width"] = num(ranges["hi"]) - num(ranges["lo"])
        r = pairs[pairs["gid"].isna()].reset_index().merge(ranges[["lo", "hi", "rank", "width", "gid"]],
                                                           on="rank", suffixes=("", "_r"))
        r = r[(r["lo"] <= r["cat"]) & (r["cat"] <= r["hi"])].sort_values(["index", "width", "gid_r"])
        r = r.drop_duplicates("index").set_index("index")["gid_r"]
        pairs["gid"] = pairs["gid"].fillna(r)
    cm = pd.DataFrame({"row": cases.index, "cat": cat.to_numpy(), "rank": case_rank.to_numpy()}).merge(
        pairs, on=["cat", "rank"]).dropna(subset=["gid"])
    cm["nterms"] = cm["n_matched"] = cm["keyed"] = 0

    cand = pd.concat([matched[["row", "gid", "nterms", "n_matched", "keyed"]],
                      cons[["row", "gid", "nterms", "n_matched", "keyed"]],
                      cm[["row", "gid", "nterms", "n_matched", "keyed"]]])
    cand["gid"] = cand["gid"].astype(int)
    cand = cand.merge(groups[["gid", "prio", "avg_fen", "group_type"]], on="gid")
    cand["distance"] = (cand["avg_fen"] - cost.reindex(cand["row"]).to_numpy()).abs()
    cand.loc[cand["group_type"] == "comprehensive", "distance"] = 0
    best = cand.sort_values(["row", "prio", "keyed", "nterms", "n_matched", "distance", "gid"],
                            ascending=[True, True, False, False, False, True, True]).drop_duplicates("row")
    chosen = best.set_index("row")["gid"].reindex(cases.index)
    blank = groups.loc[groups["group_type"] == "blank", "gid"]
    if len(blank):
        chosen = chosen.fillna(blank.iloc[0])
    res.loc[cases.index, "gid"] = chosen
    no_group = chosen.index[chosen.isna()]
    res.loc[no_group, "reason"] = "NO_GROUP"
    g = groups.set_index("gid").reindex(res["gid"])
    grouped = res["gid"].notna().to_numpy()
    res["match_path"] = np.where(grouped, g["group_type"].to_numpy(), res["match_path"].to_numpy())
    for col in ("dip_code", "dip_name", "group_type"):
        res[col] = g[col].to_numpy()
    treat = g["treat_class"].to_numpy(dtype=object).copy()
    is_blank = (res["match_path"] == "blank").to_numpy()
    own = np.array(CLASSES, dtype=object)[case_rank.reindex(res.index).fillna(0).astype(int).to_numpy()]
    treat[is_blank] = own[is_blank]
    res["treat_class"] = treat
    res["base_score"] = g["score"].fillna(0.0).to_numpy()

    # auxiliary subtypes (dip-rules §3.1), the highest coefficient among those that apply
    res["aux_subtype"], res["aux_coef"] = None, 1.0
    if rules["aux"] is not None and len(rules["aux"]):
        offered = pd.DataFrame({"row": res.index[grouped], "dip_code": res.loc[grouped, "dip_code"].to_numpy()}).merge(
            rules["aux"], on="dip_code")
        rows = offered["row"].unique()
        sec = df.loc[rows, "other_dx"].explode().dropna().astype("str")
        sec = sec[sec != ""].str.replace(r"\+.*$", "", regex=True)
        sev_level = pd.Series(0, index=pd.Index(rows))
        cci_score = pd.Series(0, index=pd.Index(rows))
        if rules["severity"] is not None and len(sec):
            lv = longest_prefix(sec, rules["severity"], "level").dropna().astype(int)
            sev_level = lv.groupby(level=0).max().reindex(rows, fill_value=0)
        if rules["cci"] is not None and len(sec):
            w = longest_prefix(sec, rules["cci"], "weight").dropna()
            cat_ = longest_prefix(sec, rules["cci"], "category").dropna()
            wc = pd.DataFrame({"w": w.astype(int), "cat": cat_}).reset_index(names="row")
            cci_score = wc.groupby(["row", "cat"])["w"].max().groupby(level=0).sum().reindex(rows, fill_value=0)
        los = df.loc[rows, "los"].fillna(df.loc[rows, "los_derived"])
        sev_level = sev_level.where(los.fillna(-1).to_numpy() >= opts["severity_min_los"], 0)
        c1, c2, c3 = opts["cci_levels"]
        cci_level = pd.Series(np.select([cci_score >= c3, cci_score >= c2, cci_score >= c1], [3, 2, 1], 0), index=rows)
        age = df.loc[rows, "age"]
        age_days = df.loc[rows, "age_days"] if "age_days" in df else age * np.nan
        age_key = pd.Series(np.where(age == 0, np.where(age_days >= 0, age_days, np.nan),
                                     np.where(age > 0, 365 * age, np.nan)), index=rows)
        death = pd.Series((df.loc[rows, "discharge_mode"] == opts["death_discharge_mode"]).to_numpy(), index=rows)
        o = offered["row"]
        st = offered["subtype"]
        qual = np.select(
            [st == "death", st == "severity_III", st == "severity_II", st == "cci_3", st == "cci_2", st == "cci_1"],
            [death.reindex(o).to_numpy(), sev_level.reindex(o).to_numpy() >= 3, sev_level.reindex(o).to_numpy() >= 2,
             cci_level.reindex(o).to_numpy() >= 3, cci_level.reindex(o).to_numpy() >= 2,
             cci_level.reindex(o).to_numpy() >= 1], default=False)
        bands = [age_band(b) for b in opts["age_bands"]]
        key = age_key.reindex(o).to_numpy()
        for name, lo, hi in bands:
            qual = np.where(st == name, (key >= lo) & (key <= hi), qual)
        order = ["death", "severity_III", "severity_II", "cci_3", "cci_2", "cci_1"] + [b[0] for b in bands]
        offered["order"] = st.map({s: i for i, s in enumerate(order)})
        best = offered[qual.astype(bool)].sort_values(["row", "coefficient", "order"], ascending=[True, False, True])
        best = best.drop_duplicates("row").set_index("row")
        res.loc[best.index, "aux_subtype"] = best["subtype"]
        res.loc[best.index, "aux_coef"] = best["coefficient"]
    return res.drop(columns="gid")


# --------------------------------------------------------------------------- 3. scoring


def score(df: pd.DataFrame, res: pd.DataFrame, hospitals: pd.DataFrame, policy: dict, rules: dict) -> pd.DataFrame:
    h = hospitals.set_index("hospital_id")
    level = df["hospital_id"].map(h["level"])
    region = df["hospital_id"].map(h["region"])
    inst = df["hospital_id"].map(h["coefficient"])
    scored = res["match_path"].isin(SCORED) & level.notna()
    lc = policy["level_coefficients"]
    coef = level.map({int(k): float(v) for k, v in lc.items() if k != "basic_group"})
    coef = inst.where(inst.notna(), coef)
    coef = coef.where(res["group_type"] != "basic", float(lc["basic_group"]))
    coef = coef.where(scored)

    keys = ["dip_code", "level"] + (["pool"] if policy["deviation"].get("reference_by") == "level_pool" else [])
    ref = res[["dip_code"]].assign(level=level.fillna(0).astype(int), pool=df["insurance_type"].to_numpy()).merge(
        policy["same_level_avg"], on=keys, how="left")
    ref = pd.Series(ref["ref_fen"].to_numpy(), index=res.index)
    group_avg = res["dip_code"].map(rules["groups"].set_index("dip_code")["avg_fen"])
    source = np.where(ref > 0, "same_level", np.where(group_avg > 0, "group_avg", "none"))
    ref = ref.where(ref > 0, group_avg.where(group_avg > 0))
    ratio = (df["total_cost_fen"] / ref).where(scored)

    d = policy["deviation"]
    lvl = level.fillna(3)
    low, high, extreme = (by_level(d[k], lvl) for k in ("low_ratio", "high_ratio", "extreme_ratio"))
    low_hit = (ratio < low) | ((ratio == low) if d.get("low_inclusive", False) else False)
    high_hit = (ratio > high) | ((ratio == high) if d.get("high_inclusive", False) else False)
    deviation = pd.Series(np.select([ratio.isna(), low_hit, ratio > extreme, high_hit],
                                    ["normal", "low", "extreme", "high"], "normal"), index=res.index)
    out_coef = coef if d["apply_level_coef_to_outliers"] else 1.0
    s = res["base_score"]
    if d["high_formula"] == "ratio_minus_1":
        high_pts = s * (ratio - 1.0) * out_coef
    else:
        high_pts = s * (ratio - 2.0 + coef)
    high_rule = deviation.eq("high") | (deviation.eq("extreme") & (d.get("extreme_rule", "high_formula") == "high_formula"))
    points = np.select(
        [res["match_path"].eq("blank"), deviation.eq("low"), high_rule],
        [s * float(d["blank_group_factor"]) * ratio.fillna(1.0), s * ratio * out_coef, high_pts],
        s * res["aux_coef"] * coef)
    points_e4 = np.where(scored, np.floor(np.nan_to_num(points) * 10000.0 + 0.5), 0).astype(np.int64)

    ins = df["insured_region"]
    region = region.astype("str")
    locality = np.select([(ins == region).to_numpy(), (ins.str.slice(0, 2) == region.str.slice(0, 2)).to_numpy()],
                         ["local", "in_province"], "cross_province")
    locality = pd.Series(locality, index=df.index).where(ins.notna() & region.notna())
    allowed = {"none": ["local"], "in_province": ["local", "in_province"],
               "all": ["local", "in_province", "cross_province"]}[policy["budget"]["include_remote"]]
    pool = df["insurance_type"].where(df["insurance_type"].isin(POOLS))
    out = res.copy()
    out["match_path"] = out["match_path"].where(~(res["match_path"].isin(SCORED) & level.isna()), "rejected")
    out["hospital_id"] = df["hospital_id"]
    out["level"] = level.astype("Int8")
    out["locality"] = locality
    out["pool"] = pool
    out["in_pool"] = scored & pool.notna() & locality.isin(allowed)
    out["ratio"] = ratio
    out["deviation"] = deviation.where(scored)
    out["special_review"] = deviation.eq("extreme") & scored
    out["ref_source"] = pd.Series(source, index=res.index).where(scored)
    out["level_coef"] = coef
    out["case_points"] = points_e4 / 10000.0
    out["points_e4"] = points_e4
    return out


# --------------------------------------------------------------------------- 4. settlement


def largest_remainder(shares: pd.Series, total: int) -> pd.Series:
    """Split ``total`` fen in proportion to ``shares`` (sorted by hospital), exactly."""
    exact = shares / shares.sum() * float(total)
    base = np.floor(exact).astype(np.int64)
    left = int(total - base.sum())
    if left:
        order = (exact - base).sort_values(ascending=False, kind="stable").index
        base.loc[order[:left] if left > 0 else order[::-1][:-left]] += 1 if left > 0 else -1
    return base


def settle(df: pd.DataFrame, sc: pd.DataFrame, hospitals: pd.DataFrame, policy: dict) -> tuple:
    """(case money columns, hospital statements, per-pool figures) of the annual clearing."""
    money = pd.DataFrame({
        "hospital_id": sc["hospital_id"], "pool": sc["pool"], "in_pool": sc["in_pool"],
        "scored": sc["match_path"].isin(SCORED), "points_e4": sc["points_e4"],
        "patient": df["patient_paid_fen"].fillna(0), "other": df["other_fund_paid_fen"].fillna(0),
        "fund": df["fund_paid_fen"].fillna(0), "total": df["total_cost_fen"].fillna(0)})
    money = money[money["hospital_id"].isin(hospitals["hospital_id"]) & money["pool"].notna()]
    inp = money[money["in_pool"]]
    st = inp.groupby(["hospital_id", "pool"]).agg(
        n_cases=("points_e4", "size"), points_e4=("points_e4", "sum"), patient_paid_fen=("patient", "sum"),
        other_fund_paid_fen=("other", "sum"), recorded_fen=("fund", "sum"), total_cost_fen=("total", "sum"))
    counts = money.assign(rej=~money["scored"], out=money["scored"] & ~money["in_pool"]).groupby(
        ["hospital_id", "pool"])[["rej", "out"]].sum()
    st = st.reindex(st.index.union(counts.index), fill_value=0).sort_index()
    st["n_rejected"] = counts["rej"].reindex(st.index, fill_value=0).astype(int)
    st["n_out_of_pool"] = counts["out"].reindex(st.index, fill_value=0).astype(int)
    for c in ("n_cases", "points_e4", "patient_paid_fen", "other_fund_paid_fen", "recorded_fen", "total_cost_fen"):
        st[c] = st[c].astype(np.int64)

    b, pv_conf = policy["budget"], policy["point_value"]
    reserve = Decimal(str(b["reserve_rate"]))
    pools, st["standard_fen"] = {}, 0
    for p in POOLS:
        sel = st.index.get_level_values("pool") == p
        U = int(st.loc[sel, "points_e4"].sum())
        P, O = int(st.loc[sel, "patient_paid_fen"].sum()), int(st.loc[sel, "other_fund_paid_fen"].sum())
        Fp, C = int(st.loc[sel, "recorded_fen"].sum()), int(st.loc[sel, "total_cost_fen"].sum())
        F = dec_half_up(Decimal(str(b[p])) * 100 * (1 - reserve))
        bv = float(pv_conf.get(f"budget_value_{p}", pv_conf["budget_value"])) * 100
        info = {"points_e4": U, "fund_available_fen": F, "budget_value_fen": bv}
        if U > 0:
            if pv_conf["settlement_method"] == "fund_plus_personal":
                T = F + P + O
            else:
                T = (2 * F * C + Fp) // (2 * Fp)
            raw = T * 10000.0 / U
            pv, clamped = raw, False
            if "band" in pv_conf:
                lo, hi = (float(x) * bv for x in pv_conf["band"])
                if raw < lo or raw > hi:
                    pv, clamped = min(max(raw, lo), hi), True
            if clamped:
                st.loc[sel, "standard_fen"] = half_up(st.loc[sel, "points_e4"] * pv / 10000.0)
            else:
                st.loc[sel, "standard_fen"] = largest_remainder(st.loc[sel, "points_e4"].astype(float), T)
            info.update(total_cost_budget_fen=T, raw_fen=raw, value_fen=pv, clamped=clamped)
        pools[p] = info

    h = hospitals.set_index("hospital_id")
    hid = st.index.get_level_values("hospital_id")
    st["level"] = hid.map(h["level"]).astype(np.int8)
    st["assessment_coef"] = hid.map(h["assessment_coef"]).astype(float)
    st["points"] = st["points_e4"] / 10000.0
    st["fund_due_fen"] = st["standard_fen"] - st["patient_paid_fen"] - st["other_fund_paid_fen"]
    due = half_up(st["fund_due_fen"] * st["assessment_coef"])
    st["fund_due_assessed_fen"] = due
    rec = st["recorded_fen"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        R = np.where(due > 0, rec / due, np.where(rec > 0, np.inf, np.nan))
    bands = policy["settlement"]["bands"]
    band_no = np.full(len(st), len(bands) - 1)
    for i in reversed(range(len(bands) - 1)):
        band_no = np.where(R <= float(bands[i]["upper"]), i, band_no)
    amounts, names = [], []
    for bd in bands:
        rule = bd["rule"]
        if rule == "partial_retention":
            a = rec + float(bd["share"]) * (due - rec)
        elif rule == "pay_due":
            a = due.astype(float)
        elif rule == "share_overspend":
            a = due + float(bd["fund_share"]) * (rec - due)
        elif rule == "retain_share_of_due":
            a = rec + float(bd["share"]) * due
        else:
            a = due + float(bd["fund_share"]) * float(bd["cap_over"]) * due
        amounts.append(a)
        names.append(rule)
    clearing = half_up(np.choose(band_no, amounts))
    undefined = np.isnan(R)
    st["ratio_R"] = R
    st["band"] = np.where(undefined, None, np.array(names, dtype=object)[band_no])
    st["clearing_fen"] = np.where(undefined, due, clearing)
    st["monthly_paid_fen"] = st["deposit_fen"] = 0
    st["final_fen"] = st["clearing_fen"]
    st = st.reset_index()[["hospital_id", "pool", "level", "n_cases", "points", "points_e4", "standard_fen",
                           "patient_paid_fen", "other_fund_paid_fen", "fund_due_fen", "assessment_coef",
                           "fund_due_assessed_fen", "recorded_fen", "ratio_R", "band", "clearing_fen",
                           "monthly_paid_fen", "deposit_fen", "final_fen", "n_rejected", "n_out_of_pool"]]

    value = sc["pool"].map({p: i.get("value_fen", 0.0) for p, i in pools.items()}).fillna(0.0)
    case_standard = np.where(sc["in_pool"], half_up(sc["points_e4"] * value / 10000.0), 0)
    case_due = np.where(sc["in_pool"], case_standard - money["patient"].reindex(sc.index, fill_value=0)
                        - money["other"].reindex(sc.index, fill_value=0), 0)
    return pd.DataFrame({"standard_fen": case_standard, "fund_due_fen": case_due}, index=sc.index), st, pools


# --------------------------------------------------------------------------- the whole run


def run(cases, rules_dir, pricing_dir, hospitals_path, period, out_dir=None) -> dict:
    """Settle ``cases`` (a Parquet file) for the year ``period``; write the outputs to ``out_dir``."""
    t0 = time.perf_counter()
    year = int(str(period)[:4])
    rules = read_rules(Path(rules_dir))
    policy = read_policy(Path(pricing_dir))
    hospitals = read_hospitals(Path(hospitals_path))
    # Arrow-backed columns read fast (money stays decimal, dates date32); then plain dtypes:
    # text as pandas' "str", integers and fen as float64 (NaN = null), dates as epoch days
    df = pd.read_parquet(cases, dtype_backend="pyarrow")
    n_input = len(df.columns)
    for c in MONEY:
        if c in df:
            df[c + "_fen"] = yuan_to_fen(df[c])
    if "other_fund_paid_fen" not in df:
        df["other_fund_paid_fen"] = np.nan
    for c in df.columns:
        kind = df[c].dtype.pyarrow_dtype if isinstance(df[c].dtype, pd.ArrowDtype) else None
        if kind is None:
            continue
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            df[c] = strings(df[c].astype("str"))
        elif pa.types.is_integer(kind):
            df[c] = df[c].astype("float64")
        elif pa.types.is_date32(kind):
            df[c + "_day"] = df[c].astype("int32[pyarrow]").astype("float64")
    days = (df["discharge_date_day"] - df["admit_date_day"]).clip(lower=1)
    df["los_derived"] = days
    t_read = time.perf_counter() - t0

    df["reason"] = validate(df, hospitals, year)
    res = group(df, rules)
    sc = score(df, res, hospitals, policy, rules)
    money, statements, pools = settle(df, sc, hospitals, policy)

    out = sc.copy()
    out.insert(0, "case_id", df["case_id"])
    out["standard_fen"] = money["standard_fen"]
    out["patient_paid_fen"] = df["patient_paid_fen"].astype("Int64")
    out["other_fund_paid_fen"] = df["other_fund_paid_fen"].astype("Int64")
    out["fund_due_fen"] = money["fund_due_fen"]
    out["fund_paid_fen"] = df["fund_paid_fen"].astype("Int64")
    for c in df.columns[:n_input]:  # extra input columns are carried through
        if c not in out and c not in INPUT_COLUMNS:
            out[c] = df[c]
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out.to_parquet(out_dir / "cases.parquet", index=False)
        statements.to_parquet(out_dir / "hospitals.parquet", index=False)
        statements.to_csv(out_dir / "hospitals.csv", index=False)
    return {"seconds": time.perf_counter() - t0, "read_seconds": t_read, "rows": len(df),
            "match_path": {k: int(v) for k, v in out["match_path"].value_counts().items()},
            "pools": {p: {k: (float(v) if isinstance(v, float) else v) for k, v in i.items()}
                      for p, i in pools.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="cases (Parquet, contract §2)")
    ap.add_argument("--rules", required=True, help="rule-set directory")
    ap.add_argument("--pricing", required=True, help="pricing directory (policy.toml, same_level_avg.csv)")
    ap.add_argument("--hospitals", required=True)
    ap.add_argument("--period", required=True, help="YYYY (annual clearing)")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[0-9]{4}", args.period):
        ap.error("only the annual clearing (--period YYYY) is implemented")
    info = run(args.input, args.rules, args.pricing, args.hospitals, args.period, args.out)
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
