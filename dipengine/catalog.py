"""Local catalogue building from history: ``dipengine catalog build`` (dip-rules §4.3, contract §4-§5).

The builder reads one normalised case table per history year (oldest first), reduces each year
batch by batch to a few compact integer columns per case, and works on them with vectorised
group-bys (numpy ``bincount`` / ``add.at``, pandas ``factorize``); Python loops run over years,
groups and distinct codes only, never over cases. By default (``method="bounded"``) the columns
are not kept: per-batch sums per *cell* of cases with the same keys decide the groups, and the
trimmed statistics come from spill files (:mod:`dipengine.catalog_stats`), so memory stays about
flat in the number of history cases. ``method="memory"`` concatenates all columns and computes
from whole arrays (:func:`_assemble`): the reference, with the same result and files.

Design choices (stated in ``docs/catalog.md``):

- Combination of a case = (main-diagnosis subcategory, main procedure[, related procedure]).
  The procedure sequence is ``main_proc`` then ``other_procs`` in order, unknown and (optionally)
  diagnostic procedures dropped; its first element is the main procedure, the first later
  therapeutic or surgical procedure with another code is the related candidate. No procedure
  left = conservative.
- A (main, related) pair becomes its own group when it has ``threshold`` weighted cases and its
  year-weighted mean cost differs from the cases with the same main procedure but without that
  related one by at least ``related_min_gain`` (relative).
- Weighted count of a group = weighted average annual count, weights normalised to 1 over all
  history years (a year without cases counts 0). Weighted mean = weights renormalised over the
  years in which the group has cases.
- Trimming per group and year: in a (group, year) with ``min_trim_group`` cases or more, the
  ``floor(n * lo)`` cheapest and ``floor(n * (1 - hi))`` dearest cases are left out of the means.
- Hierarchy: core (``threshold``) -> comprehensive by (category, treatment class) -> range by
  (ICD-10 chapter, treatment class) -> one blank group.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine import catalog_stats, codes
from dipengine.catalog_stats import factorize as _factorize
from dipengine.catalog_stats import trim_mask as _trim_mask
from dipengine.catalog_stats import year_table as _year_table
from dipengine.errors import DataError
from dipengine.io import BATCH_SIZE, atomic_dir, iter_batches, sha256_file, source_files
from dipengine.money import fen_to_yuan_text, yuan_float_to_fen
from dipengine.rules import DEFAULT_OPTIONS, FIXED_SUBTYPES, is_complete_proc, option_problem, parse_age_band

DATA_DIR = Path(__file__).resolve().parent / "data"

CLASS_NAMES = codes.TREAT_CLASSES  # rank 0..3: conservative, diagnostic, therapeutic, surgery
CLASS_LETTER = "CDTS"
CLASS_LABEL = ("保守治疗", "诊断性操作", "治疗性操作", "相关手术")
PROC_CLASS_RANK = {"diagnostic": 1, "therapeutic": 2, "interventional": 2, "surgery": 3}

CATALOG_OPTIONS = ("cci_levels", "severity_min_los", "death_discharge_mode", "age_bands")
"""The grouping options (``manifest.toml [options]``, :data:`dipengine.rules.DEFAULT_OPTIONS`) that
decide which auxiliary subtype a case is of: the builder takes them (``options=``) and writes them
into the ``[options]`` of the rule set it builds, so the grouper applies the coefficients to the
cases they were computed from."""

AGE_BANDS = tuple(parse_age_band(b)[0] for b in DEFAULT_OPTIONS["age_bands"])
SUBTYPES = FIXED_SUBTYPES + AGE_BANDS
"""Auxiliary subtypes of contract §4 ``aux_coefficients.csv`` under the default options, in the
order they are written (:func:`subtypes` for other age bands)."""

MAX_AGE_BANDS = 64  # one bit per band in the per-case band mask

# ICD-10 chapters as category ranges (WHO chapter boundaries), for range groups.
CHAPTERS = (
    ("A00", "B99"), ("C00", "D48"), ("D50", "D89"), ("E00", "E90"), ("F00", "F99"),
    ("G00", "G99"), ("H00", "H59"), ("H60", "H95"), ("I00", "I99"), ("J00", "J99"),
    ("K00", "K93"), ("L00", "L99"), ("M00", "M99"), ("N00", "N99"), ("O00", "O99"),
    ("P00", "P96"), ("Q00", "Q99"), ("R00", "R99"), ("S00", "T98"), ("U00", "U99"),
    ("V01", "Y98"), ("Z00", "Z99"),
)

# defaults of the catalogue options (DEFAULT_OPTIONS): severity II/III only with LOS >= 3 (dip-rules
# §3.1 item 2); CCI score 1-2 -> cci_1, 3-4 -> cci_2, >= 5 -> cci_3 (item 1)
SEVERITY_LOS_GATE = DEFAULT_OPTIONS["severity_min_los"]
CCI_LEVEL_CUTS = tuple(DEFAULT_OPTIONS["cci_levels"])
DEFAULT_WEIGHTS = (1, 2, 7)


def catalog_options(options=None) -> dict:
    """The catalogue options (:data:`CATALOG_OPTIONS`): ``options`` over their defaults, checked.

    ``cci_levels``: three increasing positive integers (the CCI score cut points of cci_1..3);
    ``severity_min_los``, ``death_discharge_mode``: non-negative integers; ``age_bands``: a list of
    distinct ``"name:low:high"`` bands (:func:`dipengine.rules.parse_age_band`), at most
    :data:`MAX_AGE_BANDS`. The checks are those ``rules check`` makes of ``[options]``.

    Raises
    ------
    ValueError
        Naming the option and the value; also for a key that is not a catalogue option.
    """
    out = {k: (list(DEFAULT_OPTIONS[k]) if isinstance(DEFAULT_OPTIONS[k], list) else DEFAULT_OPTIONS[k])
           for k in CATALOG_OPTIONS}
    for k, v in (options or {}).items():
        if k not in CATALOG_OPTIONS:
            raise ValueError(f"options: {k!r} is not an option of the catalogue build "
                             f"(it takes {', '.join(CATALOG_OPTIONS)})")
        bad = option_problem(k, v)
        if bad is None and k == "age_bands" and len(v) > MAX_AGE_BANDS:
            bad = f"at most {MAX_AGE_BANDS} age bands"
        if bad:
            raise ValueError(f"option {k} = {v!r}: {bad}")
        out[k] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def subtypes(options: dict) -> tuple:
    """The auxiliary subtypes under ``options`` (:func:`catalog_options`), in the order written:
    death, severity_III, severity_II, cci_3, cci_2, cci_1, then ``age_<name>`` per age band."""
    return FIXED_SUBTYPES + tuple(parse_age_band(b)[0] for b in options["age_bands"])


def age_keys(age: np.ndarray, age_days: np.ndarray) -> np.ndarray:
    """The grouper's age key per case (int64): age in days under one year when known, else 365 ×
    age in years; -1 unknown (``age``/``age_days`` -1 where null). See :func:`dipengine.rules.parse_age_band`."""
    age = age.astype(np.int64)
    days = age_days.astype(np.int64)
    return np.where(age == 0, np.where(days >= 0, days, -1), np.where(age > 0, 365 * age, -1))

_COLUMNS = (
    "main_dx", "main_proc", "other_procs", "other_dx", "total_cost_fen", "fund_paid_fen",
    "hospital_id", "insurance_type", "insured_region", "discharge_mode", "los", "age", "age_days",
    "discharge_date", "reason",
)


@dataclass
class CatalogResult:
    """What :func:`build_catalog` built.

    Attributes
    ----------
    groups : pa.Table
        ``groups.csv`` as a table: dip_code, dip_name, group_type, dx_key, proc_expr, treat_class,
        score (float64 points), avg_cost (float64 yuan), n_cases (int64).
    aux : pa.Table
        dip_code, subtype, coefficient (float64).
    same_level_avg : pa.Table
        dip_code, level (int8), avg_cost (float64 yuan): last history year.
    budget_point_value : float
        Yuan per point (dip-rules §5.2).
    overall_avg_cost : float
        Year-weighted average cost per case M, yuan.
    budgets_fen : dict
        Last year's recorded fund payments per pool (``employee``/``resident``), int fen.
    years : list[int]
        Calendar year of each history item.
    cases_used : list[int]
        Groupable cases read per history item.
    counts : dict
        Groups by type.
    params : dict
        The build parameters (the manifest's ``[build]``).
    options : dict
        The catalogue options used (:func:`catalog_options`), written to ``[options]``.
    """

    groups: pa.Table
    aux: pa.Table
    same_level_avg: pa.Table
    budget_point_value: float
    overall_avg_cost: float
    budgets_fen: dict
    years: list
    cases_used: list
    counts: dict
    params: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    rules_dir: Path | None = None
    pricing_dir: Path | None = None


# --------------------------------------------------------------------------------------------
# auxiliary tables


def _read_small_csv(path, columns, what) -> list[dict]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read {what} ({e.strerror})", file=path) from None
    header = rows[0].keys() if rows else []
    for col in columns:
        if rows and col not in header:
            raise DataError(f"{what}: required column missing", file=path, column=col)
    return rows


def load_prefix_table(path, value_column: str, allowed=None) -> tuple[list[str], list, list[str]]:
    """Read ``cci_weights.csv`` / ``severity_dx.csv``: ``(prefixes, values, categories)``.

    ``categories`` is the optional ``category`` column (the prefix itself where absent).
    """
    rows = _read_small_csv(path, ("dx_prefix", value_column), Path(path).name)
    prefixes, values = [], []
    categories = [((r.get("category") or "").strip() or (r["dx_prefix"] or "").strip()) for r in rows]
    for i, r in enumerate(rows, start=2):
        p = (r["dx_prefix"] or "").strip()
        v = (r[value_column] or "").strip()
        if not p:
            raise DataError("empty dx_prefix", file=path, row=i, column="dx_prefix")
        if allowed is not None:
            if v not in allowed:
                raise DataError(f"must be one of {sorted(allowed)}", file=path, row=i, column=value_column, value=v)
        else:
            try:
                v = int(v)
            except ValueError:
                raise DataError("not an integer", file=path, row=i, column=value_column, value=v) from None
        prefixes.append(p)
        values.append(v)
    return prefixes, values, categories


def prefix_lookup(arr, prefixes: list[str]) -> np.ndarray:
    """Index into ``prefixes`` of the longest prefix of each code's main part (-1: none).

    Vectorised over ``arr`` (call it on distinct codes): one ``index_in`` per prefix length.
    """
    main = codes.main_code(arr)
    out = np.full(len(arr), -1, dtype=np.int64)
    if len(arr) == 0 or not prefixes:
        return out
    for length in sorted({len(p) for p in prefixes}, reverse=True):
        pos = [i for i, p in enumerate(prefixes) if len(p) == length]
        value_set = pa.array([prefixes[i] for i in pos], pa.string())
        head = pc.utf8_slice_codeunits(main, 0, length)
        hit = pc.index_in(head, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False)
        take = (out < 0) & (hit >= 0)
        out[take] = np.asarray(pos, dtype=np.int64)[hit[take]]
    return out


def _procedure_classes(procedures) -> dict:
    """code -> (class rank, level or None) from a table/path, else ``data/proc_vocab.csv``."""
    src = procedures
    if src is None:
        vocab = DATA_DIR / "proc_vocab.csv"
        if not vocab.exists():
            return {}
        src = vocab
    from dipengine.io import read_table

    name = str(src) if not isinstance(src, pa.Table) else "procedures"
    table = read_table(src)
    for col in ("code", "class"):
        if col not in table.column_names:
            raise DataError("required column missing", file=name, column=col)
    code_col = codes.normalize(table["code"]).to_pylist()
    cls = table["class"].cast(pa.string()).to_pylist()
    lvl = table["level"].cast(pa.string()).to_pylist() if "level" in table.column_names else [None] * len(cls)
    out = {}
    for i, (c, k, l) in enumerate(zip(code_col, cls, lvl)):
        rank = PROC_CLASS_RANK.get((k or "").strip())
        if c is None or rank is None:
            raise DataError("procedure class must be diagnostic, therapeutic or surgery",
                            file=name, row=i + 2, column="class", value=k)
        level = int(l) if l not in (None, "") and str(l).strip().isdigit() else None
        out[c] = (rank, level)
    return out


# --------------------------------------------------------------------------------------------
# per-batch reduction


class _Vocab:
    """Strings -> int32 ids in order of first appearance, grown batch by batch."""

    def __init__(self):
        self.ids: dict = {}
        self.values: list = []

    def encode(self, arr) -> np.ndarray:
        """int32 id per element of a string/dictionary array (-1 for null)."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        return self.encode_uniques(arr.dictionary)[arr.indices.fill_null(-1).to_numpy(zero_copy_only=False)]

    def encode_uniques(self, uniques) -> np.ndarray:
        """ids of distinct values, with an extra trailing -1 so that index -1 maps to -1."""
        umap = np.empty(len(uniques) + 1, dtype=np.int32)
        umap[-1] = -1
        for j, u in enumerate(uniques.to_pylist()):  # loop over distinct codes only
            if u is None:
                umap[j] = -1
                continue
            k = self.ids.get(u)
            if k is None:
                k = self.ids[u] = len(self.values)
                self.values.append(u)
            umap[j] = k
        return umap


class _ProcVocab(_Vocab):
    """Procedure vocabulary with the class rank of every code (table first, then heuristic)."""

    def __init__(self, classes: dict):
        super().__init__()
        self.classes = classes
        self.rank = np.zeros(0, dtype=np.int8)

    def encode_uniques(self, uniques):
        before = len(self.values)
        umap = super().encode_uniques(uniques)
        if len(self.values) > before:
            new = self.values[before:]
            ranks = np.empty(len(new), dtype=np.int8)
            heur = codes.proc_class_heuristic(pa.array(new, pa.string())).to_pylist()
            for i, (c, h) in enumerate(zip(new, heur)):
                known = self.classes.get(c)
                # A code neither listed nor recognised counts as a therapeutic procedure.
                ranks[i] = known[0] if known else PROC_CLASS_RANK.get(h, 2)
            self.rank = np.concatenate([self.rank, ranks])
        return umap


def _uniques_apply(arr, fn, vocab: _Vocab) -> np.ndarray:
    """ids (in ``vocab``) of ``fn`` applied to each element, computed on the distinct values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    umap = vocab.encode_uniques(fn(arr.dictionary))
    return umap[arr.indices.fill_null(-1).to_numpy(zero_copy_only=False)]


def _int_col(batch, name, n, default, dtype):
    if name not in batch.schema.names:
        return np.full(n, default, dtype=dtype)
    col = batch.column(name)
    if not pa.types.is_integer(col.type):
        col = pc.cast(col, pa.int64(), safe=False)
    return np.asarray(col.fill_null(default).to_numpy(zero_copy_only=False), dtype=dtype)


def _list_flat(col, n):
    """(flat values, parent row per value) of a list column (null lists are empty)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.split_pattern_regex(col, r"[|,]")
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(col)
    parent = np.repeat(np.arange(n, dtype=np.int64), lengths)
    return flat, parent


class _Reducer:
    """Turns normalised case batches into compact per-case columns (one list per history year)."""

    def __init__(self, hospitals: pa.Table, proc_classes: dict, cci, severity, diagnostic_as_conservative,
                 options=None):
        opts = catalog_options(options)
        self.cci_cuts = np.asarray(opts["cci_levels"], dtype=np.int64)
        self.severity_min_los = int(opts["severity_min_los"])
        self.death_mode = int(opts["death_discharge_mode"])
        self.bands = [parse_age_band(b)[1:] for b in opts["age_bands"]]  # (low, high) age keys
        self.mask_dtype = catalog_stats.mask_dtype(len(self.bands))
        self.dx = _Vocab()  # subcategory keys
        self.proc = _ProcVocab(proc_classes)
        self.hosp_ids = hospitals["hospital_id"].combine_chunks()
        self.hosp_level = np.append(hospitals["level"].to_numpy(zero_copy_only=False).astype(np.int8), 0)
        self.hosp_region2 = pc.utf8_slice_codeunits(hospitals["region"], 0, 2).combine_chunks()
        self.cci_prefixes, cci_w, cci_cat = cci
        self.cci_weight = np.asarray(cci_w, dtype=np.int64)
        cat_names = sorted(set(cci_cat))
        self.cci_cat = np.asarray([cat_names.index(c) for c in cci_cat], dtype=np.int64)
        self.n_cci_cat = len(cat_names)
        self.sev_prefixes, sev_levels, _ = severity
        self.sev_level = np.asarray([3 if v == "III" else 2 for v in sev_levels], dtype=np.int8)
        self.min_rank = 2 if diagnostic_as_conservative else 1

    def reduce(self, batch: pa.RecordBatch) -> dict | None:
        names = batch.schema.names
        for col in ("main_dx", "total_cost_fen", "hospital_id"):
            if col not in names:
                raise DataError("history table lacks a column of the normalised case table", column=col)
        if "reason" in names:
            batch = batch.filter(pc.is_null(batch.column("reason")))
        sub = _uniques_apply(batch.column("main_dx"), codes.subcategory, self.dx)
        batch = batch.filter(pa.array(sub >= 0))
        sub = sub[sub >= 0]
        n = batch.num_rows
        if n == 0:
            return None
        out = {"sub": sub.astype(np.int32)}
        out["cost"] = np.asarray(batch.column("total_cost_fen").fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        out["fund"] = _int_col(batch, "fund_paid_fen", n, 0, np.int64)
        out.update(self._procedures(batch, n))
        # hospital level and pool membership (local or in-province remote)
        h = pc.index_in(batch.column("hospital_id"), value_set=self.hosp_ids).fill_null(-1).to_numpy(zero_copy_only=False)
        out["level"] = self.hosp_level[h]
        if "insured_region" in names:
            ins2 = pc.utf8_slice_codeunits(batch.column("insured_region"), 0, 2)
            hosp2 = self.hosp_region2.take(pa.array(np.where(h >= 0, h, 0)))
            same = pc.fill_null(pc.equal(ins2, hosp2), True).to_numpy(zero_copy_only=False)
            out["in_pool"] = same & (h >= 0)
        else:
            out["in_pool"] = h >= 0
        if "insurance_type" in names:
            it = batch.column("insurance_type")
            pool = np.full(n, -1, np.int8)
            pool[pc.fill_null(pc.equal(it, "employee"), False).to_numpy(zero_copy_only=False)] = 0
            pool[pc.fill_null(pc.equal(it, "resident"), False).to_numpy(zero_copy_only=False)] = 1
            out["pool"] = pool
        else:
            out["pool"] = np.full(n, -1, np.int8)
        if "discharge_date" in names:
            d = batch.column("discharge_date")
            if not pa.types.is_date(d.type) and not pa.types.is_timestamp(d.type):
                d = pc.cast(d, pa.date32(), safe=False)
            out["cal_year"] = np.asarray(pc.year(d).fill_null(0).to_numpy(zero_copy_only=False), np.int32)
        else:
            out["cal_year"] = np.zeros(n, np.int32)
        out.update(self._subtype_flags(batch, n))
        return out

    def _procedures(self, batch, n) -> dict:
        names = batch.schema.names
        parents, ids = [], []
        if "main_proc" in names:
            m = self.proc.encode(batch.column("main_proc"))
            parents.append(np.flatnonzero(m >= 0))
            ids.append(m[m >= 0])
        if "other_procs" in names:
            flat, parent = _list_flat(batch.column("other_procs"), n)
            o = self.proc.encode(flat) if len(flat) else np.zeros(0, np.int32)
            parents.append(parent[o >= 0])
            ids.append(o[o >= 0])
        main = np.full(n, -1, np.int32)
        rel = np.full(n, -1, np.int32)
        cls = np.zeros(n, np.int8)
        if parents:
            parent = np.concatenate(parents)
            pid = np.concatenate(ids).astype(np.int32)
            order = np.argsort(parent, kind="stable")  # main procedure before the others
            parent, pid = parent[order], pid[order]
            rank = self.proc.rank[pid]
            keep = rank >= self.min_rank
            parent, pid, rank = parent[keep], pid[keep], rank[keep]
            for r in (1, 2, 3):
                cls[parent[rank == r]] = r
            if len(parent):
                first = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
                main[parent[first]] = pid[first]
                is_first = np.zeros(len(parent), bool)
                is_first[first] = True
                elig = ~is_first & (rank >= 2) & (pid != main[parent])
                ep, eid = parent[elig], pid[elig]
                if len(ep):
                    f2 = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
                    rel[ep[f2]] = eid[f2]
        return {"main": main, "rel": rel, "cls": cls}

    def _subtype_flags(self, batch, n) -> dict:
        names = batch.schema.names
        mode = _int_col(batch, "discharge_mode", n, -1, np.int16)
        los = _int_col(batch, "los", n, -1, np.int32)
        age = _int_col(batch, "age", n, -1, np.int32)
        age_days = _int_col(batch, "age_days", n, -1, np.int32)
        sev = np.zeros(n, np.int8)
        cci = np.zeros(n, np.int64)
        if "other_dx" in names:
            flat, parent = _list_flat(batch.column("other_dx"), n)
            if len(flat):
                enc = pc.dictionary_encode(flat)
                idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                u_sev = np.append(prefix_lookup(enc.dictionary, self.sev_prefixes), -1)[idx]
                u_cci = np.append(prefix_lookup(enc.dictionary, self.cci_prefixes), -1)[idx]
                lv = np.where(u_sev >= 0, self.sev_level[np.maximum(u_sev, 0)], 0)
                for level in (2, 3):
                    sev[parent[lv == level]] = level
                has = u_cci >= 0
                if has.any():
                    # one weight per comorbidity category (the maximum), summed over categories
                    pair = parent[has] * self.n_cci_cat + self.cci_cat[u_cci[has]]
                    inv, uni = _factorize(pair)
                    best = np.zeros(len(uni), np.int64)
                    np.maximum.at(best, inv, self.cci_weight[u_cci[has]])
                    np.add.at(cci, uni // self.n_cci_cat, best)
        sev[(los < 0) | (los < self.severity_min_los)] = 0  # no LOS: no severity subtype (as the grouper)
        cci_level = np.searchsorted(self.cci_cuts, cci, side="right").astype(np.int8)
        # age bands as the grouper reads them: one bit per band the case's age key falls in
        key = age_keys(age, age_days)
        band = np.zeros(n, self.mask_dtype)
        for b, (lo, hi) in enumerate(self.bands):  # loop over bands
            band |= ((key >= lo) & (key <= hi)).astype(self.mask_dtype) << self.mask_dtype(b)
        return {"death": mode == self.death_mode, "sev": sev, "cci": cci_level, "age_mask": band}


def _is_normalised(item) -> bool:
    """A table (or file) already in the normalised case form (it has ``total_cost_fen``)."""
    if isinstance(item, (pa.Table, pa.RecordBatch)):
        return "total_cost_fen" in item.schema.names
    if type(item).__name__ == "DataFrame":
        return "total_cost_fen" in item.columns
    try:
        files = source_files(item)
    except DataError:
        return False
    if files and all(f.lower().endswith(".parquet") for f in files):
        import pyarrow.parquet as pq

        try:
            return "total_cost_fen" in pq.read_schema(files[0]).names
        except (pa.ArrowException, OSError):
            return False
    return False


def _batches(item, hospitals, batch_size, layout=None):
    if _is_normalised(item):
        if isinstance(item, pa.Table) or type(item).__name__ == "DataFrame":
            table = item if isinstance(item, pa.Table) else pa.Table.from_pandas(item, preserve_index=False)
            yield from table.to_batches(max_chunksize=batch_size)
            return
        if isinstance(item, pa.RecordBatch):
            yield from pa.Table.from_batches([item]).to_batches(max_chunksize=batch_size)
            return
        import pyarrow.parquet as pq

        files = source_files(item)
        names = pq.read_schema(files[0]).names
        columns = [c for c in _COLUMNS if c in names]
        if len(files) == 1:
            yield from _parquet_batches(files[0], columns, batch_size)
        else:
            yield from iter_batches(item, columns=columns, batch_size=batch_size)
        return
    try:
        from dipengine import reader
    except ImportError:
        raise DataError("history is not a normalised case table and dipengine.reader is not available",
                        file=str(item)) from None
    yield from reader.iter_cases(item, hospitals, batch_size=batch_size, **(layout or {}))


def _parquet_batches(path, columns, batch_size):
    """The batches of one normalised Parquet file, in order, row group after row group.

    ``pyarrow.parquet.ParquetFile`` with 1 MiB buffered page reads rather than the dataset scanner
    of :func:`iter_batches`, which buffers whole row groups ahead (reading 3 files of 6.7M cases:
    about 260 MiB peak RSS against 650 MiB); the same rows in the same order; errors read the same.
    """
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        for batch in source.iter_batches(batch_size=batch_size, columns=columns):
            yield batch
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=path) from None


# --------------------------------------------------------------------------------------------
# group-bys on compact columns


def _weighted_mean(sums: np.ndarray, counts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Year-weighted mean of per-year means; weights renormalised over the years with cases (NaN if none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        wy = np.where(counts > 0, w, 0.0)
        return (means * wy).sum(axis=1) / wy.sum(axis=1)


def _vocab_names() -> tuple[dict, dict]:
    """Names of subcategories and procedures from the shipped vocabularies (empty when absent)."""
    dx_names, proc_names = {}, {}
    for fname, key, out in (("dx_vocab.csv", "subcategory", dx_names), ("proc_vocab.csv", "code", proc_names)):
        path = DATA_DIR / fname
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    if r.get(key) and r.get("name"):
                        out.setdefault(r[key], r["name"])
    return dx_names, proc_names


def _enough(weighted_count, threshold):
    """Weighted count reaches the threshold (tolerant of float rounding in the weights)."""
    return weighted_count >= threshold - 1e-9


def _chapter_of(category: str) -> int:
    for i, (a, b) in enumerate(CHAPTERS):
        if a <= category <= b:
            return i
    return -1


def _fen_to_yuan_str(fen: int) -> str:
    return fen_to_yuan_text(int(fen))


def _round_fen(x: float) -> int:
    return int(math.floor(x + 0.5))


def _normalise_weights(weights, n_years: int) -> np.ndarray:
    w = [float(x) for x in weights]
    if len(w) != n_years:
        raise ValueError(f"weights: {len(w)} given for {n_years} history years")
    if any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    w = np.asarray(w)
    return w / w.sum()


def check_params(n_years: int, *, weights=DEFAULT_WEIGHTS, threshold=15, scale=1000, trim=(0.025, 0.975),
                 min_trim_group=25, basic_share=0.5, basic_cv=0.7, comprehensive_threshold=None,
                 options=None) -> np.ndarray:
    """Check the build parameters (and the catalogue ``options``, :func:`catalog_options`); returns
    the normalised year weights. Raises ValueError."""
    if n_years < 1:
        raise ValueError("history: at least one year is needed")
    if tuple(weights) == DEFAULT_WEIGHTS and n_years != 3:
        if n_years > 3:
            raise ValueError("weights: give one weight per history year")
        weights = DEFAULT_WEIGHTS[-n_years:]
    w = _normalise_weights(weights, n_years)
    if threshold <= 0:
        raise ValueError("threshold must be positive")
    if comprehensive_threshold is not None and not comprehensive_threshold > 0:
        raise ValueError("comprehensive_threshold must be positive")
    catalog_options(options)
    if scale <= 0:
        raise ValueError("scale must be positive")
    if trim is not None:
        lo, hi = trim
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError("trim must be two quantiles 0 <= lo < hi <= 1")
    if min_trim_group < 1:
        raise ValueError("min_trim_group must be at least 1")
    if not 0.0 <= basic_share <= 1.0 or basic_cv < 0:
        raise ValueError("basic_share must be in [0, 1] and basic_cv non-negative")
    return w


# --------------------------------------------------------------------------------------------
# the build


def build_catalog(
    history: list,
    hospitals,
    out=None,
    pricing_out=None,
    *,
    weights=DEFAULT_WEIGHTS,
    threshold: float = 15,
    comprehensive_threshold: float | None = None,
    scale: float = 1000,
    trim=(0.025, 0.975),
    min_trim_group: int = 25,
    related_min_gain: float = 0.2,
    basic_share: float = 0.5,
    basic_cv: float = 0.7,
    aux_min_cases: float = 15,
    aux_min_diff: float = 0.1,
    diagnostic_as_conservative: bool = False,
    options: dict | None = None,
    name: str = "local",
    version: str | None = None,
    procedures=None,
    cci_weights=None,
    severity_dx=None,
    years=None,
    progress: Callable[[int, int | None], None] | None = None,
    batch_size: int = BATCH_SIZE,
    schema=None,
    encoding: str | None = None,
    sheet=None,
    method: str = "bounded",
    spill_dir=None,
    partition_rows: int | None = None,
) -> CatalogResult:
    """Build a local DIP catalogue (rule set) from history years.

    Parameters
    ----------
    history : list
        One item per year, oldest first: anything ``dipengine.reader.read_cases`` takes, or an
        already-normalised case table (Arrow/pandas/Parquet with ``total_cost_fen``). Only rows
        with a null ``reason`` are used.
    hospitals : path or pa.Table
        The hospital registry (contract §3); gives each case's level and region.
    out : path, optional
        Rule-set directory to write (contract §4); ``None`` writes nothing.
    pricing_out : path, optional
        Pricing skeleton directory: ``same_level_avg.csv``, ``policy.toml``, ``manifest.toml``.
    weights : sequence of float
        Year weights, oldest first (default 1:2:7; with fewer than 3 years the newest defaults).
    threshold : float
        Weighted average annual cases a combination needs to be a core group.
    comprehensive_threshold : float, optional
        Weighted average annual cases a pool of the other cases needs to be a group: a
        comprehensive (category × treatment class) or range (chapter × class) group, and the blank
        group to be scored from its own cases. Default ``threshold`` (one threshold for all).
    scale : float
        Score scale K: score = group mean / overall mean × K.
    trim : (float, float) or None
        Lower and upper quantile kept per group and year; None: no trimming.
    min_trim_group : int
        Cases a (group, year) needs before it is trimmed.
    related_min_gain : float
        Relative cost difference that makes a (main + related) pair its own group.
    basic_share, basic_cv : float
        Basic groups: share of weighted cases at level-1 hospitals at least ``basic_share`` and
        within-group coefficient of variation (std / mean of cost) at most ``basic_cv``.
    aux_min_cases, aux_min_diff : float
        Auxiliary subtypes need this many weighted cases and ``|coefficient - 1| >= aux_min_diff``.
    diagnostic_as_conservative : bool
        Drop diagnostic procedures before building combinations (such cases are conservative).
    options : dict, optional
        Grouping options that decide the auxiliary subtypes (:data:`CATALOG_OPTIONS`:
        ``cci_levels``, ``severity_min_los``, ``death_discharge_mode``, ``age_bands``), over
        :data:`dipengine.rules.DEFAULT_OPTIONS`; all four are written into the rule set's
        ``manifest.toml [options]``.
    name, version : str
        Rule-set name and version (version default ``<next year>.1``).
    procedures : path or pa.Table, optional
        ``code, class[, level]`` procedure classes; default ``dipengine/data/proc_vocab.csv`` when
        present, then :func:`dipengine.codes.proc_class_heuristic`.
    cci_weights, severity_dx : path, optional
        Auxiliary catalogues (default: the shipped illustrative ones in ``dipengine/data``).
    years : list of int, optional
        Calendar year of each history item (default: the most common discharge year).
    progress : callable, optional
        ``progress(rows_done, None)`` after each batch.
    schema, encoding, sheet : optional
        Layout of raw history files (``"nhsa"``, a schema folder), CSV encoding, .xlsx sheet,
        as for :func:`dipengine.reader.read_cases`.
    method : {"bounded", "memory"}
        ``"bounded"`` (default): statistics accumulated batch by batch, trimming from spill files
        (:mod:`dipengine.catalog_stats`), memory about flat in the number of history cases;
        ``"memory"``: every case's compact columns (about 41 bytes) held and sorted at once, the
        reference. Both give the same result and files.
    spill_dir : path, optional
        Where the bounded build makes its temporary folder (default :func:`tempfile.gettempdir`,
        i.e. ``TMPDIR``); about 30 bytes per history case, removed on success and on error.
    partition_rows : int, optional
        Cases per trimming partition of the bounded build (default
        :data:`dipengine.catalog_stats.PARTITION_ROWS`); small values only for tests.

    Returns
    -------
    CatalogResult
    """
    if method not in ("bounded", "memory"):
        raise ValueError(f"method must be 'bounded' or 'memory', not {method!r}")
    ny = len(history)
    trim = None if trim is None else (float(trim[0]), float(trim[1]))
    w = check_params(ny, weights=weights, threshold=threshold, scale=scale, trim=trim,
                     min_trim_group=min_trim_group, basic_share=basic_share, basic_cv=basic_cv,
                     comprehensive_threshold=comprehensive_threshold, options=options)
    opts = catalog_options(options)
    comp_threshold = threshold if comprehensive_threshold is None else comprehensive_threshold
    if tuple(weights) == DEFAULT_WEIGHTS and ny < 3:
        weights = DEFAULT_WEIGHTS[-ny:]
    if years is not None and len(years) != ny:
        raise ValueError("years: one per history item")

    from dipengine.hospitals import read_hospitals

    hosp = read_hospitals(hospitals)
    cci_path = Path(cci_weights) if cci_weights else DATA_DIR / "cci_weights.csv"
    sev_path = Path(severity_dx) if severity_dx else DATA_DIR / "severity_dx.csv"
    cci = load_prefix_table(cci_path, "weight")
    sev = load_prefix_table(sev_path, "level", allowed={"II", "III"})
    proc_classes = _procedure_classes(procedures)
    red = _Reducer(hosp, proc_classes, cci, sev, diagnostic_as_conservative, opts)

    params = dict(
        weights=[float(x) for x in weights], threshold=float(threshold),
        comprehensive_threshold=float(comp_threshold), scale=float(scale),
        trim=list(trim) if trim is not None else "none", min_trim_group=int(min_trim_group),
        related_min_gain=float(related_min_gain), basic_share=float(basic_share), basic_cv=float(basic_cv),
        aux_min_cases=float(aux_min_cases), aux_min_diff=float(aux_min_diff),
        diagnostic_as_conservative=bool(diagnostic_as_conservative),
    )
    build = dict(threshold=threshold, comp_threshold=comp_threshold, scale=scale, trim=trim,
                 min_trim_group=min_trim_group, related_min_gain=related_min_gain, basic_share=basic_share,
                 basic_cv=basic_cv, aux_min_cases=aux_min_cases, aux_min_diff=aux_min_diff,
                 subtypes=subtypes(opts))
    layout = dict(schema=schema, encoding=encoding, sheet=sheet)
    if method == "memory":
        res = _build_in_memory(history, hosp, red, w, years, batch_size, layout, progress, build)
    else:
        spill = catalog_stats.SpillDir(spill_dir)
        try:
            stats = catalog_stats.HistoryStats(ny, spill, n_bands=len(opts["age_bands"]))
            cases_used, years = _pass1(history, hosp, red, years, batch_size, layout, progress, stats)
            res = _assemble_bounded(stats, red, w, years, cases_used, partition_rows=partition_rows, **build)
        finally:
            spill.close()
    res.params = params
    res.options = opts
    if out is not None:
        meta = _rules_meta(history, hospitals, res, name, version, cci_path, sev_path)
        res.rules_dir = write_rules(out, res, red, proc_classes, cci_path, sev_path, meta)
    if pricing_out is not None:
        res.pricing_dir = write_pricing(pricing_out, res, hosp)
    return res


def _history_years(years, found) -> list[int]:
    if years is None:
        if any(y is None for y in found):
            raise DataError("cannot tell the history year: discharge_date missing", column="discharge_date")
        years = found
    return [int(y) for y in years]


def _pass1(history, hosp, red, years, batch_size, layout, progress, stats) -> tuple[list, list]:
    """Read every history year batch by batch into ``stats`` (:class:`catalog_stats.HistoryStats`);
    returns (cases used per year, calendar year per history item)."""
    cases_used, done = [], 0
    for yi, item in enumerate(history):
        used = 0
        for batch in _batches(item, hosp, batch_size, layout):
            r = red.reduce(batch)
            done += batch.num_rows
            if r is not None:
                stats.add(r, yi)
                used += len(r["sub"])
            if progress is not None:
                progress(done, None)
        if not used:
            raise DataError("history year holds no groupable case", file=_label(item))
        cases_used.append(used)
    stats.finish()
    # the most common discharge year (ties: the earliest), as the whole-array build's bincount
    found = [max(sorted(c), key=c.get) if c else None for c in stats.cal_years]
    return cases_used, _history_years(years, found)


def _build_in_memory(history, hosp, red, w, years, batch_size, layout, progress, build) -> CatalogResult:
    """The whole-array build: every year's compact columns concatenated, then :func:`_assemble`
    (the reference of the bounded build; about 41 bytes per case plus temporaries)."""
    parts: list[dict] = []
    years_found, cases_used = [], []
    done = 0
    for yi, item in enumerate(history):
        year_parts = []
        for batch in _batches(item, hosp, batch_size, layout):
            r = red.reduce(batch)
            done += batch.num_rows
            if r is not None:
                r["year"] = np.full(len(r["sub"]), yi, np.int8)
                year_parts.append(r)
            if progress is not None:
                progress(done, None)
        if not year_parts:
            raise DataError("history year holds no groupable case", file=_label(item))
        cases_used.append(int(sum(len(p["sub"]) for p in year_parts)))
        cal = np.concatenate([p["cal_year"] for p in year_parts])
        cal = cal[cal > 0]
        years_found.append(int(np.bincount(cal - cal.min()).argmax() + cal.min()) if len(cal) else None)
        parts.extend(year_parts)
    years = _history_years(years, years_found)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    del parts
    return _assemble(cols, red, w, years, cases_used, **build)


def _label(item) -> str:
    try:
        files = source_files(item)
    except DataError:
        files = []
    return files[0] if files else f"<{type(item).__name__}>"


def _drop_mirrored_pairs(selected, base_keys, rels, nw, P, proc_names) -> None:
    """Keep one of the pairs A+B and B+A of a subcategory (the same all-of expression).

    The one with more weighted cases stays (ties: the main code first in sort order); the
    other's cases stay with their main procedure.
    """
    best: dict = {}
    idx = np.flatnonzero(selected)
    for j in idx:  # loop over selected pairs (groups), not cases
        sub, main, rel = int(base_keys[j] // P), int(base_keys[j] % P - 1), int(rels[j])
        key = (sub, min(main, rel), max(main, rel))
        rank = (-round(float(nw[j]), 9), proc_names[main])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, j)
    keep = {j for _, j in best.values()}
    for j in idx:
        if j not in keep:
            selected[j] = False


def _classify(sub, main, rel, cls, table, red, w, *, threshold, comp_threshold, related_min_gain):
    """The groups, and the group of every element (a case, or a cell of cases sharing its keys).

    Parameters
    ----------
    sub, main, rel, cls : numpy.ndarray
        Per element: subcategory id, main procedure id (-1 none), related candidate id (-1 none),
        treatment-class rank.
    table : callable
        ``table(keys, k, mask=None, sums=False)``: (k, ny) int64 cases (or cost sums, fen) per
        key and year of the elements selected by the bool ``mask`` (all when None); ``keys``
        holds one key per selected element.
    red : _Reducer
        Its vocabularies name the codes.
    w : numpy.ndarray
        Normalised year weights.
    threshold, comp_threshold : float
        Weighted cases of a core group; of a comprehensive or range pool.

    Returns
    -------
    gid : numpy.ndarray
        int64 group per element.
    rows : list of tuple
        Per group: (kind order, dip_code, dip_name, group_type, dx_key, proc_expr, treat_class);
        core groups first, then comprehensive, range, and the blank group last.
    n_core : int
        Core groups.
    """
    P = len(red.proc.values) + 1
    # A procedure code that is only a prefix ("47.01": well-formed, but not a complete 医保版 code)
    # never keys a core group: rule sets match whole codes (rules.check_rules refuses such terms).
    # Its cases go to the comprehensive groups of their treatment class. Index -1 (none) is fine.
    complete = np.array([is_complete_proc(c) for c in red.proc.values] + [True], dtype=bool)

    # -- 1. main + related pairs that change cost materially
    base_key = sub.astype(np.int64) * P + (main.astype(np.int64) + 1)
    b_inv, b_uni = _factorize(base_key)
    b_cnt = table(b_inv, len(b_uni))
    b_sum = table(b_inv, len(b_uni), sums=True)
    has_rel = rel >= 0
    rel_sel = np.full(len(sub), -1, np.int64)
    if has_rel.any():
        p_key = b_inv[has_rel] * P + rel[has_rel]
        p_inv, p_uni = _factorize(p_key)
        p_cnt = table(p_inv, len(p_uni), has_rel)
        p_sum = table(p_inv, len(p_uni), has_rel, sums=True)
        p_base = p_uni // P
        r_cnt = b_cnt[p_base] - p_cnt
        r_sum = b_sum[p_base] - p_sum
        m_pair = _weighted_mean(p_sum, p_cnt, w)
        m_rest = _weighted_mean(r_sum, r_cnt, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.abs(m_pair / m_rest - 1.0)
        selected = (_enough(p_cnt @ w, threshold) & (r_cnt.sum(axis=1) > 0) & (gain >= related_min_gain)
                    & complete[p_uni % P])
        _drop_mirrored_pairs(selected, b_uni[p_base], p_uni % P, p_cnt @ w, P, red.proc.values)
        idx = np.flatnonzero(has_rel)
        chosen = selected[p_inv]
        rel_sel[idx[chosen]] = rel[has_rel][chosen]

    # -- 2. combinations -> core; the rest -> comprehensive -> range -> blank
    combo_key = b_inv * (P + 1) + (rel_sel + 1)
    c_inv, c_uni = _factorize(combo_key)
    c_cnt = table(c_inv, len(c_uni))
    c_core = _enough(c_cnt @ w, threshold) & complete[b_uni[c_uni // (P + 1)] % P - 1]
    is_core = c_core[c_inv]

    sub_names = red.dx.values
    cat_names = sorted({s[:3] for s in sub_names})
    cat_index = {c: i for i, c in enumerate(cat_names)}
    cat_of_sub = np.asarray([cat_index[s[:3]] for s in sub_names], dtype=np.int64)
    chap_of_cat = np.asarray([_chapter_of(c) for c in cat_names], dtype=np.int64)
    cat = cat_of_sub[sub]
    comp_key = cat * 4 + cls
    rest = ~is_core
    comp_cnt = table(comp_key[rest], len(cat_names) * 4, rest)
    comp_ok = _enough(comp_cnt @ w, comp_threshold)
    is_comp = rest & comp_ok[comp_key]
    chap = chap_of_cat[cat]
    range_key = np.where(chap >= 0, chap * 4 + cls, -1)
    rest2 = rest & ~is_comp & (range_key >= 0)
    range_cnt = table(range_key[rest2], len(CHAPTERS) * 4, rest2)
    range_ok = _enough(range_cnt @ w, comp_threshold)
    is_range = rest2 & range_ok[np.maximum(range_key, 0)]

    # group rows (dip_code etc.), and a group id per element
    rows = []  # (kind order, dip_code, dip_name, group_type, dx_key, proc_expr, treat_class)
    proc_names = red.proc.values
    core_ids = np.flatnonzero(c_core)
    ck = c_uni[core_ids]
    c_rel = ck % (P + 1) - 1
    c_b = b_uni[ck // (P + 1)]
    c_sub = c_b // P
    c_main = c_b % P - 1
    dx_label, proc_label = _vocab_names()
    for j in range(len(core_ids)):  # loop over groups
        s = sub_names[c_sub[j]]
        dx_text = f"{s} {dx_label[s]}" if s in dx_label else s
        if c_main[j] < 0:
            expr, tclass, code = "", 0, f"{s}-C"
            label = f"{dx_text} {CLASS_LABEL[0]}"
        else:
            terms = [proc_names[c_main[j]]]
            tclass = int(red.proc.rank[c_main[j]])
            if c_rel[j] >= 0:
                terms.append(proc_names[c_rel[j]])
                tclass = max(tclass, int(red.proc.rank[c_rel[j]]))
            expr = "+".join(terms)
            code = f"{s}-{expr}"
            label = dx_text + " " + "+".join(proc_label.get(t, t) for t in terms)
        rows.append((0, code, label, "core", s, expr, CLASS_NAMES[tclass]))
    comp_ids = np.flatnonzero(comp_ok)
    for k in comp_ids:
        c, t = cat_names[k // 4], int(k % 4)
        rows.append((1, f"{c}-{CLASS_LETTER[t]}", f"{c} 综合 {CLASS_LABEL[t]}", "comprehensive", c, "", CLASS_NAMES[t]))
    range_ids = np.flatnonzero(range_ok)
    for k in range_ids:
        a, b = CHAPTERS[k // 4]
        t = int(k % 4)
        rows.append((2, f"{a}-{b}-{CLASS_LETTER[t]}", f"{a}-{b} 综合 {CLASS_LABEL[t]}", "comprehensive",
                     f"{a}-{b}", "", CLASS_NAMES[t]))
    rows.append((3, "BLANK", "空白病组", "blank", "", "", "conservative"))
    n_core, n_comp, n_range = len(core_ids), len(comp_ids), len(range_ids)
    gid_core = np.full(len(c_uni), -1, np.int64)
    gid_core[core_ids] = np.arange(n_core)
    gid_comp = np.full(len(cat_names) * 4, -1, np.int64)
    gid_comp[comp_ids] = n_core + np.arange(n_comp)
    gid_range = np.full(len(CHAPTERS) * 4, -1, np.int64)
    gid_range[range_ids] = n_core + n_comp + np.arange(n_range)
    blank = n_core + n_comp + n_range
    gid = np.full(len(sub), blank, np.int64)
    gid[is_core] = gid_core[c_inv[is_core]]
    gid[is_comp] = gid_comp[comp_key[is_comp]]
    gid[is_range] = gid_range[range_key[is_range]]
    return gid, rows, n_core


def _assemble(cols, red, w, years, cases_used, *, threshold, comp_threshold, scale, trim, min_trim_group,
              related_min_gain, basic_share, basic_cv, aux_min_cases, aux_min_diff, subtypes) -> CatalogResult:
    """The catalogue from whole per-case columns (the in-memory reference of :func:`_assemble_bounded`).

    ``cols`` holds the concatenated ``_Reducer.reduce`` columns of all history years plus
    ``year`` (history-year index); memory grows with the number of cases.
    """
    ny = len(w)
    year = cols["year"].astype(np.int64)
    cost = cols["cost"]

    def table(keys, k, mask=None, sums=False):
        return _year_table(keys, year if mask is None else year[mask], ny, k,
                           None if not sums else (cost if mask is None else cost[mask]))

    gid, rows, n_core = _classify(cols["sub"], cols["main"], cols["rel"], cols["cls"], table, red, w,
                                  threshold=threshold, comp_threshold=comp_threshold,
                                  related_min_gain=related_min_gain)
    G = len(rows)
    keep = _trim_mask(gid, year, cost, ny, trim, min_trim_group)
    k_cnt = _year_table(gid[keep], year[keep], ny, G)
    k_sum = _year_table(gid[keep], year[keep], ny, G, cost[keep])
    lvl1 = cols["level"] == 1
    mean_gy = k_sum / np.maximum(k_cnt, 1)
    dev = cost[keep] - mean_gy[gid[keep], year[keep]]
    core_case = gid < n_core
    flags = {
        "death": cols["death"],
        "severity_III": cols["sev"] == 3,
        "severity_II": cols["sev"] == 2,
        "cci_3": cols["cci"] == 3,
        "cci_2": cols["cci"] == 2,
        "cci_1": cols["cci"] == 1,
    }
    mask = cols["age_mask"]
    for b, band in enumerate(subtypes[len(FIXED_SUBTYPES):]):
        flags[band] = ((mask >> mask.dtype.type(b)) & 1).astype(bool)
    sub_tabs = []
    for st in subtypes:
        mk = flags[st] & core_case
        if mk.any():
            sub_tabs.append((st, _year_table(gid[mk], year[mk], ny, G), _year_table(gid[mk], year[mk], ny, G, cost[mk])))
    last = (year == ny - 1) & keep
    lv = cols["level"].astype(np.int64)
    sl_sum = np.zeros(G * 4, np.int64)
    np.add.at(sl_sum, gid[last] * 4 + lv[last], cost[last])
    total_y = np.zeros(ny, np.int64)
    np.add.at(total_y, year, cost)
    ly = (year == ny - 1) & cols["in_pool"]
    budgets = [int(cols["fund"][ly & (cols["pool"] == p)].sum()) for p in (0, 1)]
    tabs = dict(
        g_cnt=_year_table(gid, year, ny, G), k_cnt=k_cnt, k_sum=k_sum,
        a_sum=_year_table(gid, year, ny, G, cost), n1=_year_table(gid[lvl1], year[lvl1], ny, G),
        ss=np.bincount(gid[keep] * ny + year[keep], weights=dev * dev, minlength=G * ny).reshape(G, ny),
        sub=sub_tabs, sl_cnt=np.bincount(gid[last] * 4 + lv[last], minlength=G * 4).reshape(G, 4),
        sl_sum=sl_sum.reshape(G, 4), total_y=total_y, budgets=budgets,
    )
    return _finish(rows, n_core, tabs, w, years, cases_used, comp_threshold=comp_threshold, scale=scale,
                   basic_share=basic_share, basic_cv=basic_cv, aux_min_cases=aux_min_cases,
                   aux_min_diff=aux_min_diff)


def _assemble_bounded(stats, red, w, years, cases_used, *, threshold, comp_threshold, scale, trim, min_trim_group,
                      related_min_gain, basic_share, basic_cv, aux_min_cases, aux_min_diff, subtypes,
                      partition_rows=None) -> CatalogResult:
    """The catalogue from pass 1's per-cell sums and spill (:mod:`dipengine.catalog_stats`).

    Equal to :func:`_assemble` on the same cases, in memory that does not grow with them.
    """
    ny = len(w)
    c = stats.cell_columns()

    def table(keys, k, mask=None, sums=False):
        vals = c["cost" if sums else "cnt"]
        out = np.zeros((k, ny), np.int64)
        np.add.at(out, keys, vals if mask is None else vals[mask])
        return out

    cell_gid, rows, n_core = _classify(c["sub"], c["main"], c["rel"], c["cls"], table, red, w,
                                       threshold=threshold, comp_threshold=comp_threshold,
                                       related_min_gain=related_min_gain)
    G = len(rows)
    g_cnt = table(cell_gid, G)
    tabs = catalog_stats.group_tables(stats, cell_gid, G, n_core, g_cnt, trim, min_trim_group,
                                      subtypes=subtypes, partition_rows=partition_rows)
    n1 = np.zeros((G, ny), np.int64)
    np.add.at(n1, cell_gid, c["lvl1"])
    tabs.update(g_cnt=g_cnt, a_sum=table(cell_gid, G, sums=True), n1=n1, total_y=c["cost"].sum(axis=0),
                budgets=list(stats.budgets))
    return _finish(rows, n_core, tabs, w, years, cases_used, comp_threshold=comp_threshold, scale=scale,
                   basic_share=basic_share, basic_cv=basic_cv, aux_min_cases=aux_min_cases,
                   aux_min_diff=aux_min_diff)


def _finish(rows, n_core, tabs, w, years, cases_used, *, comp_threshold, scale, basic_share, basic_cv,
            aux_min_cases, aux_min_diff) -> CatalogResult:
    """Scores, basic groups, auxiliary coefficients, same-level averages and budgets from the
    per-(group, year) tables ``tabs`` (see :func:`_assemble`; counts int64, sums int64 fen)."""
    G = len(rows)
    blank = G - 1
    g_cnt, k_cnt, k_sum, a_sum = tabs["g_cnt"], tabs["k_cnt"], tabs["k_sum"], tabs["a_sum"]

    # -- 3. means and scores (trimmed)
    all_k = k_cnt.sum(axis=0)
    M_y = k_sum.sum(axis=0) / np.maximum(all_k, 1)  # fen
    M = float(M_y @ w)
    m_g = _weighted_mean(k_sum, k_cnt, w)
    nw = g_cnt @ w
    if not _enough(nw[blank], comp_threshold):
        m_g[blank] = M  # too few residual cases: the blank group scores at the overall mean
    score = np.round(m_g / M * scale, 4)

    # -- 4. basic groups among core ones: level-1 share and CV
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (tabs["n1"] @ w) / nw
        mean_gy = k_sum / np.maximum(k_cnt, 1)
        cv_gy = np.sqrt(tabs["ss"] / np.maximum(k_cnt, 1)) / mean_gy
        wy = np.where(k_cnt > 0, w, 0.0)
        cv = (np.where(k_cnt > 0, cv_gy, 0.0) * wy).sum(axis=1) / wy.sum(axis=1)
    is_basic = np.zeros(G, bool)
    is_basic[:n_core] = (share[:n_core] >= basic_share) & (cv[:n_core] <= basic_cv)
    group_type = [r[3] for r in rows]
    for j in np.flatnonzero(is_basic):
        group_type[j] = "basic"

    # -- 5. auxiliary coefficients (core and basic groups; untrimmed means)
    aux_rows = []
    for st, s_cnt, s_sum in tabs["sub"]:
        s_cnt, s_sum = s_cnt[:n_core], s_sum[:n_core]
        m_s = _weighted_mean(s_sum, s_cnt, w)
        # the group's mean over the same years as the subtype's
        cnt_same = np.where(s_cnt > 0, g_cnt[:n_core], 0)
        sum_same = np.where(s_cnt > 0, a_sum[:n_core], 0)
        m_base = _weighted_mean(sum_same, cnt_same, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            coef = m_s / m_base
        ok = _enough(s_cnt @ w, aux_min_cases) & (np.abs(coef - 1.0) >= aux_min_diff) & np.isfinite(coef)
        for j in np.flatnonzero(ok):
            aux_rows.append((rows[j][1], st, round(float(coef[j]), 4)))

    # -- 6. same-level averages (last year, kept cases), budget point value, pool budgets
    sl_cnt, sl_sum = tabs["sl_cnt"], tabs["sl_sum"]
    weighted_total_yuan = float(tabs["total_y"] @ w) / 100.0
    weighted_points = float(score @ nw)
    budget_pv = weighted_total_yuan / weighted_points
    budgets = dict(zip(("employee", "resident"), tabs["budgets"]))

    # -- tables, sorted by kind then dip_code
    order = sorted(range(G), key=lambda j: (rows[j][0], rows[j][1]))
    avg_fen = [_round_fen(m_g[j]) for j in range(G)]
    n_cases = g_cnt.sum(axis=1)
    groups = pa.table({
        "dip_code": [rows[j][1] for j in order],
        "dip_name": [rows[j][2] for j in order],
        "group_type": [group_type[j] for j in order],
        "dx_key": [rows[j][4] for j in order],
        "proc_expr": [rows[j][5] for j in order],
        "treat_class": [rows[j][6] for j in order],
        "score": pa.array([float(score[j]) for j in order], pa.float64()),
        "avg_cost": pa.array([avg_fen[j] / 100.0 for j in order], pa.float64()),
        "n_cases": pa.array([int(n_cases[j]) for j in order], pa.int64()),
    })
    aux_rows.sort()
    aux = pa.table({
        "dip_code": [r[0] for r in aux_rows],
        "subtype": [r[1] for r in aux_rows],
        "coefficient": pa.array([r[2] for r in aux_rows], pa.float64()),
    })
    sl = [(rows[j][1], lvl, (2 * int(sl_sum[j, lvl]) + int(sl_cnt[j, lvl])) // (2 * int(sl_cnt[j, lvl])))
          for j in order for lvl in (1, 2, 3) if sl_cnt[j, lvl] > 0]
    same_level = pa.table({
        "dip_code": [r[0] for r in sl],
        "level": pa.array([r[1] for r in sl], pa.int8()),
        "avg_cost": pa.array([r[2] / 100.0 for r in sl], pa.float64()),
    })
    counts = {t: group_type.count(t) for t in ("core", "basic", "comprehensive", "blank")}
    return CatalogResult(
        groups=groups, aux=aux, same_level_avg=same_level, budget_point_value=budget_pv,
        overall_avg_cost=M / 100.0, budgets_fen=budgets, years=list(years), cases_used=list(cases_used),
        counts=counts,
    )


# --------------------------------------------------------------------------------------------
# writing


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(header)
        wr.writerows(rows)


def _fmt_float(x: float, places: int) -> str:
    s = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def _input_record(item) -> tuple[str, str]:
    try:
        files = source_files(item)
    except DataError:
        files = []
    if not files:
        n = getattr(item, "num_rows", None) or (len(item) if hasattr(item, "__len__") else 0)
        return f"<in-memory {type(item).__name__}, {n} rows>", ""
    return ";".join(files), ";".join(sha256_file(f) for f in files)


def _rules_meta(history, hospitals, res, name, version, cci_path, sev_path) -> dict:
    next_year = res.years[-1] + 1
    hist_names, hist_sha = zip(*(_input_record(h) for h in history))
    h_name, h_sha = _input_record(hospitals) if not isinstance(hospitals, pa.Table) else ("<in-memory Table>", "")
    from dipengine import __version__

    build = {
        "engine_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "history_years": res.years,
        "history_files": list(hist_names),
        "history_sha256": list(hist_sha),
        "hospitals_file": h_name,
        "hospitals_sha256": h_sha,
        "cases_used": res.cases_used,
        "overall_avg_cost": round(res.overall_avg_cost, 2),
        "budget_point_value": res.budget_point_value,
        "cci_weights_source": "written for dipengine from the spec's categories; illustrative",
        "severity_dx_source": "written for dipengine from the spec's categories; illustrative",
    }
    build.update(res.params)
    first = res.years[0]
    return {
        "name": name,
        "version": version or f"{next_year}.1",
        "scheme": "DIP-local",
        "effective_from": _dt.date(next_year, 1, 1),
        "effective_to": _dt.date(next_year, 12, 31),
        "source": f"built from history {first}-{res.years[-1]} by dipengine catalog build",
        "options": dict(res.options),
        "build": build,
    }


def write_rules(out, res: CatalogResult, red, proc_classes, cci_path, sev_path, meta) -> Path:
    """Write the rule set (contract §4) atomically into ``out`` via :func:`dipengine.rules.write_rule_set`."""
    from dipengine.rules import write_rule_set

    used = sorted({c for e in res.groups["proc_expr"].to_pylist() if e for c in e.split("+")}
                  | set(red.proc.values))
    proc_rows = []
    for code in used:
        i = red.proc.ids.get(code)
        rank = int(red.proc.rank[i]) if i is not None else proc_classes.get(code, (2, None))[0]
        level = proc_classes.get(code, (None, None))[1]
        proc_rows.append({"code": code, "class": CLASS_NAMES[rank], "level": level})
    tables = {
        "groups.csv": res.groups,
        "procedures.csv": pa.Table.from_pylist(proc_rows, schema=pa.schema(
            [("code", pa.string()), ("class", pa.string()), ("level", pa.int64())])),
        "excluded_dx.csv": pa.table({"code": pa.array([], pa.string())}),
        "excluded_proc.csv": pa.table({"code": pa.array([], pa.string())}),
        "aux_coefficients.csv": res.aux,
        "cci_weights.csv": _csv_records(cci_path),
        "severity_dx.csv": _csv_records(sev_path),
    }
    return write_rule_set(out, tables, meta)


def _csv_records(path) -> pa.Table:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return pa.Table.from_pylist(rows)


def _yuan_toml(fen: int) -> str:
    return str(fen // 100) if fen % 100 == 0 else _fen_to_yuan_str(fen)


def policy_skeleton(region: str, year: int, scale: float, budgets_fen: dict, budget_value: float) -> str:
    """``policy.toml`` text with every key of contract §5; values to review are marked."""
    return f'''# Pricing-table skeleton written by `dipengine catalog build`.
# Region, year, score scale, the budgets and the budget point value come from the history;
# every other value is the contract's illustrative example: REVIEW before settling.
region = "{region}"
year = {year}
score_scale = {_fmt_float(scale, 6)}

[budget]                      # per fund pool, yuan
# last history year's recorded fund payments of local and in-province remote DIP cases;
# review: growth, carve-outs and reserve (dip-rules §5.1)
employee = {_yuan_toml(budgets_fen["employee"])}
resident = {_yuan_toml(budgets_fen["resident"])}
reserve_rate = 0.03              # illustrative default
include_remote = "in_province"   # illustrative default: none | in_province | all

[point_value]
budget_value = {budget_value!r}   # yuan per point, weighted history (dip-rules §5.2)
settlement_method = "fund_plus_personal"   # illustrative default; or fund_over_share
band = [0.9, 1.1]                # illustrative default clamp around the budget value

[level_coefficients]             # illustrative defaults
1 = 0.80
2 = 0.90
3 = 1.00
basic_group = 1.00

[deviation]                      # national defaults (dip-rules §6.4); review locally
low_ratio = 0.5
high_ratio = 2.0
extreme_ratio = 5.0
high_formula = "ratio_minus_1"   # or ratio_minus_2_plus_coef
apply_level_coef_to_outliers = false
blank_group_factor = 0.7
extreme_rule = "high_formula"    # or review_normal_pay (special review, paid as normal)
low_inclusive = false            # low class at ratio < low_ratio (true: <=)
high_inclusive = false           # high class at ratio > high_ratio (true: >=)
reference_by = "level"           # same_level_avg.csv keyed by group x level (or level_pool: x pool)

[settlement]                     # illustrative defaults
monthly_method = "points"        # or recorded_advance
monthly_advance_rate = 0.95
quality_deposit = 0.05
bands = [                        # R = recorded / due
  {{ upper = 0.80, rule = "partial_retention", share = 0.80 }},
  {{ upper = 1.00, rule = "pay_due" }},
  {{ upper = 1.10, rule = "share_overspend", fund_share = 0.5 }},
  {{ rule = "cap", cap_over = 0.10, fund_share = 0.5 }},
]
'''


def write_pricing(out, res: CatalogResult, hosp: pa.Table) -> Path:
    """Write ``same_level_avg.csv``, ``policy.toml`` and ``manifest.toml`` atomically into ``out``."""
    regions = hosp["region"].to_pylist()
    region = sorted(set(regions), key=lambda r: (-regions.count(r), r))[0]
    year = res.years[-1] + 1
    sl = res.same_level_avg
    rows = [(c, l, fen_to_yuan_text(yuan_float_to_fen(a)))
            for c, l, a in zip(sl["dip_code"].to_pylist(), sl["level"].to_pylist(), sl["avg_cost"].to_pylist())]
    out = Path(out)
    with atomic_dir(out) as tmp:
        _write_csv(tmp / "same_level_avg.csv", ["dip_code", "level", "avg_cost"], rows)
        (tmp / "policy.toml").write_text(
            policy_skeleton(region, year, res.params.get("scale", 1000), res.budgets_fen, res.budget_point_value),
            encoding="utf-8")
        from dipengine.manifest import write_manifest

        write_manifest(tmp, {
            "region": region, "year": year,
            "source": f"skeleton from history {res.years[0]}-{res.years[-1]} by dipengine catalog build",
        }, ["same_level_avg.csv", "policy.toml"])
    return out
