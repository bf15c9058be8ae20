"""DIP rule sets (contract §4): strict loading, checking, writing and compilation.

A rule set is a directory of CSV tables plus ``manifest.toml`` (name, version, sha256 of
every table, and an ``[options]`` table of regional grouping options). :func:`check_rules`
lists every problem with file, line and column; :func:`load_rules` raises
:class:`~dipengine.errors.RuleSetError` when there is any, and otherwise returns a
:class:`RuleSet` whose ``compiled`` attribute holds the flat integer arrays the Cython
grouper walks (built once per rule set). The format is documented in ``docs/rules-format.md``.

Compiled rule sets are cached (:func:`cache_dir`, one ``rules-<sha256 key>.npz`` per rule set,
no pickle): the manifest and every table's sha256 are verified on each load, and only when they
match an entry are the row checks and the compilation skipped.

Procedure expressions (``proc_expr``) are parsed by :func:`parse_proc_expr`, a small strict
parser: ``+`` separates all-of terms, ``/`` separates the any-of codes of a term.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io as _io
import json
import math
import os
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine import codes as _codes
from dipengine import money as _money
from dipengine.errors import DataError, RuleSetError
from dipengine.io import atomic_dir
from dipengine.manifest import check_files, key_line, listed_path, read_manifest_text, write_manifest
from dipengine.presets import PresetError, load_preset

GROUP_TYPES = ("core", "basic", "comprehensive", "blank")
TREAT_CLASSES = _codes.TREAT_CLASSES  # conservative < diagnostic < therapeutic < surgery
SEVERITY_LEVELS = {"II": 2, "III": 3}

# Priority of dip-rules §2.5, literally: (group_type, treat_class) -> rank (lower wins).
PRIORITY = {
    ("core", "surgery"): 0,
    ("basic", "surgery"): 1,
    ("core", "therapeutic"): 2,
    ("basic", "therapeutic"): 3,
    ("core", "diagnostic"): 4,
    ("basic", "diagnostic"): 5,
    ("comprehensive", "surgery"): 6,
    ("comprehensive", "therapeutic"): 7,
    ("comprehensive", "diagnostic"): 8,
    ("core", "conservative"): 9,
    ("basic", "conservative"): 10,
    ("comprehensive", "conservative"): 11,
    ("blank", None): 12,
}

# Files of a rule set: name -> (required columns, optional columns, required file?)
TABLES = {
    "groups.csv": (
        ("dip_code", "dip_name", "group_type", "dx_key", "proc_expr", "treat_class", "score", "avg_cost"),
        ("n_cases",),
        True,
    ),
    "procedures.csv": (("code", "class"), ("level",), False),
    "excluded_dx.csv": (("code",), (), False),
    "excluded_proc.csv": (("code",), (), False),
    "aux_coefficients.csv": (("dip_code", "subtype", "coefficient"), (), False),
    "cci_weights.csv": (("dx_prefix", "weight"), ("category",), False),
    "severity_dx.csv": (("dx_prefix", "level"), (), False),
}

DEFAULT_OPTIONS = {
    # "any_of": each "+" term needs one of its codes; "all_listed" (Jining): every listed code.
    "match_mode": "any_of",
    # CCI score cut points of levels cci_1, cci_2, cci_3 (dip-rules §3.1: 1-2, 3-4, >= 5).
    "cci_levels": [1, 3, 5],
    # Severity subtypes need LOS >= this many days (dip-rules §3.1 item 2).
    "severity_min_los": 3,
    # discharge_mode value meaning death (离院方式 5).
    "death_discharge_mode": 5,
    # A case is conservative-equivalent (may take an empty-proc_expr group) when its
    # treatment class is at most this and no counted procedure has a level above the next.
    "conservative_max_class": "diagnostic",
    "conservative_max_level": 2,
    # Age bands "name:low:high" (inclusive; "d" = days of age under one year, else years;
    # empty high = open); the subtype is "age_<name>" (dip-rules §3.1 item 5).
    "age_bands": ["0_28d:0d:28d", "29d_1y:29d:364d", "1_6:1:6", "7_17:7:17",
                  "65_69:65:69", "70_79:70:79", "80p:80:"],
    # dip-rules §2.5 (1): among core/basic candidates prefer those keyed on the main procedure.
    "main_procedure_first": True,
    # Which terms of a "+" expression the main procedure may match to count as "keyed on the
    # main procedure": "first" (the first term, the main one) or "any" (every term counts).
    "plus_main_term": "first",
    # dip-rules §2.5: the order in which group kinds win, "group_type:treat_class" (first wins).
    "tier_order": [f"{t}:{c}" for (t, c), _r in sorted(PRIORITY.items(), key=lambda kv: kv[1]) if t != "blank"],
    # dip-rules §2.5 (2)-(3): tie-breaks after the main procedure, in order; then row order.
    # "terms": more "+" terms; "matched": more matched codes; "cost": avg_cost closest to the cost.
    "tie_break": ["terms", "matched", "cost"],
    # proc_expr codes are prefixes: a term code matches every procedure code that starts with it.
    "proc_prefix": False,
}
TIE_BREAKS = ("terms", "matched", "cost")
TIE_MAIN = 0  # tie-break code of the main-procedure preference (TIE_BREAKS are 1, 2, 3)
TIERS = tuple(DEFAULT_OPTIONS["tier_order"])

FIXED_SUBTYPES = ("death", "severity_III", "severity_II", "cci_3", "cci_2", "cci_1")

_DX_SUB = re.compile(r"^[A-Z][0-9]{2}\.[0-9A-Zx]$")
_DX_PREFIX = re.compile(r"^[A-Z]([0-9]{1,2})?$")
_DX_RANGE = re.compile(r"^([A-Z][0-9]{2})-([A-Z][0-9]{2})$")
_PROC = re.compile(_codes.PROC_PATTERN)
# A *complete* ICD-9-CM-3 医保版 code, as every code of the official 2.0 list is (13,685 codes):
# 2 digits "." 4 characters ("47.0100", with an "x" placeholder "01.6x00"), or 5 (the TCM codes
# "17.91100", "17.912A0"), optionally an "x###"/"x####" extension ("51.2300x001"); plus the shape
# "86.700x0013" of two official codes. Well-formed but shorter codes ("47.01", "47") are prefixes:
# the grouper matches whole codes only, so a proc_expr term must be complete (see check_rules).
PROC_COMPLETE_PATTERN = (r"^[0-9]{2}\.(?:(?:[0-9][0-9x][0-9]{2}|[0-9]{3}[0-9A-Z][0-9])(?:x[0-9]{3,4})?"
                         r"|[0-9]{3}x[0-9]{4})$")
_PROC_COMPLETE = re.compile(PROC_COMPLETE_PATTERN)
_DX_ANY_PREFIX = re.compile(r"^[A-Z][0-9A-Zx.]*$")
_PROC_ANY_PREFIX = re.compile(r"^[0-9][0-9A-Zx.]*$")
_BAND = re.compile(r"^([0-9A-Za-z_]+):([0-9]+d?):([0-9]+d?)?$")


@dataclass(frozen=True)
class Problem:
    """One defect of a rule set: ``file:line:column: message`` (line 1 = CSV header)."""

    file: str
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


def parse_proc_expr(s: str) -> list[list[str]]:
    """Parse a procedure expression into all-of terms, each a list of any-of codes.

    ``""`` -> ``[]`` (conservative); ``"51.2300/51.2301"`` -> ``[["51.2300", "51.2301"]]``;
    ``"51.2200+54.5100/54.5101"`` -> ``[["51.2200"], ["54.5100", "54.5101"]]``.

    Raises
    ------
    ValueError
        On an empty term or code, a code that is not a well-formed ICD-9-CM-3 医保版 code in
        normal form, a code listed twice, or stray characters (spaces, other operators).
    """
    if s is None:
        return []
    if not isinstance(s, str):
        raise ValueError(f"not a string: {s!r}")
    if s == "":
        return []
    terms = []
    seen = set()
    for t_no, term in enumerate(s.split("+"), 1):
        if term == "":
            raise ValueError(f"empty term {t_no} in {s!r}")
        codes = []
        for code in term.split("/"):
            if code == "":
                raise ValueError(f"empty code in term {t_no} of {s!r}")
            if not _PROC.match(code):
                raise ValueError(f"{code!r} is not a well-formed ICD-9-CM-3 医保版 procedure code")
            if code in seen:
                raise ValueError(f"code {code!r} listed twice in {s!r}")
            seen.add(code)
            codes.append(code)
        terms.append(codes)
    return terms


def is_complete_proc(code) -> bool:
    """Whether ``code`` (医保版 normal form) is a complete procedure code, not a prefix.

    ``"47.0100"``, ``"01.6x00"``, ``"17.912A0"``, ``"51.2300x001"`` -> True; ``"47.01"``, ``"47"`` -> False.
    Every code of the official ICD-9-CM-3 医保版 2.0 list is complete (:data:`PROC_COMPLETE_PATTERN`).
    """
    return isinstance(code, str) and _PROC_COMPLETE.match(code) is not None


def canonical_expr(terms: list[list[str]], options: dict | None = None) -> str:
    """Order-free form of a parsed expression (for duplicate detection).

    Two expressions with the same form match the same cases and tie the same way. The order of
    the ``+`` terms matters only where the grouper reads it: with ``main_procedure_first`` and
    ``plus_main_term = "first"`` the first term is the main one, so ``A+B`` and ``B+A`` differ.
    """
    o = DEFAULT_OPTIONS if options is None else options
    forms = ["/".join(sorted(t)) for t in terms]
    if o["main_procedure_first"] and o["plus_main_term"] == "first" and len(forms) > 1:
        return forms[0] + "+" + "+".join(sorted(forms[1:]))
    return "+".join(sorted(forms))


def category_number(cat: str) -> int:
    """``"K35"`` -> 1035 (letter index × 100 + number); -1 when not a category."""
    if cat is None or len(cat) != 3 or not ("A" <= cat[0] <= "Z") or not cat[1:].isdigit() or not cat[1:].isascii():
        return -1
    return (ord(cat[0]) - 65) * 100 + int(cat[1:])


def parse_age_band(text: str) -> tuple[str, int, int]:
    """``"1_6:1:6"`` -> ``("age_1_6", 365, 2190)``: band limits as age keys.

    The age key of a case is its age in days when under one year (``age == 0`` and
    ``age_days`` known) and ``365 × age`` otherwise, so years and days order together.
    A limit ``"Nd"`` is N days, ``"N"`` is N years (365 × N); high is inclusive and
    empty means open. Raises ValueError when malformed.
    """
    m = _BAND.match(text or "")
    if not m:
        raise ValueError(f"age band {text!r} is not 'name:low:high'")

    def key(v):
        return int(v[:-1]) if v.endswith("d") else 365 * int(v)

    lo = key(m.group(2))
    hi = key(m.group(3)) if m.group(3) else 2**31 - 1
    if hi < lo:
        raise ValueError(f"age band {text!r} ends before it starts")
    return "age_" + m.group(1), lo, hi


# --------------------------------------------------------------------------- reading


def _read_csv_rows(path: Path, fname: str, problems: list[Problem]):
    """Header and rows of a CSV (stripped cells); problems for unreadable files."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(Problem(fname, 1, "", f"not UTF-8 text ({e.reason})"))
        return None, []
    except OSError as e:
        problems.append(Problem(fname, 0, "", f"cannot read ({e.strerror or e})"))
        return None, []
    reader = csv.reader(_io.StringIO(text, newline=""), strict=True)
    rows = []
    header = None
    try:
        for rec in reader:
            line = reader.line_num
            if header is None:
                header = [c.strip() for c in rec]
                continue
            cells = [c.strip() for c in rec]
            if not any(cells):
                continue
            rows.append((line, cells))
    except csv.Error as e:
        problems.append(Problem(fname, reader.line_num, "", f"malformed CSV ({e})"))
    if header is None:
        problems.append(Problem(fname, 1, "", "empty file (no header row)"))
    return header, rows


def _table_rows(directory: Path, fname: str, problems: list[Problem]) -> list[tuple[int, dict]] | None:
    """Rows of one table as ``(line, {column: text})``; ``None`` when the file is absent."""
    required, optional, must = TABLES[fname]
    path = directory / fname
    if not os.path.lexists(path):
        if must:
            problems.append(Problem(fname, 0, "", "required file missing"))
        return None
    # Never open anything but a regular file inside the rule set: a FIFO would block the read, a
    # symbolic link out of the directory would quote a foreign file's lines in the problems.
    inside, why = listed_path(directory, fname)
    if inside is None:
        problems.append(Problem(fname, 0, "", f"not read: {why}"))
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        problems.append(Problem(fname, 0, "", f"cannot read ({e.strerror or e})"))
        return []
    if not stat.S_ISREG(mode):
        problems.append(Problem(fname, 0, "", "not a regular file (not read)"))
        return []
    header, rows = _read_csv_rows(path, fname, problems)
    if header is None:
        return []
    ok = True
    for col in required:
        if col not in header:
            problems.append(Problem(fname, 1, col, "required column missing"))
            ok = False
    for col in header:
        if col not in required and col not in optional:
            problems.append(Problem(fname, 1, col, "unknown column"))
    if len(set(header)) != len(header):
        problems.append(Problem(fname, 1, "", "a column name appears twice"))
        ok = False
    if not ok:
        return []
    out = []
    for line, rec in rows:
        if len(rec) != len(header):
            problems.append(Problem(fname, line, "", f"{len(rec)} fields, header has {len(header)}"))
            continue
        out.append((line, dict(zip(header, rec))))
    return out


def _float(v: str):
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _avg_cost_problem(text: str) -> str | None:
    """Why a ``groups.csv`` ``avg_cost`` cell is not a usable amount of yuan (None when it is).

    The value is kept as float64 yuan (``RuleSet.groups``) and converted to fen through its
    shortest text (:func:`dipengine.money.yuan_to_fen`), exactly and half up; so the text must
    parse both as a number and as yuan, and must not carry more digits than a float64 holds
    (else the fen of the float would differ from the fen of the text).
    """
    x = _float(text)
    try:
        fen = _money.yuan_text_to_fen(text)
    except ValueError:
        fen = None
    if x is None or fen is None or x < 0 or fen < 0:
        return f"avg_cost must be a non-negative number of yuan, got {text!r}"
    if _money.yuan_float_to_fen(x) != fen:
        return f"avg_cost {text!r} has more digits than a float64 holds (the fen would change)"
    return None


def option_problem(k: str, v) -> str | None:
    """What is wrong with the value ``v`` of the rule-set option ``k`` (a known key), or None.

    The checks of ``rules check`` (and of ``catalog build``'s options, which are the same keys).
    """
    seq = (list, tuple)
    if k == "match_mode" and v not in ("any_of", "all_listed"):
        return "must be 'any_of' or 'all_listed'"
    if k == "cci_levels" and not (
        isinstance(v, seq) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        and 0 < v[0] <= v[1] <= v[2]
    ):
        return "must be three increasing positive integers [cci_1, cci_2, cci_3]"
    if k in ("severity_min_los", "death_discharge_mode", "conservative_max_level") and not (
        isinstance(v, int) and not isinstance(v, bool) and v >= 0
    ):
        return "must be a non-negative integer"
    if k == "conservative_max_class" and v not in TREAT_CLASSES:
        return f"must be one of {', '.join(TREAT_CLASSES)}"
    if k in ("main_procedure_first", "proc_prefix") and not isinstance(v, bool):
        return "must be true or false"
    if k == "plus_main_term" and v not in ("first", "any"):
        return "must be 'first' or 'any'"
    if k == "tier_order" and not (isinstance(v, seq) and sorted(map(str, v)) == sorted(TIERS)
                                  and len(set(map(str, v))) == len(TIERS)):
        return f"must list each of the {len(TIERS)} kinds once: {', '.join(TIERS)}"
    if k == "tie_break" and not (isinstance(v, seq) and all(isinstance(x, str) and x in TIE_BREAKS for x in v)
                                 and len(set(v)) == len(v)):
        return f"must be a list of distinct tie-breaks among {', '.join(TIE_BREAKS)}"
    if k == "age_bands":
        if not isinstance(v, seq) or not all(isinstance(b, str) for b in v):
            return "must be a list of 'name:low:high' strings"
        names = set()
        for band in v:
            try:
                name = parse_age_band(band)[0]
            except ValueError as e:
                return str(e)
            if name in names:
                return f"age band {name} twice"
            names.add(name)
    return None


def _check_options(manifest: dict, mtext: str, problems: list[Problem]) -> dict:
    """Options of the manifest merged over the defaults; problems for bad ones."""

    def line_of(key):
        for no, ln in enumerate(mtext.splitlines(), 1):
            if ln.strip().startswith(key):
                return no
        return 0

    opts = dict(DEFAULT_OPTIONS)
    given = manifest.get("options", {})
    if not isinstance(given, dict):
        problems.append(Problem("manifest.toml", line_of("options"), "options", "[options] must be a table"))
        return opts
    if "preset" in given:
        # a named preset's options, under the ones the manifest writes itself (docs/presets.md)
        given = dict(given)
        name = given.pop("preset")
        try:
            given = {**load_preset(name).options, **given}
        except PresetError as e:
            problems.append(Problem("manifest.toml", line_of("preset"), "preset", str(e)))
    for k, v in given.items():
        if k not in DEFAULT_OPTIONS:
            problems.append(Problem("manifest.toml", line_of(k), k, "unknown option"))
            continue
        bad = option_problem(k, v)
        if bad:
            problems.append(Problem("manifest.toml", line_of(k), k, f"option {k} = {v!r}: {bad}"))
        else:
            opts[k] = v
    return opts


def _check_head(directory: Path):
    """The cheap part of :func:`_check`: directory, manifest, sha256 of every table, options.

    Returns ``(problems, manifest, mtext, options)``; ``manifest`` is ``None`` when the
    directory does not exist (then ``problems`` says so and nothing else is checked).
    """
    problems: list[Problem] = []
    if not directory.is_dir():
        return [Problem(str(directory), 0, "", "rule-set directory not found")], None, "", dict(DEFAULT_OPTIONS)
    mpath = directory / "manifest.toml"
    manifest: dict = {}
    mtext = ""
    if not os.path.lexists(mpath):
        problems.append(Problem("manifest.toml", 0, "", "manifest.toml missing"))
    else:
        try:
            manifest, mtext = read_manifest_text(directory)
        except DataError as e:
            problems.append(Problem("manifest.toml", 0, "", e.message))
    if manifest:
        for key in ("name", "version"):
            if not isinstance(manifest.get(key), str) or not manifest.get(key):
                problems.append(Problem("manifest.toml", key_line(mtext, key, None), key,
                                        f"'{key}' missing (a non-empty string)"))
        _check_effective(manifest, mtext, problems)
        for fp in check_files(directory, manifest, mtext):
            problems.append(Problem(fp.file, fp.line, "files" if fp.file == "manifest.toml" else "", fp.message))
        listed = manifest.get("files", {}) if isinstance(manifest.get("files"), dict) else {}
        for fname in TABLES:
            if os.path.lexists(directory / fname) and fname not in listed:
                problems.append(Problem(fname, 0, "", "not listed in manifest.toml [files] (no sha256)"))
    options = _check_options(manifest, mtext, problems) if manifest else dict(DEFAULT_OPTIONS)
    return problems, manifest, mtext, options


def manifest_date(v) -> _dt.date | None:
    """A manifest's ``effective_from``/``effective_to``: a TOML date, or ISO text ``"2027-01-01"``.

    ``None`` when absent; raises ValueError when it is neither (a date-time is not a date).
    """
    if v is None:
        return None
    if isinstance(v, _dt.datetime):
        raise ValueError(f"{v.isoformat()} is a date-time, not a date")
    if isinstance(v, _dt.date):
        return v
    if isinstance(v, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", v):
        try:
            return _dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise ValueError(f"{v!r} is not a date YYYY-MM-DD")


def _check_effective(manifest: dict, mtext: str, problems: list[Problem]) -> None:
    """``effective_from`` / ``effective_to``: dates (when given), from <= to."""
    got = {}
    for key in ("effective_from", "effective_to"):
        try:
            got[key] = manifest_date(manifest.get(key))
        except ValueError as e:
            problems.append(Problem("manifest.toml", key_line(mtext, key, None), key, f"{key}: {e}"))
    lo, hi = got.get("effective_from"), got.get("effective_to")
    if lo is not None and hi is not None and hi < lo:
        problems.append(Problem("manifest.toml", key_line(mtext, "effective_to", None), "effective_to",
                                f"effective_to {hi} is before effective_from {lo}"))


def _check(directory: Path, head=None):
    """Check a rule set; returns ``(problems, manifest, options, rows by file)``.

    ``head`` is the result of :func:`_check_head` when the caller already has it.
    """
    directory = Path(directory)
    problems, manifest, _mtext, options = _check_head(directory) if head is None else head
    problems = list(problems)
    rows: dict[str, list | None] = {}
    if manifest is None:
        return problems, {}, options, rows

    for fname in TABLES:
        rows[fname] = _table_rows(directory, fname, problems)

    # groups.csv
    codes_seen: dict[str, int] = {}
    keys_seen: dict[tuple, int] = {}
    n_blank = 0
    for line, r in rows["groups.csv"] or []:
        f = "groups.csv"
        code = r["dip_code"]
        if not code:
            problems.append(Problem(f, line, "dip_code", "empty dip_code"))
        elif code in codes_seen:
            problems.append(Problem(f, line, "dip_code", f"duplicate dip_code {code!r} (first on line {codes_seen[code]})"))
        else:
            codes_seen[code] = line
        gtype, cls, dx, expr = r["group_type"], r["treat_class"], r["dx_key"], r["proc_expr"]
        if gtype not in GROUP_TYPES:
            problems.append(Problem(f, line, "group_type", f"unknown group_type {gtype!r} (one of {', '.join(GROUP_TYPES)})"))
            gtype = None
        if gtype == "blank":
            if cls and cls not in TREAT_CLASSES:
                problems.append(Problem(f, line, "treat_class", f"unknown treat_class {cls!r}"))
        elif cls not in TREAT_CLASSES:
            problems.append(Problem(f, line, "treat_class", f"unknown treat_class {cls!r} (one of {', '.join(TREAT_CLASSES)})"))
            cls = None
        terms = None
        try:
            terms = parse_proc_expr(expr)
        except ValueError as e:
            problems.append(Problem(f, line, "proc_expr", f"malformed proc_expr: {e}"))
        for code in sorted({c for t in terms or () for c in t if not _PROC_COMPLETE.match(c)}):
            if options["proc_prefix"]:
                break
            # Terms match whole codes: a prefix would take no case (NO_GROUP) without a word.
            problems.append(Problem(f, line, "proc_expr",
                                    f"{code!r} is not a complete procedure code (a prefix?); terms match whole "
                                    "codes only: list the full codes (rules import --proc-prefix expand does) or "
                                    "set [options] proc_prefix = true"))
        score = _float(r["score"])
        if score is None or score <= 0:
            problems.append(Problem(f, line, "score", f"score must be a positive number, got {r['score']!r}"))
        avg_problem = _avg_cost_problem(r["avg_cost"])
        if avg_problem:
            problems.append(Problem(f, line, "avg_cost", avg_problem))
        n = r.get("n_cases", "")
        if n and not (n.isdigit() and n.isascii()):
            problems.append(Problem(f, line, "n_cases", f"n_cases must be a non-negative integer, got {n!r}"))
        if gtype in ("core", "basic"):
            if not _DX_SUB.match(dx):
                problems.append(Problem(f, line, "dx_key", f"{gtype} dx_key must be a subcategory like 'K35.8', got {dx!r}"))
            if terms is not None and cls is not None and (len(terms) == 0) != (cls == "conservative"):
                problems.append(Problem(f, line, "treat_class",
                                        "conservative groups have an empty proc_expr and procedure groups a non-empty one"))
            if terms is not None:
                key = ("sub", dx, canonical_expr(terms, options))
                if key in keys_seen:
                    problems.append(Problem(f, line, "proc_expr",
                                            f"same dx_key {dx!r} and proc_expr {expr!r} as line {keys_seen[key]}"))
                else:
                    keys_seen[key] = line
        elif gtype == "comprehensive":
            m = _DX_RANGE.match(dx)
            if "-" in dx:
                if not m or category_number(m.group(1)) > category_number(m.group(2)):
                    problems.append(Problem(f, line, "dx_key", f"malformed range {dx!r} (like 'A00-B99', start <= end)"))
            elif not _DX_PREFIX.match(dx):
                problems.append(Problem(f, line, "dx_key",
                                        f"comprehensive dx_key must be a category 'K35', a shorter prefix or a range 'A00-B99', got {dx!r}"))
            if expr:
                problems.append(Problem(f, line, "proc_expr", "comprehensive groups take no proc_expr (they match on treat_class)"))
            key = ("comp", dx, cls)
            if key in keys_seen:
                problems.append(Problem(f, line, "dx_key", f"same dx_key {dx!r} and treat_class {cls!r} as line {keys_seen[key]}"))
            else:
                keys_seen[key] = line
        elif gtype == "blank":
            n_blank += 1
            if dx or expr:
                problems.append(Problem(f, line, "dx_key" if dx else "proc_expr", "the blank group has empty dx_key and proc_expr"))
            if n_blank > 1:
                problems.append(Problem(f, line, "group_type", "more than one blank group"))

    # procedures.csv
    seen: dict[str, int] = {}
    for line, r in rows["procedures.csv"] or []:
        f = "procedures.csv"
        if not _PROC.match(r["code"]):
            problems.append(Problem(f, line, "code", f"{r['code']!r} is not a well-formed procedure code"))
        elif r["code"] in seen:
            problems.append(Problem(f, line, "code", f"duplicate code {r['code']!r} (first on line {seen[r['code']]})"))
        else:
            seen[r["code"]] = line
        if r["class"] not in TREAT_CLASSES:
            problems.append(Problem(f, line, "class", f"unknown class {r['class']!r} (one of {', '.join(TREAT_CLASSES)})"))
        lv = r.get("level", "")
        if lv and lv not in ("1", "2", "3", "4"):
            problems.append(Problem(f, line, "level", f"level must be 1-4 or empty, got {lv!r}"))

    for fname, pat, what in (("excluded_dx.csv", _DX_ANY_PREFIX, "diagnosis"), ("excluded_proc.csv", _PROC_ANY_PREFIX, "procedure")):
        seen = {}
        for line, r in rows[fname] or []:
            if not pat.match(r["code"]):
                problems.append(Problem(fname, line, "code", f"{r['code']!r} is not a {what} code prefix"))
            elif r["code"] in seen:
                problems.append(Problem(fname, line, "code", f"duplicate code {r['code']!r}"))
            seen[r["code"]] = line

    band_names = [parse_age_band(b)[0] for b in options["age_bands"]]
    subtypes = set(FIXED_SUBTYPES) | set(band_names)
    seen = {}
    for line, r in rows["aux_coefficients.csv"] or []:
        f = "aux_coefficients.csv"
        if r["dip_code"] not in codes_seen:
            problems.append(Problem(f, line, "dip_code", f"dip_code {r['dip_code']!r} not in groups.csv"))
        if r["subtype"] not in subtypes:
            problems.append(Problem(f, line, "subtype", f"unknown subtype {r['subtype']!r}"))
        key = (r["dip_code"], r["subtype"])
        if key in seen:
            problems.append(Problem(f, line, "subtype", f"subtype given twice for {r['dip_code']!r} (line {seen[key]})"))
        seen[key] = line
        c = _float(r["coefficient"])
        if c is None or c <= 0:
            problems.append(Problem(f, line, "coefficient", f"coefficient must be a positive number, got {r['coefficient']!r}"))

    for fname, col, check in (
        ("cci_weights.csv", "weight", lambda v: v.isdigit() and v.isascii() and int(v) > 0),
        ("severity_dx.csv", "level", lambda v: v in SEVERITY_LEVELS),
    ):
        seen = {}
        for line, r in rows[fname] or []:
            if not _DX_ANY_PREFIX.match(r["dx_prefix"]):
                problems.append(Problem(fname, line, "dx_prefix", f"{r['dx_prefix']!r} is not a diagnosis code prefix"))
            elif r["dx_prefix"] in seen:
                problems.append(Problem(fname, line, "dx_prefix", f"duplicate dx_prefix {r['dx_prefix']!r} (line {seen[r['dx_prefix']]})"))
            seen[r["dx_prefix"]] = line
            if not check(r[col]):
                want = "a positive integer" if col == "weight" else "II or III"
                problems.append(Problem(fname, line, col, f"{col} must be {want}, got {r[col]!r}"))
    return problems, manifest, options, rows


def check_rules(path) -> list[Problem]:
    """Every problem of the rule set in ``path`` (empty list when it loads).

    Problems name file, line (1 = header, 0 = the file as a whole) and column. ``path`` may be
    the name of a shipped rule set (``"demo"``, :func:`resolve_rules_dir`).
    """
    return _check(resolve_rules_dir(path))[0]


def check_reachable(rs: "RuleSet") -> list[Problem]:
    """Warnings about a loaded rule set: groups no case can reach, and procedure codes of
    ``procedures.csv`` that look like prefixes (the class lookup matches whole codes).

    A group is unreachable when every case that could take it is stopped first: its
    ``dx_key`` lies under an ``excluded_dx.csv`` prefix (such cases are EXCLUDED), a term of
    its ``proc_expr`` lists only codes under ``excluded_proc.csv`` prefixes (not counted, so
    the term never holds), or (comprehensive) more specific groups of its class take every
    category it covers. Lines are those of the CSV files (1 = header), as in :func:`check_rules`.
    """
    out: list[Problem] = []
    g = rs.groups.to_pydict()
    excl_dx = rs.excluded_dx["code"].to_pylist()
    excl_proc = rs.excluded_proc["code"].to_pylist()
    comp = rs.compiled.comp_lookup.reshape(-1, len(TREAT_CLASSES))

    def under(code, prefixes):
        return next((p for p in prefixes if code.startswith(p)), None)

    def category_excluded(n):
        return under(f"{chr(65 + n // 100)}{n % 100:02d}", excl_dx) is not None

    for i, (code, gtype, dx, expr) in enumerate(zip(g["dip_code"], g["group_type"], g["dx_key"], g["proc_expr"])):
        line = i + 2
        if gtype in ("core", "basic"):
            hit = under(dx, excl_dx)
            if hit is not None:
                out.append(Problem("groups.csv", line, "dx_key", f"group {code!r} can never be reached: its dx_key "
                                   f"{dx!r} is under the excluded diagnosis {hit!r} (excluded_dx.csv)"))
                continue
            for term in parse_proc_expr(expr):
                if all(under(c, excl_proc) is not None for c in term):
                    out.append(Problem("groups.csv", line, "proc_expr",
                                       f"group {code!r} can never be reached: every code of its term "
                                       f"{'/'.join(term)!r} is not counted for grouping (excluded_proc.csv)"))
                    break
        elif gtype == "comprehensive":
            cells = np.flatnonzero((comp == i).any(axis=1))
            live = [n for n in cells if not category_excluded(int(n))]
            if not live:
                why = ("every category it covers is excluded (excluded_dx.csv)" if len(cells)
                       else "more specific comprehensive groups of its treat_class take every category it covers")
                out.append(Problem("groups.csv", line, "dx_key", f"group {code!r} can never be reached: {why}"))
    for i, c in enumerate(rs.procedures["code"].to_pylist()):
        if not is_complete_proc(c):
            out.append(Problem("procedures.csv", i + 2, "code",
                               f"{c!r} is not a complete procedure code (a prefix?): procedure classes are looked up "
                               "by whole code (then without the x### extension), so no performed code takes it"))
    return out


# --------------------------------------------------------------------------- RuleSet


@dataclass
class RuleSet:
    """A checked rule set.

    Attributes
    ----------
    path : Path
    manifest : dict
        The parsed ``manifest.toml``.
    name, version : str
    options : dict
        Regional grouping options (``[options]`` over :data:`DEFAULT_OPTIONS`).
    sha256 : dict
        File name -> sha256 hex digest, as verified at load.
    groups : pa.Table
        ``dip_code, dip_name, group_type, dx_key, proc_expr, treat_class`` (string; empty
        string where blank), ``score`` (float64, points), ``avg_cost`` (float64, yuan),
        ``n_cases`` (int64). Row order = file order = group index.
    procedures, excluded_dx, excluded_proc, aux_coefficients, cci_weights, severity_dx : pa.Table
        The optional tables (empty tables with the columns when absent).
    compiled : Compiled
        Flat arrays for the Cython grouper (:func:`compile_rules`), built once at load.
    """

    path: Path
    manifest: dict
    name: str
    version: str
    options: dict
    sha256: dict
    groups: pa.Table
    procedures: pa.Table
    excluded_dx: pa.Table
    excluded_proc: pa.Table
    aux_coefficients: pa.Table
    cci_weights: pa.Table
    severity_dx: pa.Table
    compiled: "Compiled" = field(default=None, repr=False)

    @property
    def subtypes(self) -> list[str]:
        """Auxiliary subtype names in tie-break order (fixed subtypes, then age bands)."""
        return list(FIXED_SUBTYPES) + [parse_age_band(b)[0] for b in self.options["age_bands"]]


def _typed(rows, columns: dict) -> pa.Table:
    """Rows ``(line, {col: text})`` -> typed table; ``columns`` maps name -> converter."""
    data = {c: [conv(r.get(c, "")) for _line, r in rows or []] for c, conv in columns.items()}
    return pa.table({c: pa.array(v, type=_TYPES[c]) for c, v in data.items()})


_TYPES = {
    "dip_code": pa.string(), "dip_name": pa.string(), "group_type": pa.string(), "dx_key": pa.string(),
    "proc_expr": pa.string(), "treat_class": pa.string(), "score": pa.float64(), "avg_cost": pa.float64(),
    "n_cases": pa.int64(), "code": pa.string(), "class": pa.string(), "level": pa.int8(),
    "subtype": pa.string(), "coefficient": pa.float64(), "dx_prefix": pa.string(), "weight": pa.int32(),
    "category": pa.string(),
}


_S = str
# Columns of each table of a RuleSet: name -> converter from the checked CSV text.
_COLUMNS = {
    "groups.csv": {
        "dip_code": _S, "dip_name": _S, "group_type": _S, "dx_key": _S, "proc_expr": _S, "treat_class": _S,
        "score": float, "avg_cost": float, "n_cases": lambda v: int(v) if v else 0},
    "procedures.csv": {"code": _S, "class": _S, "level": lambda v: int(v) if v else 0},
    "excluded_dx.csv": {"code": _S},
    "excluded_proc.csv": {"code": _S},
    "aux_coefficients.csv": {"dip_code": _S, "subtype": _S, "coefficient": float},
    "cci_weights.csv": {"dx_prefix": _S, "weight": int, "category": _S},
    "severity_dx.csv": {"dx_prefix": _S, "level": SEVERITY_LEVELS.get},
}


def _schema(fname: str) -> pa.Schema:
    return pa.schema([(c, _TYPES[c]) for c in _COLUMNS[fname]])


def load_rules(path, *, cache=None) -> RuleSet:
    """Load, check and compile a rule set, through the compiled-rules cache.

    The manifest and the sha256 of every table are always verified from the files. When they
    match a cache entry (same engine, manifest bytes, table digests and options), the row
    checks and the compilation are skipped and the entry is read instead; otherwise the rule
    set is checked and compiled and the entry written (see :mod:`dipengine.rules` "cache" and
    ``docs/rules-format.md``). The result is the same either way.

    Parameters
    ----------
    path : path
        Rule-set directory, or the name of a shipped rule set (``"demo"``): an existing path always
        wins (:func:`resolve_rules_dir`, as ``--rules`` on the command line).
    cache : bool, optional
        ``False`` never reads or writes the cache; ``True`` uses it even when
        ``DIPENGINE_CACHE=0``; ``None`` (default) uses it unless ``DIPENGINE_CACHE=0``.

    Raises
    ------
    RuleSetError
        Listing every problem (``.problems``) when :func:`check_rules` finds any.
    """
    path = resolve_rules_dir(path)
    head = _check_head(path)
    problems, manifest, mtext, options = head
    entry = why = None
    if not problems and cache_enabled(cache):
        entry = _cache_file(_cache_key(mtext, manifest, options))
        if entry is not None:
            rs, why = _cache_read(entry, path, manifest, options, mtext)
            if rs is not None:
                return rs
    rs = _load_checked(path, head)
    if entry is not None:
        wrote = _cache_write(entry, rs, mtext)
        if why is not None and why != MISSING:
            _warn_rejected(entry, why, wrote)
    return rs


def _load_checked(path: Path, head) -> RuleSet:
    """Check every row (:func:`_check`) and compile: the uncached load."""
    problems, manifest, options, rows = _check(path, head)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise RuleSetError(f"rule set does not check: {first}{more}", problems=problems, file=path)
    tables = {fname[:-4]: _typed(rows[fname], cols) for fname, cols in _COLUMNS.items()}
    rs = RuleSet(path=path, manifest=manifest, name=manifest["name"], version=manifest["version"],
                 options=options, sha256=dict(manifest.get("files", {})), **tables)
    rs.compiled = compile_rules(rs)
    return rs


def write_rule_set(directory, tables: dict, meta: dict) -> Path:
    """Write a rule set: one CSV per table plus ``manifest.toml`` with their sha256.

    Parameters
    ----------
    directory : path
        Replaced whole and atomically (written beside it, then renamed).
    tables : dict
        File name (``"groups.csv"`` or ``"groups"``) -> ``pa.Table`` (or list of dicts).
        Columns are written in the order given; floats in their shortest round-trip form.
    meta : dict
        Manifest keys (``name``, ``version``, ``scheme``, ``effective_from`` ...), optionally
        an ``options`` dict (the ``[options]`` table).
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        names = []
        for fname, table in tables.items():
            if not fname.endswith(".csv"):
                fname += ".csv"
            if isinstance(table, pa.Table):
                cols = table.column_names
                records = table.to_pylist()
            else:
                records = list(table)
                cols = list(records[0]) if records else list(TABLES.get(fname, ((), (), False))[0])
            with open(tmp / fname, "w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(cols)
                for rec in records:
                    w.writerow(["" if rec.get(c) is None else (repr(rec[c]) if isinstance(rec[c], float) else rec[c])
                                for c in cols])
            names.append(fname)
        write_manifest(tmp, meta, names)
    return directory


# --------------------------------------------------------------------------- compilation


@dataclass
class Compiled:
    """Flat arrays of a rule set, walked by ``dipengine._libs.grouping`` (all C-contiguous).

    Group index = row of ``groups``. Vocabulary arrays (``pa.Array`` of strings) map a batch's
    codes to integer ids with ``pc.index_in``. See ``docs/grouping.md``.
    """

    sub_vocab: pa.Array          # subcategory keys of core/basic groups
    sub_off: np.ndarray          # int64[n_sub + 1] -> sub_cand
    sub_cand: np.ndarray         # int32 candidate group indices per subcategory, by row order
    sub_cons: np.ndarray         # int32[n_sub]: its one candidate without a procedure expression
                                 # (-1 none, -2 several): all a case without counted procedures can match
    proc_vocab: pa.Array         # procedure codes used in expressions
    g_type: np.ndarray           # int8: 0 core, 1 basic, 2 comprehensive, 3 blank
    g_class: np.ndarray          # int8 treat_class rank (-1 blank without class)
    g_rank: np.ndarray           # int8 priority rank (PRIORITY)
    g_avg_fen: np.ndarray        # int64 avg_cost in fen
    g_term_off: np.ndarray       # int64[n_groups + 1] -> term_off
    term_off: np.ndarray         # int64[n_terms + 1] -> term_codes
    term_codes: np.ndarray       # int32 procedure ids
    comp_lookup: np.ndarray      # int32[2600 * 4]: (category number, class) -> comprehensive group
    blank: int                   # blank group index or -1
    aux_off: np.ndarray          # int64[n_groups + 1] -> aux_sub / aux_coef
    aux_sub: np.ndarray          # int8 subtype index (RuleSet.subtypes order)
    aux_coef: np.ndarray         # float64 coefficients
    band_lo: np.ndarray          # int32 age-key limits per age band
    band_hi: np.ndarray
    cci_cuts: np.ndarray         # int32[3]
    cci_categories: list         # category names (index = cci category id)
    match_all: int               # 1 = all_listed mode
    severity_min_los: int
    death_mode: int
    cons_max_class: int
    cons_max_level: int
    comp_rank: np.ndarray        # int8[4]: priority rank of a comprehensive group per class
    tie_order: np.ndarray        # int8 tie-breaks in order: 0 main procedure, 1 terms, 2 matched, 3 cost
    main_any: int                # 1 = the main procedure may match any "+" term
    proc_parent: np.ndarray      # int32[len(proc_vocab)] longest prefix code's id (-1); empty: no prefixes
    proc_class: dict             # procedures.csv code -> (class rank, level)


def compile_rules(rs: RuleSet) -> Compiled:
    """Compile a checked rule set into flat arrays (once per rule version)."""
    g = rs.groups.to_pydict()
    n = rs.groups.num_rows
    gtype = g["group_type"]
    parsed = [parse_proc_expr(e) for e in g["proc_expr"]]
    proc_codes = sorted({c for terms in parsed for t in terms for c in t})
    proc_id = {c: i for i, c in enumerate(proc_codes)}
    subs = sorted({g["dx_key"][i] for i in range(n) if gtype[i] in ("core", "basic")})
    sub_id = {s: i for i, s in enumerate(subs)}
    cand: list[list[int]] = [[] for _ in subs]
    for i in range(n):
        if gtype[i] in ("core", "basic"):
            cand[sub_id[g["dx_key"][i]]].append(i)
    sub_off = np.zeros(len(subs) + 1, np.int64)
    sub_off[1:] = np.cumsum([len(c) for c in cand])
    plain = [[i for i in c if not parsed[i]] for c in cand]
    sub_cons = np.array([p[0] if len(p) == 1 else (-2 if p else -1) for p in plain], np.int32)
    cls_rank = {c: k for k, c in enumerate(TREAT_CLASSES)}
    g_class = np.array([cls_rank.get(c, -1) for c in g["treat_class"]], np.int8)
    tier = {k: r for r, k in enumerate(rs.options["tier_order"])}
    tier["blank:"] = len(tier)
    g_rank = np.array([tier[f"{t}:{'' if t == 'blank' else c}"] for t, c in zip(gtype, g["treat_class"])], np.int8)
    comp_rank = np.array([tier[f"comprehensive:{c}"] for c in TREAT_CLASSES], np.int8)
    g_avg_fen = _avg_cost_fen(rs.groups["avg_cost"])
    g_term_off = np.zeros(n + 1, np.int64)
    g_term_off[1:] = np.cumsum([len(t) for t in parsed])
    terms = [t for ts in parsed for t in ts]
    term_off = np.zeros(len(terms) + 1, np.int64)
    term_off[1:] = np.cumsum([len(t) for t in terms])
    term_codes = np.array([proc_id[c] for t in terms for c in t], np.int32)

    # Comprehensive lookup: per (category, class), the longest prefix, then the narrowest range.
    comp_lookup = np.full(2600 * 4, -1, np.int32)
    prefix = {}
    ranges = []
    for i in range(n):
        if gtype[i] != "comprehensive":
            continue
        key = g["dx_key"][i]
        k = cls_rank[g["treat_class"][i]]
        m = _DX_RANGE.match(key)
        if m:
            lo, hi = category_number(m.group(1)), category_number(m.group(2))
            ranges.append((hi - lo, i, lo, hi, k))
        else:
            prefix[(key, k)] = i
    # Fill from the weakest match to the strongest so the strongest is written last: ranges
    # widest first (ties: higher row first), then prefixes of length 1, 2, 3.
    table = comp_lookup.reshape(2600, 4)
    for _w, i, lo, hi, k in sorted(ranges, key=lambda r: (-r[0], -r[1])):
        table[lo:hi + 1, k] = i
    for (key, k), i in sorted(prefix.items(), key=lambda kv: len(kv[0][0])):
        base = (ord(key[0]) - 65) * 100
        if len(key) == 1:
            table[base:base + 100, k] = i
        elif len(key) == 2:
            table[base + int(key[1]) * 10:base + int(key[1]) * 10 + 10, k] = i
        else:
            table[base + int(key[1:]), k] = i
    blank = next((i for i in range(n) if gtype[i] == "blank"), -1)

    subtypes = rs.subtypes
    st_id = {s: k for k, s in enumerate(subtypes)}
    code_row = {c: i for i, c in enumerate(g["dip_code"])}
    aux = [[] for _ in range(n)]
    a = rs.aux_coefficients.to_pydict()
    for code, st, coef in zip(a["dip_code"], a["subtype"], a["coefficient"]):
        aux[code_row[code]].append((st_id[st], coef))
    aux_off = np.zeros(n + 1, np.int64)
    aux_off[1:] = np.cumsum([len(x) for x in aux])
    bands = [parse_age_band(b) for b in rs.options["age_bands"]]
    cci_cats = []
    for name in cci_category_names(rs):
        if name not in cci_cats:
            cci_cats.append(name)
    o = rs.options
    tie_order = ([TIE_MAIN] if o["main_procedure_first"] else []) + [TIE_BREAKS.index(t) + 1 for t in o["tie_break"]]
    proc_parent = _proc_parents(proc_codes) if o["proc_prefix"] else np.zeros(0, np.int32)
    return Compiled(
        sub_vocab=pa.array(subs, pa.string()),
        sub_off=sub_off,
        sub_cand=np.array([i for c in cand for i in c], np.int32),
        sub_cons=sub_cons,
        proc_vocab=pa.array(proc_codes, pa.string()),
        g_type=np.array([GROUP_TYPES.index(t) for t in gtype], np.int8),
        g_class=g_class,
        g_rank=g_rank,
        g_avg_fen=g_avg_fen,
        g_term_off=g_term_off,
        term_off=term_off,
        term_codes=term_codes,
        comp_lookup=comp_lookup,
        blank=blank,
        aux_off=aux_off,
        aux_sub=np.array([s for x in aux for s, _ in x], np.int8),
        aux_coef=np.array([c for x in aux for _, c in x], np.float64),
        band_lo=np.array([b[1] for b in bands], np.int32),
        band_hi=np.array([b[2] for b in bands], np.int32),
        cci_cuts=np.array(o["cci_levels"], np.int32),
        cci_categories=cci_cats,
        match_all=1 if o["match_mode"] == "all_listed" else 0,
        severity_min_los=int(o["severity_min_los"]),
        death_mode=int(o["death_discharge_mode"]),
        cons_max_class=cls_rank[o["conservative_max_class"]],
        cons_max_level=int(o["conservative_max_level"]),
        comp_rank=comp_rank,
        tie_order=np.array(tie_order, np.int8),
        main_any=1 if o["plus_main_term"] == "any" else 0,
        proc_parent=proc_parent,
        proc_class=_proc_class(rs.procedures),
    )


def _proc_parents(proc_codes: list[str]) -> np.ndarray:
    """For prefix matching: per procedure id (``proc_codes`` sorted), the id of the longest other
    code that is a prefix of it (int32, -1 none). A prefix sorts before its extensions, so a
    parent id is always smaller than its child's and every chain ends."""
    ids = {c: i for i, c in enumerate(proc_codes)}
    out = np.full(len(proc_codes), -1, np.int32)
    for i, c in enumerate(proc_codes):
        for L in range(len(c) - 1, 0, -1):
            j = ids.get(c[:L])
            if j is not None:
                out[i] = j
                break
    return out


def _avg_cost_fen(avg_cost) -> np.ndarray:
    """int64 fen of the ``avg_cost`` column (float64 yuan), exact and half up through the float's
    shortest text (``1.005`` -> 101 fen; the float ``1.005 * 100`` would round to 100)."""
    fen, status = _money.yuan_to_fen(avg_cost)
    bad = (status != _money.OK)
    if bad.any():  # only a rule set that did not go through check_rules (negative, NaN)
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"groups avg_cost row {i}: {avg_cost[i]} is not an amount of yuan")
    return np.ascontiguousarray(fen, np.int64)


def _proc_class(procedures: pa.Table) -> dict:
    """``procedures.csv`` code -> (treat_class rank, level) (``Compiled.proc_class``)."""
    cls_rank = {c: k for k, c in enumerate(TREAT_CLASSES)}
    pr = procedures.to_pydict()
    return {c: (cls_rank[k], lv) for c, k, lv in zip(pr["code"], pr["class"], pr["level"])}


def cci_category_names(rs: RuleSet) -> list[str]:
    """Comorbidity category of each ``cci_weights`` row (its ``category``, else its prefix)."""
    return [c or p for p, c in zip(rs.cci_weights["dx_prefix"].to_pylist(), rs.cci_weights["category"].to_pylist())]


def longest_prefix(values: pa.Array, prefixes: list[str]) -> np.ndarray:
    """Row of the longest entry of ``prefixes`` that starts each value (int32, -1 none).

    Vectorised: one ``pc.index_in`` per distinct prefix length, so cost is O(len(values)).
    """
    out = np.full(len(values), -1, np.int32)
    if len(values) == 0 or not prefixes:
        return out
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_len.setdefault(len(p), []).append(i)
    for L in sorted(by_len, reverse=True):
        rows = by_len[L]
        vocab = pa.array([prefixes[i] for i in rows], pa.string())
        head = pc.utf8_slice_codeunits(values, 0, L)
        idx = pc.fill_null(pc.index_in(head, value_set=vocab), -1).to_numpy(zero_copy_only=False)
        hit = (idx >= 0) & (out < 0)
        out[hit] = np.asarray(rows, np.int32)[idx[hit]]
    return out


# --------------------------------------------------------------------------- compiled-rules cache
#
# One file per rule set, ``rules-<key>.npz`` (uncompressed, loaded with allow_pickle=False):
# the Compiled numpy arrays as members, each RuleSet table and vocabulary as Arrow IPC file
# bytes (uint8 members ``table.<name>`` / ``vocab.<name>``) and the scalars, small lists and
# the key as JSON bytes (``meta``). An entry is trusted only once verified: ``meta`` holds the
# sha256 of everything else stored (every member's name, dtype, shape and bytes, and the rest of
# ``meta``) and the digests of the manifest and tables it was compiled from; both are checked on
# every read. Zip CRC-32 catches a damaged file. A missing entry is a plain miss; an entry that
# exists but fails (damaged, foreign, tampered, compiled from other tables) is recompiled,
# rewritten and reported once with a :class:`CacheWarning`. Any failure to write is ignored.

CACHE_FORMAT = 3
_ENGINE_SOURCES = ("rules.py", "codes.py")  # compiled content depends on these files
_counters = {"hits": 0, "misses": 0, "writes": 0, "rejected": 0}
_warned: set = set()
_fingerprints: dict = {}  # entry path -> (inode, size, mtime) when last read


class CacheWarning(UserWarning):
    """A compiled-rules cache entry failed verification and was recompiled (results are unaffected)."""
_source_digest = None


def cache_dir() -> Path:
    """Folder of compiled rule sets: ``$DIPENGINE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/dipengine/rules``, else ``~/.cache/dipengine/rules``."""
    env = os.environ.get("DIPENGINE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "dipengine" / "rules"


def cache_enabled(cache=None) -> bool:
    """Whether :func:`load_rules` uses the cache: ``cache`` when given, else not ``DIPENGINE_CACHE=0``."""
    if cache is not None:
        return bool(cache)
    return os.environ.get("DIPENGINE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_stats() -> dict:
    """Counts of cache ``hits``, ``misses``, ``writes`` and ``rejected`` (entries that existed but failed
    verification: each is also a miss) in this process (a copy)."""
    return dict(_counters)


def _engine_digest() -> str:
    """sha256 of the engine version and the source of the modules compilation depends on."""
    global _source_digest
    if _source_digest is None:
        from dipengine import __version__

        h = hashlib.sha256(f"dipengine {__version__}\n".encode())
        here = Path(__file__).resolve().parent
        for name in _ENGINE_SOURCES:
            try:
                h.update((here / name).read_bytes())
            except OSError:
                h.update(b"?" + name.encode())
        _source_digest = h.hexdigest()
    return _source_digest


def _cache_key(mtext: str, manifest: dict, options: dict) -> str:
    """sha256 over (engine, cache format, manifest bytes, verified table digests, options)."""
    doc = {
        "engine": _engine_digest(),
        "format": CACHE_FORMAT,
        "manifest": hashlib.sha256(mtext.encode("utf-8")).hexdigest(),
        "files": sorted((str(k), str(v)) for k, v in manifest.get("files", {}).items()),
        "options": options,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _cache_file(key: str):
    """Path of the entry for ``key`` (``None`` when no cache location can be named)."""
    try:
        return cache_dir() / f"rules-{key}.npz"
    except (RuntimeError, OSError):  # no home directory
        return None


def _ipc_bytes(table: pa.Table) -> np.ndarray:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return np.frombuffer(sink.getvalue(), np.uint8)


def _ipc_table(arr: np.ndarray) -> pa.Table:
    return pa.ipc.open_file(pa.py_buffer(arr)).read_all()


_JSON_FIELDS = ("blank", "match_all", "severity_min_los", "death_mode", "cons_max_class", "cons_max_level",
                "cci_categories", "main_any")
_VOCAB_FIELDS = ("sub_vocab", "proc_vocab")
_DERIVED_FIELDS = ("proc_class",)  # rebuilt from the procedures table on read


def _sources(mtext: str, manifest: dict) -> dict:
    """What an entry was compiled from: sha256 of the manifest bytes and of every listed table."""
    files = manifest.get("files", {}) if isinstance(manifest.get("files"), dict) else {}
    return {"manifest": hashlib.sha256(mtext.encode("utf-8")).hexdigest(),
            "files": {str(k): str(v) for k, v in sorted(files.items())}}


def _content_digest(members: dict, meta: dict) -> str:
    """sha256 over every stored member (name, dtype, shape, bytes) and ``meta`` less its digest."""
    h = hashlib.sha256(b"dipengine compiled rules\n")
    for name in sorted(members):
        if name == "meta":
            continue
        arr = np.ascontiguousarray(members[name])
        h.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        h.update(b"\0")
        h.update(memoryview(arr).cast("B"))
    rest = {k: v for k, v in meta.items() if k != "digest"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()


def _cache_members(entry: Path, rs: RuleSet, mtext: str) -> dict:
    """The npz members of the entry of ``rs`` (``meta`` last, with its digest)."""
    c = rs.compiled
    members = {}
    meta = {"format": CACHE_FORMAT, "key": entry.stem[len("rules-"):], "dtypes": {},
            "sources": _sources(mtext, rs.manifest)}
    for f in fields(Compiled):
        v = getattr(c, f.name)
        if f.name in _JSON_FIELDS:
            meta[f.name] = v
        elif f.name in _VOCAB_FIELDS:
            members["vocab." + f.name] = _ipc_bytes(pa.table({"v": v}))
        elif f.name not in _DERIVED_FIELDS:
            members["array." + f.name] = np.ascontiguousarray(v)
            meta["dtypes"][f.name] = np.dtype(v.dtype).str
    for fname in _COLUMNS:
        members["table." + fname[:-4]] = _ipc_bytes(getattr(rs, fname[:-4]))
    if any(m.dtype.hasobject for m in members.values()):
        raise TypeError("an object array would need pickle")
    meta["digest"] = _content_digest(members, meta)
    members["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    return members


def _cache_write(entry: Path, rs: RuleSet, mtext: str) -> bool:
    """Write the entry atomically (temp file + rename); ``False`` (and nothing written) when that fails."""
    tmp = None
    try:
        members = _cache_members(entry, rs, mtext)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-rules-", suffix=".npz", dir=entry.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **members)
        os.replace(tmp, entry)
        tmp = None
        _counters["writes"] += 1
        return True
    except Exception:  # never fail a run because of the cache
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


MISSING = "missing"


class _Untrusted(ValueError):
    """An entry that reads but fails verification (the message says which check)."""


def _cache_read(entry: Path, path: Path, manifest: dict, options: dict, mtext: str):
    """``(RuleSet, None)`` from a verified entry, else ``(None, why)``; ``why`` is :data:`MISSING`
    when there is no entry, else what failed (damaged, foreign, digest, sources)."""
    try:
        if not entry.is_file():
            _counters["misses"] += 1
            return None, MISSING
        st = os.stat(entry)
        _fingerprints[str(entry)] = (st.st_ino, st.st_size, st.st_mtime_ns)
        with np.load(entry, allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
        meta = json.loads(data["meta"].tobytes().decode())
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != entry.stem[len("rules-"):]:
            raise _Untrusted("not the entry of this key")
        if meta.get("digest") != _content_digest(data, meta):
            raise _Untrusted("its content does not match the sha256 it stores")
        if meta.get("sources") != _sources(mtext, manifest):
            raise _Untrusted("compiled from other tables than the rule set's")
        tables = {}
        for fname in _COLUMNS:
            t = _ipc_table(data["table." + fname[:-4]])
            if not t.schema.equals(_schema(fname)):
                raise _Untrusted(f"schema of {fname}")
            tables[fname[:-4]] = t
        comp = {}
        for f in fields(Compiled):
            if f.name in _JSON_FIELDS:
                comp[f.name] = meta[f.name]
            elif f.name in _VOCAB_FIELDS:
                col = _ipc_table(data["vocab." + f.name]).column("v")
                if col.type != pa.string():
                    raise _Untrusted(f"type of {f.name}")
                comp[f.name] = col.combine_chunks()
            elif f.name not in _DERIVED_FIELDS:
                a = data["array." + f.name]
                if a.ndim != 1 or a.dtype.str != meta["dtypes"][f.name]:
                    raise _Untrusted(f"dtype of {f.name}")
                comp[f.name] = a
        comp["proc_class"] = _proc_class(tables["procedures"])
        rs = RuleSet(path=path, manifest=manifest, name=manifest["name"], version=manifest["version"],
                     options=options, sha256=dict(manifest.get("files", {})), **tables)
        rs.compiled = Compiled(**comp)
    except Exception as e:  # damaged, partial, foreign or tampered entry: rebuild it
        _counters["misses"] += 1
        _counters["rejected"] += 1
        return None, _why(e)
    _counters["hits"] += 1
    return rs, None


def _why(e: Exception) -> str:
    if isinstance(e, _Untrusted):
        return str(e)
    text = " ".join(str(e).split())
    if "pickle" in text:  # np.load(allow_pickle=False) met an object array or a pickle
        return "unreadable: it holds pickled objects (never loaded)"
    return f"unreadable: {type(e).__name__}: {text}" if text else f"unreadable: {type(e).__name__}"


def _warn_rejected(entry: Path, why: str, rewritten: bool) -> None:
    """Say once per bad entry (its path, file identity and cause) that it was not trusted."""
    key = (str(entry), _fingerprints.get(str(entry)), why)
    if key in _warned:
        return
    _warned.add(key)
    then = "recompiled the rule set and rewrote the entry" if rewritten else \
        "recompiled the rule set (the entry could not be rewritten)"
    warnings.warn(f"dipengine: compiled-rules cache entry {entry} not trusted ({why}); {then}",
                  CacheWarning, stacklevel=3)


@dataclass(frozen=True)
class CacheCheck:
    """What :func:`check_cache` found: ``status`` is ``"ok"``, ``"absent"``, ``"off"`` (no location),
    ``"repaired"`` (the entry differed from a fresh compile or failed verification, and was
    rewritten) or ``"unrepaired"`` (the same, but rewriting failed); ``detail`` says what differed."""

    status: str
    entry: Path | None
    detail: str = ""

    def __str__(self) -> str:
        if self.status == "ok":
            return f"cache: {self.entry} matches a fresh compile"
        if self.status == "absent":
            return f"cache: no entry ({self.entry})"
        if self.status == "off":
            return "cache: no cache location"
        done = "rewritten" if self.status == "repaired" else "could not be rewritten"
        return f"cache: {self.entry} was stale or tampered with ({self.detail}); {done}"


def _differences(a: RuleSet, b: RuleSet) -> list[str]:
    """Names of the tables and compiled fields in which two loads of a rule set differ."""
    out = []
    for fname in _COLUMNS:
        ta, tb = getattr(a, fname[:-4]), getattr(b, fname[:-4])
        if not (ta.schema.equals(tb.schema) and ta.equals(tb)):
            out.append(fname[:-4])
    for f in fields(Compiled):
        x, y = getattr(a.compiled, f.name), getattr(b.compiled, f.name)
        if isinstance(x, np.ndarray):
            same = isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
        elif isinstance(x, pa.Array):
            same = isinstance(y, pa.Array) and x.type == y.type and x.equals(y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            out.append(f.name)
    return out


def check_cache(path) -> CacheCheck | None:
    """Compare the cache entry of the rule set in ``path`` with a fresh compile, and repair it.

    ``None`` when the rule set does not check (see :func:`check_rules`). Otherwise the rule set is
    compiled afresh (never from the cache) and its entry, if there is one, is read and compared
    field by field, whether or not its stored sha256 agrees (a digest inside the entry can be
    recomputed by whoever edits it; the fresh compile cannot be fooled). A differing or unreadable
    entry is rewritten from the fresh compile. Used by ``dipengine rules check``.
    """
    path = resolve_rules_dir(path)
    head = _check_head(path)
    problems, manifest, mtext, options = head
    if problems:
        return None
    try:
        fresh = _load_checked(path, head)
    except RuleSetError:
        return None
    entry = _cache_file(_cache_key(mtext, manifest, options))
    if entry is None:
        return CacheCheck("off", None)
    if not entry.is_file():
        return CacheCheck("absent", entry)
    cached, why = _cache_read(entry, path, manifest, options, mtext)
    if cached is not None:
        diff = _differences(fresh, cached)
        if not diff:
            return CacheCheck("ok", entry)
        why = "differs from a fresh compile in " + ", ".join(diff)
    ok = _cache_write(entry, fresh, mtext)
    return CacheCheck("repaired" if ok else "unrepaired", entry, why)


# --------------------------------------------------------------------------- effective dates


def period_dates(period) -> tuple[_dt.date, _dt.date]:
    """First and last day of a settlement period: ``"2026"`` (a year) or ``"2026-03"`` (a month).

    Raises
    ------
    ValueError
        When ``period`` is neither.
    """
    m = re.fullmatch(r"([0-9]{4})(?:-([0-9]{2}))?", str(period).strip())
    if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 12):
        raise ValueError(f"period {period!r} is not YYYY or YYYY-MM")
    year = int(m.group(1))
    if not m.group(2):
        return _dt.date(year, 1, 1), _dt.date(year, 12, 31)
    month = int(m.group(2))
    nxt = _dt.date(year + (month == 12), month % 12 + 1, 1)
    return _dt.date(year, month, 1), nxt - _dt.timedelta(days=1)


def check_period(rule_set, period) -> str | None:
    """Why ``rule_set`` does not cover the settlement ``period``; ``None`` when it does.

    ``rule_set`` is a :class:`RuleSet` (or its manifest as a dict); ``period`` is ``YYYY`` or
    ``YYYY-MM``. The period is covered when every day of it lies within the manifest's
    ``effective_from`` .. ``effective_to`` (inclusive; an absent end is open). A rule set without
    either date covers every period. The message names the rule set, its dates and the period;
    ``settle`` makes it an error, or a warning with ``--allow-out-of-period``.

    Raises
    ------
    ValueError
        A malformed period, or effective dates that are not dates (``check_rules`` reports those).
    """
    manifest = rule_set if isinstance(rule_set, dict) else rule_set.manifest
    lo = manifest_date(manifest.get("effective_from"))
    hi = manifest_date(manifest.get("effective_to"))
    first, last = period_dates(period)
    if (lo is None or lo <= first) and (hi is None or last <= hi):
        return None
    name = f"{manifest.get('name', '?')} {manifest.get('version', '?')}"
    span = f"{lo or '(open)'} to {hi or '(open)'}"
    outside = (hi is not None and first > hi) or (lo is not None and last < lo)
    how = "outside" if outside else "only partly inside"
    return (f"rule set {name} is effective {span}; period {str(period).strip()} ({first} to {last}) "
            f"lies {how} it")


# --------------------------------------------------------------------------- shipped rule sets


def packaged_rules_root() -> Path:
    """Folder of the rule sets shipped with the package (``dipengine.grouper_rules``).

    Installed (wheel or editable) it is the ``dipengine.grouper_rules`` package; in a plain source
    checkout, where that package is not importable, ``grouper_rules/`` beside ``dipengine/``.
    """
    from importlib import resources

    try:
        return Path(str(resources.files("dipengine.grouper_rules")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "grouper_rules"


def resolve_rules_dir(name_or_path) -> Path:
    """A rule-set directory from a path or the short name of a shipped rule set.

    An existing path always wins. Otherwise a bare name (letters, digits, ``_.-``; no path
    separator) that names a shipped rule set (``grouper_rules/<name>/manifest.toml``) resolves to
    it, so ``--rules demo`` works anywhere. Anything else comes back unchanged (as a ``Path``),
    for the loader to report as not found.
    """
    path = Path(name_or_path)
    if path.exists() or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name_or_path)):
        return path
    shipped = packaged_rules_root() / str(name_or_path)
    return shipped if (shipped / "manifest.toml").is_file() else path
