"""Input schemas: how a source's fields map to the contract's case columns (contract §2).

A schema is **data** (CSV tables shipped in ``dipengine/data/schemas/``, or a region's own):

- ``fields.csv`` (``column,source,note``): for each contract column, the source fields it is
  read from, in priority order. A source ``a+b+c`` is a sum of money fields (yuan, summed exactly
  in fen; the parts are kept as extra columns, so the per-fund detail survives). The first source
  the input has wins; a contract column present under its own name always wins.
- ``code_values.csv`` (``column,code,value,label``): code values of an enumeration mapped to the
  contract's values (``310`` -> ``employee``, ``1`` -> ``M``); a code with an empty ``value`` is kept
  and reported as ``BAD_VALUE`` with its ``label``. Used by the reader on the distinct values of
  each column (never per row); the contract's own values stay valid.
- ``nested.csv`` (``table,role,source,note``, optional): the nested 4101 shape, a folder of
  ``setlinfo``/``diseinfo``/``oprninfo``/``payinfo``/``iteminfo`` tables joined on the case key.

``contract`` (the default) is today's columns with the shared code values; ``nhsa`` is the
national settlement-list (医保结算清单, 4101/4101A) extract of ``../shared/spec/intake.md``.
Everything here is vectorised: a batch is renamed and its sums computed with Arrow and numpy.
"""
from __future__ import annotations

import csv
import functools
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine.errors import DataError
from dipengine.money import fen_to_decimal, fen_to_yuan_text

SHIPPED = ("contract", "nhsa")
"""Schema names shipped with the package (``--schema NAME``)."""

CONTRACT_COLUMNS = (
    "case_id", "hospital_id", "patient_id", "insurance_type", "person_type", "insured_region", "remote_filing",
    "sex", "age", "age_days", "admit_date", "discharge_date", "los", "discharge_mode", "main_dx", "other_dx",
    "main_proc", "other_procs", "total_cost", "fund_paid", "other_fund_paid", "patient_paid",
    "out_of_catalogue_cost", "class_b_cost",
)
"""Contract §2 input columns (with the ``other_fund_paid`` extension) a schema may map to."""

MONEY_COLUMNS = frozenset(("total_cost", "fund_paid", "other_fund_paid", "patient_paid", "out_of_catalogue_cost",
                           "class_b_cost"))
ENUM_COLUMNS = ("insurance_type", "person_type", "remote_filing", "sex", "fund_pay_type")
NESTED_TABLES = ("setlinfo", "diseinfo", "oprninfo", "payinfo", "iteminfo")
_NESTED_ROLES = {
    "setlinfo": {"file"},
    "diseinfo": {"file", "key", "code", "main_flag", "type", "type_value"},
    "oprninfo": {"file", "key", "code", "main_flag"},
    "payinfo": {"file", "key", "fund_type", "amount"},
    "iteminfo": {"file", "key", "total_cost", "class_b_cost", "out_of_catalogue_cost"},
}
_FUND_CLASSES = ("fund_paid", "other_fund_paid", "patient_paid")
_TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt", ".xlsx", ".xlsm", ".arrow", ".feather")


@dataclass(frozen=True)
class CodeValues:
    """One enumeration's code table: ``codes`` -> ``values`` (null: kept, reported with ``labels``)."""

    codes: pa.Array
    values: pa.Array
    labels: pa.Array

    def lookup(self, u: pa.Array) -> tuple[pa.Array, np.ndarray, pa.Array]:
        """Per distinct trimmed value ``u``: (mapped value or the value itself, listed-but-unmapped
        bool, label or null). Runs on dictionaries, never per row."""
        at = pc.index_in(u, value_set=self.codes)
        mapped = pc.take(self.values, at)
        listed = pc.is_valid(at)
        kept = pc.and_(listed, pc.is_null(mapped))
        out = pc.if_else(pc.is_valid(mapped), mapped, u)
        kept_np = np.asarray(pc.fill_null(kept, False).to_numpy(zero_copy_only=False), bool)
        return out, kept_np, pc.take(self.labels, at)

    @functools.cached_property
    def _table(self) -> dict:
        return {c: (v, label) for c, v, label in zip(self.codes.to_pylist(), self.values.to_pylist(),
                                                      self.labels.to_pylist())}

    def map_one(self, v: str):
        """(mapped value, label of a kept code or None) of one trimmed value (the row twin of
        :meth:`lookup`)."""
        hit = self._table.get(v)
        if hit is None:
            return v, None
        value, label = hit
        return (v, label or "a listed code") if value is None else (value, None)


@dataclass(frozen=True)
class InputSchema:
    """A source layout: field sources per contract column, code values, the nested shape."""

    name: str
    fields: tuple = ()  # (column, tuple of source names, line) in priority order
    values: dict = field(default_factory=dict)  # column -> CodeValues
    nested: dict = field(default_factory=dict)  # table -> role -> tuple of names
    files: tuple = ()  # (path, sha256) of the tables it was read from

    @property
    def identity(self) -> bool:
        """True when batches pass through unchanged (only the code values apply)."""
        return not self.fields

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for path, digest in self.files:
            h.update(f"{Path(path).name}={digest}\n".encode())
        return h.hexdigest()

    # ---- flat extracts

    def plan(self, names) -> dict:
        """For an input with columns ``names``: contract column -> source (a name, or a tuple of
        the parts of a sum that the input has). Columns the input lacks are left out."""
        have = set(names)
        plan: dict = {}
        for column, sources, _ in self.fields:
            if column in plan:
                continue
            if column in have:
                plan[column] = column
                continue
            if len(sources) == 1:
                if sources[0] in have:
                    plan[column] = sources[0]
            else:
                parts = tuple(p for p in sources if p in have)
                if parts:
                    plan[column] = parts
        for column in CONTRACT_COLUMNS:  # a contract name the table does not list still counts
            if column in have and column not in plan:
                plan[column] = column
        return plan

    def output_names(self, names) -> list[str]:
        """Column names of :meth:`apply` for an input with columns ``names``."""
        plan = self.plan(names)
        renamed = {s: c for c, s in plan.items() if isinstance(s, str)}
        # a contract column under its own name is planned from itself, so no name is taken twice
        return [renamed.get(n, n) for n in names] + [c for c, s in plan.items() if isinstance(s, tuple)]

    def apply(self, batch: pa.RecordBatch | pa.Table):
        """The batch with contract column names: sources renamed, sums computed (exact fen,
        written back as ``decimal128(18, 2)`` yuan, or as text when a part is not a number, so the
        reader reports that part), sum parts and other fields carried through."""
        if self.identity:
            return batch
        names = batch.schema.names
        plan = self.plan(names)
        out_names = self.output_names(names)
        arrays = [batch.column(i) for i in range(batch.num_columns)]
        for column, source in plan.items():
            if isinstance(source, tuple):
                arrays.append(_money_sum([batch.column(names.index(p)) for p in source], source))
        if isinstance(batch, pa.Table):
            return pa.Table.from_arrays(arrays, names=out_names)
        return pa.RecordBatch.from_arrays(arrays, names=out_names)

    def apply_schema(self, schema: pa.Schema) -> pa.Schema:
        """The Arrow schema :meth:`apply` gives for batches of ``schema`` (sums typed as text)."""
        if self.identity:
            return schema
        empty = self.apply(schema.empty_table())
        return empty.schema

    # ---- writing a source layout (the synthetic twin of a bureau extract)

    def export(self, table: pa.Table, *, chinese: bool = False, other_fund_part: str | None = None) -> pa.Table:
        """A contract-format case table written in this layout (the inverse of :meth:`apply`).

        Each contract column becomes its first listed source field (with ``chinese``, the first
        Chinese header); a sum takes the whole amount in its first part (``other_fund_part``
        names another part for ``other_fund_paid``, e.g. ``hifmi_pay`` 大病); ``insurance_type``
        and ``sex`` are written as their first national code (``employee`` -> ``310``,
        ``M`` -> ``1``); dates become datetimes (``YYYY-MM-DD HH:MM:SS``). Reading the result
        with this schema gives back the contract table's cases.
        """
        if self.identity:
            return table
        first: dict = {}
        for column, sources, _ in self.fields:
            if column in first or sources == (column,):
                continue
            if all((not p.isascii()) == chinese for p in sources):
                first[column] = sources
        arrays, names = [], []
        for name in table.column_names:
            col = table[name]
            sources = first.get(name)
            if sources is None:
                arrays.append(col)
                names.append(name)
                continue
            target = sources[0]
            if name == "other_fund_paid" and other_fund_part in sources:
                target = other_fund_part
            if name in ("insurance_type", "sex") and name in self.values:
                col = _national_codes(col, self.values[name])
            elif name in ("admit_date", "discharge_date"):
                time = " 08:30:00" if name == "admit_date" else " 10:00:00"
                text = col if pa.types.is_string(col.type) else col.cast(pa.string())
                col = pc.binary_join_element_wise(text, time, "")
            arrays.append(col)
            names.append(target)
        return pa.Table.from_arrays(arrays, names=names)

    def apply_row(self, row: dict) -> dict:
        """One case as a dict (``estimate``'s JSON) with the contract's keys: the row twin of
        :meth:`apply` in plain Python (values kept as given; sums as exact yuan text)."""
        if self.identity:
            return dict(row)
        from dipengine.case import _one_fen
        from dipengine.money import MALFORMED, NEGATIVE, OK, TOO_LARGE

        plan = self.plan(list(row))
        renamed = {s: c for c, s in plan.items() if isinstance(s, str)}
        out = {renamed.get(k, k): v for k, v in row.items()}
        for column, parts in plan.items():
            if not isinstance(parts, tuple):
                continue
            total, any_value, bad = 0, False, None
            for p in parts:
                fen, status = _one_fen(row[p])
                if status in (OK, NEGATIVE):
                    total += fen
                    any_value = True
                elif status in (MALFORMED, TOO_LARGE) and bad is None:
                    bad = f"{p}={str(row[p]).strip()}"
            if bad is not None:
                out[column] = bad
            elif any_value:
                out[column] = fen_to_yuan_text(total)
            else:
                out[column] = None
        return out


def _national_codes(col, cv: CodeValues):
    """Contract values as their first numeric code of ``cv`` (``employee`` -> ``310``)."""
    back: dict = {}
    for code, value in zip(cv.codes.to_pylist(), cv.values.to_pylist()):
        if value is not None and code.isdigit():
            back.setdefault(value, code)
    keys = pa.array(list(back), pa.string())
    at = pc.index_in(col, value_set=keys)
    return pc.if_else(pc.is_valid(at), pc.take(pa.array(list(back.values()), pa.string()), at), col)


def _money_sum(parts: list, names: tuple) -> pa.Array:
    """Exact sum of yuan columns as decimal128(18, 2), null where every part is null. A part that
    is not a number (or too large) makes the cell the text ``name=value`` of that part instead,
    so the reader reports it (``BAD_AMOUNT``) with the field and value."""
    from dipengine.money import MALFORMED, NEGATIVE, OK, TOO_LARGE, yuan_to_fen

    n = len(parts[0])
    total = np.zeros(n, np.int64)
    any_value = np.zeros(n, bool)
    bad_text = None
    for col, name in zip(parts, names):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        fen, status = yuan_to_fen(col)
        good = (status == OK) | (status == NEGATIVE)
        total += np.where(good, fen, 0)
        any_value |= good
        bad = (status == MALFORMED) | (status == TOO_LARGE)
        if bad.any():
            labelled = pc.binary_join_element_wise(f"{name}=", _text(col), "")
            if bad_text is None:
                bad_text = pa.nulls(n, pa.string())
            bad_text = pc.if_else(pa.array(bad & ~np.asarray(pc.is_valid(bad_text), bool)), labelled, bad_text)
    result = fen_to_decimal(total, any_value)
    if bad_text is None:
        return result
    return pc.if_else(pc.is_valid(bad_text), bad_text, result.cast(pa.string()))


# --------------------------------------------------------------------------------------------
# loading


def _read_csv_rows(path: Path, required: tuple) -> list[tuple[int, dict]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError("schema table lacks a column", file=path, column=missing[0])
            return [(i + 2, {k: (v or "").strip() for k, v in r.items() if k is not None}) for i, r in enumerate(reader)]
    except OSError as e:
        raise DataError(f"cannot read schema table ({e.strerror or e})", file=path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"schema table is not UTF-8 ({e.reason} at byte {e.start})", file=path) from None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _allowed_values() -> dict:
    from dipengine.reader import INSURANCE_TYPES, PERSON_TYPES, REMOTE_FILINGS, SEXES

    return {"insurance_type": INSURANCE_TYPES, "person_type": PERSON_TYPES, "remote_filing": REMOTE_FILINGS,
            "sex": SEXES, "fund_pay_type": _FUND_CLASSES}


def _load_values(path: Path) -> dict:
    rows = _read_csv_rows(path, ("column", "code", "value"))
    allowed = _allowed_values()
    by_column: dict = {}
    for line, r in rows:
        column = r["column"]
        if column not in ENUM_COLUMNS:
            raise DataError(f"line {line}: not an enumeration of the case table ({', '.join(ENUM_COLUMNS)})",
                            file=path, column="column", value=column)
        if not r["code"]:
            raise DataError(f"line {line}: empty code", file=path, column="code")
        if r["value"] and r["value"] not in allowed[column]:
            raise DataError(f"line {line}: not a value of {column} ({', '.join(allowed[column])})", file=path,
                            column="value", value=r["value"])
        codes = by_column.setdefault(column, {})
        if r["code"] in codes:
            raise DataError(f"line {line}: code listed twice", file=path, column="code", value=r["code"])
        codes[r["code"]] = (r["value"] or None, r.get("label") or None)
    return {
        column: CodeValues(pa.array(list(codes), pa.string()), pa.array([v for v, _ in codes.values()], pa.string()),
                           pa.array([label for _, label in codes.values()], pa.string()))
        for column, codes in by_column.items()
    }


def _load_fields(path: Path) -> tuple:
    out = []
    for line, r in _read_csv_rows(path, ("column", "source")):
        column, source = r["column"], r["source"]
        if column not in CONTRACT_COLUMNS:
            raise DataError(f"line {line}: not a case column of the contract", file=path, column="column", value=column)
        parts = tuple(p.strip() for p in source.split("+"))
        if not source or any(not p for p in parts):
            raise DataError(f"line {line}: empty source field", file=path, column="source", value=source)
        if len(parts) > 1 and column not in MONEY_COLUMNS:
            raise DataError(f"line {line}: only money columns can be a sum of fields", file=path, column="source",
                            value=source)
        out.append((column, parts, line))
    return tuple(out)


def _load_nested(path: Path) -> dict:
    nested: dict = {}
    for line, r in _read_csv_rows(path, ("table", "role", "source")):
        table, role, source = r["table"], r["role"], r["source"]
        if table not in _NESTED_ROLES:
            raise DataError(f"line {line}: not a table of the nested shape ({', '.join(NESTED_TABLES)})",
                            file=path, column="table", value=table)
        if role not in _NESTED_ROLES[table]:
            raise DataError(f"line {line}: not a role of {table} ({', '.join(sorted(_NESTED_ROLES[table]))})",
                            file=path, column="role", value=role)
        if not source:
            raise DataError(f"line {line}: empty source", file=path, column="source")
        nested.setdefault(table, {}).setdefault(role, ())
        nested[table][role] += (source,)
    return nested


def _shipped_dir() -> Path:
    return Path(str(resources.files("dipengine.data") / "schemas"))


_CACHE: dict = {}


def load_schema(schema=None) -> InputSchema:
    """An :class:`InputSchema` from a name (``contract``, ``nhsa``), a folder holding
    ``fields.csv`` (optional ``code_values.csv``, ``nested.csv``) or a ``fields.csv`` file.

    The shared ``code_values.csv`` applies unless the folder has its own. Raises
    :class:`DataError` naming the file, line, column and value of a bad table.
    """
    if isinstance(schema, InputSchema):
        return schema
    key = "contract" if schema is None else str(schema)
    hit = _CACHE.get(key)  # only the shipped schemas are kept (package data); a folder is read anew
    if hit is not None:
        return hit
    shipped = _shipped_dir()
    if key in SHIPPED:
        folder = None if key == "contract" else shipped / key
        name = key
    else:
        p = Path(key)
        if not p.exists():
            raise DataError(f"no such schema (shipped: {', '.join(SHIPPED)}; or a folder or fields.csv)",
                            file=key)
        folder = p if p.is_dir() else None
        name = p.name if p.is_dir() else p.stem
    fields_file = None
    if folder is not None:
        fields_file = folder / "fields.csv"
        if not fields_file.is_file():
            raise DataError("schema folder lacks fields.csv", file=folder)
    elif key not in SHIPPED:
        fields_file = Path(key)
    values_file = folder / "code_values.csv" if folder is not None and (folder / "code_values.csv").is_file() \
        else shipped / "code_values.csv"
    nested_file = folder / "nested.csv" if folder is not None and (folder / "nested.csv").is_file() else None
    files = [values_file] + [f for f in (fields_file, nested_file) if f is not None]
    result = InputSchema(
        name=name,
        fields=_load_fields(fields_file) if fields_file is not None else (),
        values=_load_values(values_file),
        nested=_load_nested(nested_file) if nested_file is not None else {},
        files=tuple((str(f), _sha(f)) for f in files),
    )
    if key in SHIPPED:
        _CACHE[key] = result
    return result


# --------------------------------------------------------------------------------------------
# the nested 4101 shape


def nested_files(source, schema: InputSchema) -> dict | None:
    """``{table: path}`` when ``source`` is a folder of the nested shape (it holds a
    ``setlinfo`` table), else None."""
    import os

    if not schema.nested or not isinstance(source, (str, os.PathLike)):
        return None
    p = Path(source)
    if not p.is_dir():
        return None
    found = {}
    for table, roles in schema.nested.items():
        for stem in roles.get("file", (table,)):
            hits = sorted(f for f in p.iterdir() if f.is_file() and f.stem == stem and f.suffix.lower() in _TABLE_SUFFIXES)
            if hits:
                found[table] = hits[0]
                break
    return found if "setlinfo" in found else None


def _first(names, candidates):
    return next((c for c in candidates if c in names), None)


def _text(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    col = pc.utf8_trim_whitespace(col.cast(pa.string()))
    return pc.if_else(pc.equal(col, ""), pa.nulls(len(col), pa.string()), col)


def _first_rows(n_keys: int, pos: np.ndarray) -> np.ndarray:
    """Per case key, the first child row (input order) with that key; -1 where none."""
    first = np.full(n_keys, -1, np.int64)
    rows = np.flatnonzero(pos >= 0)
    first[pos[rows][::-1]] = rows[::-1]  # the earliest row is assigned last
    return first


def _per_case_first(n_keys: int, pos: np.ndarray, values: pa.Array) -> pa.Array:
    """The first value per case key (input order), null where a case has none."""
    first = _first_rows(n_keys, pos)
    return values.take(pa.array(first, mask=first < 0))


def _per_case_lists(n_keys: int, pos: np.ndarray, values: pa.Array) -> pa.Array:
    """list<string> per case key of its values, in input order (empty list where none)."""
    ok = np.flatnonzero(pos >= 0)
    order = ok[np.argsort(pos[ok], kind="stable")]
    counts = np.bincount(pos[ok], minlength=n_keys)
    offsets = np.zeros(n_keys + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(order, pa.int64())))


def _per_case_sum(n_keys: int, pos: np.ndarray, amounts, name: str) -> pa.Array:
    """Exact per-case sum of a yuan column (decimal128(18, 2); null where a case has no amount);
    a case with an amount that is not a number gets the text ``name=value`` of the first one."""
    from dipengine.money import MALFORMED, NEGATIVE, OK, TOO_LARGE, yuan_to_fen

    fen, status = yuan_to_fen(amounts)
    ok = pos >= 0
    good = ok & ((status == OK) | (status == NEGATIVE))
    total = np.zeros(n_keys, np.int64)
    np.add.at(total, pos[good], fen[good])  # int64: exact
    has = np.zeros(n_keys, bool)
    has[pos[good]] = True
    result = fen_to_decimal(total, has)
    bad = ok & ((status == MALFORMED) | (status == TOO_LARGE))
    if not bad.any():
        return result
    labelled = pc.binary_join_element_wise(f"{name}=", _text(amounts), "")
    bad_first = _per_case_first(n_keys, np.where(bad, pos, -1), labelled)
    return pc.if_else(pc.is_valid(bad_first), bad_first, result.cast(pa.string()))


def read_nested(files: dict, schema: InputSchema, *, encoding=None, sheet=None) -> pa.Table:
    """One flat table from the nested 4101 tables: ``setlinfo`` rows, in order, with ``main_dx``,
    ``other_dx``, ``main_proc``, ``other_procs`` (from ``diseinfo``/``oprninfo``), ``fund_paid``,
    ``other_fund_paid`` and one ``fund_<type>`` column per fund type (from ``payinfo``) and the
    cost totals (from ``iteminfo``) unless ``setlinfo`` has them. Child rows are matched on the
    case key (``setl_id``, else ``mdtrt_id``); a child row whose key is no case is ignored."""
    from dipengine.io import read_table

    def read(table):
        return read_table(files[table], encoding=encoding, sheet=sheet)

    setl = read("setlinfo")
    have = set(setl.column_names)
    derived: dict = {}
    for table in ("diseinfo", "oprninfo", "payinfo", "iteminfo"):
        if table not in files:
            continue
        roles = schema.nested.get(table, {})
        child = read(table)
        label = str(files[table])
        cnames = child.column_names
        key_name = next((k for k in roles.get("key", ()) if k in cnames and k in have), None)
        if key_name is None:
            raise DataError(f"no case key shared with setlinfo ({', '.join(roles.get('key', ()))})", file=label)
        case_keys = _text(setl[key_name])
        distinct = pc.unique(case_keys)
        n_keys = len(distinct)
        case_pos = pc.fill_null(pc.index_in(case_keys, value_set=distinct), -1).to_numpy(zero_copy_only=False)
        pos = pc.fill_null(pc.index_in(_text(child[key_name]), value_set=distinct), -1).to_numpy(zero_copy_only=False)
        pos = np.asarray(pos, np.int64)

        def role(name, required=True):
            col = _first(cnames, roles.get(name, ()))
            if col is None and required:
                raise DataError(f"{table} lacks a column for {name} ({', '.join(roles.get(name, ()))})", file=label)
            return col

        def spread(per_key: pa.Array) -> pa.Array:  # per distinct key -> per setlinfo row
            return per_key.take(pa.array(case_pos, mask=case_pos < 0))

        if table in ("diseinfo", "oprninfo"):
            codes = _text(child[role("code")])
            keep = pos.copy()
            if table == "diseinfo" and role("type", False) is not None:
                kinds = _text(child[role("type", False)])
                western = np.asarray(pc.fill_null(pc.is_in(kinds, pa.array(list(roles.get("type_value", ())),
                                                                            pa.string())), False), bool)
                keep = np.where(western, keep, -1)
            keep = np.where(np.asarray(pc.is_valid(codes), bool), keep, -1)
            flag = role("main_flag", False)
            if flag is not None:
                main_pos = np.where(np.asarray(pc.fill_null(pc.equal(_text(child[flag]), "1"), False), bool), keep, -1)
            else:  # no flag: the first row of each case is the main one
                main_pos = keep
            first_main = _first_rows(n_keys, main_pos)
            main = _per_case_first(n_keys, main_pos, codes)
            others_pos = keep.copy()
            others_pos[first_main[first_main >= 0]] = -1  # a second row flagged main counts as another
            others = _per_case_lists(n_keys, others_pos, codes)
            main_name, other_name = ("main_dx", "other_dx") if table == "diseinfo" else ("main_proc", "other_procs")
            derived[main_name] = spread(main)
            derived[other_name] = spread(others)
        elif table == "payinfo":
            types = _text(child[role("fund_type")])
            amounts = child[role("amount")]
            classes = schema.values.get("fund_pay_type")
            cls = pc.take(classes.values, pc.index_in(types, value_set=classes.codes)) if classes is not None \
                else pa.nulls(len(types), pa.string())
            cls = pc.fill_null(cls, "other_fund_paid")  # an unlisted fund type is another fund
            for name in ("fund_paid", "other_fund_paid"):
                sel = np.asarray(pc.equal(cls, name), bool) & np.asarray(pc.is_valid(types), bool)
                derived[name] = spread(_per_case_sum(n_keys, np.where(sel, pos, -1), amounts, role("amount")))
            for t in pc.unique(types).drop_null().to_pylist():  # per-fund detail, a column per fund type
                sel = np.asarray(pc.fill_null(pc.equal(types, t), False), bool)
                derived[f"fund_{t}"] = spread(_per_case_sum(n_keys, np.where(sel, pos, -1), amounts, role("amount")))
        else:  # iteminfo
            for name in ("total_cost", "class_b_cost", "out_of_catalogue_cost"):
                col = role(name, False)
                if col is not None:
                    derived[name] = spread(_per_case_sum(n_keys, pos, child[col], col))
    flat_plan = schema.plan(setl.column_names)
    for name, arr in derived.items():
        if name in flat_plan and not name.startswith("fund_"):
            continue  # the case table has it already
        if name in setl.column_names:
            setl = setl.drop_columns([name])
        setl = setl.append_column(name, arr)
    return setl
