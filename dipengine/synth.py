"""A synthetic pooling region: hospital registry and inpatient cases.

:func:`synth_region` returns ``(cases, hospitals)``: the cases in the contract §2 *input* form
(string codes, ``date32`` dates, money as ``decimal128(18, 2)`` yuan, ``list<string>`` secondary
codes) and the registry in the contract §3 form. The data are made for tests, benchmarks and the
demo, with the structure a real region has (docs/synth.md):

- hospitals of three levels (8 level-3, 20 level-2, 32 level-1 for 60) with volumes and case
  mixes that depend on the level;
- main diagnoses Zipf-distributed over a vocabulary of real ICD-10 医保版 codes
  (``dipengine/data/dx_vocab.csv``), each with a few procedure patterns (conservative,
  diagnostic, therapeutic, surgery, main + related pair) from ``proc_vocab.csv``;
- log-normal costs per (diagnosis, pattern) scaled by level (0.70 / 0.85 / 1.00), by secondary
  diagnoses from a severity list, and by ~3 % inflation a year; LOS correlated with cost;
- deaths, transfers, repeat admissions (some within 15 days at the same hospital), very
  low-cost short stays, ~8 % remote cases from two in-province and two cross-province regions;
- ``bad_rows``: planted defects, one per bad row, cycling over the reader-level reason codes
  (column ``planted_defect`` names it; null on clean rows);
- on request, planted over-long stays and up-coding hospitals (:attr:`SynthParams.over_long_share`,
  :attr:`SynthParams.upcoding_hospitals`), and with ``planted=True`` the ground truth of every
  planted pattern (:data:`PLANTED_SCHEMA`), for an audit's recall and precision.

Everything is vectorised numpy over cases (loops run over diagnoses and hospitals only), from
one ``numpy.random.default_rng`` per stream: the region *structure* (hospitals, disease mix)
is seeded with ``(seed, region)`` and the *cases* with ``(seed, year, region)``, so the years of
one seed share hospitals and case mix but differ in cases. Same arguments, same bytes. Over-long
stays and up-coding draw from streams of their own, only when their share is > 0: with the
defaults the data are those of versions without them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dipengine import codes as _codes
from dipengine.errors import DataError
from dipengine.hospitals import SCHEMA as _REGISTRY_SCHEMA
from dipengine.io import read_table, write_table
from dipengine.money import fen_to_decimal

DEFECT_KINDS = (
    "MISSING_FIELD",
    "INVALID_DX",
    "INVALID_PROC",
    "UNKNOWN_HOSPITAL",
    "BAD_DATES",
    "BAD_AMOUNT",
    "BAD_VALUE",
    "DUPLICATE_CASE",
)
"""Reader-level reason codes (contract §7) that ``bad_rows`` plants, in cycling order."""

AGE_PROFILES = ("N", "I", "C", "Y", "W", "A", "M", "E", "G")
"""Age profiles of ``dx_vocab.csv``: neonate (0-28 days), infant (< 1 year), child (1-14),
young (15-44), women of child-bearing age (20-42), adult (18-80), middle-aged and older
(35-90), elderly (55-98), general (0-95)."""

PROC_CLASSES = ("diagnostic", "therapeutic", "surgery")

CASE_SCHEMA = pa.schema(
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
        ("admit_date", pa.date32()),
        ("discharge_date", pa.date32()),
        ("los", pa.int32()),
        ("discharge_mode", pa.int8()),
        ("main_dx", pa.string()),
        ("other_dx", pa.list_(pa.string())),
        ("main_proc", pa.string()),
        ("other_procs", pa.list_(pa.string())),
        ("total_cost", pa.decimal128(18, 2)),
        ("fund_paid", pa.decimal128(18, 2)),
        ("patient_paid", pa.decimal128(18, 2)),
        ("out_of_catalogue_cost", pa.decimal128(18, 2)),
        ("class_b_cost", pa.decimal128(18, 2)),
        ("planted_defect", pa.string()),
    ]
)
"""Arrow schema of the generated cases (contract §2 input form plus ``planted_defect``)."""

HOSPITAL_SCHEMA = _REGISTRY_SCHEMA
"""Arrow schema of the generated registry (contract §3, as :mod:`dipengine.hospitals` reads it);
``coefficient`` null where absent."""


@dataclass(frozen=True)
class SynthParams:
    """Tunable proportions of the synthetic region (defaults give the documented realism).

    Money amounts are yuan, durations days; shares are fractions of cases unless stated.
    """

    base_year: int = 2024
    """Year whose prices the vocabularies state; other years are inflated or deflated."""
    inflation: float = 0.03
    """Cost growth per year."""
    level_cost: tuple = (0.70, 0.85, 1.00)
    """Cost multiplier of levels 1, 2, 3."""
    level_volume: tuple = (1.0, 3.5, 10.0)
    """Relative case volume of one hospital of level 1, 2, 3."""
    cost_sigma: float = 0.38
    """Log-normal sigma of the cost within one (diagnosis, pattern, level): CV about 0.39."""
    los_sigma: float = 0.35
    los_cost_corr: float = 0.7
    """Correlation of log LOS with log cost."""
    zipf_s: float = 0.7
    """Zipf exponent of the main-diagnosis frequencies over their rank."""
    remote_share: float = 0.08
    """Share of patients insured in another pooling region."""
    employee_share: float = 0.55
    admissions: tuple = (0.86, 0.09, 0.035, 0.015)
    """Share of patients with 1, 2, 3, 4 admissions in the year."""
    same_hospital: float = 0.75
    """Probability that a repeat admission is at the patient's first hospital."""
    readmit_15d: float = 0.3
    """Share of repeat admissions that start 1-14 days after the previous discharge."""
    death_rate: float = 0.01
    transfer_rates: tuple = (0.015, 0.01, 0.015, 0.005)
    """Shares of discharge modes 2, 3, 4, 9."""
    low_cost_share: float = 0.015
    """Planted very low-cost short stays (LOS 1-2 days, 10-30 % of the usual cost)."""
    over_long_share: float = 0.0
    """Planted over-long stays: share of cases (drawn among those that are not low-cost short
    stays) whose LOS is multiplied by a factor drawn in :attr:`over_long_factor` and whose cost by
    :attr:`over_long_cost`. 0 (the default) plants none and draws nothing."""
    over_long_factor: tuple = (3.0, 5.0)
    """Range of the LOS factor of a planted over-long stay (uniform)."""
    over_long_cost: float = 1.2
    """Cost multiplier of a planted over-long stay."""
    upcoding_hospitals: float = 0.0
    """Planted up-coding (高套): share of the hospitals (at least one when > 0), drawn among the
    level-2 and level-3 ones, whose cases get added severity-III / high-weight comorbidity
    secondary diagnoses. 0 (the default) plants none and draws nothing."""
    upcoding_rate: float = 0.6
    """Probability that a case of an up-coding hospital is up-coded."""
    n_subcategories: int = 300
    """Subcategories drawn from a full ICD-10 list (``codes_icd10=``)."""


DEFAULT_PARAMS = SynthParams()

PLANTED_PATTERNS = ("low_cost_short_stay", "over_long_stay", "readmission_15d", "upcoding_hospital")
"""Patterns of the ground-truth table (``planted=True``, ``planted.arrow``), in that order:
:attr:`SynthParams.low_cost_share`, :attr:`SynthParams.over_long_share`, repeat admissions that
start 1-14 days after the same patient's previous discharge (:attr:`SynthParams.readmit_15d`),
and :attr:`SynthParams.upcoding_hospitals` (one row per hospital, ``case_id`` null)."""

PLANTED_SCHEMA = pa.schema([("pattern", pa.string()), ("case_id", pa.string()), ("hospital_id", pa.string())])
"""Arrow schema of the ground-truth table: one row per planted item."""

UPCODING_MIN_CCI_WEIGHT = 2
"""Comorbidity codes an up-coding hospital adds: those whose ``cci_weights.csv`` weight is at least this."""


# --------------------------------------------------------------------------------------------
# Vocabularies


@dataclass
class Vocabulary:
    """Diagnoses and procedures the generator draws from (parallel numpy arrays).

    ``dx_procs`` lists, per diagnosis, indices into the procedure arrays, in order of
    plausibility. Costs are yuan at level-3 prices of :attr:`SynthParams.base_year`.
    """

    dx_code: list
    dx_name: list
    dx_age: np.ndarray  # int8 index into AGE_PROFILES
    dx_sex: np.ndarray  # int8: 0 any, 1 M, 2 F
    dx_weight: np.ndarray  # float64 relative frequency as main diagnosis
    dx_cost: np.ndarray  # float64 yuan, conservative treatment
    dx_los: np.ndarray  # float64 days, median
    dx_p_proc: np.ndarray  # float64 share with a procedure
    dx_procs: list  # list[list[int]]
    dx_sec_weight: np.ndarray  # float64 relative frequency as secondary diagnosis
    dx_sec_mult: np.ndarray  # float64 cost multiplier as secondary diagnosis
    dx_severity: np.ndarray  # int8: 0 none, 2 severity II, 3 severity III
    proc_code: list
    proc_name: list
    proc_class: np.ndarray  # int8 index into PROC_CLASSES
    proc_level: np.ndarray  # int8 surgical level 1-4
    proc_cost: np.ndarray  # float64 yuan added by the procedure


def _data_path(name: str):
    return resources.files("dipengine.data") / name


def vocabulary_tables() -> tuple[pa.Table, pa.Table]:
    """The packaged vocabularies ``dx_vocab.csv`` and ``proc_vocab.csv`` as Arrow tables (text columns)."""
    out = []
    for name in ("dx_vocab.csv", "proc_vocab.csv"):
        with resources.as_file(_data_path(name)) as p:
            out.append(read_table(str(p)))
    return out[0], out[1]


def load_vocabulary() -> Vocabulary:
    """Parse the packaged vocabularies into a :class:`Vocabulary`."""
    dx, pr = vocabulary_tables()
    pcode = pr["code"].to_pylist()
    pindex = {c: i for i, c in enumerate(pcode)}
    procs = []
    for i, s in enumerate(dx["procs"].to_pylist()):
        lst = [p for p in (s or "").split("|") if p]
        missing = [p for p in lst if p not in pindex]
        if missing:
            raise DataError("procedure not in proc_vocab.csv", file="dx_vocab.csv", column="procs",
                            value=missing[0], row=i + 2)
        procs.append([pindex[p] for p in lst])

    def num(t, c):
        return np.asarray(t[c].cast(pa.float64()), dtype=np.float64)

    age_map = {a: i for i, a in enumerate(AGE_PROFILES)}
    sev_map = {"": 0, "II": 2, "III": 3}
    return Vocabulary(
        dx_code=dx["code"].to_pylist(),
        dx_name=dx["name"].to_pylist(),
        dx_age=np.array([age_map[a] for a in dx["age_profile"].to_pylist()], dtype=np.int8),
        dx_sex=np.array([{"": 0, "M": 1, "F": 2}[s] for s in dx["sex"].to_pylist()], dtype=np.int8),
        dx_weight=num(dx, "weight"),
        dx_cost=num(dx, "cost"),
        dx_los=num(dx, "los"),
        dx_p_proc=num(dx, "p_proc"),
        dx_procs=procs,
        dx_sec_weight=num(dx, "sec_weight"),
        dx_sec_mult=num(dx, "sec_mult"),
        dx_severity=np.array([sev_map[s] for s in dx["severity"].to_pylist()], dtype=np.int8),
        proc_code=pcode,
        proc_name=pr["name"].to_pylist(),
        proc_class=np.array([PROC_CLASSES.index(c) for c in pr["class"].to_pylist()], dtype=np.int8),
        proc_level=np.asarray(pr["level"].cast(pa.int8()), dtype=np.int8),
        proc_cost=num(pr, "cost"),
    )


def _read_code_list(path, kind: str) -> tuple[list, list]:
    table = read_table(path)
    if "code" not in table.column_names:
        raise DataError("code list has no 'code' column", file=path, column="code")
    code = _codes.normalize(table["code"].combine_chunks())
    name = table["name"].cast(pa.string()) if "name" in table.column_names else code
    ok = _codes.is_valid_dx(code) if kind == "dx" else _codes.is_valid_proc(code)
    keep = pc.fill_null(ok, False)
    code = code.filter(keep)
    name = name.combine_chunks().filter(keep) if isinstance(name, pa.ChunkedArray) else name.filter(keep)
    if len(code) == 0:
        raise DataError("code list holds no well-formed code", file=path, column="code")
    return code.to_pylist(), name.to_pylist()


def _procs_from_list(path, base: Vocabulary, rng) -> tuple[Vocabulary, np.ndarray]:
    """Procedure arrays from a full ICD-9-CM-3 list; returns the new vocabulary and the map
    from ``base`` procedure indices to indices in the list (-1: absent)."""
    codes, names = _read_code_list(path, "proc")
    cls_txt = _codes.proc_class_heuristic(pa.array(codes, pa.string())).to_pylist()
    cls = np.array([PROC_CLASSES.index(c) if c else 1 for c in cls_txt], dtype=np.int8)
    n = len(codes)
    level = rng.choice(np.array([1, 2, 3, 4], dtype=np.int8), size=n, p=[0.25, 0.35, 0.28, 0.12])
    level = np.where(cls == 2, level, 1).astype(np.int8)
    cost = np.where(
        cls == 0, rng.uniform(200, 3000, n),
        np.where(cls == 1, rng.uniform(300, 8000, n), 2500.0 * 2.2 ** (level - 1) * rng.lognormal(0, 0.3, n)),
    )
    # Classes by the chapter heuristic; vocabulary procedures of the same class keep level and cost.
    index = {c: i for i, c in enumerate(codes)}
    remap = np.array([index.get(c, -1) for c in base.proc_code], dtype=np.int64)
    for j, i in enumerate(remap):
        if i >= 0 and cls[i] == base.proc_class[j]:
            level[i], cost[i] = base.proc_level[j], base.proc_cost[j]
    vocab = dataclasses.replace(base, proc_code=codes, proc_name=names, proc_class=cls,
                                proc_level=level, proc_cost=cost.astype(np.float64))
    return vocab, remap


def _random_procs(vocab: Vocabulary, rng, n_dx: int, p_proc: np.ndarray) -> list:
    """Per diagnosis a plausible-looking set: a diagnostic, a therapeutic and 1-2 surgical procedures."""
    pools = [np.flatnonzero(vocab.proc_class == c) for c in range(3)]
    out = []
    for d in range(n_dx):
        chosen = []
        if p_proc[d] > 0:
            for c, k in ((2, 1 + int(rng.random() < 0.5)), (0, 1), (1, 1)):
                if len(pools[c]):
                    chosen.extend(int(x) for x in rng.choice(pools[c], size=min(k, len(pools[c])), replace=False))
        out.append(chosen)
    return out


def _vocab_from_lists(icd10, icd9, params: SynthParams, rng) -> Vocabulary:
    """A vocabulary drawn from full code lists, with the statistical structure of the packaged one."""
    base = load_vocabulary()
    vocab = base
    remap = np.arange(len(base.proc_code))
    if icd9 is not None:
        vocab, remap = _procs_from_list(icd9, base, rng)
    if icd10 is None:
        procs = [[int(remap[p]) for p in lst if remap[p] >= 0] for lst in base.dx_procs]
        if icd9 is not None:
            # Vocabulary procedures missing from the list: replace by random ones of the class.
            rnd = _random_procs(vocab, rng, len(procs), base.dx_p_proc)
            procs = [p if p or not base.dx_procs[d] else rnd[d] for d, p in enumerate(procs)]
        return dataclasses.replace(vocab, dx_procs=procs)

    codes, names = _read_code_list(icd10, "dx")
    main = [c.split("+")[0] for c in codes]
    sub = np.array([m[:5] for m in main])
    letter = np.array([m[0] for m in main])
    eligible = ~np.isin(letter, list("UVWXY"))
    subs = np.unique(sub[eligible])
    k = min(params.n_subcategories, len(subs))
    chosen_subs = np.sort(rng.choice(subs, size=k, replace=False))
    # First and one random further code of each chosen subcategory.
    order = np.argsort(sub, kind="stable")
    sorted_sub = sub[order]
    rows, owner = [], []
    for j, s in enumerate(chosen_subs):
        lo, hi = np.searchsorted(sorted_sub, s, "left"), np.searchsorted(sorted_sub, s, "right")
        members = order[lo:hi]
        pick = [members[0]]
        if len(members) > 1 and rng.random() < 0.5:
            pick.append(members[1 + rng.integers(len(members) - 1)])
        rows.extend(int(i) for i in pick)
        owner.extend([j] * len(pick))
    owner = np.array(owner)
    first = np.array([chosen_subs[o][0] for o in owner])
    n = len(rows)
    sub_age = rng.choice(np.array([3, 5, 6, 7, 8], np.int8), size=k, p=[0.15, 0.3, 0.25, 0.2, 0.1])
    age = sub_age[owner]
    age = np.where(first == "P", 0, np.where(first == "O", 4, np.where(first == "Q", 2, age))).astype(np.int8)
    sex = np.where(first == "O", 2, 0).astype(np.int8)
    surgical_ch = np.isin(first, list("CDKNSTMHO"))
    sub_cost = np.clip(rng.lognormal(np.log(7000), 0.7, k), 1500, 150000)
    sub_los = np.clip(rng.lognormal(np.log(8), 0.4, k), 2, 40)
    p_proc = np.where(surgical_ch, rng.uniform(0.4, 0.9, n), rng.uniform(0.0, 0.3, n))
    # Secondary diagnoses: the vocabulary's severity/comorbidity list, mapped to the list's code of
    # the same subcategory; codes not among the drawn main diagnoses are secondary only.
    sec_w = np.zeros(n)
    sec_m = np.ones(n)
    sev = np.zeros(n, np.int8)
    pos = {}
    for r, i in enumerate(rows):
        pos.setdefault(main[i][:5], r)
    first_code = {}
    for i in order[::-1]:
        first_code[sub[i]] = int(i)
    extra, sec_rows = [], []
    for d in np.flatnonzero(base.dx_sec_weight > 0):
        s = base.dx_code[d].split("+")[0][:5]
        if s in pos:
            r = pos[s]
            sec_w[r], sec_m[r], sev[r] = base.dx_sec_weight[d], base.dx_sec_mult[d], base.dx_severity[d]
        elif s in first_code:
            pos[s] = n + len(extra)
            extra.append(first_code[s])
            sec_rows.append(int(d))
    m = len(extra)
    dx_code = [codes[i] for i in rows + extra]
    if sec_w.sum() == 0 and m == 0:
        sec_w[rng.choice(n, size=min(30, n), replace=False)] = 1.0
        sec_m = np.where(sec_w > 0, 1.05, 1.0)
    vocab2 = dataclasses.replace(
        vocab,
        dx_code=dx_code,
        dx_name=[names[i] for i in rows + extra],
        dx_age=np.concatenate([age, base.dx_age[sec_rows]]).astype(np.int8),
        dx_sex=np.concatenate([sex, base.dx_sex[sec_rows]]).astype(np.int8),
        dx_weight=np.concatenate([np.ones(n), np.zeros(m)]),
        dx_cost=np.concatenate([sub_cost[owner], base.dx_cost[sec_rows]]),
        dx_los=np.concatenate([sub_los[owner], base.dx_los[sec_rows]]),
        dx_p_proc=np.concatenate([p_proc, np.zeros(m)]),
        dx_procs=[],
        dx_sec_weight=np.concatenate([sec_w, base.dx_sec_weight[sec_rows]]),
        dx_sec_mult=np.concatenate([sec_m, base.dx_sec_mult[sec_rows]]),
        dx_severity=np.concatenate([sev, base.dx_severity[sec_rows]]).astype(np.int8),
    )
    vocab2.dx_procs = _random_procs(vocab2, rng, n + m, vocab2.dx_p_proc)
    return vocab2


def _upcoding_codes(v: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Diagnoses (vocabulary indices) an up-coding hospital adds: the sex-neutral vocabulary codes
    whose longest ``severity_dx.csv`` prefix is of level III, and those whose longest
    ``cci_weights.csv`` prefix weighs at least :data:`UPCODING_MIN_CCI_WEIGHT` (the shipped
    auxiliary catalogues, matched on the main code as the grouper does)."""
    from dipengine.rules import longest_prefix

    main = _codes.main_code(pa.array(v.dx_code, pa.string()))
    neutral = v.dx_sex == 0
    tables = []
    for name in ("severity_dx.csv", "cci_weights.csv"):
        with resources.as_file(_data_path(name)) as p:
            tables.append(read_table(str(p)))
    sev, cci = tables
    sev_row = longest_prefix(main, sev["dx_prefix"].to_pylist())
    sev_level = np.array(sev["level"].to_pylist() + [None], dtype=object)[sev_row]
    cci_row = longest_prefix(main, cci["dx_prefix"].to_pylist())
    cci_weight = np.array([int(w) for w in cci["weight"].to_pylist()] + [0], np.int64)[cci_row]
    return (np.flatnonzero(neutral & (sev_level == "III")),
            np.flatnonzero(neutral & (cci_weight >= UPCODING_MIN_CCI_WEIGHT)))


# --------------------------------------------------------------------------------------------
# Region structure


def remote_regions(region: str) -> list[str]:
    """Two in-province and two cross-province pooling regions that send remote patients to ``region``."""
    prov = region[:2]
    inprov = [r for r in (prov + "0300", prov + "1400", prov + "0600", prov + "1900") if r != region][:2]
    cross = [r for r in ("360700", "110100", "510100", "310100") if r[:2] != prov][:2]
    return inprov + cross


_L3 = ["第一人民医院", "人民医院", "中心医院", "中医院", "第二人民医院", "医科大学附属医院", "妇幼保健院",
       "第三人民医院", "肿瘤医院", "骨科医院", "第四人民医院", "儿童医院"]
_DISTRICTS = ["东城", "西城", "南山", "北湖", "江北", "城南", "新港", "高新", "临江", "白云", "青山", "金湾",
              "龙华", "清溪", "河西", "湖滨", "平安", "长乐", "永宁", "丰泽"]
_L2 = ["区人民医院", "区中医院", "区妇幼保健院", "区第二人民医院"]
_TOWNS = ["石岩", "凤岗", "大朗", "横沥", "塘厦", "清平", "黄江", "桥头", "沙田", "樟木", "望牛", "洪梅",
          "麻涌", "道滘", "高埗", "石碣", "石龙", "茶山", "东坑", "企石", "谢岗", "常平", "寮步", "虎门"]


def synth_hospitals(n_hospitals: int = 60, *, region: str = "440200", seed: int = 0) -> pa.Table:
    """A hospital registry (contract §3): 8/60 level 3, 20/60 level 2, the rest level 1.

    ``coefficient`` is null except for a few hospitals; ``assessment_coef`` lies in 0.95-1.00.
    Deterministic for ``(seed, region)``.
    """
    _check_region(region)
    if n_hospitals < 1:
        raise ValueError("n_hospitals must be at least 1")
    rng = np.random.default_rng([seed, int(region), 11])
    n3 = max(1, round(n_hospitals * 8 / 60)) if n_hospitals >= 3 else 1
    n2 = max(1, round(n_hospitals * 20 / 60)) if n_hospitals >= 3 else min(1, n_hospitals - 1)
    n1 = n_hospitals - n3 - n2
    levels = np.array([3] * n3 + [2] * n2 + [1] * n1, dtype=np.int8)
    names = []
    for i in range(n3):
        names.append(("" if i < len(_L3) else f"第{i + 1}") + _L3[i % len(_L3)])
    for i in range(n2):
        names.append(_DISTRICTS[i % len(_DISTRICTS)] + _L2[(i // len(_DISTRICTS)) % len(_L2)])
    for i in range(n1):
        t = _TOWNS[i % len(_TOWNS)]
        names.append(t + ("镇卫生院" if (i // len(_TOWNS)) % 2 == 0 else "街道社区卫生服务中心"))
    coef = np.full(n_hospitals, np.nan)
    k = max(1, n_hospitals // 12)
    pick = rng.choice(n_hospitals, size=k, replace=False)
    coef[pick] = np.round(np.array([0.78, 0.88, 1.0])[levels[pick] - 1] * rng.uniform(0.97, 1.03, k), 2)
    assess = np.round(rng.uniform(0.95, 1.0, n_hospitals), 2)
    ids = [f"H{region}{i + 1:05d}" for i in range(n_hospitals)]
    return pa.table(
        {
            "hospital_id": pa.array(ids, pa.string()),
            "name": pa.array(names, pa.string()),
            "level": pa.array(levels, pa.int8()),
            "region": pa.array([region] * n_hospitals, pa.string()),
            "coefficient": pa.array(coef, pa.float64(), from_pandas=True),
            "assessment_coef": pa.array(assess, pa.float64()),
        },
        schema=HOSPITAL_SCHEMA,
    )


def _check_region(region: str) -> None:
    if not (isinstance(region, str) and len(region) == 6 and region.isdigit()):
        raise ValueError(f"region must be a 6-digit pooling-region code, not {region!r}")


def _as_registry(hospitals) -> pa.Table:
    if isinstance(hospitals, pa.Table) and hospitals.schema.equals(HOSPITAL_SCHEMA):
        return hospitals
    from dipengine.hospitals import read_hospitals

    reg = read_hospitals(hospitals)
    coef = reg["coefficient"].combine_chunks()
    coef = pc.if_else(pc.is_nan(coef), pa.scalar(None, pa.float64()), coef)
    return reg.set_column(reg.schema.get_field_index("coefficient"), "coefficient", coef).cast(HOSPITAL_SCHEMA)


# --------------------------------------------------------------------------------------------
# Helpers on arrays


def _take(values: list, idx: np.ndarray) -> pa.Array:
    """Strings ``values[idx]`` as an Arrow string array; ``idx < 0`` gives null."""
    idx = np.asarray(idx, dtype=np.int64)
    dictionary = pa.array(values, pa.string())
    mask = idx < 0
    return dictionary.take(pa.array(np.where(mask, 0, idx), mask=mask if mask.any() else None))


def _segment_choice(u: np.ndarray, seg: np.ndarray, cum_key: np.ndarray, n_seg_end: np.ndarray) -> np.ndarray:
    """Pick one item per row from the row's segment of a flat table of normalised weights.

    ``cum_key`` holds ``segment + cumulative normalised weight`` per item (increasing), so a
    single ``searchsorted`` picks from every segment at once: row ``i`` gets the first item of
    segment ``seg[i]`` whose cumulative weight exceeds ``u[i]`` (uniform in [0, 1)).
    ``n_seg_end`` is each segment's last item index.
    """
    idx = np.searchsorted(cum_key, seg + u, side="right")
    return np.minimum(idx, n_seg_end[seg])


def _zero_padded(num: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pa.array(num, pa.int64()).cast(pa.string()), width, "0")


# --------------------------------------------------------------------------------------------
# Patterns: per diagnosis the treatment patterns and their weights by hospital level


@dataclass
class _Patterns:
    dx: np.ndarray  # int64 diagnosis of each pattern (sorted)
    main: np.ndarray  # int64 main procedure, -1 conservative
    rel: np.ndarray  # int64 related procedure, -1 none
    cost: np.ndarray  # float64 mean cost yuan (level 3, base year)
    los: np.ndarray  # float64 median LOS
    key: list  # per level 1..3: dx + normalised cumulative weight
    end: np.ndarray  # int64 last pattern index of each diagnosis


# Weight of a surgery of surgical level 1-4 at a hospital of level 1-3 (row: level - 1).
_SURGERY_AT_LEVEL = np.array(
    [[0.6, 0.6, 0.2, 0.03], [1.0, 1.0, 0.8, 0.4], [1.0, 1.0, 1.0, 1.0]]
)


def _patterns(v: Vocabulary) -> _Patterns:
    dx, main, rel, base_w, cost, los, surg_level = [], [], [], [], [], [], []
    class_factor = (1.05, 1.0, 0.9)
    for d in range(len(v.dx_code)):
        p = v.dx_procs[d]
        p_proc = float(v.dx_p_proc[d]) if p else 0.0
        dx.append(d), main.append(-1), rel.append(-1), base_w.append(1.0 - p_proc)
        cost.append(v.dx_cost[d]), los.append(v.dx_los[d]), surg_level.append(0)
        if not p:
            continue
        share = np.array([1.0 / (i + 1) ** 0.7 for i in range(len(p))])
        share /= share.sum()
        n_pairs = 0
        for i, q in enumerate(p):
            cls = int(v.proc_class[q])
            lvl = int(v.proc_level[q]) if cls == 2 else 0
            c = v.dx_cost[d] * class_factor[cls] + v.proc_cost[q]
            stay = v.dx_los[d] + (1.0 if cls == 0 else 0.0) + (max(lvl - 1, 0) if cls == 2 else 0.0)
            w = p_proc * share[i]
            partner = p[i + 1] if i + 1 < len(p) else (p[0] if i > 0 else -1)
            if cls == 2 and partner >= 0 and n_pairs < 2:
                n_pairs += 1
                dx.append(d), main.append(q), rel.append(partner), base_w.append(0.4 * w)
                cost.append(c + 0.6 * v.proc_cost[partner]), los.append(stay + 1.0), surg_level.append(lvl)
                w *= 0.6
            dx.append(d), main.append(q), rel.append(-1), base_w.append(w)
            cost.append(c), los.append(stay), surg_level.append(lvl)
    dx = np.array(dx, np.int64)
    base_w = np.array(base_w)
    surg_level = np.array(surg_level)
    starts = np.flatnonzero(np.r_[True, dx[1:] != dx[:-1]])
    end = np.r_[starts[1:], len(dx)] - 1
    keys = []
    for h in range(3):
        w = base_w * np.where(surg_level > 0, _SURGERY_AT_LEVEL[h][np.maximum(surg_level, 1) - 1], 1.0)
        tot = np.add.reduceat(w, starts)
        cum = np.cumsum(w)
        before = np.r_[0.0, cum[starts[1:] - 1]]
        within = (cum - np.repeat(before, np.diff(np.r_[starts, len(dx)]))) / np.repeat(tot, np.diff(np.r_[starts, len(dx)]))
        within[end] = 1.0
        keys.append(dx + within)
    return _Patterns(dx, np.array(main, np.int64), np.array(rel, np.int64), np.array(cost, np.float64),
                     np.array(los, np.float64), keys, end)


def _dx_probabilities(v: Vocabulary, params: SynthParams, rng) -> np.ndarray:
    """Main-diagnosis probabilities per hospital level (3 x n_dx): Zipf over a noisy ranking."""
    w = v.dx_weight * rng.lognormal(0.0, 0.5, len(v.dx_weight))
    rank = np.empty(len(w), np.int64)
    order = np.argsort(-w, kind="stable")
    rank[order] = np.arange(len(w))
    p = np.where(v.dx_weight > 0, (rank + 1.0) ** -params.zipf_s, 0.0)
    complexity = np.clip(np.log(v.dx_cost / 6000.0), -1.0, 3.0)
    out = np.vstack([p * np.exp(-0.9 * complexity), p, p * np.exp(0.3 * complexity)])
    # Newborn and obstetric care mostly at level 2-3 hospitals.
    special = np.isin(v.dx_age, [AGE_PROFILES.index("N"), AGE_PROFILES.index("W")])
    out[0, special] *= 0.2
    return out / out.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# The generator


CHUNK_ROWS = 1 << 20
"""Cases generated at a time (1,048,576). Each chunk has its own random stream, derived from
``(seed, year, region, chunk number)``, and its own patients, so the cases depend only on the
arguments (and ``chunk_rows``), never on how they are written; chunk 0 uses the stream a
one-chunk run has always used, so regions of up to this many cases are what they were."""


@dataclass(frozen=True)
class _Setup:
    """What every chunk of one region shares: the registry and the region structure."""

    year: int
    region: str
    seed: int
    reg: pa.Table
    vocab: Vocabulary
    pats: _Patterns
    p_dx: np.ndarray
    h_level: np.ndarray
    volume: np.ndarray
    params: SynthParams
    bad_rows: float
    upcoders: np.ndarray = None  # int64 sorted registry rows of the up-coding hospitals (empty: none)
    up_sev: np.ndarray = None  # int64 vocabulary rows of the severity-III codes they add
    up_cci: np.ndarray = None  # int64 vocabulary rows of the high-weight CCI codes they add


def _check_share(name: str, value) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a fraction between 0 and 1, not {value!r}")


def _upcoding_hospitals(params: SynthParams, seed: int, region: str, h_level: np.ndarray) -> np.ndarray:
    """Registry rows of the up-coding hospitals: ``max(1, round(share * hospitals))`` drawn among the
    level-2 and level-3 ones (at most all of them), from their own stream ``(seed, region, 12)`` so
    that every year and chunk of one seed shares them and no other draw changes."""
    if params.upcoding_hospitals <= 0:
        return np.zeros(0, np.int64)
    eligible = np.flatnonzero(h_level >= 2)
    if len(eligible) == 0:
        raise ValueError("upcoding_hospitals needs a level-2 or level-3 hospital in the registry")
    m = min(len(eligible), max(1, int(round(params.upcoding_hospitals * len(h_level)))))
    rng = np.random.default_rng([seed, int(region), 12])
    return np.sort(rng.choice(eligible, size=m, replace=False)).astype(np.int64)


def _setup(year, n_cases, *, seed, region, n_hospitals, bad_rows, codes_icd10, codes_icd9, hospitals,
           params) -> _Setup:
    """Check the arguments and draw the region structure (registry, case mix, hospital volumes)."""
    params = params or DEFAULT_PARAMS
    _check_region(region)
    if n_cases < 0:
        raise ValueError("n_cases must be non-negative")
    if not 0.0 <= bad_rows <= 1.0:
        raise ValueError("bad_rows must be a fraction between 0 and 1")
    for name in ("over_long_share", "upcoding_hospitals", "upcoding_rate"):
        _check_share(name, getattr(params, name))
    lo, hi = params.over_long_factor
    if not 1.0 <= lo <= hi:
        raise ValueError(f"over_long_factor must be a range (lo, hi) with 1 <= lo <= hi, not {params.over_long_factor!r}")
    if hospitals is None:
        reg = synth_hospitals(n_hospitals, region=region, seed=seed)
    else:
        reg = _as_registry(hospitals)
        if reg.num_rows == 0:
            raise DataError("hospital registry is empty", file=hospitals if not isinstance(hospitals, pa.Table) else None)
        # The registry's own pooling region is the local one.
        counts = pc.value_counts(reg["region"]).to_pylist()
        region = max(counts, key=lambda d: (d["counts"], d["values"]))["values"]
        _check_region(region)
    srng = np.random.default_rng([seed, int(region), 0])  # region structure
    if codes_icd10 is None and codes_icd9 is None:
        vocab = load_vocabulary()
    else:
        vocab = _vocab_from_lists(codes_icd10, codes_icd9, params, srng)
    pats = _patterns(vocab)
    p_dx = _dx_probabilities(vocab, params, srng)
    h_level = np.asarray(reg["level"], dtype=np.int64)
    volume = np.array(params.level_volume)[h_level - 1] * srng.lognormal(0.0, 0.35, len(h_level))
    upcoders = _upcoding_hospitals(params, seed, region, h_level)
    up_sev = up_cci = np.zeros(0, np.int64)
    if len(upcoders):
        up_sev, up_cci = _upcoding_codes(vocab)
        if len(up_sev) == 0 and len(up_cci) == 0:
            raise DataError("no diagnosis of the code list is a severity-III or high-weight CCI code "
                            "(severity_dx.csv, cci_weights.csv): up-coding cannot be planted",
                            file=str(codes_icd10) if codes_icd10 is not None else None)
    return _Setup(year, region, seed, reg, vocab, pats, p_dx, h_level, volume, params, float(bad_rows),
                  upcoders, up_sev, up_cci)


def chunk_bounds(n_cases: int, chunk_rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """Row ranges ``(start, stop)`` of the chunks of a region of ``n_cases`` cases.

    Parameters
    ----------
    n_cases : int
        Number of case rows (0 gives one empty chunk).
    chunk_rows : int
        Cases per chunk; every chunk but the last has exactly this many.

    Returns
    -------
    list of tuple of int
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    return [(i, min(i + chunk_rows, n_cases)) for i in range(0, max(n_cases, 1), chunk_rows)]


def _chunk_rng(seed: int, year: int, region: str, k: int):
    """The random stream of chunk ``k``: chunk 0 keeps the historical ``(seed, year, region, 1)``."""
    key = [seed, year, int(region), 1]
    return np.random.default_rng(key if k == 0 else key + [k])


def _plant_rng(seed: int, year: int, region: str, k: int):
    """The planting stream of chunk ``k`` (over-long stays, up-coding): ``(seed, year, region, 2, k)``,
    apart from the chunk's stream so that planting changes no other draw."""
    return np.random.default_rng([seed, year, int(region), 2, k])


class RegionChunks:
    """The cases of one region as an iterator of :class:`pyarrow.Table` chunks (:data:`CASE_SCHEMA`).

    Made by :func:`iter_region`; each chunk is generated when it is asked for, so only one is
    in memory at a time. Iterate once.

    Attributes
    ----------
    n_cases : int
        Case rows over all chunks.
    chunk_rows : int
        Rows of every chunk but the last.
    planted : bool
        When true, each item is a pair ``(cases, truth)``: the chunk and its ground-truth rows
        (:data:`PLANTED_SCHEMA`; the up-coding hospitals with the first chunk).
    """

    def __init__(self, setup: _Setup, n_cases: int, chunk_rows: int, planted: bool = False):
        self.n_cases = int(n_cases)
        self.chunk_rows = int(chunk_rows)
        self.planted = bool(planted)
        self._bounds = chunk_bounds(self.n_cases, self.chunk_rows)
        self._it = _chunks(setup, self._bounds, truth=self.planted)

    def __len__(self) -> int:
        """Number of chunks."""
        return len(self._bounds)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


def _chunks(s: _Setup, bounds, truth: bool = False):
    """Generate the chunks of ``bounds`` in order, carrying case, patient and defect numbering;
    ``truth``: yield ``(table, ground truth)`` pairs."""
    patient_base = 0
    planted = np.zeros(len(DEFECT_KINDS), np.int64)  # defects planted so far, per kind
    upcoding = len(s.upcoders) > 0
    for k, (start, stop) in enumerate(bounds):
        n = stop - start
        rng = _chunk_rng(s.seed, s.year, s.region, k)
        # The planting stream exists only when something is planted from it: with the defaults
        # every draw (and so every byte) is what it always was.
        prng = _plant_rng(s.seed, s.year, s.region, k) if s.params.over_long_share > 0 or upcoding else None
        c = _generate(rng, s.year, n, s.region, s.h_level, s.volume, s.vocab, s.pats, s.p_dx, s.params,
                      prng=prng, track=truth)
        if upcoding:
            c = _plant_upcoding(prng, c, s)
        if s.bad_rows > 0 and n > 1:
            # Cumulative rounding: round(bad_rows * n_cases) defects over the whole region.
            m = int(round(s.bad_rows * stop)) - int(round(s.bad_rows * start))
            c = _plant_defects(rng, c, m, first_kind=int(planted.sum()))
        table = _to_table(c, s.vocab, s.reg, s.year, case_base=start, patient_base=patient_base,
                          variant_base=planted)
        gt = _truth_table(c, table, s, first=k == 0) if truth else None
        patient_base += int(c["patient"].max()) + 1 if n else 0
        d = c["defect"]
        planted = planted + np.bincount(d[d >= 0], minlength=len(DEFECT_KINDS))
        del c, d
        yield (table, gt) if truth else table
        del table, gt


def iter_region(
    year: int,
    n_cases: int,
    *,
    seed: int = 0,
    region: str = "440200",
    n_hospitals: int = 60,
    bad_rows: float = 0.0,
    codes_icd10=None,
    codes_icd9=None,
    hospitals=None,
    params: SynthParams | None = None,
    chunk_rows: int = CHUNK_ROWS,
    planted: bool = False,
) -> tuple[pa.Table, RegionChunks]:
    """The hospital registry and the cases of one year, the cases generated chunk by chunk.

    Memory stays that of one chunk whatever ``n_cases``. The chunks concatenated are
    :func:`synth_region`'s table for the same arguments. Patients are local to a chunk (all
    admissions of a patient lie in one chunk); ``case_id`` and ``patient_id`` are numbered over
    the whole region; planted defects number ``round(bad_rows * n_cases)`` in all, their kinds
    cycling over the whole region; rows are in discharge-date order within each chunk.

    Parameters
    ----------
    year, n_cases, seed, region, n_hospitals, bad_rows, codes_icd10, codes_icd9, hospitals, params
        As :func:`synth_region`.
    chunk_rows : int
        Cases per chunk (default :data:`CHUNK_ROWS`). Part of the data's definition: another
        value gives other cases for more than ``chunk_rows`` cases. Tests use small values.
    planted : bool
        Also give the ground truth: the chunks are then ``(cases, truth)`` pairs, ``truth`` the
        chunk's rows of :func:`synth_region`'s truth table (the cases are the same either way).

    Returns
    -------
    hospitals : pa.Table
        :data:`HOSPITAL_SCHEMA`.
    chunks : RegionChunks
        Iterator of :data:`CASE_SCHEMA` tables, ``chunk_rows`` rows each (the last may be
        shorter; one empty table when ``n_cases`` is 0); pairs with ``planted``.

    Raises
    ------
    ValueError
        On a bad region code, a negative ``n_cases``, ``bad_rows`` or a share of ``params``
        outside [0, 1], ``chunk_rows`` < 1, or up-coding hospitals asked of a registry with
        no level-2 or level-3 hospital, before anything is generated.
    DataError
        On an unreadable or empty registry or code list.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    s = _setup(year, n_cases, seed=seed, region=region, n_hospitals=n_hospitals, bad_rows=bad_rows,
               codes_icd10=codes_icd10, codes_icd9=codes_icd9, hospitals=hospitals, params=params)
    return s.reg, RegionChunks(s, n_cases, chunk_rows, planted=planted)


def synth_region(
    year: int,
    n_cases: int,
    *,
    seed: int = 0,
    region: str = "440200",
    n_hospitals: int = 60,
    bad_rows: float = 0.0,
    codes_icd10=None,
    codes_icd9=None,
    hospitals=None,
    params: SynthParams | None = None,
    chunk_rows: int = CHUNK_ROWS,
    planted: bool = False,
) -> tuple[pa.Table, pa.Table] | tuple[pa.Table, pa.Table, pa.Table]:
    """Generate one year of inpatient cases of a pooling region, and its hospital registry.

    The whole table in memory (about 0.5 GB per million cases): for large regions, write them
    with :func:`iter_region` and :func:`write_region_stream` instead. The table is the
    concatenation of :func:`iter_region`'s chunks (one Arrow chunk per generated chunk).

    Parameters
    ----------
    year : int
        Settlement year; every admission and discharge date lies in it.
    n_cases : int
        Number of case rows.
    seed : int
        Seed. The region structure depends on ``(seed, region)``, the cases on
        ``(seed, year, region)`` (and the chunk number, see :data:`CHUNK_ROWS`).
    region : str
        6-digit pooling-region code of the hospitals (就医地).
    n_hospitals : int
        Size of the generated registry (ignored when ``hospitals`` is given).
    bad_rows : float
        Fraction of rows given exactly one planted defect each (see :data:`DEFECT_KINDS`).
    codes_icd10, codes_icd9 : path, optional
        TSV ``code<TAB>name`` lists to draw diagnoses / procedures from instead of the
        packaged vocabularies.
    hospitals : path or pa.Table, optional
        A registry to reuse (contract §3 form), so that several years share hospitals.
    params : SynthParams, optional
        Proportions; :data:`DEFAULT_PARAMS` when omitted.
    chunk_rows : int
        Cases generated at a time (default :data:`CHUNK_ROWS`); see :func:`iter_region`.
    planted : bool
        Also return the ground truth of the planted patterns (the cases are the same either way).

    Returns
    -------
    cases : pa.Table
        :data:`CASE_SCHEMA`: contract §2 input columns (money ``decimal128(18, 2)`` yuan) plus
        ``planted_defect`` (string, null on clean rows).
    hospitals : pa.Table
        :data:`HOSPITAL_SCHEMA`.
    truth : pa.Table
        Only with ``planted``: :data:`PLANTED_SCHEMA`, one row per planted item — ``pattern``
        (:data:`PLANTED_PATTERNS`), ``case_id`` (null for an up-coding hospital) and
        ``hospital_id``; the up-coding hospitals first, then the cases' rows in the cases'
        order. Rows with a planted defect are not listed (docs/synth.md).
    """
    reg, chunks = iter_region(year, n_cases, seed=seed, region=region, n_hospitals=n_hospitals,
                              bad_rows=bad_rows, codes_icd10=codes_icd10, codes_icd9=codes_icd9,
                              hospitals=hospitals, params=params, chunk_rows=chunk_rows, planted=planted)
    items = list(chunks)
    tables = [t for t, _ in items] if planted else items
    cases = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    if not planted:
        return cases, reg
    truths = [g for _, g in items]
    return cases, reg, (truths[0] if len(truths) == 1 else pa.concat_tables(truths))


def _generate(rng, year, n, region, h_level, volume, v: Vocabulary, pats: _Patterns, p_dx, params, *,
              prng=None, track=False):
    """All case columns as numpy arrays (codes as indices), in output order; dict of name -> array.

    Intermediate arrays are released (``del``) as soon as they are used, which bounds the memory
    of one chunk; the draws and their order are those of the original single-table generator.
    ``prng`` (the chunk's planting stream) draws the planted over-long stays, so that ``rng``'s
    draws never change with them. ``track``: also return what was planted, per output row
    (``low``, ``over_long``, ``readmit``: bool; ``prev``: output row of the patient's previous
    admission, -1 for a first one).
    """
    # Patients and their admissions: patient p has k_p consecutive rows.
    k = rng.choice(np.arange(1, len(params.admissions) + 1), size=max(n, 1), p=np.array(params.admissions) / sum(params.admissions))
    cum = np.cumsum(k)
    n_pat = int(np.searchsorted(cum, n)) + 1 if n else 0
    k = k[:n_pat].copy()
    if n_pat:
        k[-1] -= int(cum[n_pat - 1] - n)
    patient = np.repeat(np.arange(n_pat), k)
    start = (np.cumsum(k) - k).astype(np.int64)
    seq = np.arange(n) - start[patient]
    del cum

    # Per patient: insurance region, hospital, diagnosis, sex, age.
    remote = rng.random(n_pat) < params.remote_share
    rem_region = rng.choice(4, size=n_pat, p=[0.35, 0.25, 0.2, 0.2])
    regions = [region] + remote_regions(region)
    p_region = np.where(remote, rem_region + 1, 0)
    filing = np.where(remote, rng.choice(5, size=n_pat, p=[0.1, 0.25, 0.3, 0.15, 0.2]), 0)
    w_local = volume / volume.sum()
    w_remote = volume * np.where(h_level == 3, 3.0, 1.0)
    w_remote /= w_remote.sum()
    home = np.where(remote, rng.choice(len(volume), size=n_pat, p=w_remote), rng.choice(len(volume), size=n_pat, p=w_local))
    p_level = h_level[home]
    dx_p = np.empty(n_pat, np.int64)
    for h in (1, 2, 3):
        sel = np.flatnonzero(p_level == h)
        dx_p[sel] = rng.choice(len(v.dx_code), size=len(sel), p=p_dx[h - 1])
    del p_level, sel, rem_region
    sex_rule = v.dx_sex[dx_p]
    sex_p = np.where(sex_rule == 1, 0, np.where(sex_rule == 2, 1, (rng.random(n_pat) < 0.48).astype(np.int64)))
    del sex_rule
    age_p, age_days_p = _ages(rng, v.dx_age[dx_p])
    adult = age_p >= 18
    p_emp = min(0.97, params.employee_share / max(adult.mean(), 1e-9)) if n_pat else 0.0
    employee = adult & (rng.random(n_pat) < p_emp)
    ptype = np.where(
        employee,
        np.where(age_p >= np.where(sex_p == 1, 55, 60), 1, 0),  # retired / in_service
        np.where(age_p <= 6, 3, np.where((age_p <= 22) & (rng.random(n_pat) < 0.9), 2, 4)),
    )
    del adult

    # Per case: hospital (repeat admissions mostly at the first one), pattern, LOS, cost.
    redraw = np.where(remote[patient], rng.choice(len(volume), size=n, p=w_remote), rng.choice(len(volume), size=n, p=w_local))
    hosp = np.where((seq == 0) | (rng.random(n) < params.same_hospital), home[patient], redraw)
    del redraw, home
    level = h_level[hosp]
    dx = dx_p[patient]
    pat = np.empty(n, np.int64)
    for h in (1, 2, 3):
        sel = np.flatnonzero(level == h)
        pat[sel] = _segment_choice(rng.random(len(sel)), dx[sel], pats.key[h - 1], pats.end)
    del sel
    age = age_p[patient]

    # Secondary diagnoses: 0-5, more for the elderly, drawn from the severity/comorbidity list.
    p_sec = np.where(age < 15, 0.03, np.clip(0.05 + 0.005 * age, 0, 0.5))
    n_sec = rng.binomial(5, p_sec)
    del p_sec
    sec_pool = np.flatnonzero(v.dx_sec_weight > 0)
    if len(sec_pool) == 0:
        n_sec[:] = 0
        sec_pool = np.array([0])
    offsets_dx = np.r_[0, np.cumsum(n_sec)].astype(np.int32)
    owner = np.repeat(np.arange(n), n_sec)
    sec = sec_pool[rng.choice(len(sec_pool), size=int(offsets_dx[-1]), p=v.dx_sec_weight[sec_pool] / v.dx_sec_weight[sec_pool].sum())]
    # Drop repeats within a case, the main diagnosis itself and codes of the other sex.
    key = owner * len(v.dx_code) + sec
    by_key = np.argsort(key, kind="stable")
    drop = np.zeros(len(sec), bool)
    drop[by_key[1:][key[by_key][1:] == key[by_key][:-1]]] = True
    del key, by_key, n_sec
    rule = v.dx_sex[sec]
    sex_o = sex_p[patient[owner]]
    drop |= (sec == dx[owner]) | ((rule == 1) & (sex_o == 1)) | ((rule == 2) & (sex_o == 0))
    del rule, sex_o
    sec, owner = sec[~drop], owner[~drop]
    del drop
    offsets_dx = np.r_[0, np.cumsum(np.bincount(owner, minlength=n))].astype(np.int32)
    log_mult = np.bincount(owner, weights=np.log(v.dx_sec_mult[sec]), minlength=n)
    sev3 = np.bincount(owner, weights=(v.dx_severity[sec] == 3).astype(np.float64), minlength=n) > 0
    del owner

    z = rng.standard_normal(n)
    e = rng.standard_normal(n)
    rho = params.los_cost_corr
    los = np.rint(pats.los[pat] * np.exp(params.los_sigma * (rho * z + np.sqrt(1 - rho * rho) * e)) * np.exp(0.3 * log_mult))
    los = np.clip(los, 1, 90)
    sigma = params.cost_sigma
    cost = (
        pats.cost[pat]
        * np.array(params.level_cost)[level - 1]
        * (1.0 + params.inflation) ** (year - params.base_year)
        * np.exp(sigma * z - sigma * sigma / 2)
        * np.exp(log_mult)
    )
    del z, e, log_mult
    # Discharge mode: deaths concentrated on the old and the severe, scaled to the target rate.
    raw = (1.0 + (age >= 70) * 2.0) * (1.0 + sev3 * 4.0) * (1.0 + (v.dx_severity[dx] == 3) * 5.0)
    p_death = np.clip(raw * (params.death_rate / raw.mean()), 0, 0.6) if n else raw
    u = rng.random(n)
    t = np.cumsum(params.transfer_rates)
    mode = np.select(
        [u < p_death, u < p_death + t[0], u < p_death + t[1], u < p_death + t[2], u < p_death + t[3]],
        [5, 2, 3, 4, 9], 1,
    ).astype(np.int8)
    del raw, p_death, u, sev3
    cost = np.where(mode == 5, cost * 1.3, np.where(mode == 4, cost * 0.6, cost))
    los = np.where(mode == 4, np.maximum(1, np.rint(los * 0.6)), los)
    low = rng.random(n) < params.low_cost_share
    los = np.where(low, rng.integers(1, 3, n), los).astype(np.int64)
    cost = np.where(low, cost * rng.uniform(0.1, 0.3, n), cost)
    n_days = int((np.datetime64(f"{year + 1}-01-01") - np.datetime64(f"{year}-01-01")).astype(np.int64))
    over_long = None
    if params.over_long_share > 0:
        # Planted over-long stays (from the planting stream): LOS x 3-5, cost x 1.2, on cases that
        # are not low-cost stays, kept only where the patient's stays still fit the year
        # back-to-back (the fallback of the dates below), so that every date stays in the year.
        over_long = (prng.random(n) < params.over_long_share) & ~low
        longer = np.rint(np.maximum(los, pats.los[pat]) * prng.uniform(*params.over_long_factor, n)).astype(np.int64)
        longer = np.where(over_long, longer, los)
        fits = np.bincount(patient, weights=longer, minlength=n_pat) + (k - 1) <= n_days - 1
        over_long &= fits[patient]
        del fits
        los = np.where(over_long, longer, los)
        cost = np.where(over_long, cost * params.over_long_cost, cost)
        del longer
    if not track:
        del low, over_long

    # Other procedures: the related one of a pair, and sometimes imaging / tests.
    main_proc = pats.main[pat]
    rel = pats.rel[pat]
    diag_pool = np.flatnonzero(v.proc_class == 0)
    diag_pool = diag_pool[v.proc_cost[diag_pool] <= 1000] if np.any(v.proc_cost[diag_pool] <= 1000) else diag_pool
    n_extra = np.where(main_proc >= 0, rng.binomial(2, 0.2, n), 0) if len(diag_pool) else np.zeros(n, np.int64)
    extra = diag_pool[rng.integers(0, max(len(diag_pool), 1), int(n_extra.sum()))] if len(diag_pool) else np.zeros(0, np.int64)
    n_op = (rel >= 0).astype(np.int64) + n_extra
    offsets_pr = np.r_[0, np.cumsum(n_op)].astype(np.int32)
    ops = np.empty(int(offsets_pr[-1]), np.int64)
    has_rel = rel >= 0
    ops[offsets_pr[:-1][has_rel]] = rel[has_rel]
    extra_start = np.cumsum(n_extra) - n_extra
    extra_pos = np.repeat(offsets_pr[:-1] + has_rel - extra_start, n_extra) + np.arange(int(n_extra.sum()))
    ops[extra_pos] = extra
    del rel, has_rel, extra_start, extra_pos, n_op
    if len(extra):
        cost = cost + np.bincount(np.repeat(np.arange(n), n_extra), weights=v.proc_cost[extra], minlength=n)
    del n_extra, extra
    total_fen = np.maximum(np.rint(cost * 100.0), 5000).astype(np.int64)
    del cost

    # Dates: a chain of admissions per patient, placed at random in the year.
    first_day = (np.datetime64(f"{year}-01-01") - np.datetime64("1970-01-01")).astype(np.int64)
    gap = np.where(rng.random(n) < params.readmit_15d, rng.integers(1, 15, n), 15 + rng.exponential(55.0, n).astype(np.int64))
    rel_admit, span = _chain(seq, start, patient, los, gap, k)
    over = span > n_days - 1
    if over.any():
        # Rare long chains: back-to-back stays (4 stays of at most 90 days always fit a year).
        rel_admit, span = _chain(seq, start, patient, los, np.where(over[patient], 1, gap), k)
    if track:
        # Planted readmissions: repeat admissions 1-14 days after the previous discharge (the gap
        # draw, or 1 day where a long chain was laid back to back).
        readmit = (seq > 0) & (np.where(over[patient], 1, gap) <= 14)
    del gap, over
    offset_p = np.floor(rng.random(n_pat) * np.maximum(n_days - span, 1)).astype(np.int64)
    del span
    admit = first_day + offset_p[patient] + rel_admit
    del offset_p, rel_admit
    if track:
        prev = np.where(seq > 0, np.arange(n) - 1, -1)
    del seq
    discharge = admit + los

    # Money: patient share by insurance type, level and remote filing; oc and class B parts.
    oc_fen = np.rint(total_fen * rng.uniform(0.01, 0.08, n)).astype(np.int64)
    b_fen = np.rint(total_fen * rng.uniform(0.05, 0.25, n)).astype(np.int64)
    emp = employee[patient]
    share = np.where(emp, np.array([0.10, 0.15, 0.20])[level - 1], np.array([0.20, 0.30, 0.40])[level - 1])
    f = filing[patient]
    share = share + np.where(remote[patient], np.where(f == 0, 0.15, 0.05), 0.0) + rng.uniform(-0.03, 0.03, n)
    patient_fen = oc_fen + np.rint((total_fen - oc_fen) * share).astype(np.int64)
    del share, level
    fund_fen = total_fen - patient_fen

    # Output order: by discharge date, ties at random (a settlement file's usual order).
    order = np.lexsort((rng.random(n), discharge))
    out = {"case_num": np.arange(n, dtype=np.int64)}
    patient = patient[order]  # per-patient arrays are taken through the reordered patient index
    per_case = dict(hospital=hosp, employee=emp, filing=f, age=age, admit=admit, discharge=discharge, los=los,
                    mode=mode, dx=dx, main_proc=main_proc, total_fen=total_fen, fund_fen=fund_fen,
                    patient_fen=patient_fen, oc_fen=oc_fen, b_fen=b_fen)
    del hosp, emp, f, age, admit, discharge, los, mode, dx, main_proc, total_fen, fund_fen, patient_fen, oc_fen, b_fen
    if track:
        per_case.update(low=low, over_long=np.zeros(n, bool) if over_long is None else over_long, readmit=readmit)
        del low, over_long, readmit
        inv = np.empty(n, np.int64)
        inv[order] = np.arange(n)
        prev = prev[order]
        out["prev"] = np.where(prev >= 0, inv[np.maximum(prev, 0)], -1)
        del inv, prev
    for name in list(per_case):
        out[name] = per_case.pop(name)[order]
    out["patient"] = patient
    out["insured_region"] = p_region[patient]
    out["person_type"] = ptype[patient]
    out["sex"] = sex_p[patient]
    out["age_days"] = age_days_p[patient]
    out["sec_offsets"], out["sec"] = _reorder_lists(offsets_dx, sec, order)
    del offsets_dx, sec
    out["op_offsets"], out["ops"] = _reorder_lists(offsets_pr, ops, order)
    del offsets_pr, ops, order
    out["regions"] = regions
    out["defect"] = np.full(n, -1, np.int8)
    return out


def _chain(seq, start, patient, los, gap, k):
    """Admission day of each case relative to its patient's first admission, and each patient's span."""
    prev_los = np.r_[0, los[:-1]]
    inc = np.where(seq == 0, 0, prev_los + gap).astype(np.int64)
    cs = np.cumsum(inc)
    rel_admit = cs - cs[start][patient] if len(cs) else cs
    last = start + k - 1
    span = rel_admit[last] + los[last] if len(last) else np.zeros(0, np.int64)
    return rel_admit, span.astype(np.int64)


def _reorder_lists(offsets: np.ndarray, values: np.ndarray, order: np.ndarray):
    """Lists (offsets, values) with rows permuted by ``order``."""
    lengths = np.diff(offsets)[order]
    new_off = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    starts = offsets[:-1][order]
    pos = np.repeat(starts - new_off[:-1], lengths) + np.arange(int(new_off[-1]))
    return new_off, values[pos]


def _ages(rng, profile: np.ndarray):
    """Age in years (int64) and age in days (int64, -1 when age >= 1) per patient."""
    n = len(profile)
    P = {a: i for i, a in enumerate(AGE_PROFILES)}
    norm = rng.standard_normal(n)
    u = rng.random(n)
    age = np.select(
        [profile == P["N"], profile == P["I"], profile == P["C"], profile == P["Y"], profile == P["W"],
         profile == P["A"], profile == P["M"], profile == P["E"]],
        [
            np.zeros(n),
            np.zeros(n),
            1 + np.floor(14 * u ** 1.6),
            15 + np.floor(30 * u),
            np.clip(np.rint(30 + 5 * norm), 20, 42),
            np.clip(np.rint(48 + 15 * norm), 18, 80),
            np.clip(np.rint(60 + 12 * norm), 35, 90),
            np.clip(np.rint(73 + 9 * norm), 55, 98),
        ],
        # general: 15 % children, else adults
        np.where(u < 0.15, np.floor(u / 0.15 * 15), np.clip(np.rint(50 + 20 * norm), 15, 95)),
    ).astype(np.int64)
    days = np.where(
        profile == P["N"], rng.integers(0, 29, n), rng.integers(0, 365, n)
    )
    days = np.where(age == 0, days, -1)
    return age, days


# --------------------------------------------------------------------------------------------
# Defects and output


def _plant_defects(rng, c: dict, m: int, *, first_kind: int = 0) -> dict:
    """Give ``m`` rows (never the first) exactly one defect each.

    The kinds are ``first_kind, first_kind + 1, ...`` cycling over :data:`DEFECT_KINDS` (so that
    they stay balanced over the chunks of a region), in random order over the rows.
    """
    n = len(c["case_num"])
    m = min(int(m), n - 1)
    if m <= 0:
        return c
    rows = np.sort(rng.choice(np.arange(1, n), size=m, replace=False))
    kind = rng.permutation((first_kind + np.arange(m)) % len(DEFECT_KINDS)).astype(np.int8)
    c = dict(c)
    c["defect"] = c["defect"].copy()
    c["defect"][rows] = kind
    return c


def _plant_upcoding(prng, c: dict, s: _Setup) -> dict:
    """Up-code the cases of the up-coding hospitals: each, with probability ``upcoding_rate``, gets
    a severity-III diagnosis (1 in 4), one or two high-weight comorbidity (CCI) diagnoses (1 in 4)
    or both (1 in 2), appended to its secondary diagnoses (repeats and the main diagnosis dropped).
    Costs, LOS and everything else stay as they were: the coding, not the care, changes."""
    n = len(c["case_num"])
    up = np.isin(c["hospital"], s.upcoders) & (prng.random(n) < s.params.upcoding_rate)
    rows = np.flatnonzero(up)
    m = len(rows)
    if m == 0:
        return c
    kind = prng.choice(3, size=m, p=[0.25, 0.25, 0.5])  # 0 severity III, 1 CCI, 2 both
    two = prng.random(m) < 0.5
    if len(s.up_cci) == 0:
        kind[:] = 0
    elif len(s.up_sev) == 0:
        kind[:] = 1
    n_sev = (kind != 1).astype(np.int64)
    n_cci = np.where(kind != 0, 1 + two, 0).astype(np.int64)
    # (an empty pool is never drawn from: its count is 0)
    sev_codes = s.up_sev[prng.integers(0, max(len(s.up_sev), 1), int(n_sev.sum()))]
    cci_codes = s.up_cci[prng.integers(0, max(len(s.up_cci), 1), int(n_cci.sum()))]
    offsets, sec = c["sec_offsets"], c["sec"]
    owner = np.concatenate([np.repeat(np.arange(n), np.diff(offsets)), np.repeat(rows, n_sev), np.repeat(rows, n_cci)])
    code = np.concatenate([sec, sev_codes, cci_codes]).astype(sec.dtype)
    by_owner = np.argsort(owner, kind="stable")  # a case's own codes first, then the added ones
    owner, code = owner[by_owner], code[by_owner]
    key = owner * len(s.vocab.dx_code) + code
    by_key = np.argsort(key, kind="stable")
    drop = np.zeros(len(code), bool)
    drop[by_key[1:][key[by_key][1:] == key[by_key][:-1]]] = True  # repeats: the first one stays
    drop |= code == c["dx"][owner]
    owner, code = owner[~drop], code[~drop]
    c = dict(c)
    c["sec_offsets"] = np.r_[0, np.cumsum(np.bincount(owner, minlength=n))].astype(offsets.dtype)
    c["sec"] = code
    return c


def _truth_table(c: dict, table: pa.Table, s: _Setup, first: bool) -> pa.Table:
    """The ground truth of one chunk (:data:`PLANTED_SCHEMA`), rows in the chunk's row order
    (patterns in :data:`PLANTED_PATTERNS` order within a row); ``first``: lead with the up-coding
    hospitals. Rows with a planted defect (which the reader rejects) are left out, and so are
    readmissions whose previous admission has one: the truth lists what an audit of the
    accepted cases can find."""
    clean = c["defect"] < 0
    prev = c["prev"]
    readmit = c["readmit"] & clean & (prev >= 0) & clean[np.maximum(prev, 0)]
    rows = [np.flatnonzero(c["low"] & clean), np.flatnonzero(c["over_long"] & clean), np.flatnonzero(readmit)]
    idx = np.concatenate(rows).astype(np.int64)
    pat = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    o = np.lexsort((pat, idx))
    idx, pat = pa.array(idx[o]), pat[o]
    parts = [pa.Table.from_arrays(
        [_take(list(PLANTED_PATTERNS), pat), table["case_id"].take(idx), table["hospital_id"].take(idx)],
        schema=PLANTED_SCHEMA)]
    if first and len(s.upcoders):
        h = len(s.upcoders)
        ids = s.reg["hospital_id"].combine_chunks().take(pa.array(s.upcoders))
        parts.insert(0, pa.Table.from_arrays(
            [pa.array([PLANTED_PATTERNS[3]] * h, pa.string()), pa.nulls(h, pa.string()), ids], schema=PLANTED_SCHEMA))
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts).combine_chunks()


def _to_table(c: dict, v: Vocabulary, reg: pa.Table, year: int, *, case_base: int = 0, patient_base: int = 0,
              variant_base=None) -> pa.Table:
    """The Arrow table of one chunk; ``case_base`` / ``patient_base`` number its cases and patients
    after those of earlier chunks, ``variant_base`` (per defect kind, planted so far) continues
    the cycling of each kind's variants."""
    n = len(c["case_num"])
    defect = c["defect"]
    K = {name: i for i, name in enumerate(DEFECT_KINDS)}
    rows_of = {name: np.flatnonzero(defect == i) for name, i in K.items()}
    variant = np.zeros(n, np.int64)
    for name, rows in rows_of.items():
        variant[rows] = np.arange(len(rows)) + (0 if variant_base is None else int(variant_base[K[name]]))

    def rows_variant(kind, nvar, j):
        r = rows_of[kind]
        return r[variant[r] % nvar == j]

    # MISSING_FIELD: main_dx, age, insurance_type or insured_region empty.
    miss = [rows_variant("MISSING_FIELD", 4, j) for j in range(4)]
    # BAD_VALUE: sex, insurance_type, discharge_mode, remote_filing or person_type out of range.
    badv = [rows_variant("BAD_VALUE", 5, j) for j in range(5)]

    dx = c["dx"].copy()
    dx[miss[0]] = -1
    main_dx = _take(v.dx_code, dx)
    r = rows_of["INVALID_DX"]
    if len(r):
        mask = np.zeros(n, bool)
        mask[r] = True
        main_dx = pc.if_else(pa.array(mask), pc.utf8_slice_codeunits(main_dx, 0, 4), main_dx)

    main_proc = _take(v.proc_code, c["main_proc"])
    r = rows_of["INVALID_PROC"]
    if len(r):
        mask = np.zeros(n, bool)
        mask[r] = True
        broken = pc.if_else(pc.is_null(main_proc), pa.scalar("47.01.00"), pc.utf8_slice_codeunits(main_proc, 0, 3))
        main_proc = pc.if_else(pa.array(mask), broken, main_proc)

    hosp_ids = reg["hospital_id"].to_pylist()
    h = c["hospital"].copy()
    r = rows_of["UNKNOWN_HOSPITAL"]
    unknown = f"H{reg['region'][0].as_py() if reg.num_rows else '000000'}9{len(hosp_ids):04d}"
    while unknown in set(hosp_ids):
        unknown += "9"
    h[r] = len(hosp_ids)
    hospital_id = _take(hosp_ids + [unknown], h)

    ins = np.where(c["employee"], 0, 1)
    ins[miss[2]] = -1
    ins[badv[1]] = 2
    insurance = _take(["employee", "resident", "commercial"], ins)
    reg_idx = c["insured_region"].copy()
    reg_idx[miss[3]] = -1
    insured_region = _take(c["regions"], reg_idx)
    sex = c["sex"].copy()
    sex[badv[0]] = 2
    sex_a = _take(["M", "F", "X"], sex)
    mode = c["mode"].copy()
    mode[badv[2]] = 7
    filing = c["filing"].copy()
    filing[badv[3]] = 5
    filing_a = _take(["none", "long_term", "referral", "emergency", "temporary", "unknown"], filing)
    ptype = c["person_type"].copy()
    ptype[badv[4]] = 5
    ptype_a = _take(["in_service", "retired", "student", "child", "other", "farmer"], ptype)

    age = c["age"]
    age_mask = np.zeros(n, bool)
    age_mask[miss[1]] = True
    age_days = c["age_days"]

    admit = c["admit"].copy()
    discharge = c["discharge"].copy()
    r = rows_of["BAD_DATES"]
    admit[r], discharge[r] = c["discharge"][r], c["admit"][r]

    total, fund, patient_paid = c["total_fen"].copy(), c["fund_fen"].copy(), c["patient_fen"].copy()
    neg = rows_variant("BAD_AMOUNT", 2, 0)
    mism = rows_variant("BAD_AMOUNT", 2, 1)
    total[neg], fund[neg], patient_paid[neg] = -total[neg], -fund[neg], -patient_paid[neg]
    patient_paid[mism] += 5000  # 50 yuan more than total - fund

    case_num = c["case_num"] + case_base
    r = rows_of["DUPLICATE_CASE"]
    if len(r):
        is_dup = np.zeros(n, bool)
        is_dup[r] = True
        last_clean = np.maximum.accumulate(np.where(is_dup, -1, np.arange(n)))
        case_num[r] = case_num[last_clean[r - 1]]
    region_code = c["regions"][0]
    case_id = pc.binary_join_element_wise(f"{region_code}{year}", _zero_padded(case_num + 1, 8), "")
    patient_id = pc.binary_join_element_wise(
        _take(c["regions"], c["insured_region"]), _zero_padded(c["patient"] + (patient_base + 1), 8), ""
    )
    other_dx = pa.ListArray.from_arrays(pa.array(c["sec_offsets"], pa.int32()), _take(v.dx_code, c["sec"]))
    other_procs = pa.ListArray.from_arrays(pa.array(c["op_offsets"], pa.int32()), _take(v.proc_code, c["ops"]))
    planted = _take(list(DEFECT_KINDS), defect.astype(np.int64))
    arrays = [
        case_id,
        hospital_id,
        patient_id,
        insurance,
        ptype_a,
        insured_region,
        filing_a,
        sex_a,
        pa.array(age.astype(np.int32), pa.int32(), mask=age_mask if age_mask.any() else None),
        pa.array(age_days.astype(np.int32), pa.int32(), mask=age_days < 0),
        pa.array(admit.astype(np.int32), pa.date32()),
        pa.array(discharge.astype(np.int32), pa.date32()),
        pa.array(c["los"].astype(np.int32), pa.int32()),
        pa.array(mode, pa.int8()),
        main_dx,
        other_dx,
        main_proc,
        other_procs,
        fen_to_decimal(total),
        fen_to_decimal(fund),
        fen_to_decimal(patient_paid),
        fen_to_decimal(c["oc_fen"]),
        fen_to_decimal(c["b_fen"]),
        planted,
    ]
    return pa.Table.from_arrays(arrays, schema=CASE_SCHEMA)


# --------------------------------------------------------------------------------------------
# Writing and summarising


def write_region(cases: pa.Table, hospitals: pa.Table, out) -> tuple[Path, Path]:
    """Write ``out/cases.parquet`` and ``out/hospitals.csv`` atomically; returns both paths.

    For a table in memory; :func:`write_region_stream` writes a region of any size chunk by chunk.
    """
    out = Path(out)
    cases_path, hosp_path = out / "cases.parquet", out / "hospitals.csv"
    write_table(cases, cases_path)
    write_table(hospitals, hosp_path)
    return cases_path, hosp_path


def _export(schema):
    """The function that lays a contract-form chunk out in ``schema`` (None: the contract itself)."""
    if schema is None or schema == "contract":
        return None
    if isinstance(schema, (str, Path)):
        from dipengine.schemas import load_schema

        schema = load_schema(schema)
    if getattr(schema, "identity", False):
        return None
    return schema.export


def _rebatch(tables, rows: int):
    """The rows of ``tables`` again, as tables of exactly ``rows`` rows (the last may be shorter)."""
    pending, have = [], 0
    for t in tables:
        offset = 0
        while offset < t.num_rows:
            take = min(rows - have, t.num_rows - offset)
            pending.append(t.slice(offset, take))
            have += take
            offset += take
            if have == rows:
                yield pending[0] if len(pending) == 1 else pa.concat_tables(pending)
                pending, have = [], 0
        del t
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_tables(pending)


def write_region_stream(
    chunks,
    hospitals: pa.Table,
    out,
    *,
    schema=None,
    batch_rows: int | None = None,
    progress=None,
    inputs=(),
) -> tuple[Path, Path, dict]:
    """Write a region chunk by chunk: ``out/cases.parquet``, then ``out/hospitals.csv``, each atomically.

    Memory stays that of one chunk: each is written (as Parquet row groups) before the next is
    generated. The file holds the same table whatever ``batch_rows``, and the same bytes for the
    same arguments. When the chunks carry their ground truth (``iter_region(..., planted=True)``),
    ``out/planted.arrow`` (Arrow IPC file, :data:`PLANTED_SCHEMA`) is written too, a record batch per chunk, and
    renamed in after ``cases.parquet``.

    Parameters
    ----------
    chunks : iterable of pa.Table or of (pa.Table, pa.Table)
        :data:`CASE_SCHEMA` tables, e.g. the ``chunks`` of :func:`iter_region`; or
        ``(cases, truth)`` pairs (``planted=True``), the truth in :data:`PLANTED_SCHEMA`.
    hospitals : pa.Table
        The registry (:data:`HOSPITAL_SCHEMA`).
    out : path
        Directory of the two files (created when missing). Each file is written beside its
        name and renamed in (:func:`dipengine.io.write_batches`, :func:`dipengine.io.write_table`):
        an interrupted run leaves the old files.
    schema : str, path or InputSchema, optional
        Layout of ``cases.parquet``: None or ``"contract"`` (the default), ``"nhsa"`` (the
        national settlement-list twin, :meth:`dipengine.schemas.InputSchema.export`), or a
        schema folder.
    batch_rows : int, optional
        Rows per Parquet row group (default: one per chunk, at most 1,048,576 rows).
    progress : callable, optional
        ``progress(done, total)`` after each chunk is written (``total``: the chunks'
        ``n_cases`` when they have one, else None).
    inputs : sequence of path
        Files the run reads (registry, code lists): neither output may be one of them
        (:func:`dipengine.io.check_output`), checked before any chunk is generated.

    Returns
    -------
    cases_path, hospitals_path : Path
    summary : dict
        As :func:`summarize`, over all chunks (in the contract form); with the truth also
        ``planted`` (rows per pattern of :data:`PLANTED_PATTERNS`) and ``planted_path``.

    Raises
    ------
    DataError
        When an output may not be written (checked before the first chunk).
    """
    import contextlib
    import itertools

    import pyarrow.parquet as pq

    from dipengine.io import _atomic_file, _resolve_output, check_output, write_batches

    out = Path(out)
    cases_path, hosp_path, truth_path = out / "cases.parquet", out / "hospitals.csv", out / "planted.arrow"
    total = getattr(chunks, "n_cases", None)
    # Pairs (cases, truth) or tables: known from the iterator (RegionChunks), else from its first item.
    with_truth = getattr(chunks, "planted", None)
    chunks = iter(chunks)
    if with_truth is None:
        first = next(chunks, None)
        with_truth = isinstance(first, tuple)
        chunks = itertools.chain([] if first is None else [first], chunks)
    for path in (cases_path, hosp_path) + ((truth_path,) if with_truth else ()):
        check_output(path, list(inputs))
    if batch_rows is not None and batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    export = _export(schema)
    file_schema = CASE_SCHEMA if export is None else export(CASE_SCHEMA.empty_table()).schema
    home = hospitals["region"][0].as_py() if hospitals.num_rows else None
    tally = _tally(None, home)
    counts = dict.fromkeys(PLANTED_PATTERNS, 0)

    with contextlib.ExitStack() as stack:
        truth_writer = None
        if with_truth:
            tmp = stack.enter_context(_atomic_file(_resolve_output(truth_path, directory=False)))
            # Arrow IPC, not Parquet: a directory given as input reads every .parquet file in it
            truth_writer = stack.enter_context(pa.ipc.new_file(str(tmp), PLANTED_SCHEMA))

        def written():
            for item in chunks:
                if with_truth:
                    t, truth = item
                    truth_writer.write_table(truth)
                    for d in pc.value_counts(truth["pattern"]).to_pylist():
                        counts[d["values"]] += d["counts"]
                    del truth
                else:
                    t = item
                del item
                tally.update(_tally(t, home, tally))
                yield t if export is None else export(t)
                del t
                if progress is not None:
                    progress(tally["cases"], total)

        stream = written() if batch_rows is None else _rebatch(written(), batch_rows)
        write_batches(stream, cases_path, file_schema)
    write_table(hospitals, hosp_path)
    summary = _summary(tally, hospitals)
    if with_truth:
        summary["planted"] = counts
        summary["planted_path"] = truth_path
    return cases_path, hosp_path, summary


def _tally(cases, home, before=None) -> dict:
    """Counts behind :func:`summarize`, added to ``before`` (None: from zero)."""
    t = dict(before) if before is not None else {"cases": 0, "remote": 0, "bad": 0, "total_cost_yuan": None}
    if cases is None:
        return t
    n = cases.num_rows
    remote = pc.sum(pc.fill_null(pc.not_equal(cases["insured_region"], home), False).cast(pa.int64())).as_py() or 0
    cost = pc.sum(cases["total_cost"]).as_py()
    t["cases"] += n
    t["remote"] += remote
    t["bad"] += n - cases["planted_defect"].null_count
    if cost is not None:
        t["total_cost_yuan"] = cost if t["total_cost_yuan"] is None else t["total_cost_yuan"] + cost
    return t


def _summary(tally: dict, hospitals: pa.Table) -> dict:
    n = tally["cases"]
    levels = np.asarray(hospitals["level"], dtype=np.int64)
    return {
        "cases": n,
        "hospitals": hospitals.num_rows,
        "hospitals_by_level": {lvl: int((levels == lvl).sum()) for lvl in (1, 2, 3)},
        "remote_share": tally["remote"] / n if n else 0.0,
        "bad_share": tally["bad"] / n if n else 0.0,
        "total_cost_yuan": tally["total_cost_yuan"],
    }


def summarize(cases: pa.Table, hospitals: pa.Table) -> dict:
    """Headline figures of a generated region: cases, hospitals by level, remote and bad-row shares."""
    home = hospitals["region"][0].as_py() if hospitals.num_rows else None
    return _summary(_tally(cases, home), hospitals)
