"""One case at a time, in plain Python: the reader's rules for a single row.

:func:`normalise_case` states the rules of :func:`dipengine.reader.read_cases` for one row (no
Arrow call per row): it is the single-case path of :class:`dipengine.estimate.Estimator` and,
through :func:`read_cases_reference`, the slow readable twin that the tests hold the vectorised
batch path equal to.
"""
from __future__ import annotations

import datetime as _dt
import functools
import math
import re
import unicodedata

import pyarrow as pa

from dipengine import codes as _codes
from dipengine import reasons as R
from dipengine.money import MALFORMED, NEGATIVE, NULL, OK, TOO_LARGE
from dipengine.schemas import load_schema
from dipengine.reader import (_BATCH_SIZE, _DATE_RE, _DX_FORM, _PROC_FORM, CONSISTENCY_FEN, DISCHARGE_MODES,
                              INSURANCE_TYPES, LIST_SEPARATORS, LOS_TOLERANCE_DAYS, MAX_AGE, MAX_AGE_DAYS,
                              MAX_CASE_FEN, MONEY, PERSON_TYPES, REMOTE_FILINGS, REQUIRED, SCHEMA, SEXES, WARNING,
                              _Context, _iomod, _open, _open_mapped, check_schema, extra_columns, parse_period)
from dipengine.reader import _DATE_FORMS

def read_cases_reference(source, hospitals=None, *, period=None, code_lists=None, schema=None) -> pa.Table:
    """Slow, row-by-row twin of :func:`read_cases` (same output), for tests and for reading the rules.

    Each row goes through :func:`normalise_case`, the statement of the rules. Not for
    production sizes: it loops in Python over every row. ``schema`` renames the source's fields
    first (:meth:`dipengine.schemas.InputSchema.apply`, the same step as the fast path).
    """
    ctx = _Context(hospitals, period, code_lists, schema)
    if ctx.schema.identity:
        label, in_schema, _, _ = _open(source, _BATCH_SIZE)
        batches = _iomod().read_table(source).to_batches()
    else:
        label, in_schema, _, batches = _open_mapped(source, _BATCH_SIZE, ctx.schema)
        batches = list(batches)
    check_schema(in_schema, label)
    hosp = None if ctx.hospital_ids is None else set(ctx.hospital_ids.to_pylist())
    lists = {k: set(v.to_pylist()) for k, v in (("dx", ctx.dx_list), ("proc", ctx.proc_list)) if v is not None}
    seen: set = set()
    out = {name: [] for name in SCHEMA.names}
    for batch in batches:
        for row in batch.to_pylist():
            record = normalise_case(row, hospital_ids=hosp, period=period, code_lists=lists, seen=seen,
                                    values=ctx.values)
            for name in SCHEMA.names:
                out[name].append(record[name])
    result = pa.table({name: pa.array(out[name], SCHEMA.field(name).type) for name in SCHEMA.names},
                      schema=SCHEMA)
    for name in extra_columns(in_schema):
        field = in_schema.field(name)
        column = pa.chunked_array([b.column(name) for b in batches], field.type) if batches else \
            pa.chunked_array([], field.type)
        result = result.append_column(field, column)
    return result.combine_chunks()


_EPOCH = _dt.date(1970, 1, 1)
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MONEY_RE = re.compile(r"([+-]?)([0-9,]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")
_MONEY_EXP_RE = re.compile(r"[+-]?([0-9,]*)(?:\.([0-9]*))?[eE]([+-]?)([0-9]+)")  # a prefix, for huge exponents
_ONE_DATE_RE = re.compile(_DATE_RE[1:-1])
_ONE_DATE_FORMS = tuple(re.compile(form[1:-1]) for form in _DATE_FORMS)
_REGION_RE = re.compile(r"[0-9]{6}")
_SEPARATORS_RE = re.compile(LIST_SEPARATORS)
_SPACE_RE = re.compile(r"[\t\n\f\r ]+")  # RE2's \s, as codes.normalize strips
_X_RE = re.compile(r"([^+])X")
_CODE_RE = {"dx": re.compile(_codes.DX_PATTERN), "proc": re.compile(_codes.PROC_PATTERN)}
_FORM = {"dx": _DX_FORM, "proc": _PROC_FORM}
_INSURANCE_SET = frozenset(INSURANCE_TYPES)
_PERSON_SET = frozenset(PERSON_TYPES)
_FILING_SET = frozenset(REMOTE_FILINGS)
_SEX_SET = frozenset(SEXES)
_MONEY_TEXT = {MALFORMED: "is not a number", NEGATIVE: "is negative",
               TOO_LARGE: f"exceeds the limit of {MAX_CASE_FEN // 100:,} yuan per case"}
_FEN_LIMIT = 10**15  # as the money kernel: beyond it, TOO_LARGE


def _one_clean(v):
    """A cell as stripped text; empty -> None."""
    if v is None:
        return None
    s = (v if type(v) is str else str(v)).strip()
    return s or None


@functools.lru_cache(maxsize=65536)
def _one_normalize(code):
    """:func:`dipengine.codes.normalize` of one code (codes recur: cached)."""
    if code is None:
        return None
    s = _SPACE_RE.sub("", unicodedata.normalize("NFKC", code)).upper()
    s = _X_RE.sub(r"\1x", _X_RE.sub(r"\1x", s))
    return s or None


def _float_text(v: float) -> str:
    """The text Arrow casts a float64 to: shortest round trip, plain for decimal exponents
    -6..9 (``100``, ``0.00001``), else ``d.ddde±x`` (``1e+15``, ``1e-7``)."""
    if v != v:
        return "nan"
    if v in (math.inf, -math.inf):
        return "inf" if v > 0 else "-inf"
    r = repr(v)  # Python's repr is the shortest round-trip text too
    sign = "-" if r[0] == "-" else ""
    mant, _, exp = r.lstrip("-").partition("e")
    whole, _, frac = mant.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)  # decimal point position within digits
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    if not digits:
        return sign + "0"
    if -6 <= point - 1 < 10:
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        if point >= len(digits):
            return sign + digits + "0" * (point - len(digits))
        return f"{sign}{digits[:point]}.{digits[point:]}"
    e = point - 1
    return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'+' if e >= 0 else '-'}{abs(e)}"


def _one_text(v) -> str:
    """The raw text of a cell as the batch path quotes it in ``reason_detail``."""
    return _float_text(v).strip() if type(v) is float else str(v).strip()


def _one_number(v):
    """(present, float value) of a numeric cell; text that is not a number is (True, inf)."""
    if v is None:
        return False, None
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, (int, float)) or type(v).__name__ == "Decimal":
        f = float(v)
        return (False, None) if f != f else (True, f)
    s = str(v).strip()
    if not s:
        return False, None
    if not _NUMBER_RE.fullmatch(s):
        return True, math.inf
    return True, float(s)


def _one_int(v):
    """(value or None, present, bad) of an integer cell."""
    if type(v) is int and -2**31 < v < 2**31:  # the common case, exactly
        return v, True, False
    present, f = _one_number(v)
    if not present:
        return None, False, False
    if f in (math.inf, -math.inf) or f != int(f) or abs(f) >= 2**31:
        return None, True, True
    return int(f), True, False


def _one_fen(v):
    """(fen or None, status) of a money cell: exact integer arithmetic on the digits, half up.

    Same rules as the ``parse_fen`` kernel: optional sign, digits with ``,`` before the point,
    optional fraction and exponent (at most 400); the third decimal decides the rounding.
    """
    if v is None:
        return None, NULL
    if type(v) is int:
        s = str(v)
    elif isinstance(v, float):
        if v != v:
            return None, NULL
        s = _float_text(v)  # the shortest text, as the fast path reads it
    else:
        s = str(v).strip(" \t\r\n")
    if not s:
        return None, NULL
    m = _MONEY_RE.fullmatch(s)
    if m is None:
        # the kernel stops at an exponent beyond 400, whatever follows it
        m = _MONEY_EXP_RE.match(s)
        if m is not None and (m.group(1).strip(",") or m.group(2)) and int(m.group(4)) > 400:
            return None, (MALFORMED if m.group(3) == "-" else TOO_LARGE)
        return None, MALFORMED
    sign, whole, frac, exp = m.groups()
    whole = whole.replace(",", "")
    frac = frac or ""
    if not whole and not frac:
        return None, MALFORMED
    shift = 2 - len(frac)  # fen = int(digits) * 10**shift
    if exp is not None:
        e = int(exp)
        if abs(e) > 400:
            return (None, TOO_LARGE) if e > 0 else (None, MALFORMED)
        shift += e
    n = int(whole + frac)
    if shift >= 0:
        fen = n * 10**shift
    else:
        scale = 10**-shift
        fen = (n + scale // 2) // scale  # half up: the first dropped digit >= 5 rounds up
    if fen > _FEN_LIMIT:
        return None, TOO_LARGE
    if sign == "-" and fen != 0:
        return -fen, NEGATIVE
    return fen, OK


def _one_date(v):
    """(days since 1970-01-01 or None, present, bad) of a date cell."""
    if v is None:
        return None, False, False
    if isinstance(v, _dt.datetime):
        return (v.date() - _EPOCH).days, True, False
    if isinstance(v, _dt.date):
        return (v - _EPOCH).days, True, False
    return _one_date_text(v if type(v) is str else str(v))


@functools.lru_cache(maxsize=4096)
def _one_date_text(v: str):
    """:func:`_one_date` of a text cell (dates recur: cached)."""
    s = v.strip()
    if not s:
        return None, False, False
    if _ONE_DATE_RE.fullmatch(s):
        iso = s[:10]
    else:  # 2026/1/5, 20260105, 20260105083000 (the reader's _DATE_FORMS)
        for form in _ONE_DATE_FORMS:
            m = form.fullmatch(s)
            if m:
                iso = f"{m['y']}-{m['m']:0>2}-{m['d']:0>2}"
                break
        else:
            return None, True, True
    try:
        return (_dt.date.fromisoformat(iso) - _EPOCH).days, True, False
    except ValueError:
        return None, True, True


def _one_list(v) -> list:
    """A code list cell (list, or text separated by ``|`` or ``,``) as normalised codes."""
    if v is None:
        return []
    items = _SEPARATORS_RE.split(v) if isinstance(v, str) else [None if x is None else str(x) for x in v]
    return [c for c in map(_one_normalize, items) if c is not None]


def _one_code_problem(code, kind, listed):
    """None, or the text of what is wrong with a normalised code."""
    if not _CODE_RE[kind].search(code):
        return _FORM[kind]
    if listed is not None and code not in listed and code.split("+")[0] not in listed:
        return "is not in the code list"
    return None


@functools.lru_cache(maxsize=64)
def _one_period(period: str):
    return parse_period(period)


def _iso(days: int) -> str:
    return (_EPOCH + _dt.timedelta(days=days)).isoformat()


def _yuan(f: int) -> str:
    return f"{'-' if f < 0 else ''}{abs(f) // 100}.{abs(f) % 100:02d}"


def normalise_case(row: dict, *, hospital_ids=None, period=None, code_lists=None, seen=None, values=None) -> dict:
    """Normalise and validate one case: the rules of :func:`read_cases`, for one row, in plain Python.

    This is the statement of the reader's rules (:func:`read_cases_reference` applies it to
    every row; the tests hold it equal to the vectorised batch path) and the single-case path
    of :class:`dipengine.estimate.Estimator`. No Arrow call per row.

    Parameters
    ----------
    row : dict
        Contract §2 column -> cell (str, int, float, Decimal, date, datetime, list of str, or
        None); an absent key is a null cell. Money in yuan, dates ISO ``YYYY-MM-DD``.
    hospital_ids : set of str, optional
        The registry's ids; another ``hospital_id`` -> ``UNKNOWN_HOSPITAL``.
    period : str, optional
        ``"YYYY"`` or ``"YYYY-MM"``; a ``discharge_date`` outside it -> ``BAD_DATES``.
    code_lists : dict, optional
        ``{"dx": set, "proc": set}`` of normalised codes including the main codes of dagger
        pairs (what :func:`load_code_list` returns, as a set); unlisted codes ->
        ``INVALID_DX`` / ``INVALID_PROC`` (secondary diagnoses: a warning).
    seen : set, optional
        ``case_id`` values seen before in this run, updated in place: a repeat ->
        ``DUPLICATE_CASE``. None (the default) skips the check, as for single estimates,
        where one call knows nothing of the others.
    values : dict, optional
        Column -> :class:`dipengine.schemas.CodeValues` (default: the shared code values,
        ``310`` -> ``employee``, ``1`` -> ``M``, ...), as ``InputSchema.values``.

    Returns
    -------
    dict
        The normalised columns of :data:`SCHEMA` as Python values (``datetime.date``, int,
        lists of str, money in int fen), with ``reason`` (None or a contract §7 code) and
        ``reason_detail``.
    """
    problems = []  # (reason code, text), in the order the rules are listed below
    bad = problems.append
    get = row.get
    dx_list = proc_list = None
    if code_lists:
        dx_list, proc_list = code_lists.get("dx"), code_lists.get("proc")

    case_id = _one_clean(get("case_id"))
    if seen is not None and case_id is not None:
        if case_id in seen:
            bad((R.DUPLICATE_CASE, f"case_id: '{case_id}' was seen before in this run"))
        seen.add(case_id)
    hospital_id = _one_clean(get("hospital_id"))
    if hospital_ids is not None and hospital_id is not None and hospital_id not in hospital_ids:
        bad((R.UNKNOWN_HOSPITAL, f"hospital_id: '{hospital_id}' is not in the hospital registry"))

    if values is None:
        values = load_schema().values  # cached: the shared code values

    def enum(name, allowed, allowed_set, default, upper):
        v = _one_clean(get(name))
        if v is None:
            return default
        label = None
        if name in values:
            v, label = values[name].map_one(v)
        v = v.upper() if upper else v.lower()
        if v not in allowed_set:
            if label is not None:
                bad((R.BAD_VALUE, f"{name}: '{v}' is {label}, not one of {', '.join(allowed)}"))
            else:
                bad((R.BAD_VALUE, f"{name}: '{v}' is not one of {', '.join(allowed)}"))
        return v

    insurance_type = enum("insurance_type", INSURANCE_TYPES, _INSURANCE_SET, None, False)
    person_type = enum("person_type", PERSON_TYPES, _PERSON_SET, "other", False)
    remote_filing = enum("remote_filing", REMOTE_FILINGS, _FILING_SET, "none", False)
    sex = enum("sex", SEXES, _SEX_SET, None, True)
    region = _one_clean(get("insured_region"))
    if region is not None and not _REGION_RE.fullmatch(region):
        bad((R.BAD_VALUE, f"insured_region: '{region}' is not a 6-digit region code"))

    ints = {}
    for name in ("age", "age_days", "los", "discharge_mode"):
        ints[name] = _one_int(get(name))
        if ints[name][2]:
            bad((R.BAD_VALUE, f"{name}: '{_one_text(get(name))}' is not an integer"))
    age = ints["age"][0]
    if age is not None and not 0 <= age <= MAX_AGE:
        bad((R.BAD_VALUE, f"age: '{_one_text(get('age'))}' is outside 0..{MAX_AGE} years"))
    age_days = ints["age_days"][0]
    if age_days is not None and not 0 <= age_days <= MAX_AGE_DAYS:
        bad((R.BAD_VALUE, f"age_days: '{_one_text(get('age_days'))}' is outside 0..{MAX_AGE_DAYS} days"))
    dm = ints["discharge_mode"][0]
    if dm is not None and dm not in DISCHARGE_MODES:
        bad((R.BAD_VALUE, f"discharge_mode: '{_one_text(get('discharge_mode'))}' is not one of 1, 2, 3, 4, 5, 9"))
    discharge_mode = 1 if dm is None else (dm if -128 <= dm <= 127 else None)

    admit, admit_present, admit_bad = _one_date(get("admit_date"))
    disch, disch_present, disch_bad = _one_date(get("discharge_date"))
    if admit_bad:
        bad((R.BAD_DATES, f"admit_date: '{_one_text(get('admit_date'))}' is not a date (YYYY-MM-DD)"))
    if disch_bad:
        bad((R.BAD_DATES, f"discharge_date: '{_one_text(get('discharge_date'))}' is not a date (YYYY-MM-DD)"))
    derived = None
    if admit is not None and disch is not None:
        if disch < admit:
            bad((R.BAD_DATES, f"discharge_date: {_iso(disch)} is before admit_date {_iso(admit)}"))
        else:
            derived = max(disch - admit, 1)  # a same-day stay counts as one day
    if period is not None and disch is not None:
        lo, hi = _one_period(str(period).strip())
        if not lo <= disch <= hi:
            bad((R.BAD_DATES, f"discharge_date: {_iso(disch)} is outside the period {str(period).strip()}"))
    los = ints["los"][0]
    if los is not None and los < 0:
        bad((R.BAD_VALUE, f"los: '{_one_text(get('los'))}' is negative"))
    if los is not None and los >= 0 and derived is not None and abs(los - derived) > LOS_TOLERANCE_DAYS:
        bad((R.BAD_DATES, f"los: {los} is inconsistent with the dates ({derived} days)"))
    if los is None:
        los = derived

    main_dx = _one_normalize(_one_clean(get("main_dx")))
    if main_dx is not None and (p := _one_code_problem(main_dx, "dx", dx_list)):
        bad((R.INVALID_DX, f"main_dx: '{main_dx}' {p}"))
    main_proc = _one_normalize(_one_clean(get("main_proc")))
    if main_proc is not None and (p := _one_code_problem(main_proc, "proc", proc_list)):
        bad((R.INVALID_PROC, f"main_proc: '{main_proc}' {p}"))
    other_dx = _one_list(get("other_dx"))
    other_procs = _one_list(get("other_procs"))
    for name, items, kind, listed, code in (("other_dx", other_dx, "dx", dx_list, WARNING),
                                             ("other_procs", other_procs, "proc", proc_list, R.INVALID_PROC)):
        if not items:
            continue
        found = [(c, _one_code_problem(c, kind, listed)) for c in items]
        for text in (_FORM[kind], "is not in the code list"):
            hits = [f"{name}: '{c}' {text}" for c, p in found if p == text]
            if hits:
                bad((code, "; ".join(hits)))

    fen = {}
    status = {}
    for name in MONEY:
        f, st = _one_fen(get(name))
        fen[name], status[name] = f, st
        text = _MONEY_TEXT.get(st)
        if st == OK and f > MAX_CASE_FEN:
            text = _MONEY_TEXT[TOO_LARGE]
        if text:
            bad((R.BAD_AMOUNT, f"{name}: '{_one_text(get(name))}' {text}"))
    total = fen["total_cost"]
    other = fen["other_fund_paid"]  # 大额, 大病, 公务员补助, 医疗救助 ...: part of the balance when given
    if None not in (fen["fund_paid"], fen["patient_paid"], total):
        paid = fen["fund_paid"] + fen["patient_paid"] + (other or 0)
        if abs(paid - total) > CONSISTENCY_FEN:
            terms = "fund_paid + patient_paid" if other is None else "fund_paid + other_fund_paid + patient_paid"
            bad((R.BAD_AMOUNT, f"{terms} = {_yuan(paid)} differs from total_cost = {_yuan(total)} by more than 1 yuan"))
    for name in ("out_of_catalogue_cost", "class_b_cost"):
        if fen[name] is not None and total is not None and 0 <= total < fen[name]:
            bad((R.BAD_AMOUNT, f"{name}: {_yuan(fen[name])} exceeds total_cost {_yuan(total)}"))

    present = (case_id, hospital_id, insurance_type, region, ints["age"][1], admit_present, disch_present,
               main_dx, status["total_cost"] != NULL)
    for name, value in zip(REQUIRED, present):
        if value is None or value is False:
            bad((R.MISSING_FIELD, f"{name}: missing (required)"))

    reason = detail = None
    if problems:
        problems.sort(key=lambda p: p[0])  # stable: details keep the order of the rules above
        reason = next((R.NAMES[c] for c, _ in problems if c != WARNING), None)
        detail = "; ".join(("warning: " + t if c == WARNING else t) for c, t in problems)
    return {
        "case_id": case_id, "hospital_id": hospital_id, "patient_id": _one_clean(get("patient_id")),
        "insurance_type": insurance_type, "person_type": person_type, "insured_region": region,
        "remote_filing": remote_filing, "sex": sex, "age": age, "age_days": age_days, "los": los,
        "admit_date": None if admit is None else _EPOCH + _dt.timedelta(days=admit),
        "discharge_date": None if disch is None else _EPOCH + _dt.timedelta(days=disch),
        "discharge_mode": discharge_mode, "main_dx": main_dx, "main_proc": main_proc,
        "other_dx": other_dx, "other_procs": other_procs,
        "total_cost_fen": total or 0, "fund_paid_fen": fen["fund_paid"], "patient_paid_fen": fen["patient_paid"],
        "out_of_catalogue_cost_fen": fen["out_of_catalogue_cost"], "class_b_cost_fen": fen["class_b_cost"],
        "other_fund_paid_fen": fen["other_fund_paid"],
        "reason": reason, "reason_detail": detail,
    }
