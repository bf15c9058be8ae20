"""Official DIP catalogues into rule sets: ``dipengine rules import`` (dip-rules §4.4, contract §4).

A region publishes its catalogue (病种目录库) as a spreadsheet or CSV with Chinese headers (序号,
DIP编码, DIP名称, 病种类型, 主要诊断编码, 主要手术操作编码, 相关手术操作编码, 病例数, 次均费用,
病种分值 ...). A **mapping** (data, not code: ``dipengine/data/catalog_maps/published.csv`` or a
user's CSV of the same shape) says which header feeds which ``groups.csv`` column, and a values
file which words mean which group type and treatment class. :func:`read_catalog` converts the rows
(every defect a :class:`~dipengine.errors.DataError` naming file, line, column and value; nothing
is written then), :func:`write_catalog` writes the rule set with
:func:`dipengine.rules.write_rule_set` (groups.csv + manifest.toml with sha256) and
:func:`import_catalog` does both. The caller then runs :func:`dipengine.rules.check_rules`
(``dipengine rules import`` does). Format and policy: ``docs/rules-import.md``.

Procedure terms must be complete codes (``rules.is_complete_proc``): the grouper matches whole
codes, so a prefix (``47.01``) is refused, or with ``proc_prefix="expand"`` replaced by the any-of
list of the codes of a procedure code list that start with it, or with ``proc_prefix="match"`` kept
for the grouper's prefix matching (``[options] proc_prefix = true``).
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import inspect
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dipengine import codes as _codes
from dipengine.errors import DataError
from dipengine.rules import GROUP_TYPES, TREAT_CLASSES, is_complete_proc, write_rule_set

MAPS_DIR = Path(__file__).resolve().parent / "data" / "catalog_maps"
"""Folder of the shipped mappings (``<name>.csv`` and ``<name>_values.csv``)."""

TARGETS = ("dip_code", "dip_name", "group_type", "dx_key", "proc_expr", "related_proc", "treat_class",
           "score", "avg_cost", "n_cases", "basic_flag")
"""Columns a mapping row may name: the ``groups.csv`` columns, ``related_proc`` (joined into
``proc_expr`` with ``+``) and ``basic_flag`` (是否基层病种: turns a core group into a basic one)."""

REQUIRED = ("dip_code", "group_type", "dx_key", "score", "avg_cost")
"""Columns the catalogue must have (through one of their headers)."""

VALUE_TARGETS = {"group_type": GROUP_TYPES, "treat_class": TREAT_CLASSES, "basic_flag": ("yes", "no")}
"""Columns whose cell words the values file maps, and what they may map to."""

PROC_PREFIX_POLICIES = ("refuse", "expand", "match")

# A procedure cell meaning "no procedure" (保守治疗): empty, 无, dashes, 保守(治疗).
_CONSERVATIVE = {"", "无", "-", "--", "—", "——", "/", "保守治疗", "保守", "无手术", "无手术操作"}
_ANY_OF = r"/、,;|"          # after NFKC: "／" -> "/", "，" -> ",", "；" -> ";"
_RANGE_SEP = re.compile(r"\s*[~～—–至]\s*")
_NUMBER = re.compile(r"^[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?$|^[+-]?\.[0-9]+$")
_PROC = re.compile(_codes.PROC_PATTERN)
_DX = re.compile(_codes.DX_PATTERN)
_EXT = re.compile(r"^([0-9]{2}\.[0-9A-Zx]{4})x[0-9]+$")  # extension code -> its base (as the grouper)
_HEADER_SCAN = 10  # rows searched for the header when the first row is a title


def _nfkc(text) -> str:
    return unicodedata.normalize("NFKC", "" if text is None else str(text))


def _fold(text) -> str:
    """Cell word for matching: NFKC (full-width to half-width), no whitespace, case-folded."""
    return re.sub(r"\s+", "", _nfkc(text)).replace("\ufeff", "").casefold()


def _fold_header(text) -> tuple[str, str]:
    """A header folded, and folded without a trailing parenthesised part (``次均费用(元)``)."""
    f = _fold(text)
    return f, re.sub(r"\([^()]*\)$", "", f)


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class CatalogMapping:
    """Which catalogue headers feed which rule-set columns, and what the cell words mean.

    Attributes
    ----------
    name : str
        The shipped mapping's name (``"published"``) or the mapping file's path.
    file : str
        The mapping file read.
    headers : dict
        Target column -> header aliases, in file order (the first one present in a catalogue wins).
    values : dict
        ``group_type`` / ``treat_class`` / ``basic_flag`` -> {folded cell word -> rule-set value}:
        the shipped published values, then the mapping's own values file over them, and every
        rule-set value as itself (``core`` means core).
    values_files : tuple of str
        The values files read, in order.
    sha256 : str
        sha256 over the mapping file and its values files (recorded in the manifest).
    """

    name: str
    file: str
    headers: dict
    values: dict
    values_files: tuple = ()
    sha256: str = ""


def _csv_records(path: Path, columns: tuple[str, ...]):
    """``(line, {column: text})`` of a small UTF-8 CSV with at least ``columns``.

    Blank lines and lines whose first cell starts with ``#`` are skipped (comments).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", file=path) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror})", file=path) from None
    reader = csv.reader(text.splitlines(), strict=True)
    header = None
    out = []
    try:
        for rec in reader:
            line = reader.line_num
            cells = [c.strip() for c in rec]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                missing = [c for c in columns if c not in header]
                if missing:
                    raise DataError(f"header must name the columns {', '.join(columns)}", file=path, row=line,
                                    column=missing[0])
                continue
            out.append((line, {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header)}))
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", file=path, row=reader.line_num) from None
    if header is None:
        raise DataError("empty file (no header row)", file=path)
    return out


def _read_values(path: Path, values: dict) -> None:
    """Add the rows ``column,value,mapped`` of a values file to ``values`` (later files win)."""
    for line, r in _csv_records(path, ("column", "value", "mapped")):
        col, word, mapped = r["column"], r["value"], r["mapped"]
        if col not in VALUE_TARGETS:
            raise DataError(f"values are mapped for {', '.join(VALUE_TARGETS)} only", file=path, row=line,
                            column="column", value=col)
        if not _fold(word):
            raise DataError("empty value", file=path, row=line, column="value", value=word)
        if mapped not in VALUE_TARGETS[col]:
            raise DataError(f"{col} maps to one of {', '.join(VALUE_TARGETS[col])}", file=path, row=line,
                            column="mapped", value=mapped)
        values[col][_fold(word)] = mapped


def load_mapping(name_or_path="published") -> CatalogMapping:
    """Load a catalogue mapping: a shipped one by name (``"published"``) or a CSV file.

    The mapping file has the header ``column,header`` and one row per (rule-set column, catalogue
    header); a column may have several alias headers (``dip_code,DIP编码`` and ``dip_code,病种编码``).
    Its values file ``<stem>_values.csv`` beside it (optional for a user's mapping) has rows
    ``column,value,mapped`` (``group_type,核心病种,core``); the shipped published values always
    apply underneath, so a user's mapping needs a values file only for other words.

    Raises
    ------
    DataError
        Naming the file and line: a row naming an unknown rule-set column, an empty header, a
        header given twice, a bad values row; or the mapping not found.
    """
    if isinstance(name_or_path, CatalogMapping):
        return name_or_path
    path = Path(name_or_path)
    shipped = sorted(p.stem for p in MAPS_DIR.glob("*.csv") if not p.stem.endswith("_values"))
    if not path.is_file():
        if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name_or_path)) and (MAPS_DIR / f"{name_or_path}.csv").is_file():
            path = MAPS_DIR / f"{name_or_path}.csv"
        else:
            raise DataError(f"mapping not found: not a file nor a shipped mapping ({', '.join(shipped)})",
                            file=name_or_path)
    headers: dict[str, list[str]] = {}
    owner: dict[str, tuple[str, int]] = {}
    for line, r in _csv_records(path, ("column", "header")):
        col, head = r["column"], r["header"]
        if col not in TARGETS:
            raise DataError(f"unknown rule-set column (one of {', '.join(TARGETS)})", file=path, row=line,
                            column="column", value=col)
        if not _fold(head):
            raise DataError("empty header", file=path, row=line, column="header", value=head)
        key = _fold(head)
        if key in owner and owner[key][0] != col:
            raise DataError(f"header already maps to {owner[key][0]} (line {owner[key][1]})", file=path, row=line,
                            column="header", value=head)
        owner.setdefault(key, (col, line))
        if head not in headers.setdefault(col, []):
            headers[col].append(head)
    values: dict[str, dict[str, str]] = {k: {v: v for v in allowed} for k, allowed in VALUE_TARGETS.items()}
    read = []
    base = MAPS_DIR / "published_values.csv"
    own = path.with_name(path.stem + "_values.csv")
    for vfile in (base, own) if own.resolve() != base.resolve() else (base,):
        if vfile.is_file():
            _read_values(vfile, values)
            read.append(str(vfile))
    h = hashlib.sha256()
    for f in (str(path), *read):
        h.update(Path(f).read_bytes())
    name = path.stem if path.parent.resolve() == MAPS_DIR.resolve() else str(path)
    return CatalogMapping(name=name, file=str(path), headers={k: tuple(v) for k, v in headers.items()},
                          values=values, values_files=tuple(read), sha256=h.hexdigest())


# --------------------------------------------------------------------------- reading


def _read_source(source, sheet=None, encoding=None) -> pa.Table:
    """The catalogue as a table through :func:`dipengine.io.read_table` (CSV, .xlsx, Parquet ...)."""
    from dipengine import io as _io

    params = inspect.signature(_io.read_table).parameters
    kw = {}
    for key, value in (("sheet", sheet), ("encoding", encoding)):
        if value is not None:
            if key not in params:  # an older dipengine.io
                raise DataError(f"this build of dipengine.io.read_table takes no {key}", file=source)
            kw[key] = value
    if str(source).lower().endswith((".xlsx", ".xlsm")) and "sheet" not in params:
        raise DataError("this build of dipengine.io cannot read Excel workbooks; save the sheet as CSV",
                        file=source)
    return _io.read_table(str(source), **kw)


def _csv_lines(src: str, encoding, n_rows: int) -> list[int]:
    """Line of each table row in a CSV file as a user sees it (header = 1), counting the blank
    lines the CSV reader skips; ``row + 2`` for other files, or when the count does not agree."""
    plain = list(range(2, n_rows + 2))
    if not src.lower().endswith((".csv", ".txt", ".tsv")):
        return plain
    try:
        data = Path(src).read_bytes()
        for codec in ([encoding] if encoding else ["utf-8-sig", "gb18030"]):
            try:
                text = data.decode(codec)
                break
            except UnicodeDecodeError:
                continue
        else:
            return plain
        reader = csv.reader(text.splitlines(), delimiter="\t" if src.lower().endswith(".tsv") else ",")
        lines = [reader.line_num for rec in reader if rec]
    except (OSError, LookupError, csv.Error):
        return plain
    return lines[1:] if len(lines) == n_rows + 1 else plain


def _text_columns(table: pa.Table) -> list[list[str]]:
    """Every column as a list of stripped text ('' for null), numbers as they print."""
    out = []
    for col in table.columns:
        if pa.types.is_floating(col.type):
            vals = [None if v is None else (str(int(v)) if float(v).is_integer() else repr(float(v)))
                    for v in col.to_pylist()]
        else:
            vals = pc.cast(col, pa.string()).to_pylist() if not pa.types.is_string(col.type) else col.to_pylist()
        out.append(["" if v is None else str(v).strip() for v in vals])
    return out


def _resolve(names: list[str], mapping: CatalogMapping) -> dict[str, int]:
    """Target -> column index, the first alias (in mapping order) a header matches."""
    exact: dict[str, int] = {}
    loose: dict[str, int] = {}
    for i, n in enumerate(names):
        f, g = _fold_header(n)
        if f:
            exact.setdefault(f, i)
            loose.setdefault(g, i)
    found = {}
    for target, aliases in mapping.headers.items():
        for alias in aliases:
            f, g = _fold_header(alias)
            i = exact.get(f, loose.get(f, exact.get(g, loose.get(g))))
            if i is not None:
                found[target] = i
                break
    return found


@dataclass
class ImportedCatalog:
    """A catalogue converted to a ``groups.csv`` table (:func:`read_catalog`).

    Attributes
    ----------
    groups : pa.Table
        ``dip_code, dip_name, group_type, dx_key, proc_expr, treat_class`` (string),
        ``score``, ``avg_cost`` (float64, yuan), ``n_cases`` (int64, null when not given);
        one row per catalogue row, in order (empty rows skipped).
    lines : list of int
        Catalogue line of each group (header = line 1): ``groups.csv`` line ``k`` is catalogue
        line ``lines[k - 2]``.
    file : str
    sha256 : str
        Of the catalogue file.
    mapping : CatalogMapping
    columns : dict
        Target column -> the catalogue header it was read from.
    header_line : int
        Line of the header row (1 unless title rows precede it).
    sheet, encoding, proc_prefix : as given
    codes_icd9 : str or None
        The procedure code list used to expand prefixes.
    expanded : dict
        Prefix -> number of codes it was expanded into.
    """

    groups: pa.Table
    lines: list
    file: str
    sha256: str
    mapping: CatalogMapping
    columns: dict
    header_line: int = 1
    sheet: object = None
    encoding: str | None = None
    proc_prefix: str = "refuse"
    codes_icd9: str | None = None
    expanded: dict = field(default_factory=dict)


class _Row:
    """One catalogue row: cells by target, and the DataError naming its place."""

    def __init__(self, src: str, line: int, cells: dict, headers: dict):
        self.src, self.line, self.cells, self.headers = src, line, cells, headers

    def get(self, target: str) -> str:
        return self.cells.get(target, "")

    def error(self, target: str, message: str, value=None) -> DataError:
        return DataError(message, file=self.src, row=self.line, column=self.headers.get(target, target),
                         value=self.get(target) if value is None else value)


def _number(row: _Row, target: str, *, integer=False, required=True):
    """A number cell: full-width folded, thousands separators, ``¥``/``元`` allowed."""
    raw = row.get(target)
    text = re.sub(r"\s+", "", _nfkc(raw))
    text = text.removeprefix("¥").removesuffix("元")
    if text == "":
        if required:
            raise row.error(target, f"{target} missing (a number)")
        return None
    if not _NUMBER.match(text):
        raise row.error(target, f"{target} is not a number" + (" (thousands separators ',' are allowed)"
                                                              if "," in text or "." in text else ""))
    x = float(text.replace(",", ""))
    if integer:
        if not x.is_integer():
            raise row.error(target, f"{target} is not a whole number")
        return int(x)
    return x


def _value(row: _Row, target: str, mapping: CatalogMapping):
    """The rule-set value of a cell word (``None`` for an empty cell or a column not mapped)."""
    word = _fold(row.get(target))
    if word == "":
        return None
    mapped = mapping.values[target].get(word)
    if mapped is None:
        known = sorted({w for w, v in mapping.values[target].items() if w != v})
        raise row.error(target, f"unknown {target.replace('_', ' ')} (known: {', '.join(known)}; "
                                f"add it to the mapping's values file)")
    return mapped


def _split_procs(row: _Row, target: str) -> list[list[str]]:
    """A procedure cell as raw all-of terms of any-of codes (not yet normalised)."""
    text = _nfkc(row.get(target)).strip()
    if _fold(text) in _CONSERVATIVE:
        return []
    text = re.sub(rf"\s*([+{re.escape(_ANY_OF)}])\s*", r"\1", text)
    terms = []
    for term in text.split("+"):
        codes = re.split(rf"[{re.escape(_ANY_OF)}\s]+", term)
        if term == "" or any(c == "" for c in codes):
            raise row.error(target, "malformed procedure list (an empty code between separators)")
        terms.append(codes)
    return terms


def _load_code_list(path) -> tuple[list[str], set]:
    from dipengine.io import read_table

    table = read_table(str(path))
    if "code" not in table.column_names:
        raise DataError("procedure code list has no 'code' column", file=path, column="code")
    norm = _codes.normalize(table["code"].combine_chunks())
    ok = pc.fill_null(_codes.is_valid_proc(norm), False)
    listed = sorted(set(norm.filter(ok).to_pylist()))
    if not listed:
        raise DataError("procedure code list holds no well-formed code", file=path, column="code")
    return listed, set(listed)


def _expand_prefix(prefix: str, listed: list[str], listed_set: set) -> list[str]:
    """The listed codes starting with ``prefix``; an extension code (``47.0100x001``) is left out
    when its base code (``47.0100``) is listed too, since a term matches extensions of its codes."""
    out = []
    for x in listed:
        if x.startswith(prefix):
            m = _EXT.match(x)
            if m and m.group(1) in listed_set and m.group(1).startswith(prefix):
                continue
            out.append(x)
    return out


GROUP_COLUMNS = ("dip_code", "dip_name", "group_type", "dx_key", "proc_expr", "treat_class", "score", "avg_cost",
                 "n_cases")


class _Converter:
    """Catalogue row -> ``groups.csv`` row (the conversion rules of docs/rules-import.md)."""

    def __init__(self, mapping: CatalogMapping, proc_prefix: str, codes_icd9):
        self.mapping = mapping
        self.proc_prefix = proc_prefix
        self.codes_icd9 = codes_icd9
        self.listed, self.listed_set = _load_code_list(codes_icd9) if codes_icd9 is not None else (None, None)
        self.expanded: dict[str, int] = {}
        self._norm: dict[str, str | None] = {}   # token -> codes.normalize(token)
        self._heur: dict[str, str | None] = {}   # code -> codes.proc_class_heuristic(code)

    def row(self, r: _Row) -> dict:
        m = self.mapping
        gt = _value(r, "group_type", m)
        if gt is None:
            raise r.error("group_type", "group type missing")
        if _value(r, "basic_flag", m) == "yes":
            if gt not in ("core", "basic"):
                raise r.error("basic_flag", f"basic flag on a {gt} group (only core groups can be basic)")
            gt = "basic"
        code = _nfkc(r.get("dip_code")).strip()
        if not code:
            raise r.error("dip_code", "DIP code missing")
        dx = self.dx_key(r, gt)
        cls_word = None
        proc_word = _fold(r.get("proc_expr"))
        if gt == "comprehensive" and proc_word in m.values["treat_class"] and not _fold(r.get("related_proc")):
            # 综合病种 rows often name their treatment class in the procedure column (相关手术, 保守治疗 ...)
            cls_word, terms = m.values["treat_class"][proc_word], []
        else:
            terms = self.terms(r, "proc_expr") + self.terms(r, "related_proc")
        cls = _value(r, "treat_class", m) or cls_word
        if cls is None and gt != "blank":
            cls = self.heuristic_class(terms)
        return {
            "dip_code": code,
            "dip_name": _nfkc(r.get("dip_name")).strip(),
            "group_type": gt,
            "dx_key": dx,
            "proc_expr": "+".join("/".join(t) for t in terms),
            "treat_class": cls or "",
            "score": _number(r, "score"),
            "avg_cost": _number(r, "avg_cost"),
            "n_cases": _number(r, "n_cases", integer=True, required=False),
        }

    def dx_key(self, r: _Row, gt: str) -> str:
        dx = re.sub(r"\s+", "", _nfkc(r.get("dx_key")))
        if gt in ("core", "basic"):
            if _fold(dx) in _CONSERVATIVE:
                raise r.error("dx_key", f"main diagnosis code missing (a {gt} group needs its subcategory)")
            if re.search(rf"[{re.escape(_ANY_OF)}]", dx):
                raise r.error("dx_key", "one main diagnosis per group (a subcategory like 'K35.8')")
            d = self.normalize(dx)
            d = d.split("+")[0] if d else d  # a dagger pair: the main code
            if not d or not _DX.match(d):
                raise r.error("dx_key", "not an ICD-10 医保版 diagnosis code")
            return d[:5]  # the subcategory (亚目)
        if gt == "comprehensive":
            if _fold(dx) in _CONSERVATIVE:
                raise r.error("dx_key", "diagnosis category or range missing (a comprehensive group needs one)")
            return _RANGE_SEP.sub("-", dx).upper()
        return "" if _fold(dx) in _CONSERVATIVE else dx.upper()  # blank

    def terms(self, r: _Row, target: str) -> list[list[str]]:
        """The all-of terms of a procedure cell: normalised, complete codes (prefixes expanded or refused)."""
        out_terms = []
        for term in _split_procs(r, target):
            out: list[str] = []
            for raw in term:
                c = self.normalize(raw)
                if c is None or not _PROC.match(c):
                    raise r.error(target, f"{raw!r} is not an ICD-9-CM-3 医保版 procedure code")
                new = [c] if is_complete_proc(c) else self.expand(r, target, c)
                out.extend(x for x in new if x not in out)
            out_terms.append(out)
        return out_terms

    def expand(self, r: _Row, target: str, prefix: str) -> list[str]:
        if self.proc_prefix == "match":  # kept: the rule set gets [options] proc_prefix = true
            self.expanded[prefix] = 0
            return [prefix]
        if self.proc_prefix == "refuse":
            raise r.error(target, f"{prefix!r} is not a complete procedure code (a prefix?); a rule set matches "
                                  "whole codes only: give the full codes, or --proc-prefix expand with "
                                  "--codes-icd9 FILE")
        if self.listed is None:
            raise r.error(target, f"{prefix!r} is a code prefix; --proc-prefix expand needs the procedure code "
                                  "list (--codes-icd9 FILE)")
        hits = _expand_prefix(prefix, self.listed, self.listed_set)
        if not hits:
            raise r.error(target, f"code prefix {prefix!r} matches no code of the procedure code list "
                                  f"{self.codes_icd9}")
        self.expanded[prefix] = len(hits)
        return hits

    def heuristic_class(self, terms: list[list[str]]) -> str:
        """``conservative`` without procedures, else the highest heuristic class of the codes."""
        codes_here = [c for t in terms for c in t]
        if not codes_here:
            return "conservative"
        todo = [c for c in dict.fromkeys(codes_here) if c not in self._heur]
        if todo:
            self._heur.update(zip(todo, _codes.proc_class_heuristic(pa.array(todo, pa.string())).to_pylist()))
        return TREAT_CLASSES[max(TREAT_CLASSES.index(self._heur[c] or "surgery") for c in codes_here)]

    def normalize(self, token: str):
        """:func:`dipengine.codes.normalize` of one token (cached)."""
        if token not in self._norm:
            self._norm[token] = _codes.normalize(pa.array([token], pa.string()))[0].as_py()
        return self._norm[token]


def read_catalog(source, mapping="published", *, sheet=None, encoding=None, proc_prefix="refuse",
                 codes_icd9=None) -> ImportedCatalog:
    """Convert a published catalogue into a ``groups.csv`` table; nothing is written.

    Parameters
    ----------
    source : path
        The catalogue: CSV (UTF-8 or GBK/GB18030), .xlsx, or any table :func:`dipengine.io.read_table`
        reads. The header is the first row, or the first of the first rows that holds the headers
        of the required columns (title rows above it are skipped).
    mapping : str, path or CatalogMapping
        :func:`load_mapping` argument (default the shipped ``published`` layout).
    sheet : str or int, optional
        Workbook sheet (name or 0-based index; default the first).
    encoding : str, optional
        CSV text encoding (default: detected by ``read_table``).
    proc_prefix : {"refuse", "expand", "match"}
        A procedure term that is a code prefix (``47.01``): refused (DataError), replaced by the
        any-of list of the codes of ``codes_icd9`` that start with it, or kept as it is for prefix
        matching (the manifest then sets ``[options] proc_prefix = true``).
    codes_icd9 : path, optional
        Procedure code list (TSV/CSV with a ``code`` column, e.g. the official ICD-9-CM-3 医保版).

    Raises
    ------
    DataError
        For the first row that cannot be converted (missing code, a score that is not a number,
        an unknown group type, a malformed or prefix procedure code ...), naming the file, the
        row (header = row 1, blank lines counted), the column header and the value.
    """
    if proc_prefix not in PROC_PREFIX_POLICIES:
        raise ValueError(f"proc_prefix must be one of {', '.join(PROC_PREFIX_POLICIES)}, not {proc_prefix!r}")
    mapping = load_mapping(mapping)
    src = str(source)
    table = _read_source(source, sheet=sheet, encoding=encoding)
    cols = _text_columns(table)
    line_of = _csv_lines(src, encoding, table.num_rows)  # file line of each table row (blank lines skipped)
    n = table.num_rows

    # the header: the first row, else the first of the next rows naming the required columns
    names = list(table.column_names)
    found = _resolve(names, mapping)
    start, header_line = 0, 1
    if any(t not in found for t in REQUIRED):
        for j in range(min(n, _HEADER_SCAN)):
            row_names = [c[j] for c in cols]
            cand = _resolve(row_names, mapping)
            if all(t in cand for t in REQUIRED):
                names, found, start, header_line = row_names, cand, j + 1, line_of[j]
                break
    for t in REQUIRED:
        if t not in found:
            tried = ", ".join(repr(h) for h in mapping.headers.get(t, ())) or "none in the mapping"
            raise DataError(f"no column for {t}: none of the headers {tried} is in the file "
                            f"(mapping {mapping.name}); its headers: {', '.join(repr(h) for h in names if h)}",
                            file=src, column=t)
    used = {t: names[i] for t, i in found.items()}

    rows: list[_Row] = []
    for j in range(start, n):
        cells = {t: cols[i][j] for t, i in found.items()}
        if any(cells.values()):  # empty rows are skipped
            rows.append(_Row(src, line_of[j], cells, used))
    conv = _Converter(mapping, proc_prefix, codes_icd9)
    groups = {k: [] for k in GROUP_COLUMNS}
    for r in rows:  # in order: the first bad row is the one reported
        for k, v in conv.row(r).items():
            groups[k].append(v)
    expanded = conv.expanded

    if not rows:
        raise DataError("the catalogue has no group row", file=src)
    types = {"score": pa.float64(), "avg_cost": pa.float64(), "n_cases": pa.int64()}
    table_out = pa.table({k: pa.array(groups[k], types.get(k, pa.string())) for k in GROUP_COLUMNS})
    from dipengine.io import sha256_file

    return ImportedCatalog(groups=table_out, lines=[r.line for r in rows], file=src, sha256=sha256_file(src),
                           mapping=mapping, columns=used, header_line=header_line, sheet=sheet, encoding=encoding,
                           proc_prefix=proc_prefix, codes_icd9=None if codes_icd9 is None else str(codes_icd9),
                           expanded=expanded)


# --------------------------------------------------------------------------- writing


def _date(v, what: str):
    if v is None or isinstance(v, _dt.date) and not isinstance(v, _dt.datetime):
        return v
    if isinstance(v, _dt.datetime):
        return v.date()
    try:
        return _dt.date.fromisoformat(str(v))
    except ValueError:
        raise ValueError(f"{what} must be a date YYYY-MM-DD, not {v!r}") from None


def catalog_manifest(cat: ImportedCatalog, *, name, version=None, effective_from=None, effective_to=None,
                     source_text=None) -> dict:
    """The manifest keys of an imported rule set (contract §4), with an ``[import]`` table."""
    from dipengine import __version__

    eff_from, eff_to = _date(effective_from, "effective_from"), _date(effective_to, "effective_to")
    if eff_from and eff_to and eff_to < eff_from:
        raise ValueError(f"effective_to {eff_to} is before effective_from {eff_from}")
    imp = {
        "engine_version": __version__,
        "catalogue_file": Path(cat.file).name,
        "catalogue_sha256": cat.sha256,
        "sheet": None if cat.sheet is None else str(cat.sheet),
        "encoding": cat.encoding,
        "header_line": cat.header_line,
        "mapping": cat.mapping.name if cat.mapping.name == Path(cat.mapping.file).stem else Path(cat.mapping.file).name,
        "mapping_sha256": cat.mapping.sha256,
        "rows": cat.groups.num_rows,
        "proc_prefix": cat.proc_prefix,
        "codes_icd9_file": None if cat.codes_icd9 is None else Path(cat.codes_icd9).name,
        "prefixes_expanded": len(cat.expanded) if cat.expanded else None,
    }
    meta = {
        "name": name,
        "version": version or (f"{eff_from.year}.1" if eff_from else "1"),
        "scheme": "DIP-local",
        "effective_from": eff_from,
        "effective_to": eff_to,
        "source": source_text or f"imported from {Path(cat.file).name} by dipengine rules import",
        "options": {"proc_prefix": True} if cat.proc_prefix == "match" else None,
        "import": {k: v for k, v in imp.items() if v is not None},
    }
    return {k: v for k, v in meta.items() if v is not None}


def write_catalog(cat: ImportedCatalog, out, *, name=None, version=None, effective_from=None, effective_to=None,
                  source_text=None) -> Path:
    """Write ``cat`` as the rule set ``out`` (groups.csv + manifest.toml, replaced atomically)."""
    meta = catalog_manifest(cat, name=name or Path(out).name, version=version, effective_from=effective_from,
                            effective_to=effective_to, source_text=source_text)
    return write_rule_set(out, {"groups.csv": cat.groups}, meta)


def import_catalog(source, mapping="published", out=None, *, name=None, version=None, effective_from=None,
                   effective_to=None, source_text=None, sheet=None, encoding=None, proc_prefix="refuse",
                   codes_icd9=None) -> pa.Table:
    """Turn a published catalogue into a contract rule set; returns the groups table.

    :func:`read_catalog` converts the rows (see there for ``mapping``, ``sheet``, ``encoding``,
    ``proc_prefix``, ``codes_icd9``); with ``out``, :func:`write_catalog` writes ``groups.csv`` and
    ``manifest.toml`` (sha256; ``name`` default the directory's name, ``version`` default
    ``<effective_from year>.1`` or ``"1"``, ``source_text`` the manifest's ``source``, e.g. the
    notice number). Check the result with :func:`dipengine.rules.check_rules`.

    Raises
    ------
    DataError
        A row that cannot be converted (file, line, column header, value); nothing is written.
    """
    cat = read_catalog(source, mapping, sheet=sheet, encoding=encoding, proc_prefix=proc_prefix,
                       codes_icd9=codes_icd9)
    if out is not None:
        write_catalog(cat, out, name=name, version=version, effective_from=effective_from,
                      effective_to=effective_to, source_text=source_text)
    return cat.groups
