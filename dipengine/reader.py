"""Read and validate inpatient cases into the normalised case table (contract §2 and §7).

:func:`read_cases` returns one row per input row, in input order, with every contract column
in its Arrow type (docs/architecture.md), money as exact int64 fen, codes in the 医保版 normal
form, and a ``reason`` (contract §7) plus a ``reason_detail`` naming column and value on every
rejected row. A bad row never raises; a bad *file* (missing required column, unreadable file,
a column of an impossible type) raises :class:`~dipengine.errors.DataError` before any row is
returned. :func:`iter_cases` streams the same rows batch by batch.

Everything is vectorised: string columns are dictionary-encoded and normalised once per
distinct value, numbers and dates are parsed per distinct value or by kernels, duplicate
``case_id`` detection runs in the :class:`dipengine._libs.validate.SeenSet` kernel, whose state
is carried across batches (for a large file set, :func:`dipengine.duplicates.find_repeats` finds
the same rows in bounded memory before the first batch, see :data:`DUPLICATE_SPILL_ROWS`).
:func:`map_cases` runs the batches on several threads (the duplicate pass stays sequential, in
input order) and can yield *lean* batches with only the grouper's columns.
:func:`dipengine.case.read_cases_reference` is the slow row-by-row twin.

Choices made here (see docs/validate.md):

- ``los`` missing (column absent or cell empty) is derived as ``discharge - admit`` days with a
  minimum of 1 (a same-day stay counts as one day, 结算清单 rule); a given ``los`` may differ
  from that by at most 1 day (both counting conventions pass).
- Enumerations are matched after trimming, ``sex`` upper-cased, the others lower-cased.
- Null ``person_type``/``remote_filing``/``discharge_mode`` cells take the defaults
  ``other``/``none``/1, as an absent column does.
- ``other_dx``/``other_procs`` are never null: an empty or null cell is an empty list.
- With a code list, a diagnosis passes when it, or its main code before a dagger ``+``, equals
  a listed code or the main code of a listed dagger pair.
"""
from __future__ import annotations

import datetime as _dt
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dipengine import codes as _codes
from dipengine import reasons as R
from dipengine.arrays import sparse_strings
from dipengine.arrays import string_buffers as _string_buffers
from dipengine.errors import DataError
from dipengine.money import MALFORMED, NEGATIVE, NULL, OK, TOO_LARGE, yuan_to_fen
from dipengine.parquet_source import BATCH_SIZE, ParquetPrefetch, lean_columns_of
from dipengine.parquet_source import column_kind as _kind
from dipengine.parquet_source import dictionary_columns as _dictionary_columns
from dipengine.parquet_source import parquet_batches as _parquet_batches

MAX_CASE_FEN = 10_000_000 * 100
"""Largest plausible amount of one inpatient settlement, in fen (10 million yuan).

The costliest stays (long ICU stays with ECMO, transplants) cost a few million yuan; a larger
figure is a keying or unit error (fen entered as yuan), so it is ``BAD_AMOUNT``.
"""

_BATCH_SIZE = BATCH_SIZE  # dipengine.io.BATCH_SIZE; dipengine.io itself is imported on first use (_iomod)


def _iomod():
    from dipengine import io

    return io


CONSISTENCY_FEN = 100
"""fund_paid + patient_paid may differ from total_cost by at most this many fen (1 yuan)."""

MAX_AGE = 130
MAX_AGE_DAYS = 365
LOS_TOLERANCE_DAYS = 1

SEXES = ("M", "F", "U")
INSURANCE_TYPES = ("employee", "resident")
PERSON_TYPES = ("in_service", "retired", "student", "child", "other")
REMOTE_FILINGS = ("none", "long_term", "referral", "emergency", "temporary")
DISCHARGE_MODES = (1, 2, 3, 4, 5, 9)

REQUIRED = (
    "case_id", "hospital_id", "insurance_type", "insured_region", "age",
    "admit_date", "discharge_date", "main_dx", "total_cost",
)
MONEY = ("total_cost", "fund_paid", "patient_paid", "out_of_catalogue_cost", "class_b_cost", "other_fund_paid")
LIST_SEPARATORS = r"[|,，｜]"
SCHEMA = pa.schema(
    [
        ("case_id", pa.string()),
        ("hospital_id", pa.string()),
        ("patient_id", pa.string()),
        ("insurance_type", pa.string()),
        ("person_type", pa.string()),
        ("insured_region", pa.string()),
        ("remote_filing", pa.string()),
        ("sex", pa.string()),
        ("age", pa.int32()),
        ("age_days", pa.int32()),
        ("los", pa.int32()),
        ("admit_date", pa.date32()),
        ("discharge_date", pa.date32()),
        ("discharge_mode", pa.int8()),
        ("main_dx", pa.string()),
        ("main_proc", pa.string()),
        ("other_dx", pa.list_(pa.string())),
        ("other_procs", pa.list_(pa.string())),
        ("total_cost_fen", pa.int64()),
        ("fund_paid_fen", pa.int64()),
        ("patient_paid_fen", pa.int64()),
        ("out_of_catalogue_cost_fen", pa.int64()),
        ("class_b_cost_fen", pa.int64()),
        ("other_fund_paid_fen", pa.int64()),
        ("reason", pa.string()),
        ("reason_detail", pa.string()),
    ]
)
"""The normalised columns, in output order; extra input columns follow them."""

INPUT_COLUMNS = frozenset(
    [f.name for f in SCHEMA if not f.name.endswith("_fen") and f.name not in ("reason", "reason_detail")]
    + list(MONEY)
)
"""Contract §2 input column names (everything else is an extra column, carried through)."""

_DM_LISTED = np.zeros(max(DISCHARGE_MODES) + 1, bool)
_DM_LISTED[list(DISCHARGE_MODES)] = True  # discharge_mode check by table lookup (np.isin sorts per call)

WARNING = 99  # pseudo reason code of a warning: listed last in reason_detail, sets no reason

_NULL_STR = pa.nulls(1, pa.string())[0]  # a null string scalar (pa.scalar(None) would import pandas)
_NULL_STR_ARRAY = pa.nulls(1, pa.string())


# --------------------------------------------------------------------------------------------
# column kinds and the file-level type check

_ALLOWED = {
    **{c: ("text", "int", "null") for c in ("case_id", "hospital_id", "patient_id", "insured_region")},
    **{c: ("text", "null") for c in ("insurance_type", "person_type", "remote_filing", "sex")},
    **{c: ("text", "int", "float", "null") for c in ("age", "age_days", "los", "discharge_mode")},
    **{c: ("text", "date", "null") for c in ("admit_date", "discharge_date")},
    **{c: ("text", "null") for c in ("main_dx", "main_proc")},
    **{c: ("text", "list", "null") for c in ("other_dx", "other_procs")},
    **{c: ("text", "int", "float", "null") for c in MONEY},
}


def check_schema(schema: pa.Schema, file="input") -> None:
    """Raise :class:`DataError` if a required column is missing or a column cannot be read as its type."""
    names = set(schema.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(
            "required column missing" + (f" (also {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            file=file, column=missing[0],
        )
    for field in schema:
        allowed = _ALLOWED.get(field.name)
        if allowed is not None and _kind(field.type) not in allowed:
            raise DataError(f"column of type {field.type} cannot be read as {_expect(field.name)}",
                            file=file, column=field.name)


def _expect(name: str) -> str:
    if name in ("age", "age_days", "los", "discharge_mode"):
        return "an integer"
    if name in MONEY:
        return "an amount in yuan"
    if name in ("admit_date", "discharge_date"):
        return "a date"
    if name in ("other_dx", "other_procs"):
        return "a list of codes"
    return "text"


# --------------------------------------------------------------------------------------------
# small vectorised helpers

def _np_bool(arr) -> np.ndarray:
    """Arrow boolean (nulls -> False) as a numpy bool array."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = pc.fill_null(arr, False)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _take(values: pa.Array, idx: np.ndarray) -> pa.Array:
    """values[idx] with idx == -1 giving null."""
    if len(idx) == 0:
        return values.slice(0, 0)
    neg = idx < 0
    return values.take(pa.array(np.where(neg, 0, idx), mask=neg if neg.any() else None))


def _encode(col: pa.Array) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """Distinct values (as string), per-row indices into them (int32 numpy, -1 for null) and
    the same indices as an Arrow int32 array (null for null)."""
    if pa.types.is_null(col.type):
        col = col.cast(pa.string())
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    uniques = col.dictionary
    if not pa.types.is_string(uniques.type):
        uniques = uniques.cast(pa.string())
    if len(uniques) == 0:  # all null: one null "value" keeps indexing by idx >= 0 safe
        uniques = pa.nulls(1, pa.string())
    indices = col.indices
    idx = indices.to_numpy(zero_copy_only=False) if indices.null_count == 0 else \
        pc.fill_null(indices, -1).to_numpy(zero_copy_only=False)
    return uniques, idx.astype(np.int32, copy=False), indices


def _clean_text(arr: pa.Array) -> pa.Array:
    """Trim whitespace; empty -> null."""
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), _NULL_STR, arr)


def _quote(values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise("'", values.cast(pa.string()), "'", "", null_handling="replace",
                                       null_replacement="")


def _cat(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")


def _raw_text(col: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if _kind(col.type) == "list":
        return pc.binary_join(col.cast(pa.list_(pa.string())), "|")
    return pc.utf8_trim_whitespace(col.cast(pa.string()))


class _Checks:
    """Defects found in one batch: (reason code, flagged rows, how to write their details)."""

    def __init__(self, n: int):
        self.n = n
        # (code, rows int64, detail builder or None, (column, raw, text) of a value defect or None)
        self.items: list[tuple] = []

    def add(self, code: int, mask: np.ndarray, detail: Callable[[np.ndarray], pa.Array]) -> None:
        if mask.any():
            self.items.append((code, np.flatnonzero(mask), detail, None))

    def value(self, code: int, mask, column: str, raw, text: str) -> None:
        """A defect whose detail is ``column: 'value' text``; ``raw`` is the per-row value text
        (an Arrow array), or a function of the flagged row numbers returning their texts (called
        only when some row is flagged, so only those rows are printed)."""
        if mask.any():
            self.items.append((code, np.flatnonzero(mask), None, (column, raw, text)))

    def _value_texts(self, items) -> list[pa.Array]:
        """The details of the value defects among ``items``, one array per item (None for the
        others), built with one join over all of them."""
        parts, heads, tails, counts = [], [], [], []
        for c, idx, _, spec in items:
            if spec is None:
                continue
            column, raw, text = spec
            values = raw(idx) if callable(raw) else raw.take(pa.array(idx))
            parts.append(values.cast(pa.string()))
            heads.append(("warning: " if c == WARNING else "") + f"{column}: ")
            tails.append(f" {text}")
            counts.append(len(idx))
        if not parts:
            return [None] * len(items)
        which = pa.array(np.repeat(np.arange(len(counts), dtype=np.int32), counts))
        joined = _cat(pa.DictionaryArray.from_arrays(which, pa.array(heads, pa.string())).dictionary_decode(),
                      _quote(pa.concat_arrays(parts)),
                      pa.DictionaryArray.from_arrays(which, pa.array(tails, pa.string())).dictionary_decode())
        out, at = [], 0
        for _, idx, _, spec in items:
            if spec is None:
                out.append(None)
            else:
                out.append(joined.slice(at, len(idx)))
                at += len(idx)
        return out

    def result(self) -> tuple[pa.Array, pa.Array]:
        """``reason`` and ``reason_detail`` columns: first defect by precedence, all details joined."""
        n = self.n
        items = sorted(self.items, key=lambda it: it[0])  # stable: detail order = precedence order
        code = np.zeros(n, dtype=np.int8)
        for c, idx, _, _ in reversed(items):
            if c != WARNING:
                code[idx] = c
        reason = R.to_strings(code)
        if not items:
            return reason, pa.nulls(n, pa.string())
        # every (row, text) pair, items in precedence order; a stable sort by row keeps that
        # order within a row, then one join per flagged row
        at, texts = [], []
        for (c, idx, detail, _), text in zip(items, self._value_texts(items)):
            if text is None:
                text = detail(idx)
                if c == WARNING:
                    text = _cat("warning: ", text)
            at.append(idx)
            texts.append(text.cast(pa.string()))
        at = np.concatenate(at)
        order = np.argsort(at, kind="stable")
        at = at[order]
        text = pa.concat_arrays(texts).take(pa.array(order))
        if text.null_count:  # skipped, as binary_join_element_wise(null_handling="skip") would
            keep = text.is_valid()
            at, text = at[keep.to_numpy(zero_copy_only=False)], text.filter(keep)
        rows, counts = np.unique(at, return_counts=True)
        offsets = np.zeros(len(rows) + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), text), "; ")
        return reason, sparse_strings(n, rows, joined)


# --------------------------------------------------------------------------------------------
# column parsers: each returns per-row numpy/Arrow arrays and registers its defects

def _text_column(col, n):
    """Plain text column: trimmed, empty -> null (no dictionary: for high-cardinality ids)."""
    if col is None:
        return pa.nulls(n, pa.string())
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    col = col.cast(pa.string())
    if n and pa.types.is_string(col.type):
        from dipengine._libs.validate import needs_trim

        if not needs_trim(*_string_buffers(col)):  # nothing to trim, no empty cell: as it is
            return col
    return _clean_text(col)


class _Coded:
    """A low-cardinality text column as distinct values ``u`` and per-row indices ``idx`` (-1 null).

    Checks run on the distinct values; rows are materialised only when asked for.
    """

    def __init__(self, u: pa.Array, idx: np.ndarray, indices: pa.Array | None = None, valid_u=None):
        self.u, self.idx = u, idx
        self.indices = indices  # idx as Arrow int32 (null for -1), when it came from one
        self.valid_u = valid_u  # per distinct value: not null (bool), when already known

    def per_row(self, flags_u: np.ndarray) -> np.ndarray:
        """Per-row value of a per-distinct-value bool array (False on null rows)."""
        if not flags_u.any():  # the usual case for a defect flag: no row to look up
            return np.zeros(len(self.idx), bool)
        if flags_u.all():
            return self.idx >= 0
        return np.append(flags_u, False)[self.idx]  # idx -1 reads the False at the end

    def missing(self) -> np.ndarray:
        return ~self.per_row(_np_bool(pc.is_valid(self.u)) if self.valid_u is None else self.valid_u)

    def at(self, rows: np.ndarray) -> pa.Array:
        return _take(self.u, self.idx[rows])

    def rows(self) -> pa.Array:
        return _take(self.u, self.idx)


def _enum_column(col, n, name, allowed, checks, default=None, case=None, *, cache=None, pattern=None,
                 pattern_text=None, values=None) -> _Coded:
    """Low-cardinality text column checked against ``allowed`` (or a regex ``pattern``, reported
    as ``pattern_text``); nulls take ``default``. ``values``: a :class:`dipengine.schemas.CodeValues`
    mapping code values (``310`` -> ``employee``) before the check; a code it lists without a value
    is reported with its label. The work per distinct value is done once per dictionary when a
    :class:`DictionaryCache` is given."""
    if col is None:
        if default is None:
            return _Coded(pa.nulls(1, pa.string()), np.full(n, -1, np.int32))
        return _Coded(pa.array([default], pa.string()), np.zeros(n, np.int32))
    uniques, idx, _ = _encode(col)

    def per_unique(uniques):
        u = _clean_text(uniques)
        kept_u = labels_u = None
        if values is not None:
            u, kept_u, labels_u = values.lookup(u)
        if case == "upper":
            u = pc.utf8_upper(u)
        elif case == "lower":
            u = pc.utf8_lower(u)
        if default is not None:
            u = pa.concat_arrays([pc.fill_null(u, default), pa.array([default], pa.string())])
            if kept_u is not None:
                kept_u = np.append(kept_u, False)
                labels_u = pa.concat_arrays([labels_u, _NULL_STR_ARRAY])
        valid_u = _np_bool(pc.is_valid(u))
        bad_u = None
        if allowed is not None:
            bad_u = ~_np_bool(pc.is_in(u, pa.array(allowed, pa.string()))) & valid_u
        elif pattern is not None:
            bad_u = ~_np_bool(pc.match_substring_regex(u, pattern)) & valid_u
        if kept_u is not None and bad_u is not None:
            kept_u = kept_u & bad_u
            bad_u = bad_u & ~kept_u
        return u, valid_u, bad_u, kept_u, labels_u

    key = ("enum", name, default, case, tuple(allowed or ()), pattern, id(values))
    u, valid_u, bad_u, kept_u, labels_u = per_unique(uniques) if cache is None else \
        cache.get(key, uniques, per_unique)
    if default is not None:
        idx = np.where(idx < 0, len(u) - 1, idx)  # null rows take the default, the last value
    coded = _Coded(u, idx, valid_u=valid_u)
    if bad_u is not None:
        text = f"is not one of {', '.join(map(str, allowed))}" if allowed is not None else pattern_text
        checks.value(R.BAD_VALUE, coded.per_row(bad_u), name, coded.at, text)
    if kept_u is not None and kept_u.any():  # a known code outside the contract's values: say what it is
        expected = f"one of {', '.join(map(str, allowed))}" if allowed is not None else pattern_text
        for k in np.flatnonzero(kept_u):  # per distinct listed code (a handful), never per row
            flags = np.zeros(len(kept_u), bool)
            flags[k] = True
            checks.value(R.BAD_VALUE, coded.per_row(flags), name, coded.at,
                         f"is {labels_u[k].as_py() or 'a listed code'}, not {expected}")
    return coded


def _int_column(col, n):
    """Parse an integer column. Returns (value int64, present bool, bad bool); value 0 where absent/bad.

    ``present``: the cell is not null/empty. ``bad``: present but not an integer (or beyond int32).
    """
    if col is None or pa.types.is_null(col.type):
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    kind = _kind(col.type)
    if kind == "text":
        uniques, idx, _ = _encode(col)
        u = _clean_text(uniques)
        is_num = _np_bool(pc.match_substring_regex(u, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"))
        fu = pc.if_else(pa.array(is_num), u, _NULL_STR).cast(pa.float64())
        fu = np.where(is_num, pc.fill_null(fu, np.nan).to_numpy(zero_copy_only=False), np.inf)
        j = np.maximum(idx, 0)
        present = (idx >= 0) & _np_bool(pc.is_valid(u))[j]
        v = fu[j]  # inf marks text that is not a number
    else:
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_integer(col.type) and not pa.types.is_uint64(col.type):
            # exact without the float detour; values beyond int32 are bad as below
            present = _np_bool(pc.is_valid(col)) if col.null_count else np.ones(n, bool)
            raw = (pc.fill_null(col, 0) if col.null_count else col).to_numpy(zero_copy_only=False)
            v = raw.astype(np.int64)
            if raw.dtype.itemsize < 4:  # int8, int16 and their unsigned kinds always fit
                return v, present, np.zeros(n, bool)
            # beyond int32 is bad (int64's minimum has no absolute value); of int32 only -2**31 is
            bad = (raw == -2**31) if raw.dtype == np.int32 else ((v >= 2**31) | (v <= -2**31))
            bad &= present
            if bad.any():
                v[bad] = 0
            return v, present, bad
        f = col.cast(pa.float64())
        v = pc.fill_null(f, np.nan).to_numpy(zero_copy_only=False)
        present = ~np.isnan(v)
    integral = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < 2**31)
    bad = present & ~integral
    value = np.where(present & integral, v, 0).astype(np.int64)
    return value, present, bad


_DATE_TIME = r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
_DATE_RE = r"^[12][0-9]{3}-[0-9]{2}-[0-9]{2}" + _DATE_TIME + "$"
"""ISO dates (2026-01-05, with an optional time: 2026-01-05 08:30:00, 2026-01-05T08:30); the time is ignored."""
_DATE_FORMS = (
    # 2026/1/5, 2026/01/05 08:30:00, 2026/1/5 8:30 (as Excel writes them in a Chinese locale)
    r"^(?P<y>[12][0-9]{3})/(?P<m>[0-9]{1,2})/(?P<d>[0-9]{1,2})"
    r"(?:[T ][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?)?$",
    r"^(?P<y>[12][0-9]{3})(?P<m>[0-9]{2})(?P<d>[0-9]{2})(?:[0-9]{6})?$",  # 20260105, 20260105083000
)
"""The other date forms accepted, as year, month and day groups (the time is ignored)."""


def _date_column(col, n):
    """Parse a date column. Returns (days since 1970-01-01 int64, present bool, bad bool)."""
    zero = np.zeros(n, dtype=np.int64)
    if col is None or pa.types.is_null(col.type):
        return zero, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if _kind(col.type) == "date":
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        d = col.cast(pa.date32()) if not pa.types.is_date32(col.type) else col
        present = _np_bool(pc.is_valid(d))
        d = d.cast(pa.int32())
        days = (pc.fill_null(d, 0) if d.null_count else d).to_numpy(zero_copy_only=False).astype(np.int64)
        return days, present, np.zeros(n, dtype=bool)
    uniques, idx, _ = _encode(col)
    u = _clean_text(uniques)
    shaped = pc.match_substring_regex(u, _DATE_RE)
    iso = pc.if_else(shaped, pc.utf8_slice_codeunits(u, 0, 10), _NULL_STR)
    present_u = _np_bool(pc.is_valid(u))
    if (present_u & ~_np_bool(shaped)).any():  # other forms (2026/1/5, 20260105083000) as YYYY-MM-DD
        for form in _DATE_FORMS:
            parts = pc.extract_regex(u, form)  # null where the form does not match
            y, m, d = (pc.struct_field(parts, k) for k in "ymd")
            iso = pc.coalesce(iso, pc.binary_join_element_wise(
                y, pc.utf8_lpad(m, 2, "0"), pc.utf8_lpad(d, 2, "0"), "-"))
    ts = pc.strptime(iso, "%Y-%m-%d", "s", error_is_null=True)
    # strptime rolls 2027-02-30 over to March: a date is good only if it prints back the same.
    back = pc.strftime(ts, "%Y-%m-%d")
    good_u = _np_bool(pc.equal(back, iso))
    days_u = pc.fill_null(ts.cast(pa.date32()).cast(pa.int32()), 0).to_numpy(zero_copy_only=False)
    j = np.maximum(idx, 0)
    present = (idx >= 0) & present_u[j]
    good = present & good_u[j]
    days = np.where(good, days_u[j], 0).astype(np.int64)
    return days, present, present & ~good


def _split_list(col, n) -> pa.ListArray:
    """list<string> from a list column or a ``|``/``,``-separated text column (null -> null)."""
    if col is None or pa.types.is_null(col.type):
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    if _kind(col.type) == "list":
        if pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            col = col.cast(pa.list_(col.type.value_type))
        vt = col.type.value_type
        if not pa.types.is_string(vt):
            col = col.cast(pa.list_(pa.string()))
        return col
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    from dipengine._libs.validate import split_codes

    data, offsets, valid = _string_buffers(col)
    elem_data, elem_offsets, counts = split_codes(data, offsets, valid)
    values = pa.Array.from_buffers(pa.large_string(), len(elem_offsets) - 1,
                                   [None, pa.py_buffer(elem_offsets), pa.py_buffer(elem_data)])
    list_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=list_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(list_offsets), values.cast(pa.string()))


_FEN_LIMIT = 10**15  # as dipengine._libs.money: larger amounts are TOO_LARGE


def _fen_column(col) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dipengine.money.yuan_to_fen` of a money column, with a fast path for decimals.

    A ``decimal128`` column of scale 0-2 and precision <= 18 (as written by synth and most
    exports) is converted from its unscaled integers directly, without printing it as text;
    anything else goes through ``yuan_to_fen``. Same fen and statuses either way.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if not (pa.types.is_decimal128(t) and 0 <= t.scale <= 2 and t.precision <= 18 and sys.byteorder == "little"):
        return yuan_to_fen(col)
    from dipengine._libs.money import decimal_fen

    n = len(col)
    fen, status = np.empty(n, np.int64), np.empty(n, np.int8)
    if n == 0:
        return fen, status
    # int128 little-endian: the low 64-bit word is the value (|value| < 10**18 fits in int64)
    words = np.frombuffer(col.buffers()[1], dtype=np.int64, count=2 * (n + col.offset))
    valid = _np_bool(pc.is_valid(col)).view(np.uint8) if col.null_count else np.ones(n, np.uint8)
    decimal_fen(words, col.offset, 10 ** (2 - t.scale), valid, fen, status)  # limit: _FEN_LIMIT
    return fen, status


def _code_list(col, n, kind, listed, cache=None):
    """Normalised code lists as ``(offsets int32 n + 1, uniques, element indices, element rows,
    malformed, unlisted)``: element k of the flattened lists is ``uniques[el_idx[k]]`` and belongs
    to row ``parents[k]``; null and empty codes are dropped; the flags are per unique (see
    :func:`_code_flags`). Normalisation runs once per distinct code (once per Parquet row group
    when the lists arrive dictionary-encoded and ``cache`` is given). ``parents`` is a callable
    returning that int64 array: it is needed only when some element is flagged."""
    if col is not None and _kind(col.type) == "list" and pa.types.is_dictionary(col.type.value_type) and \
            pa.types.is_list(col.type):
        lst = col  # list<dictionary<string>> straight from Parquet: no splitting, no hashing
    else:
        lst = _split_list(col, n)
    values = lst.flatten()
    if len(values):
        uniques, idx, _ = _encode(values)
        compute = (lambda a: _normalise_codes(a, kind, listed))
        u, malformed_u, unlisted_u = compute(uniques) if cache is None else cache.get(kind, uniques, compute)
        u_valid = _np_bool(pc.is_valid(u))
        if lst.null_count == 0 and (idx >= 0).all() and u_valid.all():
            # every element kept (the usual case): the list offsets are the answer
            el_idx = idx
            offsets = lst.offsets.to_numpy()
            offsets = (offsets - offsets[0]).astype(np.int32)
            return offsets, u, el_idx, (lambda: _parents(offsets)), malformed_u, unlisted_u
        rows = pc.list_parent_indices(lst).to_numpy(zero_copy_only=False).astype(np.int64)
        keep = (idx >= 0) & u_valid[np.maximum(idx, 0)]
        el_idx = idx[keep]
        parents = rows[keep]
    else:
        u, el_idx, parents = pa.nulls(1, pa.string()), np.zeros(0, np.int32), np.zeros(0, np.int64)
        malformed_u = unlisted_u = np.zeros(1, bool)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=n), out=offsets[1:])
    return offsets, u, el_idx, (lambda: parents), malformed_u, unlisted_u


def _parents(offsets: np.ndarray) -> np.ndarray:
    """Row of each list element (int64), from list offsets."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def _list_array(offsets, u, el_idx, dictionary: bool) -> pa.ListArray:
    """list<string> (or list<dictionary<int32, string>>) of :func:`_code_list`'s parts."""
    if dictionary:
        values = pa.DictionaryArray.from_arrays(pa.array(el_idx.astype(np.int32, copy=False)), u, safe=False)
    else:
        values = u.take(pa.array(el_idx)) if len(el_idx) else pa.array([], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _dict_array(coded: _Coded) -> pa.DictionaryArray:
    """A coded column as a dictionary array (rows whose value is null get a null index)."""
    if coded.indices is not None and coded.u.null_count == 0 and pa.types.is_int32(coded.indices.type):
        return pa.DictionaryArray.from_arrays(coded.indices, coded.u, safe=False)  # null rows are the null indices
    valid = coded.per_row(_np_bool(pc.is_valid(coded.u)))
    if valid.all():
        return pa.DictionaryArray.from_arrays(pa.array(coded.idx.astype(np.int32, copy=False)), coded.u,
                                              safe=False)
    idx = np.where(valid, coded.idx, 0).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(idx, mask=~valid), coded.u, safe=False)


# --------------------------------------------------------------------------------------------
# code lists and options

def load_code_list(source, what: str = "code list") -> pa.Array:
    """Allowed codes from a TSV ``code<TAB>name`` file (header row) or any sequence/array of codes.

    Returns the normalised distinct codes plus the main codes of dagger pairs (string array).
    """
    if isinstance(source, (str, Path)):
        path = str(source)
        try:
            with open(path, "rb") as f:
                head = f.readline().decode("utf-8-sig").rstrip("\r\n").split("\t")
            table = pcsv.read_csv(
                path,
                parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in head}),
            )
        except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {what} ({str(e).splitlines()[0]})", file=path) from None
        if "code" not in table.column_names:
            raise DataError(f"{what} needs a header row with a 'code' column", file=path, column="code")
        arr = table["code"].combine_chunks()
    elif isinstance(source, (pa.Array, pa.ChunkedArray)):
        arr = source.combine_chunks() if isinstance(source, pa.ChunkedArray) else source
    else:
        arr = pa.array(list(source), pa.string())
    norm = pc.drop_null(_codes.normalize(arr))
    return pc.unique(pa.concat_arrays([norm, _codes.main_code(norm)]))


def parse_period(period) -> tuple[int, int] | None:
    """``None``, ``"YYYY"`` or ``"YYYY-MM"`` -> (first day, last day) as days since 1970-01-01."""
    if period is None:
        return None
    s = str(period).strip()
    m = re.fullmatch(r"([0-9]{4})(?:-([0-9]{2}))?", s)
    if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 12):
        raise ValueError(f"period must be YYYY or YYYY-MM, not {period!r}")
    year = int(m.group(1))
    if m.group(2):
        month = int(m.group(2))
        first = _dt.date(year, month, 1)
        last = _dt.date(year + (month == 12), month % 12 + 1, 1) - _dt.timedelta(days=1)
    else:
        first, last = _dt.date(year, 1, 1), _dt.date(year, 12, 31)
    epoch = _dt.date(1970, 1, 1)
    return (first - epoch).days, (last - epoch).days


class DictionaryCache:
    """Results computed per distinct value of a dictionary, kept for the next batches.

    The batches of one Parquet row group carry the same dictionary, so work per distinct value
    (normalising, regex checks, rule look-ups) is done once per row group, not once per batch.
    Entries are keyed by the dictionary's contents (a BLAKE2b digest of its offsets, bytes and
    validity: O(size of the dictionary), tiny next to the per-row work). The digest itself is
    remembered per array identity (the addresses of its buffers, which stay valid because the
    cache keeps a reference to the array): batches sharing one dictionary hash it once. Thread-safe.
    """

    def __init__(self, size: int = 16):
        import threading
        from collections import OrderedDict

        self._items: OrderedDict = OrderedDict()
        self._digests: OrderedDict = OrderedDict()  # buffer identity -> (array kept alive, key)
        self._running: dict = {}  # key -> Event set when the thread computing it is done
        self._size = size
        self._lock = threading.Lock()

    @staticmethod
    def _key(kind, arr: pa.Array):
        import hashlib

        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            return None
        n = len(arr)
        bufs = arr.buffers()
        width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
        if n == 0 or bufs[1] is None:
            return (kind, n, arr.null_count)
        offsets = np.frombuffer(bufs[1], dtype=width, count=n + 1 + arr.offset)[arr.offset:]
        h = hashlib.blake2b(digest_size=20)
        h.update((offsets - offsets[0]).astype(np.int64).tobytes())
        if bufs[2] is not None:
            h.update(memoryview(bufs[2])[int(offsets[0]):int(offsets[-1])])
        if arr.null_count:
            h.update(_np_bool(pc.is_valid(arr)).tobytes())
        return (kind, n, arr.null_count, h.digest())

    def _content_key(self, kind, arr: pa.Array):
        """:meth:`_key`, hashed once per array identity."""
        ident = (kind, type(arr), len(arr), arr.offset, tuple(0 if b is None else b.address for b in arr.buffers()))
        with self._lock:
            seen = self._digests.get(ident)
            if seen is not None:
                self._digests.move_to_end(ident)
                return seen[1]
        key = self._key(kind, arr)
        with self._lock:
            self._digests[ident] = (arr, key)
            while len(self._digests) > 4 * self._size:
                self._digests.popitem(last=False)
        return key

    def get(self, kind, arr: pa.Array, compute: Callable):
        """``compute(arr)``, or its value from an earlier call on an array of the same contents.

        A thread asking for a value another thread is computing waits for it (the workers
        start on batches of the same row group), rather than computing it a second time.
        """
        import threading

        key = self._content_key(kind, arr)
        if key is None:
            return compute(arr)
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            running = self._running.get(key)
            if running is None:
                running = self._running[key] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            running.wait()
            with self._lock:
                hit = self._lookup(key)
            return hit if hit is not None else compute(arr)  # it failed (or was evicted at once)
        try:
            value = compute(arr)
            with self._lock:
                self._items[key] = value
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._running[key]
            running.set()

    def _lookup(self, key):
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit


class _Context:
    """Options and run state shared by every batch of one run."""

    def __init__(self, hospitals, period, code_lists, schema=None):
        from dipengine._libs.validate import SeenSet
        from dipengine.schemas import load_schema

        self.schema = load_schema(schema)
        self.values = self.schema.values  # column -> CodeValues (national code values and the like)

        self.seen = SeenSet()  # the duplicate pass: a SeenSet, or a duplicates.RepeatMarker (_duplicate_marker)
        self.cache = DictionaryCache(32)  # per row group: six enumerations, four code columns
        self.period = parse_period(period)
        self.period_text = None if period is None else str(period).strip()
        self.hospital_ids = None
        if hospitals is not None:
            if not isinstance(hospitals, pa.Table):
                from dipengine.hospitals import read_hospitals

                hospitals = read_hospitals(hospitals)
            elif "hospital_id" not in hospitals.column_names:
                raise DataError("hospital registry lacks the required column", file="hospitals", column="hospital_id")
            self.hospital_ids = pc.unique(hospitals["hospital_id"].combine_chunks().cast(pa.string()))
        code_lists = code_lists or {}
        unknown = set(code_lists) - {"dx", "proc"}
        if unknown:
            raise ValueError(f"code_lists keys are 'dx' and 'proc', not {sorted(unknown)}")
        self.dx_list = None if code_lists.get("dx") is None else load_code_list(code_lists["dx"], "ICD-10 list")
        self.proc_list = None if code_lists.get("proc") is None else load_code_list(code_lists["proc"], "ICD-9 list")


# --------------------------------------------------------------------------------------------
# one batch

_DX_FORM = "is not a well-formed ICD-10 医保版 code"
_PROC_FORM = "is not a well-formed ICD-9-CM-3 医保版 code"


def _code_flags(u: pa.Array, kind: str, listed: pa.Array | None):
    """Per distinct normalised code: (malformed, not listed) numpy bool arrays."""
    valid = _codes.is_valid_dx(u) if kind == "dx" else _codes.is_valid_proc(u)
    present = _np_bool(pc.is_valid(u))
    malformed = present & ~_np_bool(valid)
    unlisted = np.zeros(len(u), dtype=bool)
    if listed is not None:
        inlist = pc.or_(pc.is_in(u, listed), pc.is_in(_codes.main_code(u), listed))
        unlisted = present & ~malformed & ~_np_bool(inlist)
    return malformed, unlisted


def _normalise_codes(u: pa.Array, kind: str, listed):
    """Normalised distinct codes and their (malformed, not listed) flags."""
    norm = _codes.normalize(u)
    return (norm, *_code_flags(norm, kind, listed))


def _list_defects(checks, code, name, u, el_idx, parents, malformed_u, unlisted_u, n, kind):
    """Register defects of the elements of a code list column (detail lists the bad elements)."""
    if len(el_idx) == 0:
        return
    form = _DX_FORM if kind == "dx" else _PROC_FORM
    for flags_u, text in ((malformed_u, form), (unlisted_u, "is not in the code list")):
        if not flags_u.any():
            continue
        bad_el = flags_u[el_idx]
        rows = parents()[bad_el]
        if not len(rows):
            continue
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        el_text = _cat(f"{name}: ", _quote(u.take(pa.array(el_idx[bad_el]))), f" {text}")
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        per_row = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), el_text), "; ")
        checks.add(code, mask, lambda r, per_row=per_row: per_row.take(pa.array(r)))


LEAN_COLUMNS = ("case_id", "main_dx", "main_proc", "other_dx", "other_procs", "total_cost_fen", "discharge_mode",
                "los", "age", "age_days", "reason", "reason_detail")
"""Columns of a lean batch (``lean=True``): what the grouper reads, in its order; extras follow."""

_CODE_DICT = pa.dictionary(pa.int32(), pa.string())
LEAN_SCHEMA = pa.schema([
    ("case_id", pa.string()), ("main_dx", _CODE_DICT), ("main_proc", _CODE_DICT),
    ("other_dx", pa.list_(_CODE_DICT)), ("other_procs", pa.list_(_CODE_DICT)), ("total_cost_fen", pa.int64()),
    ("discharge_mode", pa.int8()), ("los", pa.int32()), ("age", pa.int32()), ("age_days", pa.int32()),
    ("reason", pa.string()), ("reason_detail", pa.string()),
])
"""Schema of a lean batch: codes as dictionaries of normalised codes, ``discharge_mode`` never null."""


def _mark_duplicates(batch: pa.RecordBatch, ctx: _Context):
    """The cleaned ``case_id`` column and its DUPLICATE_CASE mask (uint8), updating the run state.

    Must run on the batches in input order (the rest of the batch work may run in parallel).
    """
    names = batch.schema.names
    case_id = _text_column(batch.column(names.index("case_id")) if "case_id" in names else None, batch.num_rows)
    data, offsets, valid = _string_buffers(case_id)
    dup = np.zeros(batch.num_rows, dtype=np.uint8)
    ctx.seen.mark(data, offsets, valid, dup)  # SeenSet, or RepeatMarker answering from the pre-pass
    return case_id, dup, valid


DUPLICATE_SPILL_ROWS = 2_000_000
"""Rows from which :func:`map_cases` (``duplicates="auto"``) finds the repeated ``case_id`` rows by
the bounded-memory pre-pass (:func:`dipengine.duplicates.find_repeats`) instead of an in-memory
``SeenSet`` (about 62 bytes per case), when the source is a Parquet file, directory or glob or an
Arrow IPC file whose ``case_id`` column can be read alone. Both give the same rows."""

DUPLICATE_MODES = ("auto", "memory", "spill")
"""Values of ``map_cases(duplicates=...)``."""

_PREPASS_BATCH = 1 << 20  # ids per batch of the pre-pass read (one column: about 30 MB)


class _ScanError(Exception):
    """The pre-pass could not read the source (the run then reads it once and reports that)."""


def _case_id_source(names, spec) -> str | None:
    """The input column that becomes ``case_id`` in the batches of a source with columns ``names``
    (what :func:`_mark_duplicates` reads after ``spec.apply``), or None if it is not one plain column."""
    out = list(names) if spec.identity else spec.output_names(names)
    if out.count("case_id") != 1:
        return None
    i = out.index("case_id")
    if i >= len(names) or list(names).count(names[i]) != 1:  # a computed column, or ambiguous by name
        return None
    return names[i]


def _parquet_ids(path, column):
    f = pq.ParquetFile(path)
    try:
        for b in f.iter_batches(batch_size=_PREPASS_BATCH, columns=[column]):
            yield b.column(0)
    finally:
        f.close()


def _dataset_ids(files, column):
    import pyarrow.dataset as ds

    # the schema is inferred from the first file, as _open's dataset does; batches come in file order
    dataset = ds.dataset(files, format="parquet")
    for b in dataset.scanner(columns=[column], batch_size=_PREPASS_BATCH).to_batches():
        yield b.column(0)


def _ipc_ids(path, spec):
    import pyarrow.ipc as ipc

    def batches(options=None):  # as io._read_ipc: the file format, else the stream format
        src = pa.memory_map(path)
        try:
            try:
                r, file_format = ipc.open_file(src, options=options), True
            except pa.ArrowInvalid:
                src.close()
                src = pa.memory_map(path)
                r, file_format = ipc.open_stream(src, options=options), False
            yield r.schema
            if file_format:
                for k in range(r.num_record_batches):
                    yield r.get_batch(k)
            else:
                yield from r
        finally:
            src.close()

    it = batches()
    names = next(it).names
    it.close()
    column = _case_id_source(names, spec)
    if column is None:
        raise _ScanError("no plain case_id column")
    it = batches(ipc.IpcReadOptions(included_fields=[names.index(column)]))
    next(it)
    for b in it:
        yield b.column(0)


def _case_id_columns(source, spec, read_options: bool):
    """The raw column that becomes ``case_id``, batch by batch in the run's row order, read alone
    from a source that can be read twice: a Parquet file, directory or glob (read as :func:`_open`
    and :func:`_open_mapped` read it) or one Arrow IPC file. None for other sources (in-memory
    tables, CSV, workbooks, a nested extract, Parquet with ``encoding``/``sheet``), or when
    ``case_id`` is computed rather than read."""
    files = _iomod().source_files(source)
    if not files:
        return None
    if not spec.identity:
        from dipengine.schemas import nested_files

        if nested_files(source, spec) is not None:
            return None
    if _is_parquet(source):
        if read_options:
            return None
        if len(files) == 1:
            column = _case_id_source(pq.read_schema(files[0]).names, spec)
            return None if column is None else _parquet_ids(files[0], column)
        import pyarrow.dataset as ds

        column = _case_id_source(ds.dataset(files, format="parquet").schema.names, spec)
        return None if column is None else _dataset_ids(files, column)
    if len(files) == 1 and _iomod()._kind(files[0]) == "ipc":
        return _ipc_ids(files[0], spec)
    return None


def _cleaned(columns):
    """The pre-pass's ids: each raw column cleaned exactly as :func:`_mark_duplicates` cleans it."""
    try:
        for col in columns:
            yield _text_column(col, len(col))
    except (pa.ArrowException, OSError, DataError, ValueError) as e:
        raise _ScanError(str(e)) from e


def repeat_rows(source, *, schema=None, spill_dir=None, n_rows: int | None = None) -> tuple[np.ndarray, int]:
    """The rows of ``source`` whose ``case_id`` repeats an earlier row's (``DUPLICATE_CASE``).

    What the duplicate pass of :func:`map_cases` marks, found by the bounded-memory pre-pass
    (:func:`dipengine.duplicates.find_repeats`) over the ``case_id`` column alone; a Parquet file,
    directory or glob, or an Arrow IPC file, as :func:`map_cases` reads it; ``n_rows`` (its row
    count, when known) sizes the spill partitions.

    Returns
    -------
    rows : numpy.ndarray
        int64, sorted, 0-based rows of the whole source.
    n_rows : int
        Rows of the source.

    Raises
    ------
    DataError
        The source cannot be read this way (another format, a computed ``case_id``).
    """
    from dipengine.duplicates import find_repeats
    from dipengine.schemas import load_schema

    label = str(source)
    try:
        columns = _case_id_columns(source, load_schema(schema), False)
        if columns is None:
            raise DataError("the case_id column cannot be read alone (a Parquet or Arrow IPC source is needed)",
                            file=label, column="case_id")
        return find_repeats(_cleaned(columns), n_rows, spill_dir=spill_dir)
    except _ScanError as e:
        raise DataError(f"cannot read the case ids ({e})", file=label, column="case_id") from None


def _duplicate_marker(mode, scan, total, label, spill_dir):
    """The run's duplicate pass: a :class:`~dipengine.duplicates.RepeatMarker` from the pre-pass
    when ``mode`` asks for it and ``scan()`` (:func:`_case_id_columns`) can read the ids, else a
    ``SeenSet`` sized for ``total`` rows."""
    from dipengine._libs.validate import SeenSet

    if mode == "spill" or (mode == "auto" and total is not None and total >= DUPLICATE_SPILL_ROWS):
        from dipengine.duplicates import RepeatMarker, find_repeats

        try:
            columns = scan()
        except (pa.ArrowException, OSError, DataError, ValueError):
            columns = None
        if columns is not None:
            try:
                rows, n = find_repeats(_cleaned(columns), total, spill_dir=spill_dir)
            except _ScanError:  # not this way: the run reads the source and reports what is wrong
                rows, n = None, None
            if rows is not None and n == total:
                return RepeatMarker(rows, n, label)
    seen = SeenSet()
    seen.reserve(total, 0)
    return seen


def _normalise_batch(batch: pa.RecordBatch, ctx: _Context, marked=None, lean: bool = False) -> pa.RecordBatch:
    """Normalise and validate one batch (``marked``: :func:`_mark_duplicates` of it, else done here).

    With ``lean`` the result has :data:`LEAN_SCHEMA` (plus the extra columns): every column is
    still validated, so ``reason``/``reason_detail`` are those of the full table.
    """
    n = batch.num_rows
    names = batch.schema.names

    def col(name):
        return batch.column(names.index(name)) if name in names else None

    checks = _Checks(n)
    missing = {}  # column -> mask of rows where the required value is missing

    # --- identifiers and enumerations
    case_id, dup, valid = marked if marked is not None else _mark_duplicates(batch, ctx)
    checks.value(R.DUPLICATE_CASE, dup.view(bool), "case_id", case_id, "was seen before in this run")
    missing["case_id"] = ~valid.view(bool)

    hospital_id = _enum_column(col("hospital_id"), n, "hospital_id", None, checks, cache=ctx.cache)
    missing["hospital_id"] = hospital_id.missing()
    if ctx.hospital_ids is not None:
        unknown_u = _np_bool(pc.invert(pc.is_in(hospital_id.u, ctx.hospital_ids))) & _np_bool(
            pc.is_valid(hospital_id.u))
        checks.value(R.UNKNOWN_HOSPITAL, hospital_id.per_row(unknown_u), "hospital_id", hospital_id.at,
                     "is not in the hospital registry")
    values = ctx.values.get
    insurance_type = _enum_column(col("insurance_type"), n, "insurance_type", INSURANCE_TYPES, checks,
                                  case="lower", cache=ctx.cache, values=values("insurance_type"))
    missing["insurance_type"] = insurance_type.missing()
    person_type = _enum_column(col("person_type"), n, "person_type", PERSON_TYPES, checks, "other", "lower",
                               cache=ctx.cache, values=values("person_type"))
    remote_filing = _enum_column(col("remote_filing"), n, "remote_filing", REMOTE_FILINGS, checks, "none",
                                 "lower", cache=ctx.cache, values=values("remote_filing"))
    sex = _enum_column(col("sex"), n, "sex", SEXES, checks, case="upper", cache=ctx.cache, values=values("sex"))
    insured_region = _enum_column(col("insured_region"), n, "insured_region", None, checks, cache=ctx.cache,
                                  pattern=r"^[0-9]{6}$", pattern_text="is not a 6-digit region code")
    missing["insured_region"] = insured_region.missing()

    # --- integers
    ints = {}
    for name in ("age", "age_days", "los", "discharge_mode"):
        value, present, bad = _int_column(col(name), n)
        ints[name] = (value, present, bad)
        if bad.any():
            checks.value(R.BAD_VALUE, bad, name, lambda idx, name=name: _raw_text(col(name).take(pa.array(idx))),
                         "is not an integer")
    age, age_present, age_bad = ints["age"]
    missing["age"] = ~age_present
    ok = age_present & ~age_bad
    checks.value(R.BAD_VALUE, ok & ((age < 0) | (age > MAX_AGE)), "age",
                 lambda idx: _raw_text(col("age").take(pa.array(idx))),
                 f"is outside 0..{MAX_AGE} years")
    ad, ad_present, ad_bad = ints["age_days"]
    checks.add(R.BAD_VALUE, ad_present & ~ad_bad & ((ad < 0) | (ad > MAX_AGE_DAYS)),
               lambda idx: _cat("age_days: ", _quote(_raw_text(col("age_days").take(pa.array(idx)))),
                                f" is outside 0..{MAX_AGE_DAYS} days"))
    dm, dm_present, dm_bad = ints["discharge_mode"]
    top = len(_DM_LISTED) - 1
    dm_ok = ~dm_present | dm_bad | ((dm >= 0) & (dm <= top) & _DM_LISTED[np.clip(dm, 0, top)])
    checks.add(R.BAD_VALUE, ~dm_ok,
               lambda idx: _cat("discharge_mode: ", _quote(_raw_text(col("discharge_mode").take(pa.array(idx)))),
                                " is not one of 1, 2, 3, 4, 5, 9"))
    dm_out = np.where(dm_present & ~dm_bad, dm, 1)
    dm_fits = (dm_out >= -128) & (dm_out <= 127)

    # --- dates and length of stay
    admit, admit_present, admit_bad = _date_column(col("admit_date"), n)
    disch, disch_present, disch_bad = _date_column(col("discharge_date"), n)
    missing["admit_date"] = ~admit_present
    missing["discharge_date"] = ~disch_present
    for name, bad in (("admit_date", admit_bad), ("discharge_date", disch_bad)):
        checks.value(R.BAD_DATES, bad, name, lambda idx, name=name: _raw_text(col(name).take(pa.array(idx))),
                     "is not a date (YYYY-MM-DD)")
    both = admit_present & ~admit_bad & disch_present & ~disch_bad

    def date_text(days, idx):
        return pa.array(days[idx].astype(np.int32), pa.int32()).cast(pa.date32()).cast(pa.string())

    before = both & (disch < admit)
    checks.add(R.BAD_DATES, before, lambda idx: _cat(
        "discharge_date: ", date_text(disch, idx), " is before admit_date ", date_text(admit, idx)))
    if ctx.period is not None:
        lo, hi = ctx.period
        outside = disch_present & ~disch_bad & ((disch < lo) | (disch > hi))
        checks.add(R.BAD_DATES, outside, lambda idx: _cat(
            "discharge_date: ", date_text(disch, idx), f" is outside the period {ctx.period_text}"))
    derived = np.maximum(disch - admit, 1)
    derivable = both & ~before
    los_v, los_present, los_bad = ints["los"]
    los_ok = los_present & ~los_bad
    checks.add(R.BAD_VALUE, los_ok & (los_v < 0), lambda idx: _cat(
        "los: ", _quote(_raw_text(col("los").take(pa.array(idx)))), " is negative"))
    inconsistent = los_ok & (los_v >= 0) & derivable & (np.abs(los_v - derived) > LOS_TOLERANCE_DAYS)
    checks.add(R.BAD_DATES, inconsistent, lambda idx: _cat(
        "los: ", pa.array(los_v[idx]).cast(pa.string()), " is inconsistent with the dates (",
        pa.array(derived[idx]).cast(pa.string()), " days)"))
    los_out = np.where(los_ok, los_v, derived)
    los_valid = los_ok | derivable

    # --- codes
    dx_u, dx_idx, dx_ind = _encode(col("main_dx"))
    dx_norm, malformed_u, unlisted_u = ctx.cache.get("dx", dx_u, lambda u: _normalise_codes(u, "dx", ctx.dx_list))
    main_dx = _Coded(dx_norm, dx_idx, dx_ind)
    missing["main_dx"] = main_dx.missing()
    checks.value(R.INVALID_DX, main_dx.per_row(malformed_u), "main_dx", main_dx.at, _DX_FORM)
    checks.value(R.INVALID_DX, main_dx.per_row(unlisted_u), "main_dx", main_dx.at, "is not in the code list")
    proc_col = col("main_proc")
    if proc_col is None or pa.types.is_null(proc_col.type):
        main_proc = _Coded(pa.nulls(1, pa.string()), np.full(n, -1, np.int32))
    else:
        pu, pidx, pind = _encode(proc_col)
        pu, malformed_u, unlisted_u = ctx.cache.get("proc", pu, lambda u: _normalise_codes(u, "proc", ctx.proc_list))
        main_proc = _Coded(pu, pidx, pind)
        checks.value(R.INVALID_PROC, main_proc.per_row(malformed_u), "main_proc", main_proc.at, _PROC_FORM)
        checks.value(R.INVALID_PROC, main_proc.per_row(unlisted_u), "main_proc", main_proc.at,
                     "is not in the code list")
    odx = _code_list(col("other_dx"), n, "dx", ctx.dx_list, ctx.cache)
    _list_defects(checks, WARNING, "other_dx", *odx[1:], n, "dx")
    ops = _code_list(col("other_procs"), n, "proc", ctx.proc_list, ctx.cache)
    _list_defects(checks, R.INVALID_PROC, "other_procs", *ops[1:], n, "proc")

    # --- money
    fen = {}
    for name in MONEY:
        c = col(name)
        if c is None:
            f, status = np.zeros(n, np.int64), np.full(n, NULL, np.int8)
        else:
            f, status = _fen_column(c)
            raw = (lambda idx, c=c: _raw_text(c.take(pa.array(idx))))
            checks.value(R.BAD_AMOUNT, status == MALFORMED, name, raw, "is not a number")
            checks.value(R.BAD_AMOUNT, status == NEGATIVE, name, raw, "is negative")
            checks.value(R.BAD_AMOUNT, (status == TOO_LARGE) | ((status == OK) & (f > MAX_CASE_FEN)), name, raw,
                         f"exceeds the limit of {MAX_CASE_FEN // 100:,} yuan per case")
        fen[name] = (f, status)
    missing["total_cost"] = fen["total_cost"][1] == NULL
    has_value = {k: (s == OK) | (s == NEGATIVE) for k, (f, s) in fen.items()}
    t = fen["total_cost"][0]
    paid = fen["fund_paid"][0] + fen["patient_paid"][0]
    other = has_value["other_fund_paid"]
    if other.any():
        paid = paid + np.where(other, fen["other_fund_paid"][0], 0)
    gap = paid - t
    np.abs(gap, out=gap)
    unbalanced = gap > CONSISTENCY_FEN
    unbalanced &= has_value["fund_paid"]
    unbalanced &= has_value["patient_paid"]
    unbalanced &= has_value["total_cost"]
    checks.add(R.BAD_AMOUNT, unbalanced, lambda idx: _cat(
        pc.if_else(pa.array(other[idx]), "fund_paid + other_fund_paid + patient_paid = ", "fund_paid + patient_paid = "),
        _yuan_text(paid[idx]), " differs from total_cost = ", _yuan_text(t[idx]), " by more than 1 yuan"))
    for name in ("out_of_catalogue_cost", "class_b_cost"):
        over = (fen[name][1] == OK) & (fen["total_cost"][1] == OK) & (fen[name][0] > t)
        checks.add(R.BAD_AMOUNT, over, lambda idx, name=name: _cat(
            f"{name}: ", _yuan_text(fen[name][0][idx]), " exceeds total_cost ", _yuan_text(t[idx])))

    # --- missing required values
    for name in REQUIRED:
        checks.add(R.MISSING_FIELD, missing[name], lambda idx, name=name: pa.array(
            np.full(len(idx), f"{name}: missing (required)", dtype=object), pa.string()))

    reason, reason_detail = checks.result()

    def fen_array(name, fill_zero=False):
        f, status = fen[name]
        keep = has_value[name]
        if fill_zero:
            return pa.array(np.where(keep, f, 0), pa.int64())
        return pa.array(f, pa.int64(), mask=~keep if (~keep).any() else None)

    def int_array(values, valid_mask, name=None):
        source = col(name) if name is not None else None
        if (isinstance(source, pa.Array) and source.type == pa.int32() and len(source) == n
                and not ints[name][2].any()):
            return source  # every present value kept as it is: the input array is the output
        return pa.array(values.astype(np.int32), pa.int32(), mask=~valid_mask if (~valid_mask).any() else None)

    def lean_discharge_mode():
        source = col("discharge_mode")
        if isinstance(source, pa.Array) and source.type == pa.int8() and source.null_count == 0:
            return source  # every value present and well formed: the input array is the output
        return pa.array(np.where(dm_fits, dm_out, 1).astype(np.int8))  # the grouper's default for null

    extra_names = extra_columns(batch.schema)
    extras = [batch.column(names.index(e)) for e in extra_names]
    ints_out = [int_array(np.clip(los_out, -2**31, 2**31 - 1), los_valid),
                int_array(age, age_present & ~age_bad, "age"), int_array(ad, ad_present & ~ad_bad, "age_days")]
    if lean:
        arrays = [
            case_id, _dict_array(main_dx), _dict_array(main_proc),
            _list_array(*odx[:3], dictionary=True), _list_array(*ops[:3], dictionary=True),
            fen_array("total_cost", fill_zero=True),
            lean_discharge_mode(),
            *ints_out, reason, reason_detail,
        ]
        schema = LEAN_SCHEMA
        for e in extra_names:
            schema = schema.append(batch.schema.field(e))
        return pa.RecordBatch.from_arrays(arrays + extras, schema=schema)

    discharge_mode = pa.array(np.where(dm_fits, dm_out, 0).astype(np.int8), mask=~dm_fits if (~dm_fits).any()
                              else None)
    admit_arr = pa.array(admit.astype(np.int32), pa.int32(), mask=~(admit_present & ~admit_bad)).cast(pa.date32())
    disch_arr = pa.array(disch.astype(np.int32), pa.int32(), mask=~(disch_present & ~disch_bad)).cast(pa.date32())
    arrays = [
        case_id, hospital_id.rows(), _text_column(col("patient_id"), n), insurance_type.rows(), person_type.rows(),
        insured_region.rows(), remote_filing.rows(), sex.rows(),
        ints_out[1], ints_out[2], ints_out[0],
        admit_arr, disch_arr, discharge_mode, main_dx.rows(), main_proc.rows(),
        _list_array(*odx[:3], dictionary=False), _list_array(*ops[:3], dictionary=False),
        fen_array("total_cost", fill_zero=True), fen_array("fund_paid"), fen_array("patient_paid"),
        fen_array("out_of_catalogue_cost"), fen_array("class_b_cost"), fen_array("other_fund_paid"),
        reason, reason_detail,
    ]
    return pa.RecordBatch.from_arrays(arrays + extras, schema=output_schema(batch.schema))


def _yuan_text(fen_values: np.ndarray) -> pa.Array:
    """Exact yuan text of int64 fen (``-1234`` -> ``-12.34``)."""
    fen_values = np.asarray(fen_values, dtype=np.int64)
    a = np.abs(fen_values)
    sign = pc.if_else(pa.array(fen_values < 0), "-", "")
    cents = pc.utf8_lpad(pa.array(a % 100).cast(pa.string()), width=2, padding="0")
    return _cat(sign, pa.array(a // 100).cast(pa.string()), ".", cents)


def extra_columns(schema: pa.Schema) -> list[str]:
    """Input columns carried through untouched (not contract §2 inputs, not an output name)."""
    taken = set(SCHEMA.names)
    return [n for n in schema.names if n not in INPUT_COLUMNS and n not in taken]


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """Schema of the normalised table for a given input schema (normalised columns, then extras)."""
    fields = list(SCHEMA)
    fields += [input_schema.field(n) for n in extra_columns(input_schema)]
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------
# sources and the public functions

def _open(source, batch_size, columns=None, prefetched=None, read_options=None):
    """(file label, schema, total rows, batch iterator) of any source :func:`io.read_table` takes.

    ``columns``: read only these (those present); the schema is still the whole input's.
    Low-cardinality text is read from Parquet as dictionaries (no per-row strings, no hashing).
    ``prefetched``: a :class:`ParquetPrefetch` of this single file, batch size and columns,
    already decoding (used when it opened the file; else the file is opened here).
    ``read_options``: ``encoding``/``sheet`` keywords for :func:`dipengine.io.read_table`.
    """
    files = _iomod().source_files(source)
    label = files[0] if len(files) == 1 else (str(source) if files else "input")
    if _is_parquet(source) and not read_options:
        pick = (lambda names: None if columns is None else [c for c in names if c in set(columns)])
        try:
            opened = None if prefetched is None or len(files) != 1 else prefetched.opened()
            if opened is not None:
                schema, total, batches = opened
            elif len(files) == 1:
                schema, total, batches = _parquet_batches(files[0], batch_size, pick)
            else:
                import pyarrow.dataset as ds

                first = ds.dataset(files[:1], format="parquet").schema
                fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(
                    dictionary_columns=_dictionary_columns(first)))
                # one schema for all files: a column all null in one file (type null) takes the others' type
                unified = pa.unify_schemas([ds.dataset([f], format=fmt).schema for f in files],
                                           promote_options="permissive")
                dataset = ds.dataset(files, format=fmt, schema=unified)
                schema, total = dataset.schema, dataset.count_rows()
                batches = dataset.scanner(columns=pick(schema.names), batch_size=batch_size).to_batches()
        except (pa.ArrowException, OSError) as e:
            for f in files:  # a CSV or workbook named .parquet: say what it looks like
                misnamed = _iomod()._misnamed(f, "parquet")
                if misnamed is not None:
                    raise misnamed from None
            raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=label) from None
        return label, schema, total, _guard(batches, label)
    try:
        table = _iomod().read_table(source, **(read_options or {}))
    except (pa.ArrowException, ValueError) as e:  # e.g. a pandas column mixing numbers and text
        raise DataError(f"cannot read the cases ({str(e).splitlines()[0]})", file=label) from None
    if columns is not None:
        table = table.select([c for c in table.column_names if c in set(columns)])
    return label, table.schema, table.num_rows, iter(table.to_batches(max_chunksize=batch_size))


def _read_options(encoding=None, sheet=None) -> dict:
    """Keywords of :func:`dipengine.io.read_table` for a text encoding or an .xlsx sheet."""
    return {k: v for k, v in (("encoding", encoding), ("sheet", sheet)) if v is not None}


def _open_mapped(source, batch_size, spec, encoding=None, sheet=None):
    """:func:`_open` for a source read through an input schema (``spec``, not the identity) or
    with a text encoding / sheet: the batches come out with the contract's column names."""
    from dipengine.schemas import nested_files, read_nested

    nested = nested_files(source, spec)
    if nested is not None:
        label = str(source)
        try:
            table = spec.apply(read_nested(nested, spec, **_read_options(encoding, sheet)))
        except (pa.ArrowException, ValueError) as e:
            raise DataError(f"cannot read the cases ({str(e).splitlines()[0]})", file=label) from None
        return label, table.schema, table.num_rows, iter(table.to_batches(max_chunksize=batch_size))
    if _is_parquet(source) and encoding is None and sheet is None:
        files = _iomod().source_files(source)
        if len(files) == 1:  # the code columns read as dictionaries under their source names
            label = files[0]
            try:
                plan = spec.plan(pq.read_schema(label).names)
                rename = {c: s for c, s in plan.items() if isinstance(s, str)}
                schema, total, batches = _parquet_batches(label, batch_size, lambda names: None, rename)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=label) from None
            return label, spec.apply_schema(schema), total, (spec.apply(b) for b in _guard(batches, label))
        label, schema, total, batches = _open(source, batch_size)
        return label, spec.apply_schema(schema), total, (spec.apply(b) for b in batches)
    label, schema, total, batches = _open(source, batch_size, read_options=_read_options(encoding, sheet))
    return label, spec.apply_schema(schema), total, (spec.apply(b) for b in batches)


def _guard(batches, label):
    """Re-raise read errors met while streaming as :class:`DataError` naming the file."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read dataset ({str(e).splitlines()[0]})", file=label) from None


def lean_columns(schema: pa.Schema) -> list[str]:
    """Input columns a lean read needs: all but ``patient_id`` (which nothing checks)."""
    return lean_columns_of(schema.names)


def default_workers() -> int:
    """Worker threads for batch work: ``OMP_NUM_THREADS`` if set, else the CPUs available (at most 8)."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


def worker_count(workers: int | None) -> int:
    """Threads for ``workers`` as :func:`map_cases` takes it: None -> :func:`default_workers`, else >= 1."""
    return default_workers() if workers is None else max(1, int(workers))


def map_cases(source, fn=None, hospitals=None, *, period=None, code_lists=None, progress=None,
              batch_size: int = _BATCH_SIZE, workers: int | None = 1, lean: bool = False,
              depth: int | None = None, schema=None, encoding: str | None = None,
              sheet=None, duplicates: str = "auto", spill_dir=None, repeats=None) -> Iterator:
    """Normalise the cases batch by batch and yield ``fn(batch)`` for each, in input order.

    The duplicate-``case_id`` pass runs on the batches one after the other, in input order (its
    state spans the run); the rest of each batch's work, ``fn`` included, runs on ``workers``
    threads (Arrow compute, numpy and the kernels release the GIL). Results do not depend on
    ``workers``, ``batch_size`` or ``duplicates``.

    Parameters
    ----------
    source, hospitals, period, code_lists, progress, schema, encoding, sheet
        As for :func:`read_cases`.
    fn : callable, optional
        Applied to each normalised batch in a worker thread (default: the batch itself).
    batch_size : int
        Rows per batch.
    workers : int or None
        Threads (None: :func:`default_workers`).
    lean : bool
        Batches of :data:`LEAN_SCHEMA` plus the extra columns (what the grouper reads); every
        column is still validated, ``patient_id`` is not read.
    depth : int, optional
        Batches read ahead of the consumer (default ``workers + 1``); more lets the workers run
        on while the consumer is busy elsewhere, at the cost of memory.
    duplicates : {"auto", "memory", "spill"}
        How repeated ``case_id`` rows are found. ``"memory"``: an in-memory set of every id seen
        (about 62 bytes per case). ``"spill"``: a pre-pass over the ``case_id`` column alone,
        through temporary files, before the first batch (memory grows with the repeats only;
        :func:`dipengine.duplicates.find_repeats`), when the source is a Parquet file, directory
        or glob or an Arrow IPC file; other sources keep the set. ``"auto"`` (default): the
        pre-pass from :data:`DUPLICATE_SPILL_ROWS` rows. The rows marked are the same.
    spill_dir : path, optional
        Where the pre-pass makes its temporary folder (default: :func:`tempfile.gettempdir`);
        it is removed when the pass ends.
    repeats : numpy.ndarray, optional
        int64, sorted: the rows of ``source`` (0-based) that repeat an earlier ``case_id``, found
        beforehand over a larger run of which ``source`` is a piece (:func:`repeat_rows`, then
        shifted to the piece; what the Dask engine does). Replaces the duplicate pass.
    """
    from dipengine.schemas import load_schema

    if duplicates not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_MODES)}, not {duplicates!r}")
    prefetched = None
    spec = load_schema(schema)
    mapped = not spec.identity or encoding is not None or sheet is not None
    if isinstance(source, ParquetPrefetch):
        prefetched, source = source, source.path
        if prefetched.batch_size != batch_size or prefetched.lean != lean or mapped:  # not these batches
            prefetched.close()
            prefetched = None
    try:
        ctx = _Context(hospitals, period, code_lists, spec)
        columns = None
        if mapped:
            label, in_schema, total, batches = _open_mapped(source, batch_size, spec, encoding, sheet)
        elif lean and _is_parquet(source):  # skip the columns nothing checks (files are read lazily)
            try:
                columns = lean_columns(pq.read_schema(_iomod().source_files(source)[0]))
            except (pa.ArrowException, OSError):
                columns = None  # _open reports it
        if not mapped:
            label, in_schema, total, batches = _open(source, batch_size, columns, prefetched)
    except BaseException:
        if prefetched is not None:
            prefetched.close()
        raise
    read_options = encoding is not None or sheet is not None

    def marker(label, total):
        if repeats is not None:
            from dipengine.duplicates import RepeatMarker

            rows = np.ascontiguousarray(repeats, dtype=np.int64)
            if total is None or (len(rows) and (rows[0] < 0 or rows[-1] >= total)):
                raise ValueError(f"repeats must be rows of the source (0 to {total}), got {rows[:1]}..{rows[-1:]}")
            return RepeatMarker(rows, total, label)
        return _duplicate_marker(duplicates, lambda: _case_id_columns(source, spec, read_options), total, label,
                                 spill_dir)

    try:
        yield from _map_batches(ctx, label, in_schema, total, batches, fn, progress, workers, lean, depth, marker)
    finally:
        if prefetched is not None:
            prefetched.close()


def _map_batches(ctx, label, schema, total, batches, fn, progress, workers, lean, depth, marker):
    """:func:`map_cases` once the source is open (``marker(label, total)``: the duplicate pass)."""
    check_schema(schema, label)
    ctx.seen = marker(label, total)  # the pre-pass, if any, runs here: before the first batch
    workers = worker_count(workers)

    def work(batch, marked):
        try:
            out = _normalise_batch(batch, ctx, marked, lean)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(f"cannot read the cases ({str(e).splitlines()[0]})", file=label) from None
        return out if fn is None else fn(out)

    done = 0
    if workers == 1:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            result = work(batch, None)
            done += batch.num_rows
            if progress is not None:
                progress(done, total)
            yield result
        return

    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # A feeder thread reads the batches and runs the ordered duplicate pass, then hands each
    # batch to the pool; this generator yields the results in order. So reading, the batch
    # work and the caller's own work (e.g. writing) all overlap.
    ready: queue.Queue = queue.Queue(maxsize=max(1, workers + 1 if depth is None else int(depth)))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def feed(pool):
        try:
            for batch in batches:
                if stop.is_set():
                    return
                if batch.num_rows == 0:
                    continue
                try:
                    marked = _mark_duplicates(batch, ctx)  # sequential: input order decides repeats
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise DataError(f"cannot read the cases ({str(e).splitlines()[0]})", file=label) from None
                if not put((pool.submit(work, batch, marked), batch.num_rows)):
                    return
            put((end, 0))
        except BaseException as e:  # handed to the consumer
            put((e, 0))

    with ThreadPoolExecutor(workers, thread_name_prefix="dipengine-cases") as pool:
        feeder = threading.Thread(target=feed, args=(pool,), name="dipengine-feeder", daemon=True)
        feeder.start()
        try:
            while True:
                item, rows = ready.get()
                if item is end:
                    break
                if isinstance(item, BaseException):
                    raise item
                result = item.result()
                done += rows
                if progress is not None:
                    progress(done, total)
                yield result
        finally:
            stop.set()
            while feeder.is_alive():
                try:
                    item, _ = ready.get(timeout=0.05)
                    if hasattr(item, "cancel"):
                        item.cancel()
                except queue.Empty:
                    pass
            feeder.join()
            while not ready.empty():
                item, _ = ready.get_nowait()
                if hasattr(item, "cancel"):
                    item.cancel()


def _is_parquet(source) -> bool:
    try:
        files = _iomod().source_files(source)
    except DataError:
        return False  # _open reports it
    return bool(files) and all(f.lower().endswith((".parquet", ".pq")) for f in files)


def iter_cases(source, hospitals=None, *, period=None, code_lists=None, progress=None,
               batch_size: int = _BATCH_SIZE, workers: int | None = 1,
               lean: bool = False, schema=None, encoding: str | None = None,
               sheet=None, duplicates: str = "auto", spill_dir=None, repeats=None) -> Iterator[pa.RecordBatch]:
    """Stream the normalised case table batch by batch (see :func:`read_cases`).

    The duplicate-``case_id`` state is carried across batches, so the result does not depend
    on ``batch_size`` (nor on ``workers`` or ``duplicates``, see :func:`map_cases`, which also
    describes ``spill_dir`` and ``repeats``). The file-level checks run before the first batch is yielded.

    Yields
    ------
    pyarrow.RecordBatch
        Normalised rows, in input order, with the schema of :func:`output_schema` (with
        ``lean``: :data:`LEAN_SCHEMA` plus the extra columns).
    """
    return map_cases(source, None, hospitals, period=period, code_lists=code_lists, progress=progress,
                     batch_size=batch_size, workers=workers, lean=lean, schema=schema, encoding=encoding,
                     sheet=sheet, duplicates=duplicates, spill_dir=spill_dir, repeats=repeats)


def read_cases(source, hospitals=None, *, period=None, code_lists=None, progress=None,
               workers: int | None = None, schema=None, encoding: str | None = None,
               sheet=None, duplicates: str = "auto", spill_dir=None) -> pa.Table:
    """Read, normalise and validate cases (contract §2, reasons of §7).

    Parameters
    ----------
    source : path, directory, glob, list of paths, pandas.DataFrame, pyarrow.Table or RecordBatch
        Parquet, CSV (header row), .xlsx or Arrow IPC; a directory or glob is a Parquet dataset
        (with ``schema="nhsa"``, a directory holding a ``setlinfo`` table is the nested 4101 shape).
    hospitals : path or pyarrow.Table, optional
        The registry (:func:`dipengine.hospitals.read_hospitals`); unknown ``hospital_id`` ->
        ``UNKNOWN_HOSPITAL``.
    period : str, optional
        ``"YYYY"`` or ``"YYYY-MM"``; a ``discharge_date`` outside it -> ``BAD_DATES``.
    code_lists : dict, optional
        ``{"dx": ..., "proc": ...}``, each a TSV path (``code<TAB>name``) or a sequence of codes;
        codes not listed -> ``INVALID_DX`` / ``INVALID_PROC`` (secondary diagnoses: a warning).
    progress : callable, optional
        ``progress(done_rows, total_rows)``, called once per batch.
    workers : int, optional
        Threads validating batches (default: :func:`default_workers`); the result never
        depends on it (see :func:`map_cases`).
    schema : str, path or InputSchema, optional
        The source's layout (:func:`dipengine.schemas.load_schema`): ``"contract"`` (default),
        ``"nhsa"`` (the national settlement-list fields), or a region's own schema folder.
    encoding : str, optional
        Text encoding of a CSV input (default: detected, UTF-8 with or without BOM, or GB18030).
    sheet : str or int, optional
        Sheet of an .xlsx input (default: the first).
    duplicates : {"auto", "memory", "spill"}, optional
        How repeated ``case_id`` rows are found (same rows either way; see :func:`map_cases`).
    spill_dir : path, optional
        Folder for the temporary files of the bounded-memory duplicate pass.

    Returns
    -------
    pyarrow.Table
        The normalised case table (docs/architecture.md): one row per input row, in order;
        money in int64 fen (``*_fen``), dates date32, ages/los int32, ``discharge_mode`` int8,
        ``reason``/``reason_detail`` strings; extra input columns after them, untouched.

    Raises
    ------
    DataError
        A required column is missing, a file cannot be read, or a column has a type that cannot
        be read as its contract type.
    """
    batches = list(iter_cases(source, hospitals, period=period, code_lists=code_lists, progress=progress,
                              workers=workers, schema=schema, encoding=encoding, sheet=sheet,
                              duplicates=duplicates, spill_dir=spill_dir))
    if batches:
        return pa.Table.from_batches(batches).combine_chunks()
    from dipengine.schemas import load_schema

    spec = load_schema(schema)
    if spec.identity and encoding is None and sheet is None:
        label, in_schema, _, _ = _open(source, _BATCH_SIZE)
    else:
        label, in_schema, _, _ = _open_mapped(source, _BATCH_SIZE, spec, encoding, sheet)
    check_schema(in_schema, label)
    return output_schema(in_schema).empty_table()
