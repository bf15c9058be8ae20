"""Patient-side benefits (参保人待遇): fund benefit and patient share per admission.

Rules come from ``benefits.csv`` in the pricing tables (contract §5), one table per insured
region: remote care uses the **insured** region's policy on the treating region's bill
(dip-rules §8). The calculation per admission (dip-rules §8.1)::

    total_cost_fen
      - out_of_catalogue_cost_fen                              -> patient
      - class_b_self_fen = half_up(class_b_cost_fen x rate)     -> patient   (rounding step 1)
      = policy_scope_fen
      - deductible_fen = min(deductible, policy scope)          -> patient   (first / repeat admission)
      = eligible_fen
    raw fund  = half_up(sum over bands of portion_fen x ratio)            (rounding step 2)
    fund_benefit_fen = min(raw fund, annual cap - benefit already used this year)
    left to the patient = out-of-catalogue + class B self-pay + deductible
                          + (eligible - raw fund) + cap_cut_fen          (= total - fund, to the fen)
    other_fund_fen    = other_fund_paid_fen of the case (null = 0)
    patient_share_fen = max(left to the patient - other_fund_fen, 0)

Ratios and rates are held as exact integers of parts per million (ppm), so both rounding
steps are exact integer arithmetic: ``(amount_fen * ppm + 500_000) // 1_000_000``.
Nothing else rounds. The fund benefit is the pooled fund's (统筹基金). Other funds (大额医疗
费用补助, 大病保险, 公务员医疗补助, 医疗救助) are not calculated, but a case that records what
they paid (``other_fund_paid_fen``) has it taken off the patient's part, never off the pooled
fund's: fund + other funds + patient share = total cost whenever the other funds do not exceed
what the rules leave to the patient.

Matching rule of a case to a rule (a group of band rows with the same key): ``insured_region``,
``insurance_type``, ``level`` (of the treating hospital) and ``locality`` must be equal;
``person_type`` and ``filing`` match exactly or by ``*``, and the most specific row wins:
exact/exact, then exact person_type with ``filing=*`` or ``person_type=*`` with exact filing
(a table offering both of these for one case without the exact/exact row is rejected as
ambiguous at load time), then ``*``/``*``. A case no rule matches gets ``benefit_note``
``NO_BENEFIT_RULE`` (or ``NO_BENEFIT_TABLE`` when no loaded table covers its insured region),
fund benefit 0 and the whole bill as patient share: the basic fund pays nothing it has no rule
for (as an unfiled remote patient claims by hand later).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine._libs.benefits import accumulate_cap
from dipengine.errors import DataError
from dipengine.io import read_table, sha256_file
from dipengine.money import fen_to_yuan_text

INSURANCE_TYPES = ("employee", "resident")
PERSON_TYPES = ("in_service", "retired", "student", "child", "other")
LEVELS = (1, 2, 3)
LOCALITIES = ("local", "in_province", "cross_province")
FILINGS = ("none", "long_term", "referral", "emergency", "temporary")
ANY = "*"

COLUMNS = (
    "insured_region", "insurance_type", "person_type", "level", "locality", "filing",
    "deductible", "deductible_repeat", "band_upper", "ratio", "annual_cap", "class_b_self_rate",
)
OPTIONAL_COLUMNS = ("note",)  # free text, e.g. the notice a row was transcribed from
PPM = 1_000_000
_HALF = PPM // 2

# benefit_note codes (0 = computed normally)
NOTE_NAMES = [None, "REJECTED", "UNKNOWN_HOSPITAL", "NO_BENEFIT_TABLE", "NO_BENEFIT_RULE",
              "COSTS_EXCEED_TOTAL"]
REJECTED, UNKNOWN_HOSPITAL, NO_BENEFIT_TABLE, NO_BENEFIT_RULE, COSTS_EXCEED_TOTAL = 1, 2, 3, 4, 5

_YUAN = re.compile(r"^[0-9]+(\.[0-9]{1,2})?$")
_RATE = re.compile(r"^[0-9]+(\.[0-9]{1,6})?$")
_REGION = re.compile(r"^[0-9]{6}$")


@dataclass(frozen=True)
class BenefitRules:
    """Loaded, validated benefit tables of one or more insured regions.

    A *rule* is the set of band rows sharing one key ``(insured_region, insurance_type,
    person_type, level, locality, filing)``; rules are numbered 0..n-1.

    Attributes
    ----------
    regions : tuple of str
        Insured regions covered, in load order; position = region code in ``lookup``.
    keys : dict
        ``(region, insurance_type, person_type or '*', level, locality, filing or '*') -> rule``.
    lookup : int32 ndarray, shape (n_regions, 2, 5, 3, 3, 5)
        Rule resolved for every concrete case key (``*`` and precedence applied), -1 = none;
        axes in the order of :data:`INSURANCE_TYPES`, :data:`PERSON_TYPES`, :data:`LEVELS`,
        :data:`LOCALITIES`, :data:`FILINGS`.
    deductible_fen, deductible_repeat_fen, annual_cap_fen : int64 ndarray
        Per rule, fen.
    class_b_ppm : int64 ndarray
        Per rule, 乙类 first self-pay rate in parts per million.
    band_offsets : int64 ndarray
        ``n_rules + 1`` offsets into the band arrays (bands of a rule in ascending order).
    band_upper_fen : int64 ndarray
        Upper end of each band, fen of eligible cost (policy scope above the deductible);
        -1 = no upper end (always the last band of a rule).
    band_ratio_ppm : int64 ndarray
        Fund share inside each band, parts per million.
    sources : list of str
        ``file:line`` of each rule's first row (for traces and messages).
    files : dict
        ``path -> sha256`` of every table read.
    """

    regions: tuple
    keys: dict
    lookup: np.ndarray
    deductible_fen: np.ndarray
    deductible_repeat_fen: np.ndarray
    annual_cap_fen: np.ndarray
    class_b_ppm: np.ndarray
    band_offsets: np.ndarray
    band_upper_fen: np.ndarray
    band_ratio_ppm: np.ndarray
    sources: list = field(default_factory=list)
    files: dict = field(default_factory=dict)

    @property
    def n_rules(self) -> int:
        return len(self.deductible_fen)

    def match(self, insured_region, insurance_type, person_type, level, locality, filing) -> int:
        """Rule number for one case key by the documented precedence (-1 when none).

        Plain dictionary look-ups, written independently of :attr:`lookup` (the twin of the
        vectorised matching).
        """
        for p, f in ((person_type, filing), (person_type, ANY), (ANY, filing), (ANY, ANY)):
            rule = self.keys.get((insured_region, insurance_type, p, level, locality, f))
            if rule is not None:
                return rule
        return -1

    def bands(self, rule: int) -> list[tuple[int | None, int]]:
        """``[(upper_fen or None, ratio_ppm), ...]`` of one rule, ascending."""
        a, b = int(self.band_offsets[rule]), int(self.band_offsets[rule + 1])
        return [(None if self.band_upper_fen[k] < 0 else int(self.band_upper_fen[k]),
                 int(self.band_ratio_ppm[k])) for k in range(a, b)]


# --------------------------------------------------------------------------- loading


def _yuan_text(fen) -> str:
    return fen_to_yuan_text(int(fen))


def _fail(message, where, column=None, value=None):
    raise DataError(message, file=where, column=column, value=value)


def _yuan_fen(text: str, where: str, column: str) -> int:
    if not _YUAN.match(text):
        _fail("not an amount in yuan (digits, at most 2 decimals, >= 0)", where, column, text)
    return int(Decimal(text) * 100)


def _rate_ppm(text: str, where: str, column: str) -> int:
    if not _RATE.match(text):
        _fail("not a rate (a decimal in [0, 1], at most 6 decimals)", where, column, text)
    ppm = int(Decimal(text) * PPM)
    if ppm > PPM:
        _fail("rate outside [0, 1]", where, column, text)
    return ppm


def _benefits_file(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "benefits.csv"
    if not p.exists():
        raise DataError("benefits table not found", file=p)
    return p


def _check_manifest(csv_path: Path) -> None:
    """Verify ``benefits.csv`` against the dir's ``manifest.toml`` when there is one (and every
    ``[files]`` entry as :func:`dipengine.policy.check_pricing_manifest` does: inside the dir,
    regular files, sha256)."""
    import os
    import stat

    from dipengine.manifest import read_manifest
    from dipengine.policy import check_pricing_manifest

    try:
        if not stat.S_ISREG(os.stat(csv_path).st_mode):  # a FIFO would hang the reader
            raise DataError("benefits table is not a regular file", file=csv_path)
    except OSError as e:
        raise DataError(f"cannot read the benefits table ({e.strerror})", file=csv_path) from None
    mpath = csv_path.parent / "manifest.toml"
    if not mpath.exists():
        return
    manifest = read_manifest(csv_path.parent)
    files = manifest.get("files", {})
    if not isinstance(files, dict) or csv_path.name not in files:
        raise DataError(f"{csv_path.name} is not listed in the [files] table of manifest.toml",
                        file=mpath)
    digest = sha256_file(csv_path)
    if files[csv_path.name] != digest:
        raise DataError(f"sha256 mismatch: manifest says {files[csv_path.name]}, file is {digest}",
                        file=csv_path)
    check_pricing_manifest(csv_path.parent)  # the other entries: inside the dir, regular files, sha256


def _parse_table(csv_path: Path) -> dict:
    """Rows of one benefits.csv grouped by key: ``key -> [(line, row fields...)]``."""
    table = read_table(str(csv_path))
    names = table.column_names
    for col in COLUMNS:
        if col not in names:
            raise DataError("required column missing", file=csv_path, column=col)
    for col in names:
        if col not in COLUMNS and col not in OPTIONAL_COLUMNS:
            raise DataError("unknown column (allowed: " + ", ".join(COLUMNS + OPTIONAL_COLUMNS) + ")",
                            file=csv_path, column=col)
    if table.num_rows == 0:
        raise DataError("benefits table has no rows", file=csv_path)
    cols = {c: table[c].to_pylist() for c in COLUMNS}
    groups: dict = {}
    for i in range(table.num_rows):
        where = f"{csv_path}:{i + 2}"
        v = {c: ("" if cols[c][i] is None else str(cols[c][i]).strip()) for c in COLUMNS}
        if not _REGION.match(v["insured_region"]):
            _fail("insured_region must be a 6-digit pooling-region code", where, "insured_region",
                  v["insured_region"])
        for col, allowed in (("insurance_type", INSURANCE_TYPES), ("person_type", PERSON_TYPES + (ANY,)),
                             ("locality", LOCALITIES), ("filing", FILINGS + (ANY,))):
            if v[col] not in allowed:
                _fail("unknown value (allowed: " + ", ".join(allowed) + ")", where, col, v[col])
        if v["level"] not in ("1", "2", "3"):
            _fail("level must be 1, 2 or 3", where, "level", v["level"])
        for col in ("deductible", "deductible_repeat", "ratio", "annual_cap", "class_b_self_rate"):
            if v[col] == "":
                _fail("empty value", where, col)
        row = (
            i + 2,
            _yuan_fen(v["deductible"], where, "deductible"),
            _yuan_fen(v["deductible_repeat"], where, "deductible_repeat"),
            None if v["band_upper"] == "" else _yuan_fen(v["band_upper"], where, "band_upper"),
            _rate_ppm(v["ratio"], where, "ratio"),
            _yuan_fen(v["annual_cap"], where, "annual_cap"),
            _rate_ppm(v["class_b_self_rate"], where, "class_b_self_rate"),
        )
        if row[3] is not None and row[3] <= 0:
            _fail("band_upper must be positive (or empty for the top band)", where, "band_upper",
                  v["band_upper"])
        key = (v["insured_region"], v["insurance_type"], v["person_type"], int(v["level"]),
               v["locality"], v["filing"])
        groups.setdefault(key, []).append(row)
    return groups


def _check_rule(csv_path: Path, key, rows) -> None:
    first = rows[0]
    for r in rows[1:]:
        for k, col in ((1, "deductible"), (2, "deductible_repeat"), (5, "annual_cap"),
                       (6, "class_b_self_rate")):
            if r[k] != first[k]:
                _fail(f"differs from line {first[0]} of the same rule; every band row of a rule "
                      "must repeat the same value", f"{csv_path}:{r[0]}", col)
    prev = 0
    for j, r in enumerate(rows):
        upper = r[3]
        if upper is None:
            if j != len(rows) - 1:
                _fail("a band without upper end must be the last band of its rule (bands in "
                      "ascending order; a second open band overlaps)", f"{csv_path}:{r[0]}", "band_upper")
        elif upper <= prev:
            _fail("bands not ascending (or overlapping) within the rule", f"{csv_path}:{r[0]}",
                  "band_upper", f"{_yuan_text(upper)}")
        else:
            prev = upper
    if rows[-1][3] is not None:
        _fail("the last band of a rule needs an empty band_upper (no upper end); use ratio 0 "
              "for a band the fund does not pay", f"{csv_path}:{rows[-1][0]}", "band_upper")


def load_benefits(pricing_dirs) -> BenefitRules:
    """Load and validate ``benefits.csv`` from one or more pricing dirs.

    Parameters
    ----------
    pricing_dirs : path or list of paths
        Pricing dirs (``benefits.csv`` inside) or the CSV files themselves. Each insured region
        may be defined in one file only. A ``manifest.toml`` beside a table must list it with
        its sha256.

    Raises
    ------
    DataError
        Naming ``file:line``, column and value: a missing or unknown column, an unknown enum
        value, a ratio or rate outside [0, 1], a malformed amount, band rows of one rule that
        disagree on deductible/cap/rate, bands not ascending or overlapping, a last band with an
        upper end, an ambiguous ``*`` combination, a region defined twice, a sha256 mismatch.
    """
    if isinstance(pricing_dirs, (str, Path)):
        pricing_dirs = [pricing_dirs]
    if not pricing_dirs:
        raise DataError("no pricing dir given for the benefits tables")
    all_rules: dict = {}
    region_file: dict = {}
    files: dict = {}
    for d in pricing_dirs:
        csv_path = _benefits_file(d)
        _check_manifest(csv_path)
        groups = _parse_table(csv_path)
        for key, rows in groups.items():
            _check_rule(csv_path, key, rows)
        for region in sorted({k[0] for k in groups}):
            if region in region_file:
                raise DataError(f"insured region defined twice (also in {region_file[region]})",
                                file=csv_path, column="insured_region", value=region)
            region_file[region] = str(csv_path)
        for key, rows in groups.items():
            all_rules[key] = (csv_path, rows)
        files[str(csv_path)] = sha256_file(csv_path)

    regions = tuple(region_file)
    keys: dict = {}
    ded, ded_rep, cap, cb, offsets, uppers, ratios, sources = [], [], [], [], [0], [], [], []
    for rule, (key, (csv_path, rows)) in enumerate(all_rules.items()):
        keys[key] = rule
        first = rows[0]
        ded.append(first[1])
        ded_rep.append(first[2])
        cap.append(first[5])
        cb.append(first[6])
        for r in rows:
            uppers.append(-1 if r[3] is None else r[3])
            ratios.append(r[4])
        offsets.append(len(uppers))
        sources.append(f"{csv_path}:{first[0]}")

    lookup = np.full((len(regions), len(INSURANCE_TYPES), len(PERSON_TYPES), len(LEVELS),
                      len(LOCALITIES), len(FILINGS)), -1, dtype=np.int32)
    for (ri, region), (ii, ins), (pi, person), (li, level), (ci, loc), (fi, filing) in itertools.product(
            enumerate(regions), enumerate(INSURANCE_TYPES), enumerate(PERSON_TYPES), enumerate(LEVELS),
            enumerate(LOCALITIES), enumerate(FILINGS)):
        def get(p, f):
            return keys.get((region, ins, p, level, loc, f))

        rule = get(person, filing)
        if rule is None:
            a, b = get(person, ANY), get(ANY, filing)
            if a is not None and b is not None:
                raise DataError(
                    f"ambiguous rows: {sources[a]} (person_type={person}, filing=*) and {sources[b]} "
                    f"(person_type=*, filing={filing}) both match {ins}/{person}/level {level}/{loc}/"
                    f"{filing}; add a row with both values exact",
                    file=region_file[region], column="person_type")
            rule = a if a is not None else b
        if rule is None:
            rule = get(ANY, ANY)
        if rule is not None:
            lookup[ri, ii, pi, li, ci, fi] = rule

    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return BenefitRules(
        regions=regions, keys=keys, lookup=lookup,
        deductible_fen=as64(ded), deductible_repeat_fen=as64(ded_rep), annual_cap_fen=as64(cap),
        class_b_ppm=as64(cb), band_offsets=as64(offsets), band_upper_fen=as64(uppers),
        band_ratio_ppm=as64(ratios), sources=sources, files=files,
    )


# --------------------------------------------------------------------------- batch path


def _half_up_ppm(amount_ppm):
    """Fen x ppm products -> fen, half up (non-negative inputs)."""
    return (amount_ppm + _HALF) // PPM


def _column(table: pa.Table, name: str, typ) -> pa.Array:
    """A column as one Arrow array of type ``typ`` (all nulls when absent)."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, typ)
    col = table[name]
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if col.type != typ:
        col = col.cast(typ)
    return col


def _codes(values: pa.Array, vocabulary) -> np.ndarray:
    """Index of each value in ``vocabulary`` (-1 when absent or null), vectorised."""
    idx = pc.index_in(values, value_set=pa.array(list(vocabulary), values.type))
    return np.asarray(pc.fill_null(idx, -1), dtype=np.int64)


def _locality_codes(insured: pa.Array, treating: pa.Array) -> np.ndarray:
    """0 local, 1 in-province, 2 cross-province, -1 unknown (contract §3)."""
    same = pc.equal(insured, treating)
    same_prov = pc.equal(pc.utf8_slice_codeunits(insured, 0, 2), pc.utf8_slice_codeunits(treating, 0, 2))
    code = np.where(np.asarray(pc.fill_null(same, False)), 0,
                    np.where(np.asarray(pc.fill_null(same_prov, False)), 1, 2))
    known = np.asarray(pc.and_(pc.is_valid(insured), pc.is_valid(treating)))
    return np.where(known, code, -1).astype(np.int64)


def admission_order(patient_id: pa.Array, year: np.ndarray, discharge: np.ndarray,
                    admit: np.ndarray, case_id: pa.Array, rows: np.ndarray):
    """Sort ``rows`` by (patient, year, discharge, admit, case_id), all vectorised.

    Returns
    -------
    order : int64 ndarray
        ``rows`` in admission order.
    patient_year : int64 ndarray (length of the table)
        A code per row, equal for the admissions of one patient in one year (-1 off ``rows``).
    admission_no : int32 ndarray (length of the table)
        1 for the patient's first admission of the year, 2, 3, ... (0 off ``rows``).
    """
    n = len(year)
    enc = pc.dictionary_encode(patient_id)
    pid = np.asarray(pc.fill_null(enc.indices, -1), dtype=np.int64)
    no_pid = pid < 0
    # a case without patient_id is its own patient
    pid = np.where(no_pid, len(enc.dictionary) + np.arange(n), pid)
    order = rows
    if len(rows):
        # year follows from the discharge date, so (patient, discharge) is one int64 key
        d, a = discharge[rows], admit[rows]
        dmin = d.min()
        k1 = pid[rows] * (d.max() - dmin + 1) + (d - dmin)
        k2 = a - a.min()
        span2 = int(k2.max()) + 1
        if int(k1.max()) < (1 << 62) // span2:  # one int64 key sorts faster than lexsort
            idx = np.argsort(k1 * span2 + k2, kind="stable")
        else:
            idx = np.lexsort((k2, k1))
        s1, s2 = k1[idx], k2[idx]
        eq = (s1[1:] == s1[:-1]) & (s2[1:] == s2[:-1])
        if eq.any():
            # same patient, same discharge and admission day (rare): case_id decides
            tie = np.zeros(len(idx), dtype=bool)
            tie[1:] |= eq
            tie[:-1] |= eq
            rank = np.zeros(len(rows), dtype=np.int64)
            sub = pc.take(pc.fill_null(case_id, ""), pa.array(rows[idx[tie]]))
            rank[idx[tie]] = np.asarray(pc.rank(sub, sort_keys="ascending", tiebreaker="first"))
            idx = np.lexsort((rank, k2, k1))
        order = rows[idx]
    patient_year = np.full(n, -1, dtype=np.int64)
    admission_no = np.zeros(n, dtype=np.int32)
    if len(order):
        p, y = pid[order], year[order]
        new = np.ones(len(order), dtype=bool)
        new[1:] = (p[1:] != p[:-1]) | (y[1:] != y[:-1])
        gid = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        patient_year[order] = gid
        admission_no[order] = (np.arange(len(order)) - starts[gid] + 1).astype(np.int32)
    return order.astype(np.int64), patient_year, admission_no


def _as_table(cases) -> pa.Table:
    if isinstance(cases, pa.RecordBatch):
        return pa.Table.from_batches([cases])
    if isinstance(cases, pa.Table):
        return cases
    return read_table(cases)


def _hospital_table(hospitals) -> pa.Table:
    if isinstance(hospitals, pa.Table) and "level" in hospitals.column_names \
            and hospitals.schema.field("level").type == pa.int8():
        return hospitals
    from dipengine.hospitals import read_hospitals

    return read_hospitals(hospitals)


def compute_benefits(cases, rules: BenefitRules, hospitals) -> pa.Table:
    """Fund benefit and patient share of every case (dip-rules §8, contract §1 ``benefits``).

    Parameters
    ----------
    cases : pa.Table, pa.RecordBatch or pandas.DataFrame
        The normalised case table (docs/architecture.md). Uses ``case_id, hospital_id,
        patient_id, insurance_type, person_type, insured_region, remote_filing, admit_date,
        discharge_date, total_cost_fen`` and, when present, ``out_of_catalogue_cost_fen``,
        ``class_b_cost_fen``, ``other_fund_paid_fen`` (null = 0), ``fund_paid_fen`` and
        ``reason`` (rows with a reason are rejected).
    rules : BenefitRules
        From :func:`load_benefits`.
    hospitals : path or pa.Table
        The registry (:func:`dipengine.hospitals.read_hospitals`): level and region of the
        treating hospital.

    Returns
    -------
    pa.Table
        One row per case, input order: ``case_id``, ``locality`` (string), ``policy_scope_fen``,
        ``deductible_fen`` (deductible applied, at most the policy scope), ``fund_benefit_fen``,
        ``patient_share_fen``, ``cap_reached`` (bool: the patient's benefit this year, this
        admission included, reached the cap), ``admission_no`` (int32, 1 = first admission of
        the patient in the discharge year), ``class_b_self_fen``, ``eligible_fen``,
        ``cap_cut_fen`` (benefit the cap took away), ``other_fund_fen`` (the case's recorded
        ``other_fund_paid_fen``, 0 when none, taken off the patient share: ``patient_share_fen``
        = max(what the rules leave to the patient − ``other_fund_fen``, 0)), ``fund_diff_fen`` (recorded
        ``fund_paid_fen`` minus ``fund_benefit_fen``; null without a record) and
        ``benefit_note`` (null, or a code of :data:`NOTE_NAMES`). Money int64 fen. Rejected
        rows have nulls; rows without a rule have fund 0 and the whole bill as patient share.
    """
    return benefit_walk(benefit_terms(cases, rules, hospitals))


_I8, _I32, _I64 = pa.int8(), pa.int32(), pa.int64()
TERMS = (
    ("case_id", pa.string()), ("patient_id", pa.string()), ("loc", _I8), ("note", _I8), ("year", _I32),
    ("discharge", _I32), ("admit", _I32), ("total", _I64), ("ooc", _I64), ("cb_self", _I64), ("scope", _I64),
    ("other", _I64), ("ded_first", _I64), ("ded_repeat", _I64), ("raw_first", _I64), ("raw_repeat", _I64),
    ("cap", _I64), ("fund_paid_fen", _I64),
)
"""Columns of :func:`benefit_terms`: what one admission contributes on its own (money int64 fen;
``loc`` locality code, -1 unknown; ``note`` code of :data:`NOTE_NAMES`, 0 = computed; dates as
days since 1970; ``*_first`` / ``*_repeat`` for a first / a repeat admission of the year)."""


def _band_fund(eligible: np.ndarray, rule: np.ndarray, rules: BenefitRules) -> np.ndarray:
    """Raw fund benefit, half up, of each ``eligible`` amount under its rule's bands (fen)."""
    n = len(eligible)
    acc = np.zeros(n, dtype=np.int64)
    start = rules.band_offsets[rule]
    count = rules.band_offsets[rule + 1] - start
    lower = np.zeros(n, dtype=np.int64)
    # one pass per band position (a handful), vectorised over cases
    for k in range(int(np.max(np.diff(rules.band_offsets)))):
        live = count > k
        b = np.where(live, start + k, 0)
        upper = rules.band_upper_fen[b]
        top = np.where(upper < 0, eligible, np.minimum(eligible, upper))
        portion = np.where(live, np.maximum(top - lower, 0), 0)
        acc += portion * rules.band_ratio_ppm[b]
        lower = np.where(live & (upper >= 0), upper, lower)
    return _half_up_ppm(acc)


def benefit_terms(cases, rules: BenefitRules, hospitals) -> pa.RecordBatch:
    """The part of :func:`compute_benefits` that each admission decides alone (:data:`TERMS`).

    Rule matching, locality, policy scope, class B self-pay, and the deductible and raw fund
    benefit both as a first and as a repeat admission of the year. Row by row: any split of the
    cases into batches gives the same rows, so pass 1 of a run computes them on its worker
    threads; :func:`benefit_walk` then decides what depends on the patient's other admissions.
    """
    t = _as_table(cases)
    hosp = _hospital_table(hospitals)
    n = t.num_rows
    s = pa.string()
    case_id = _column(t, "case_id", s)
    reason = _column(t, "reason", s)
    ok = ~np.asarray(pc.is_valid(reason)) if n else np.zeros(0, bool)

    # treating hospital: level and region
    h = _codes(_column(t, "hospital_id", s), hosp["hospital_id"].combine_chunks().to_pylist())
    known_h = h >= 0
    h_safe = np.where(known_h, h, 0)
    level = np.where(known_h, hosp["level"].to_numpy().astype(np.int64)[h_safe] if hosp.num_rows else 0, 0)
    h_region = pc.take(hosp["region"].combine_chunks(), pa.array(h_safe)) if hosp.num_rows else pa.nulls(n, s)
    h_region = pc.if_else(pa.array(known_h), h_region, pa.scalar(None, s))
    insured = _column(t, "insured_region", s)
    loc = _locality_codes(insured, h_region)

    # rule per case through the dense lookup
    region_c = _codes(insured, rules.regions)
    ins_c = _codes(_column(t, "insurance_type", s), INSURANCE_TYPES)
    person = pc.fill_null(_column(t, "person_type", s), "other")
    person_c = _codes(person, PERSON_TYPES)
    filing = pc.fill_null(_column(t, "remote_filing", s), "none")
    filing_c = _codes(filing, FILINGS)
    level_c = level - 1
    valid_key = (region_c >= 0) & (ins_c >= 0) & (person_c >= 0) & (level_c >= 0) & (loc >= 0) & (filing_c >= 0)
    rule = np.full(n, -1, dtype=np.int64)
    if len(rules.regions) and valid_key.any():
        idx = np.ravel_multi_index(
            tuple(np.where(valid_key, c, 0) for c in (region_c, ins_c, person_c, level_c, loc, filing_c)),
            rules.lookup.shape)
        rule = np.where(valid_key, rules.lookup.reshape(-1)[idx], -1).astype(np.int64)

    note = np.zeros(n, dtype=np.int8)
    note[rule < 0] = NO_BENEFIT_RULE
    note[(region_c < 0)] = NO_BENEFIT_TABLE
    note[~known_h] = UNKNOWN_HOSPITAL
    note[~ok] = REJECTED

    # money (null out-of-catalogue / class B = none of it)
    total = np.asarray(pc.fill_null(_column(t, "total_cost_fen", pa.int64()), 0), dtype=np.int64)
    ooc = np.asarray(pc.fill_null(_column(t, "out_of_catalogue_cost_fen", pa.int64()), 0), dtype=np.int64)
    cb = np.asarray(pc.fill_null(_column(t, "class_b_cost_fen", pa.int64()), 0), dtype=np.int64)
    r_safe = np.where(rule >= 0, rule, 0)
    has_rule = (note == 0) & (rule >= 0)
    cb_self = _half_up_ppm(cb * (rules.class_b_ppm[r_safe] if rules.n_rules else 0))
    scope = total - ooc - cb_self
    note[has_rule & (scope < 0)] = COSTS_EXCEED_TOTAL
    has_rule &= scope >= 0  # from here on, has_rule is note == 0 (and ok is note != REJECTED)

    # deductible and raw fund as a first and as a repeat admission (the walk picks one)
    positive = np.maximum(scope, 0)
    if rules.n_rules:
        ded_first = np.minimum(rules.deductible_fen[r_safe], positive)
        ded_repeat = np.minimum(rules.deductible_repeat_fen[r_safe], positive)
        raw_first = np.where(has_rule, _band_fund(np.maximum(scope - ded_first, 0), r_safe, rules), 0)
        raw_repeat = raw_first.copy()
        differs = np.flatnonzero(has_rule & (ded_first != ded_repeat))
        if len(differs):
            raw_repeat[differs] = _band_fund(np.maximum(scope[differs] - ded_repeat[differs], 0), r_safe[differs],
                                             rules)
        cap = rules.annual_cap_fen[r_safe]
    else:
        ded_first = ded_repeat = raw_first = raw_repeat = cap = np.zeros(n, dtype=np.int64)
    other = np.asarray(pc.fill_null(_column(t, "other_fund_paid_fen", pa.int64()), 0), dtype=np.int64)

    discharge = _column(t, "discharge_date", pa.date32())
    admit = _column(t, "admit_date", pa.date32())
    columns = [
        case_id, _column(t, "patient_id", s), pa.array(loc.astype(np.int8)), pa.array(note),
        pc.fill_null(pc.year(discharge), -1).cast(pa.int32()),
        pc.fill_null(discharge.cast(pa.int32()), 0), pc.fill_null(admit.cast(pa.int32()), 0),
        pa.array(total), pa.array(ooc), pa.array(cb_self), pa.array(scope), pa.array(other),
        pa.array(ded_first), pa.array(ded_repeat), pa.array(raw_first), pa.array(raw_repeat),
        pa.array(np.ascontiguousarray(cap, dtype=np.int64)), _column(t, "fund_paid_fen", pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(list(TERMS)))


def _np64(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table[name].to_numpy(), dtype=np.int64)


def benefit_walk(terms) -> pa.Table:
    """:func:`compute_benefits` from its :func:`benefit_terms` (the rows of whole patients).

    Orders each patient's admissions of a year (:func:`admission_order`), picks the first or
    repeat deductible and fund, and walks the annual cap. Every admission of a patient must be
    in ``terms`` (one table, or one partition by ``patient_id``); rows come out in input order.
    """
    t = _as_table(terms).combine_chunks()
    n = t.num_rows
    note = np.asarray(t["note"].to_numpy(), dtype=np.int8)
    ok = note != REJECTED
    has_rule = note == 0
    case_id = t["case_id"].combine_chunks() if n else pa.array([], pa.string())
    patient_id = t["patient_id"].combine_chunks() if n else pa.array([], pa.string())
    order, patient_year, admission_no = admission_order(
        patient_id, _np64(t, "year"), _np64(t, "discharge"), _np64(t, "admit"), case_id,
        np.flatnonzero(ok).astype(np.int64))

    first = admission_no <= 1
    scope = _np64(t, "scope")
    ded = np.where(first, _np64(t, "ded_first"), _np64(t, "ded_repeat"))
    eligible = np.maximum(scope - ded, 0)
    raw = np.where(first, _np64(t, "raw_first"), _np64(t, "raw_repeat"))

    # annual cap along each patient's admissions (Cython walk of the sorted order)
    fund = np.zeros(n, dtype=np.int64)
    reached = np.zeros(n, dtype=np.int8)
    walk = order[has_rule[order]]
    accumulate_cap(walk, patient_year, raw, np.ascontiguousarray(_np64(t, "cap")), fund, reached)
    cap_cut = raw - fund

    ooc, cb_self, total = _np64(t, "ooc"), _np64(t, "cb_self"), _np64(t, "total")
    patient = np.where(has_rule, ooc + cb_self + ded + (eligible - raw) + cap_cut, total)
    # other funds (大额, 大病, 公务员补助, 医疗救助) recorded on the case pay part of the patient's share
    other = _np64(t, "other")
    patient = np.maximum(patient - other, 0)

    def col(values, mask, typ=pa.int64()):
        return pa.array(values, typ, mask=~mask)

    s = pa.string()
    fund_paid = t["fund_paid_fen"].combine_chunks() if n else pa.array([], pa.int64())
    fund_out = col(np.where(has_rule, fund, 0), ok)
    diff = pc.subtract(fund_paid, fund_out)
    loc = np.asarray(t["loc"].to_numpy(), dtype=np.int64)
    loc_names = pa.array(list(LOCALITIES) + [None], s)
    locality = pc.take(loc_names, pa.array(np.where(loc >= 0, loc, 3)))
    return pa.table({
        "case_id": case_id,
        "locality": locality,
        "policy_scope_fen": col(scope, has_rule),
        "deductible_fen": col(ded, has_rule),
        "fund_benefit_fen": fund_out,
        "patient_share_fen": col(patient, ok),
        "cap_reached": pa.array(reached.astype(bool), pa.bool_(), mask=~ok),
        "admission_no": col(admission_no, ok, pa.int32()),
        "class_b_self_fen": col(cb_self, has_rule),
        "eligible_fen": col(eligible, has_rule),
        "cap_cut_fen": col(cap_cut, has_rule),
        "other_fund_fen": col(other, ok),
        "fund_diff_fen": diff,
        "benefit_note": pa.array(NOTE_NAMES, s).take(pa.array(note.astype(np.int64))),
    })


# --------------------------------------------------------------------------- bounded memory: partition and spill

PARTITION_ROWS = 1 << 20
"""Most rows :func:`spill_benefits` hands :func:`compute_benefits` at once (when it chooses the
partitions itself): the memory of a run is about that of ``compute_benefits`` on this many rows."""
SPILL_BUCKETS = 32
"""Hash buckets of a spill whose row count is not known up front (``n_rows=None``); after the
spill, consecutive buckets are joined into partitions of at most :data:`PARTITION_ROWS` rows and
a larger bucket is split again."""
MERGE_ROWS = 1 << 20
"""Rows of partition results :class:`BenefitSpill` reads ahead, over all partitions together
(one chunk per partition, at least 1,024 and at most 65,536 rows each)."""

_S = pa.string()
BENEFIT_INPUT = (
    ("case_id", _S), ("hospital_id", _S), ("patient_id", _S), ("insurance_type", _S), ("person_type", _S),
    ("insured_region", _S), ("remote_filing", _S), ("admit_date", pa.date32()), ("discharge_date", pa.date32()),
    ("total_cost_fen", pa.int64()), ("out_of_catalogue_cost_fen", pa.int64()), ("class_b_cost_fen", pa.int64()),
    ("other_fund_paid_fen", pa.int64()), ("fund_paid_fen", pa.int64()), ("reason", _S),
)
"""The case columns :func:`compute_benefits` reads, with the types it reads them as (an absent
column is all nulls, exactly as ``compute_benefits`` takes it)."""
BENEFIT_COLUMNS = tuple(name for name, _ in BENEFIT_INPUT)
_ROW = "__dipengine_row__"  # row number of a spilled case (int64), never an output column
_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic): a fixed, well-spread hash."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def partition_of(patient_id: pa.Array, rows: np.ndarray, n_parts: int, salt: int = 0) -> np.ndarray:
    """Hash partition of each case: all cases of one ``patient_id`` get the same one.

    The bytes are hashed by a compiled kernel (no Python per case), the same on every run and
    machine (no process-salted ``hash``).

    Parameters
    ----------
    patient_id : pa.Array of string
        One value per case; null = no patient (the case is its own patient).
    rows : int64 ndarray
        Row number of each case; a case without ``patient_id`` is placed by it (any partition
        would do: it shares admissions with nobody).
    n_parts : int
        Number of partitions (>= 1).
    salt : int
        Another salt gives an independent split (:func:`spill_benefits` uses it to split a
        bucket again).

    Returns
    -------
    int64 ndarray
        Partition in ``[0, n_parts)`` of each case.
    """
    part, _, _ = _partition(patient_id, rows, n_parts, salt)
    return part


def _partition(patient_id: pa.Array, rows: np.ndarray, n_parts: int, salt: int = 0):
    """``(part, order, counts)``: :func:`partition_of`, the rows in partition order (stable) and
    the rows per partition. The strings are hashed by the duplicate pass's kernel
    (``partition_rows``); a row without ``patient_id`` is placed by a hash of its row number."""
    from dipengine._libs.duplicates import partition_rows
    from dipengine.arrays import string_buffers

    n, k_parts = len(patient_id), max(1, int(n_parts))
    salt_u = _mix64(np.array([salt], dtype=np.uint64) + _GOLDEN)[0]
    if isinstance(patient_id, pa.ChunkedArray):
        patient_id = patient_id.combine_chunks()
    data, offsets, valid = string_buffers(patient_id)
    order = np.empty(n, dtype=np.int64)
    starts = np.empty(k_parts + 1, dtype=np.int64)
    k = partition_rows(data, offsets, valid, int(salt_u), order, starts)
    counts = np.diff(starts)
    part = np.empty(n, dtype=np.int64)
    part[order[:k]] = np.repeat(np.arange(k_parts, dtype=np.int64), counts)
    if k < n:  # rows without a patient: each its own patient, anywhere
        missing = np.flatnonzero(valid == 0)
        h = _mix64(np.asarray(rows, dtype=np.int64)[missing].astype(np.uint64) ^ salt_u ^ _GOLDEN)
        part[missing] = (h % _U64(k_parts)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        counts = np.bincount(part, minlength=k_parts)
    return part, order, counts


def _benefit_input(batch, carry_types: dict, rows: np.ndarray) -> pa.RecordBatch:
    """The spilled form of one case batch: :data:`BENEFIT_INPUT`, the carried columns, row numbers."""
    t = _as_table(batch)
    cols = [_column(t, name, typ) for name, typ in BENEFIT_INPUT]
    cols += [_column(t, name, typ) for name, typ in carry_types.items()]
    names = list(BENEFIT_COLUMNS) + list(carry_types) + [_ROW]
    return pa.RecordBatch.from_arrays(cols + [pa.array(rows, pa.int64())], names=names)


def _result_schema(carry_types: dict) -> pa.Schema:
    """Schema of :meth:`BenefitSpill.read`: :func:`compute_benefits`' columns, then the carried ones."""
    empty = pa.schema(list(BENEFIT_INPUT)).empty_table()
    rules = BenefitRules(regions=(), keys={}, lookup=np.full((0, 2, 5, 3, 3, 5), -1, np.int32),
                         deductible_fen=np.zeros(0, np.int64), deductible_repeat_fen=np.zeros(0, np.int64),
                         annual_cap_fen=np.zeros(0, np.int64), class_b_ppm=np.zeros(0, np.int64),
                         band_offsets=np.zeros(1, np.int64), band_upper_fen=np.zeros(0, np.int64),
                         band_ratio_ppm=np.zeros(0, np.int64))
    hosp = pa.table({"hospital_id": pa.array([], _S), "level": pa.array([], pa.int8()),
                     "region": pa.array([], _S)})
    schema = compute_benefits(empty, rules, hosp).schema
    for name, typ in carry_types.items():
        schema = schema.append(pa.field(name, typ))
    return schema


class _Bucket:
    """One spill file (an Arrow IPC stream) and the rows written to it."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.rows = path, 0
        self._sink = pa.output_stream(str(path), buffer_size=1 << 16)
        self._writer = pa.ipc.new_stream(self._sink, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None


def _scatter(batch: pa.RecordBatch, part: np.ndarray, buckets: list) -> None:
    """Append each row of ``batch`` to ``buckets[part]``, keeping the rows' order in each bucket."""
    if len(buckets) == 1:
        buckets[0].write(batch)
        return
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=len(buckets))
    ends = np.cumsum(counts)
    moved = batch.take(pa.array(order))
    for p in np.flatnonzero(counts):
        buckets[p].write(moved.slice(int(ends[p] - counts[p]), int(counts[p])))


def _read_stream(path: Path):
    """The record batches of a spill file, one at a time (read, not memory-mapped)."""
    with pa.input_stream(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            yield batch


def _split_large(buckets: list, directory: Path, schema: pa.Schema, limit: int) -> list:
    """Buckets above ``limit`` rows split again by another salt of :func:`partition_of`, until all
    fit (a bucket that does not split, e.g. one patient's admissions, is kept whole)."""
    out, work, salt, serial = [], [(b, 1) for b in buckets], 0, itertools.count()
    while work:
        bucket, salt = work.pop(0)
        if bucket.rows <= limit or salt > 8:
            out.append(bucket)
            continue
        k = -(-bucket.rows // limit) + 1
        subs = [_Bucket(directory / f"s{next(serial)}.arrows", schema) for _ in range(k)]
        try:
            for batch in _read_stream(bucket.path):
                rows = batch.column(_ROW).to_numpy()
                _scatter(batch, partition_of(batch.column("patient_id"), rows, k, salt), subs)
        finally:
            for s in subs:
                s.close()
        bucket.path.unlink()
        if max(s.rows for s in subs) == bucket.rows:  # nothing to split: one patient, or one row
            out.extend(s for s in subs if s.rows)
            continue
        work[:0] = [(s, salt + 1) for s in subs]
    return out


def _join_small(buckets: list, limit: int) -> list:
    """Consecutive buckets joined while their rows stay within ``limit`` (empty ones dropped)."""
    groups, current, rows = [], [], 0
    for b in buckets:
        if not b.rows:
            b.path.unlink(missing_ok=True)
            continue
        if current and rows + b.rows > limit:
            groups.append(current)
            current, rows = [], 0
        current.append(b)
        rows += b.rows
    if current:
        groups.append(current)
    return groups


class _Cursor:
    """Reads one partition's result file forward, handing out its rows below a row number."""

    def __init__(self, path: Path):
        self._source = pa.input_stream(str(path))
        self._reader = pa.ipc.open_stream(self._source)
        self._batch, self._rows, self._at = None, np.zeros(0, np.int64), 0

    def take_below(self, end: int, pieces: list, rows: list) -> None:
        """Append to ``pieces`` / ``rows`` the next rows whose row number is below ``end``."""
        while True:
            if self._at == len(self._rows):
                if self._reader is None:
                    return
                try:
                    self._batch = self._reader.read_next_batch()
                except StopIteration:
                    self.close()
                    return
                self._rows, self._at = self._batch.column(_ROW).to_numpy(), 0
            k = int(np.searchsorted(self._rows, end, side="left"))
            if k > self._at:
                pieces.append(self._batch.slice(self._at, k - self._at))
                rows.append(self._rows[self._at:k])
                self._at = k
            if k < len(self._rows):
                return

    def close(self) -> None:
        if self._reader is not None:
            self._reader = None
            self._source.close()


def _remove_spill(directory: str, cursors: list) -> None:
    import shutil

    for c in cursors:
        c.close()
    cursors.clear()
    shutil.rmtree(directory, ignore_errors=True)


class BenefitSpill:
    """The benefits of a case stream, computed by partition and kept on disk (:func:`spill_benefits`).

    Read back in row order with :meth:`read` (consecutive ranges, any sizes) or :meth:`batches`;
    :meth:`close` (or leaving the ``with`` block, or the object's collection) removes the
    temporary directory.

    Attributes
    ----------
    n_rows : int
        Cases spilled (rows of the input stream).
    partitions : int
        Partitions ``compute_benefits`` ran on (non-empty ones).
    schema : pa.Schema
        What :meth:`read` returns: the columns of :func:`compute_benefits` (same names, types and
        order), then the ``carry`` columns.
    directory : pathlib.Path
        The temporary directory of the spill files.
    position : int
        Next row :meth:`read` expects.
    """

    def __init__(self, directory: Path, schema: pa.Schema):
        import weakref

        self.directory = directory
        self.schema = schema
        self.n_rows = 0
        self.partitions = 0
        self.position = 0
        self._spill_schema: pa.Schema | None = None  # the spilled cases' layout (set by spill_benefits)
        self._results: list = []
        self._cursors: list = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _remove_spill, str(directory), self._cursors)

    def _walk_group(self, i: int, group: list, carry: tuple, columns, chunk: int, summarise):
        """One partition: its terms read back in row order, walked, the result written to ``r{i}``."""
        tables = [pa.Table.from_batches(list(_read_stream(b.path)), schema=self._spill_schema) for b in group]
        terms = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0].combine_chunks()
        del tables
        if len(group) > 1:  # joined buckets: back into row order (each bucket already is)
            terms = terms.take(pa.array(np.argsort(terms[_ROW].to_numpy(), kind="stable")))
        terms = terms.rename_columns([c[len(_CARRY):] if c.startswith(_CARRY) else c for c in terms.column_names])
        result = benefit_walk(terms)
        summary = summarise(terms, result) if summarise is not None else None
        if columns is not None:
            result = result.select(list(columns))
        for name in carry:
            result = result.append_column(name, terms[name])
        result = result.append_column(_ROW, terms[_ROW])
        path = self.directory / f"r{i}.arrows"
        with pa.output_stream(str(path), buffer_size=1 << 16) as sink:
            with pa.ipc.new_stream(sink, result.schema) as writer:
                writer.write_table(result, max_chunksize=chunk)
        for b in group:
            b.path.unlink()
        return path, terms.num_rows, summary

    def _compute(self, groups: list, carry: tuple, columns, progress, workers: int = 1, summarise=None) -> list:
        """Run :func:`benefit_walk` on each partition (``workers`` threads at a time); write each
        result with its row numbers. Returns the ``summarise`` results in partition order."""
        chunk = max(1024, min(65536, MERGE_ROWS // max(1, len(groups))))
        args = [(i, g, carry, columns, chunk, summarise) for i, g in enumerate(groups)]
        if workers > 1 and len(groups) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(int(workers), len(groups))) as pool:
                futures = [pool.submit(self._walk_group, *a) for a in args]
                outcomes = self._collect((f.result() for f in futures), progress)
        else:
            outcomes = self._collect((self._walk_group(*a) for a in args), progress)
        self.partitions = len(groups)
        return outcomes

    def _collect(self, outcomes, progress) -> list:
        done, summaries = 0, []
        for path, rows, summary in outcomes:
            self._results.append(path)
            summaries.append(summary)
            done += rows
            if progress is not None:
                progress(done, self.n_rows)
        return summaries

    def read(self, start: int, n: int) -> pa.Table:
        """The benefits of rows ``[start, start + n)`` of the input stream (fewer at its end).

        Parameters
        ----------
        start : int
            First row (0-based, in input order); must be :attr:`position`, where the previous
            call ended (0 at first): ranges are read consecutively, forward.
        n : int
            Rows wanted (>= 0), any size.

        Returns
        -------
        pa.Table
            :attr:`schema`; row ``i`` is the ``compute_benefits`` row of input row ``start + i``
            (money int64 fen, ``admission_no`` int32, ``cap_reached`` bool), exactly as on the
            whole table at once.

        Raises
        ------
        ValueError
            ``start`` is not :attr:`position`, ``n`` is negative, or the spill is closed.
        """
        if self._closed:
            raise ValueError("BenefitSpill.read: the spill is closed")
        if start != self.position:
            raise ValueError(f"BenefitSpill.read: ranges are read in order; the next row is {self.position}, "
                             f"not {start}")
        if n < 0:
            raise ValueError(f"BenefitSpill.read: n must be >= 0, not {n}")
        end = min(start + int(n), self.n_rows)
        if end <= start:
            return self.schema.empty_table()
        if not self._cursors:
            self._cursors.extend(_Cursor(p) for p in self._results)
        pieces, rows = [], []
        for c in self._cursors:
            c.take_below(end, pieces, rows)
        got = np.concatenate(rows)
        if len(got) != end - start:  # every row is in exactly one partition
            raise RuntimeError(f"benefit spill: rows {start}-{end} incomplete ({len(got)} found)")
        table = pa.Table.from_batches(pieces).drop_columns([_ROW]).combine_chunks()
        if len(self._cursors) > 1:  # k-way merge: row start + i is where the pieces hold it
            where = np.empty(len(got), dtype=np.int64)
            where[got - start] = np.arange(len(got), dtype=np.int64)
            table = table.take(pa.array(where))
        self.position = end
        return table

    def batches(self, batch_size: int):
        """:meth:`read` from :attr:`position` to the end, ``batch_size`` rows at a time (tables)."""
        if batch_size < 1:
            raise ValueError(f"BenefitSpill.batches: batch_size must be >= 1, not {batch_size}")
        while self.position < self.n_rows:
            yield self.read(self.position, batch_size)

    def close(self) -> None:
        """Close the files and remove the temporary directory (idempotent)."""
        self._closed = True
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def spill_benefits(batches, rules: BenefitRules, hospitals, *, n_rows: int | None = None, spill_dir=None,
                   partitions: int | None = None, carry=(), progress=None) -> BenefitSpill:
    """:func:`compute_benefits` of a stream of case batches in bounded memory, kept on disk.

    Admission numbers and the annual cap follow each patient over the whole stream, so the
    cases are hash-partitioned by ``patient_id`` (:func:`partition_of`; a case without one is
    its own patient) into temporary Arrow IPC files as their :func:`benefit_terms`, with their
    row numbers (:class:`BenefitSpiller`). :func:`benefit_walk` then runs on each partition, in
    row order: all admissions of a patient are in one partition, so admission numbers, caps and
    ``case_id`` tie-breaks are exactly those of ``compute_benefits`` on the whole table. Each partition's result is written with its row numbers;
    :meth:`BenefitSpill.read` merges them back into row order. Memory is that of one partition
    (at most :data:`PARTITION_ROWS` rows when the partitions are chosen here) plus the batches.

    Usage::

        with spill_benefits(iter_cases(path, hospitals), rules, hospitals) as spill:
            for start, batch in ...:                      # any consecutive ranges, in row order
                benefits = spill.read(start, batch.num_rows)

    Parameters
    ----------
    batches : iterable of pa.RecordBatch or pa.Table
        The normalised case table in row order, in pieces of any size (as
        :func:`dipengine.reader.iter_cases` / ``map_cases`` yield it). Only the terms of
        :data:`BENEFIT_COLUMNS` (and ``carry``) are kept; absent ones count as null, as for
        ``compute_benefits``.
    rules : BenefitRules
        From :func:`load_benefits`.
    hospitals : path or pa.Table
        The registry (:func:`dipengine.hospitals.read_hospitals`), read once.
    n_rows : int, optional
        Expected number of cases, to size the partitions (``ceil(n_rows / PARTITION_ROWS)``);
        a hint only. Without it the cases go to :data:`SPILL_BUCKETS` buckets, joined
        afterwards into partitions of at most ``PARTITION_ROWS``; with either, a partition that
        turns out larger is split again (by another salt of the hash).
    spill_dir : path, optional
        Where the temporary directory is made (default: the system's, ``TMPDIR``).
    partitions : int, optional
        Exactly this many hash partitions, neither joined nor split (tests, tuning).
    carry : sequence of str
        Input columns returned by :meth:`BenefitSpill.read` after the benefit columns (e.g.
        ``("insurance_type",)`` for a summary); an absent one is null strings. May not be a
        name of a ``compute_benefits`` output column.
    progress : callable, optional
        ``progress(cases_computed, n_rows)``, called after each partition.

    Returns
    -------
    BenefitSpill
        ``read(start, n) -> pa.Table``: the ``compute_benefits`` columns (money int64 fen) of
        rows ``[start, start + n)``, ranges consecutive from 0; ``batches(batch_size)``;
        ``close()`` (also a context manager) removes the temporary files. The results equal
        ``compute_benefits`` on the whole table, for every batching and partition count.

    Raises
    ------
    DataError
        Whatever reading ``batches`` raises; the temporary files are removed first (as on any
        error).
    ValueError
        ``partitions`` < 1, or a ``carry`` name that is an output column.
    """
    spiller = BenefitSpiller(rules, hospitals, n_rows=n_rows, spill_dir=spill_dir, partitions=partitions,
                             carry=carry)
    try:
        for batch in batches:
            spiller.write(spiller.prepare(batch))
    except BaseException:
        spiller.abort()
        raise
    return spiller.finish(progress=progress)[0]


_CARRY = "__dipengine_carry__"  # prefix of a carried column in the spill (never a TERMS name)


class BenefitSpiller:
    """:func:`spill_benefits` fed one batch at a time, for a pipeline that reads the cases once.

    :meth:`prepare` is pure (any thread): the batch's :func:`benefit_terms`, its carried columns
    and its hash partitions. :meth:`write` (one thread, batches in row order) appends them to the
    partition files; :meth:`finish` runs :func:`benefit_walk` on every partition, on ``workers``
    threads, and returns the :class:`BenefitSpill`. :meth:`abort` removes the files after an
    error. ``keep`` columns are spilled like ``carry`` ones but handed only to ``summarise``
    (see :meth:`finish`), not returned by ``read``; ``columns``, when given, are the
    :func:`compute_benefits` columns ``read`` returns (default: all).
    """

    def __init__(self, rules: BenefitRules, hospitals, *, n_rows: int | None = None, spill_dir=None,
                 partitions: int | None = None, carry=(), keep=(), columns=None):
        import tempfile

        if partitions is not None and int(partitions) < 1:
            raise ValueError(f"spill_benefits: partitions must be >= 1, not {partitions}")
        self.rules, self.hosp = rules, _hospital_table(hospitals)
        self.carry, self.keep = tuple(carry), tuple(keep)
        base_schema = _result_schema({})
        self.columns = None if columns is None else tuple(columns)
        unknown = [c for c in self.columns or () if c not in base_schema.names]
        if unknown:
            raise ValueError(f"spill_benefits: {unknown[0]!r} is not a benefits output column")
        clash = [c for c in self.carry + self.keep if c in base_schema.names or c == _ROW]
        if clash:
            raise ValueError(f"spill_benefits: carry column {clash[0]!r} is a benefits output column")
        self.fixed = partitions is not None
        if partitions is not None:
            self.n_buckets = int(partitions)
        elif n_rows is not None:
            self.n_buckets = max(1, -(-int(n_rows) // PARTITION_ROWS))
        else:
            self.n_buckets = SPILL_BUCKETS
        self.directory = Path(tempfile.mkdtemp(prefix="dipengine-benefits-", dir=spill_dir))
        self.spill = BenefitSpill(self.directory, base_schema)
        self.buckets: list = []
        self.carry_types: dict | None = None
        self.pos = 0

    def _carried(self, t: pa.Table) -> tuple[list, dict]:
        arrays, types = [], {}
        for c in self.carry + self.keep:
            if c in BENEFIT_COLUMNS:
                typ = dict(BENEFIT_INPUT)[c]
            elif c in t.column_names:
                typ = t.schema.field(c).type
                typ = typ.value_type if pa.types.is_dictionary(typ) else typ
            else:
                typ = _S
            arrays.append(_column(t, c, typ))
            types[c] = typ
        return arrays, types

    def prepare(self, batch):
        """``(terms sorted by partition, their row order, rows per partition, carried types)``
        of one batch of normalised cases; pure, safe on any thread."""
        t = _as_table(batch)
        terms = benefit_terms(t, self.rules, self.hosp)
        carried, types = self._carried(t)
        names = terms.schema.names + [_CARRY + c for c in types]
        terms = pa.RecordBatch.from_arrays(terms.columns + carried, names=names)
        n = terms.num_rows
        if self.n_buckets == 1:
            return terms, np.arange(n, dtype=np.int64), np.array([n], dtype=np.int64), types
        _, order, counts = _partition(terms.column("patient_id"), np.arange(n, dtype=np.int64), self.n_buckets)
        return terms.take(pa.array(order)), order, counts, types

    def write(self, prepared) -> None:
        """Append a :meth:`prepare` result; batches in row order, one thread."""
        terms, order, counts, types = prepared
        if terms.num_rows == 0:
            return
        if self.carry_types is None:  # the spill's layout, from the first batch
            self.carry_types = types
            self.spill._spill_schema = terms.schema.append(pa.field(_ROW, pa.int64()))
            self.buckets = [_Bucket(self.directory / f"b{k}.arrows", self.spill._spill_schema)
                            for k in range(self.n_buckets)]
        elif terms.schema != self.spill._spill_schema.remove(len(terms.schema)):
            terms = terms.cast(self.spill._spill_schema.remove(len(terms.schema)))
        rows = pa.array(self.pos + np.asarray(order, dtype=np.int64))
        terms = pa.RecordBatch.from_arrays(terms.columns + [rows], schema=self.spill._spill_schema)
        ends = np.cumsum(counts)
        for p in np.flatnonzero(counts):
            self.buckets[p].write(terms.slice(int(ends[p] - counts[p]), int(counts[p])))
        self.pos += terms.num_rows

    def abort(self) -> None:
        """Close and remove everything spilled so far (after an error)."""
        for b in self.buckets:
            b.close()
        self.spill.close()

    def finish(self, *, workers: int = 1, summarise=None, progress=None) -> tuple["BenefitSpill", list]:
        """Walk every partition (``workers`` threads) and return ``(spill, summaries)``.

        ``summarise(terms, result)``, when given, is called once per partition with its spilled
        terms (carried and ``keep`` columns under their own names, ``_ROW``) and its
        :func:`benefit_walk` result; ``summaries`` are its returns in partition order.
        """
        spill = self.spill
        try:
            for b in self.buckets:
                b.close()
            spill.n_rows = self.pos
            types = self.carry_types or {c: dict(BENEFIT_INPUT).get(c, _S) for c in self.carry + self.keep}
            spill.schema = _result_schema({c: types[c] for c in self.carry})
            if self.columns is not None:
                spill.schema = pa.schema([spill.schema.field(c) for c in self.columns + self.carry])
            buckets = self.buckets
            if not self.fixed and buckets:
                buckets = _split_large(buckets, self.directory, spill._spill_schema, PARTITION_ROWS)
                # small buckets are joined up to a share of PARTITION_ROWS per thread walking them
                groups = _join_small(buckets, max(1, PARTITION_ROWS // max(1, int(workers))))
            else:
                groups = [[b] for b in buckets if b.rows]
                for b in buckets:
                    if not b.rows:
                        b.path.unlink()
            summaries = spill._compute(groups, self.carry, self.columns, progress, workers, summarise)
        except BaseException:
            self.abort()
            raise
        return spill, summaries


# --------------------------------------------------------------------------- pure-Python twin


def accumulate_cap_py(order, patient, raw_fen, cap_fen):
    """Readable twin of the Cython :func:`accumulate_cap`: returns ``(fund, reached)`` dicts by row."""
    fund, reached = {}, {}
    used, prev = 0, None
    for i in order:
        if patient[i] != prev:
            used, prev = 0, patient[i]
        f = min(raw_fen[i], max(cap_fen[i] - used, 0))
        fund[i] = f
        used += f
        reached[i] = used >= cap_fen[i]
    return fund, reached


def locality_of(insured_region: str | None, hospital_region: str | None) -> str | None:
    """``local``, ``in_province`` or ``cross_province`` (contract §3); None when unknown."""
    if not insured_region or not hospital_region:
        return None
    if insured_region == hospital_region:
        return "local"
    return "in_province" if insured_region[:2] == hospital_region[:2] else "cross_province"


def benefit_case(case: dict, rules: BenefitRules, level: int | None, hospital_region: str | None,
                 *, admission_no: int = 1, cap_used_fen: int = 0) -> dict:
    """Benefits of one admission, plain Python (the twin of :func:`compute_benefits`).

    Parameters
    ----------
    case : dict
        Normalised fields: ``insured_region, insurance_type, person_type, remote_filing,
        total_cost_fen, out_of_catalogue_cost_fen, class_b_cost_fen, other_fund_paid_fen``
        (None = default/0).
    rules : BenefitRules
    level, hospital_region : treating hospital (None = unknown hospital).
    admission_no : int
        1 for the first admission of the year (full deductible), else the repeat deductible.
    cap_used_fen : int
        Fund benefit the patient already received this year, fen.

    Returns
    -------
    dict
        ``locality, rule, policy_scope_fen, deductible_fen, class_b_self_fen, eligible_fen,
        raw_fund_fen, fund_benefit_fen, cap_cut_fen, other_fund_fen, patient_share_fen,
        cap_reached, benefit_note`` and ``trace`` (list of str). ``patient_share_fen`` is what
        the rules leave to the patient minus the case's other funds, floored at 0.
    """
    total = case.get("total_cost_fen") or 0
    other = case.get("other_fund_paid_fen") or 0
    out = {"locality": locality_of(case.get("insured_region"), hospital_region), "rule": -1,
           "policy_scope_fen": None, "deductible_fen": None, "class_b_self_fen": None,
           "eligible_fen": None, "raw_fund_fen": 0, "fund_benefit_fen": 0, "cap_cut_fen": None,
           "other_fund_fen": other, "patient_share_fen": max(total - other, 0), "cap_reached": False,
           "benefit_note": None, "trace": []}
    trace = out["trace"]
    if level is None:
        out["benefit_note"] = NOTE_NAMES[UNKNOWN_HOSPITAL]
        trace.append("benefits: treating hospital unknown, no benefit computed")
        return out
    region = case.get("insured_region")
    if region not in rules.regions:
        out["benefit_note"] = NOTE_NAMES[NO_BENEFIT_TABLE]
        trace.append(f"benefits: no benefits table for insured region {region!r}")
        return out
    person = case.get("person_type") or "other"
    filing = case.get("remote_filing") or "none"
    rule = rules.match(region, case.get("insurance_type"), person, level, out["locality"], filing)
    if rule < 0:
        out["benefit_note"] = NOTE_NAMES[NO_BENEFIT_RULE]
        trace.append(f"benefits: no rule for {region}/{case.get('insurance_type')}/{person}/level {level}/"
                     f"{out['locality']}/{filing}; fund pays nothing")
        return out
    out["rule"] = rule
    trace.append(f"benefits: rule {rules.sources[rule]} ({region}/{case.get('insurance_type')}/{person}/"
                 f"level {level}/{out['locality']}/{filing})")
    ooc = case.get("out_of_catalogue_cost_fen") or 0
    cb = case.get("class_b_cost_fen") or 0
    cb_self = (cb * int(rules.class_b_ppm[rule]) + _HALF) // PPM
    scope = total - ooc - cb_self
    if scope < 0:
        out["benefit_note"] = NOTE_NAMES[COSTS_EXCEED_TOTAL]
        trace.append("benefits: out-of-catalogue + class B self-pay exceed the total cost")
        return out
    first = admission_no <= 1
    ded = int(rules.deductible_fen[rule] if first else rules.deductible_repeat_fen[rule])
    ded = min(ded, scope)
    eligible = scope - ded
    acc, lower = 0, 0
    for upper, ratio in rules.bands(rule):
        top = eligible if upper is None else min(eligible, upper)
        if top > lower:
            acc += (top - lower) * ratio
        if upper is not None:
            lower = upper
    raw = (acc + _HALF) // PPM
    cap = int(rules.annual_cap_fen[rule])
    fund = min(raw, max(cap - cap_used_fen, 0))
    out.update(policy_scope_fen=scope, deductible_fen=ded, class_b_self_fen=cb_self, eligible_fen=eligible,
               raw_fund_fen=raw, fund_benefit_fen=fund, cap_cut_fen=raw - fund,
               patient_share_fen=max(ooc + cb_self + ded + (eligible - raw) + (raw - fund) - other, 0),
               cap_reached=cap_used_fen + fund >= cap)
    trace.append(f"benefits: policy scope {_yuan_text(scope)} = total {_yuan_text(total)} - out-of-catalogue "
                 f"{_yuan_text(ooc)} - class B self-pay {_yuan_text(cb_self)}; deductible {_yuan_text(ded)} "
                 f"({'first' if first else 'repeat'} admission); fund {_yuan_text(fund)}"
                 + (f" (cap cut {_yuan_text(raw - fund)})" if raw > fund else ""))
    if other:
        trace.append(f"benefits: other funds paid {_yuan_text(other)}, taken off the patient's part: "
                     f"patient share {_yuan_text(out['patient_share_fen'])}")
    return out


def reference_benefits(rows: list[dict], rules: BenefitRules, hospitals: dict) -> list[dict]:
    """Pure-Python twin of :func:`compute_benefits` over a list of normalised case dicts.

    ``hospitals`` maps ``hospital_id -> (level, region)``. Sorts admissions with Python's
    ``sorted`` and walks them in plain Python; slow, for tests only.
    """
    import datetime as dt

    def key(i):
        r = rows[i]
        pid = r.get("patient_id")
        d = r.get("discharge_date")
        a = r.get("admit_date")
        return ((0, pid) if pid is not None else (1, i), d.year if d else -1,
                d or dt.date.min, a or dt.date.min, r.get("case_id") or "")

    accepted = [i for i, r in enumerate(rows) if r.get("reason") is None]
    out: list = [None] * len(rows)
    last_patient, no, used = None, 0, 0
    for i in sorted(accepted, key=key):
        k = key(i)[:2]
        if k != last_patient:
            last_patient, no, used = k, 0, 0
        no += 1
        r = rows[i]
        level, region = hospitals.get(r.get("hospital_id"), (None, None))
        res = benefit_case(r, rules, level, region, admission_no=no, cap_used_fen=used)
        used += res["fund_benefit_fen"]
        res["admission_no"] = no
        out[i] = res
    for i, r in enumerate(rows):
        if out[i] is None:
            level, region = hospitals.get(r.get("hospital_id"), (None, None))
            out[i] = {"locality": locality_of(r.get("insured_region"), region), "policy_scope_fen": None,
                      "deductible_fen": None, "fund_benefit_fen": None, "patient_share_fen": None,
                      "other_fund_fen": None,
                      "cap_reached": None, "admission_no": None, "benefit_note": NOTE_NAMES[REJECTED]}
    return out
