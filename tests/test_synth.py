"""Tests of the synthetic region generator (dipengine.synth) and ``dipengine synth``."""
from __future__ import annotations

import decimal
import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine import codes
from dipengine import synth
from dipengine.cli import main
from dipengine.money import fen_to_decimal
from dipengine.hospitals import read_hospitals
from dipengine.money import yuan_to_fen
from dipengine.synth import DEFECT_KINDS, synth_region

N = 50_000
REGION = "440200"
CONTRACT_COLUMNS = [
    "case_id", "hospital_id", "patient_id", "insurance_type", "person_type", "insured_region",
    "remote_filing", "sex", "age", "age_days", "admit_date", "discharge_date", "los",
    "discharge_mode", "main_dx", "other_dx", "main_proc", "other_procs", "total_cost",
    "fund_paid", "patient_paid", "out_of_catalogue_cost", "class_b_cost",
]
REQUIRED = ["case_id", "hospital_id", "insurance_type", "insured_region", "age", "admit_date",
            "discharge_date", "main_dx", "total_cost"]
MONEY = ["total_cost", "fund_paid", "patient_paid", "out_of_catalogue_cost", "class_b_cost"]


@pytest.fixture(scope="module")
def region():
    return synth_region(2026, N, seed=7, region=REGION)


@pytest.fixture(scope="module")
def frame(region):
    cases, hospitals = region
    df = cases.drop_columns(["other_dx", "other_procs"]).to_pandas()
    df["n_other_dx"] = pc.list_value_length(cases["other_dx"]).to_numpy()
    df["level"] = df["hospital_id"].map(dict(zip(hospitals["hospital_id"].to_pylist(), hospitals["level"].to_pylist())))
    df["total_fen"] = yuan_to_fen(cases["total_cost"])[0]
    return df


def _fen(col):
    fen, status = yuan_to_fen(col)
    assert (status == 0).all()
    return fen


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_tables_and_bytes(tmp_path):
    a = synth_region(2025, 3000, seed=3, bad_rows=0.05)
    b = synth_region(2025, 3000, seed=3, bad_rows=0.05)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    synth.write_region(*a, tmp_path / "a")
    synth.write_region(*b, tmp_path / "b")
    for name in ("cases.parquet", "hospitals.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_different_seed_differs():
    a, ha = synth_region(2025, 3000, seed=1)
    b, hb = synth_region(2025, 3000, seed=2)
    assert not a.equals(b)
    assert not ha.equals(hb)


def test_years_share_structure_but_not_cases():
    a, ha = synth_region(2024, 20_000, seed=5)
    b, hb = synth_region(2025, 20_000, seed=5)
    assert ha.equals(hb)
    assert a["main_dx"].to_pylist() != b["main_dx"].to_pylist()
    # Same disease mix: the ten most frequent diagnoses of one year are common in the other.
    top = lambda t: {d["values"] for d in sorted(pc.value_counts(t["main_dx"]).to_pylist(), key=lambda d: -d["counts"])[:10]}
    assert len(top(a) & top(b)) >= 7
    # About 3 % cost inflation a year.
    ratio = _fen(b["total_cost"]).mean() / _fen(a["total_cost"]).mean()
    assert 1.0 < ratio < 1.07


def test_reused_registry_is_kept(tmp_path):
    _, hosp = synth_region(2024, 10, seed=9, n_hospitals=12)
    path = tmp_path / "hospitals.csv"
    synth.write_region(synth_region(2024, 10, seed=9, n_hospitals=12)[0], hosp, tmp_path)
    for given_registry in (hosp, str(path)):
        cases, reg = synth_region(2025, 2000, seed=1, hospitals=given_registry)
        assert reg["hospital_id"].to_pylist() == hosp["hospital_id"].to_pylist()
        assert set(cases["hospital_id"].to_pylist()) <= set(hosp["hospital_id"].to_pylist())


# ---------------------------------------------------------------------------------- schema


def test_case_schema_follows_contract(region):
    cases, _ = region
    assert cases.column_names == CONTRACT_COLUMNS + ["planted_defect"]
    assert cases.schema.equals(synth.CASE_SCHEMA)
    for name in MONEY:
        assert cases.schema.field(name).type == pa.decimal128(18, 2)
    for name in ("admit_date", "discharge_date"):
        assert cases.schema.field(name).type == pa.date32()
    for name in ("other_dx", "other_procs"):
        assert cases.schema.field(name).type == pa.list_(pa.string())
    for name in REQUIRED + ["patient_id", "person_type", "remote_filing", "sex", "los", "discharge_mode"]:
        assert cases[name].null_count == 0, name
    assert cases["planted_defect"].null_count == N


def test_enumerations_and_dates(region, frame):
    cases, _ = region
    df = frame
    assert set(df["insurance_type"]) == {"employee", "resident"}
    assert set(df["person_type"]) <= {"in_service", "retired", "student", "child", "other"}
    assert set(df["remote_filing"]) <= {"none", "long_term", "referral", "emergency", "temporary"}
    assert set(df["sex"]) <= {"M", "F", "U"}
    assert set(df["discharge_mode"]) <= {1, 2, 3, 4, 5, 9}
    assert df["insured_region"].str.fullmatch(r"\d{6}").all()
    admit = cases["admit_date"].to_numpy().astype("datetime64[D]")
    discharge = cases["discharge_date"].to_numpy().astype("datetime64[D]")
    assert admit.min() >= np.datetime64("2026-01-01") and discharge.max() <= np.datetime64("2026-12-31")
    assert ((discharge - admit).astype(np.int64) == df["los"].to_numpy()).all()
    assert (df["los"] >= 1).all()
    assert pc.count_distinct(cases["case_id"]).as_py() == N
    # age_days only, and always, for children under one year.
    assert (df["age_days"].notna() == (df["age"] == 0)).all()
    assert df["age_days"].dropna().between(0, 365).all()
    assert df["age"].between(0, 120).all()


def test_hospital_registry(region, tmp_path):
    _, hosp = region
    assert hosp.schema.equals(synth.HOSPITAL_SCHEMA)
    levels = hosp["level"].to_pylist()
    assert (levels.count(3), levels.count(2), levels.count(1)) == (8, 20, 32)
    assert set(hosp["region"].to_pylist()) == {REGION}
    assess = hosp["assessment_coef"].to_numpy()
    assert ((assess >= 0.95) & (assess <= 1.0)).all()
    assert hosp["coefficient"].null_count > hosp.num_rows * 0.8
    # The written CSV reads back through the registry reader.
    synth.write_region(region[0].slice(0, 10), hosp, tmp_path)
    back = read_hospitals(tmp_path / "hospitals.csv")
    assert back["hospital_id"].to_pylist() == hosp["hospital_id"].to_pylist()
    assert back["level"].to_pylist() == levels


# ---------------------------------------------------------------------------------- realism


def test_remote_cases(frame):
    df = frame
    remote = df["insured_region"] != REGION
    assert 0.06 < remote.mean() < 0.10
    others = set(df.loc[remote, "insured_region"])
    assert len(others) == 4
    assert sum(r[:2] == REGION[:2] for r in others) == 2
    assert (df.loc[~remote, "remote_filing"] == "none").all()
    assert set(df.loc[remote, "remote_filing"]) == {"none", "long_term", "referral", "emergency", "temporary"}


def test_insurance_people_and_discharge_mix(frame):
    df = frame
    assert 0.52 < (df["insurance_type"] == "employee").mean() < 0.58
    assert (df.loc[df["age"] < 16, "insurance_type"] == "resident").all()
    assert set(df.loc[df["insurance_type"] == "employee", "person_type"]) == {"in_service", "retired"}
    assert (df.loc[df["age"] <= 6, "person_type"] == "child").all()
    modes = df["discharge_mode"].value_counts(normalize=True)
    assert 0.006 < modes[5] < 0.015
    assert all(modes.get(m, 0) > 0.003 for m in (2, 3, 4))
    # Deaths concentrate on the old.
    assert df.loc[df["discharge_mode"] == 5, "age"].mean() > df["age"].mean() + 5


def test_diagnoses_zipf_ages_and_sex(frame):
    df = frame
    share = df["main_dx"].value_counts(normalize=True)
    assert df["main_dx"].nunique() >= 200
    assert 0.03 < share.iloc[0] < 0.15
    assert share.iloc[:20].sum() < 0.6
    newborn = df["main_dx"].str.startswith("P")
    assert (df.loc[newborn, "age"] == 0).all() and (df.loc[newborn, "age_days"] <= 28).all()
    assert df.loc[df["main_dx"].str.startswith("I63"), "age"].mean() > 65
    assert (df.loc[df["main_dx"].str.startswith("O"), "sex"] == "F").all()
    assert (df.loc[df["main_dx"].str.startswith("N40"), "sex"] == "M").all()


def test_procedure_patterns(region, frame):
    cases, _ = region
    df = frame
    # Per diagnosis several patterns: conservative and procedures, pairs with a related one.
    appendix = df[df["main_dx"] == "K35.800x001"]
    assert appendix["main_proc"].isna().mean() < 0.3
    assert {"47.0100", "47.0900"} <= set(appendix["main_proc"].dropna())
    _, proc_vocab = synth.vocabulary_tables()
    cls = dict(zip(proc_vocab["code"].to_pylist(), proc_vocab["class"].to_pylist()))
    classes = df["main_proc"].dropna().map(cls)
    assert set(classes) == {"diagnostic", "therapeutic", "surgery"}
    has_related = pc.list_value_length(cases["other_procs"]).to_numpy() > 0
    assert has_related.mean() > 0.05
    assert df.loc[has_related, "main_proc"].notna().all()


def test_costs_by_level_group_cv_and_los(frame):
    df = frame.assign(p=frame["main_proc"].fillna("-"))
    g = df.groupby(["main_dx", "p", "level"])["total_fen"]
    means = g.mean().unstack("level").dropna()
    assert (means[1] < means[2]).mean() > 0.75 and (means[2] < means[3]).mean() > 0.75
    stats = df.groupby(["main_dx", "p"])["total_fen"].agg(["count", "mean", "std"])
    stats = stats[stats["count"] >= 50]
    cv = (stats["std"] / stats["mean"]).median()
    assert 0.3 <= cv <= 0.6
    r = np.corrcoef(np.log(df["total_fen"]), np.log(df["los"]))[0, 1]
    assert r > 0.4


def test_secondary_diagnoses_raise_cost(region, frame):
    cases, _ = region
    n_sec = frame["n_other_dx"]
    assert n_sec.min() == 0 and n_sec.max() <= 5 and n_sec.max() >= 4
    flat = pc.list_flatten(cases["other_dx"])
    assert {"A41.900", "J96.000", "N17.900", "I50.000"} & set(flat.unique().to_pylist())
    # Within the commonest conservative diagnosis, cases with secondaries cost more.
    df = frame[(frame["main_dx"] == "J18.900") & frame["main_proc"].isna()]
    assert df.loc[df["n_other_dx"] >= 2, "total_fen"].median() > df.loc[df["n_other_dx"] == 0, "total_fen"].median()
    # No case lists a secondary diagnosis twice or repeats its main diagnosis.
    lists = cases["other_dx"].to_pylist()
    main_dx = cases["main_dx"].to_pylist()
    assert all(len(set(x)) == len(x) and m not in x for x, m in zip(lists[:5000], main_dx[:5000]))


def test_repeat_admissions_and_planted_behaviour(frame):
    df = frame.sort_values(["patient_id", "admit_date"])
    per_patient = df["patient_id"].value_counts()
    assert 0.05 < (per_patient >= 2).mean() < 0.25 and per_patient.max() <= 4
    same = df["patient_id"].eq(df["patient_id"].shift())
    gap = (df["admit_date"] - df["discharge_date"].shift()).map(lambda d: getattr(d, "days", 0))
    assert not (same & (gap < 0)).any()  # stays of one patient never overlap
    readmit = same & (gap <= 15) & df["hospital_id"].eq(df["hospital_id"].shift())
    assert readmit.mean() > 0.01
    # Very low-cost short stays exist.
    assert ((df["los"] <= 2) & (df["total_fen"] < 100_000)).mean() > 0.005


def test_money_adds_up(region, frame):
    cases, _ = region
    total, fund, pat, oc, b = (_fen(cases[m]) for m in MONEY)
    assert (fund + pat == total).all()
    assert (fund >= 0).all() and (pat >= 0).all() and (total > 0).all()
    assert (oc + b <= total).all()
    assert 0.01 < oc.sum() / total.sum() < 0.08
    share = pat / total
    emp = frame["insurance_type"].to_numpy() == "employee"
    assert share[emp].mean() < share[~emp].mean()


# ---------------------------------------------------------------------------------- codes


def test_every_clean_code_is_well_formed(region):
    cases, _ = region
    for col in (cases["main_dx"], pc.list_flatten(cases["other_dx"])):
        assert pc.all(codes.is_valid_dx(col)).as_py()
    for col in (cases["main_proc"].drop_null(), pc.list_flatten(cases["other_procs"])):
        assert pc.all(codes.is_valid_proc(col)).as_py()
    assert codes.normalize(cases["main_dx"]).equals(cases["main_dx"].combine_chunks())


def _code_set(path):
    return {line.split("\t", 1)[0] for line in open(path, encoding="utf-8").read().splitlines()[1:]}


def test_vocabularies_hold_official_codes(icd10_path, icd9_path):
    dx, proc = synth.vocabulary_tables()
    assert set(dx["code"].to_pylist()) <= _code_set(icd10_path)
    assert set(proc["code"].to_pylist()) <= _code_set(icd9_path)
    assert dx.num_rows >= 200
    assert codes.subcategory(dx["code"]).to_pylist() == dx["subcategory"].to_pylist()
    assert set(proc["class"].to_pylist()) == {"diagnostic", "therapeutic", "surgery"}
    assert set(proc["level"].to_pylist()) == {"1", "2", "3", "4"}
    v = synth.load_vocabulary()  # every procedure a diagnosis lists is in proc_vocab.csv
    assert sum(len(p) for p in v.dx_procs) > 300


def test_full_code_lists(icd10_path, icd9_path):
    cases, _ = synth_region(2026, 20_000, seed=2, codes_icd10=icd10_path, codes_icd9=icd9_path)
    dx_codes, proc_codes = _code_set(icd10_path), _code_set(icd9_path)
    used_dx = set(cases["main_dx"].to_pylist()) | set(pc.list_flatten(cases["other_dx"]).to_pylist())
    assert used_dx <= dx_codes
    used_proc = set(cases["main_proc"].drop_null().to_pylist()) | set(pc.list_flatten(cases["other_procs"]).to_pylist())
    assert used_proc <= proc_codes
    subs = set(codes.subcategory(cases["main_dx"]).to_pylist())
    assert 150 <= len(subs) <= 400
    classes = set(codes.proc_class_heuristic(cases["main_proc"].drop_null()).to_pylist())
    assert classes == {"diagnostic", "therapeutic", "surgery"}
    assert 0.2 < cases["main_proc"].null_count / cases.num_rows < 0.9


# ---------------------------------------------------------------------------------- defects


@pytest.fixture(scope="module")
def defective():
    return synth_region(2026, 4000, seed=11, bad_rows=0.05)


def test_bad_rows_plant_each_kind(defective):
    cases, _ = defective
    planted = cases["planted_defect"]
    assert len(planted) - planted.null_count == 200
    counts = {d["values"]: d["counts"] for d in pc.value_counts(planted.drop_null()).to_pylist()}
    assert set(counts) == set(DEFECT_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert planted[0].as_py() is None


def test_bad_rows_are_what_they_say(defective):
    cases, hosp = defective
    t = cases.to_pandas()
    kind = t["planted_defect"]
    clean = kind.isna()
    dup = (kind == "DUPLICATE_CASE").to_numpy()
    first_seen = ~t["case_id"].duplicated().to_numpy()
    assert (first_seen == ~dup).all()
    assert not t.loc[kind == "UNKNOWN_HOSPITAL", "hospital_id"].isin(hosp["hospital_id"].to_pylist()).any()
    assert t.loc[clean, "hospital_id"].isin(hosp["hospital_id"].to_pylist()).all()
    bad_dates = kind == "BAD_DATES"
    assert (t.loc[bad_dates, "discharge_date"] < t.loc[bad_dates, "admit_date"]).all()
    assert not codes.is_valid_dx(pa.array(t.loc[kind == "INVALID_DX", "main_dx"])).to_numpy(zero_copy_only=False).any()
    assert not codes.is_valid_proc(pa.array(t.loc[kind == "INVALID_PROC", "main_proc"])).to_numpy(zero_copy_only=False).any()
    total, fund, pat = (_fen_signed(cases[m]) for m in MONEY[:3])
    amount = (kind == "BAD_AMOUNT").to_numpy()
    assert ((total < 0) | (fund + pat != total))[amount].all()
    assert ((total >= 0) & (fund + pat == total))[~amount].all()


def _fen_signed(col):
    return np.array([int(v * 100) for v in col.to_pylist()], dtype=np.int64)


def test_reader_reports_every_planted_defect(defective):
    from dipengine import reader
    cases, hosp = defective
    out = reader.read_cases(cases, hosp, period="2026")
    assert out["reason"].to_pylist() == cases["planted_defect"].to_pylist()


# ---------------------------------------------------------------------------------- kernels vs twins


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(10**15), 10**15), max_size=20))
def test_fen_to_decimal_matches_decimal(values):
    arr = fen_to_decimal(np.array(values, dtype=np.int64))
    assert arr.to_pylist() == [decimal.Decimal(v).scaleb(-2) for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=4), max_size=12), st.randoms())
def test_reorder_lists_matches_python(lists, rnd):
    offsets = np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int32)
    values = np.array([v for x in lists for v in x], dtype=np.int64)
    order = np.array(rnd.sample(range(len(lists)), len(lists)), dtype=np.int64)
    new_off, new_val = synth._reorder_lists(offsets, values, order)
    got = [list(new_val[new_off[i]:new_off[i + 1]]) for i in range(len(lists))]
    assert got == [lists[i] for i in order]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=5), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 0.999)), max_size=20))
def test_segment_choice_matches_python(weights, draws):
    weights = [w if sum(w) > 0 else [1.0] + w[1:] for w in weights]
    seg_of_item = np.repeat(np.arange(len(weights)), [len(w) for w in weights])
    keys = []
    for s, w in enumerate(weights):
        c = np.cumsum(w) / sum(w)
        c[-1] = 1.0
        keys.extend(s + c)
    ends = np.cumsum([len(w) for w in weights]) - 1
    draws = [(s % len(weights), u) for s, u in draws]
    seg = np.array([s for s, _ in draws], dtype=np.int64)
    u = np.array([u for _, u in draws], dtype=np.float64)
    got = synth._segment_choice(u, seg, np.array(keys), ends)

    def slow(s, u):
        start = int(ends[s]) - len(weights[s]) + 1
        acc = 0.0
        total = sum(weights[s])
        for j, w in enumerate(weights[s]):
            acc += w
            if s + (acc / total if j < len(weights[s]) - 1 else 1.0) > s + u:
                return start + j
        return int(ends[s])

    assert got.tolist() == [slow(s, x) for s, x in draws]
    assert (seg_of_item[got] == seg).all() if len(draws) else True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 60)), min_size=1, max_size=4), min_size=1, max_size=8))
def test_admission_chain_matches_python(patients):
    k = np.array([len(p) for p in patients])
    start = np.r_[0, np.cumsum(k)[:-1]].astype(np.int64)
    patient = np.repeat(np.arange(len(patients)), k)
    seq = np.arange(k.sum()) - start[patient]
    los = np.array([s for p in patients for s, _ in p], dtype=np.int64)
    gap = np.array([g for p in patients for _, g in p], dtype=np.int64)
    rel, span = synth._chain(seq, start, patient, los, gap, k)
    exp_rel, exp_span = [], []
    for p in patients:
        day = 0
        for j, (stay, g) in enumerate(p):
            if j:
                day += p[j - 1][0] + g
            exp_rel.append(day)
        exp_span.append(day + p[-1][0])
    assert rel.tolist() == exp_rel and span.tolist() == exp_span


# ---------------------------------------------------------------------------------- CLI


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_readable_files(tmp_path):
    code, out, _ = _run(["synth", "--year", "2025", "--cases", "2000", "--out", str(tmp_path / "r"),
                         "--seed", "4", "--bad-rows", "0.01"])
    assert code == 0
    assert "2,000" in out and "remote share" in out and "level 3: 8" in out and "bad rows" in out
    cases = pq.read_table(tmp_path / "r" / "cases.parquet")
    expected, hosp = synth_region(2025, 2000, seed=4, bad_rows=0.01)
    assert cases.equals(expected)
    back = read_hospitals(tmp_path / "r" / "hospitals.csv")
    assert back.num_rows == 60
    # A second year on the same registry.
    code, _, _ = _run(["synth", "--year", "2026", "--cases", "500", "--out", str(tmp_path / "r2"),
                       "--hospitals", str(tmp_path / "r" / "hospitals.csv")])
    assert code == 0
    c2 = pq.read_table(tmp_path / "r2" / "cases.parquet")
    assert set(c2["hospital_id"].to_pylist()) <= set(hosp["hospital_id"].to_pylist())


def test_cli_errors(tmp_path):
    code, _, err = _run(["synth", "--year", "2025", "--cases", "10", "--out", str(tmp_path), "--region", "44"])
    assert code == 2
    bad = tmp_path / "list.tsv"
    bad.write_text("name\nfoo\n", encoding="utf-8")
    code, _, err = _run(["synth", "--year", "2025", "--cases", "10", "--out", str(tmp_path / "x"),
                         "--codes-icd10", str(bad)])
    assert code == 1 and "code" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------- planted patterns


def _digest(table: pa.Table) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        h.update(repr(table[name].to_pylist()).encode())
    return h.hexdigest()


# Content digests of the default output, from before over-long stays and up-coding existed. A change
# here means the default random streams moved (an extra or reordered draw): every seed's data, and
# the shipped demo tables built from them, would change. Update only on purpose.
PINNED = {
    "one chunk": "747c8a96a1ba83a91a8ab597e2d36ce2008c5d786de15793286f6fefbcf3af7d",
    "chunks of 1000": "bb995fb5b666c9651b626a670d45361902e7a9c6e7c57a76fed9b40a11a50164",
    "registry": "0d0791d2d4069e7f293d3b046c34516c44341d315aada9c0ad18d236b117e0fd",
}


def test_default_output_is_pinned():
    cases, hosp = synth_region(2026, 3000, seed=7, bad_rows=0.02)
    assert _digest(cases) == PINNED["one chunk"]
    assert _digest(hosp) == PINNED["registry"]
    chunked, _ = synth_region(2026, 3000, seed=7, bad_rows=0.02, chunk_rows=1000)
    assert _digest(chunked) == PINNED["chunks of 1000"]


def test_new_shares_at_zero_and_the_truth_change_nothing():
    base, hosp = synth_region(2026, 4000, seed=3, bad_rows=0.02, chunk_rows=1500)
    zero = synth.SynthParams(over_long_share=0.0, upcoding_hospitals=0.0, upcoding_rate=0.9,
                             over_long_factor=(4.0, 6.0), over_long_cost=2.0)
    again, hosp2, truth = synth_region(2026, 4000, seed=3, bad_rows=0.02, chunk_rows=1500, params=zero, planted=True)
    assert again.equals(base) and hosp2.equals(hosp)
    assert set(truth["pattern"].to_pylist()) == {"low_cost_short_stay", "readmission_15d"}
    # iter_region with the truth gives the same chunks, and the truth chunk by chunk
    _, chunks = synth.iter_region(2026, 4000, seed=3, bad_rows=0.02, chunk_rows=1500, planted=True)
    pairs = list(chunks)
    assert len(pairs) == 3 and all(isinstance(p, tuple) for p in pairs)
    assert pa.concat_tables([c for c, _ in pairs]).equals(base)
    assert pa.concat_tables([t for _, t in pairs]).equals(truth)


def test_truth_schema_and_rows():
    cases, _, truth = synth_region(2026, N, seed=7, region=REGION, planted=True,
                                   params=synth.SynthParams(over_long_share=0.02, upcoding_hospitals=0.05))
    assert truth.schema.equals(synth.PLANTED_SCHEMA)
    assert set(truth["pattern"].to_pylist()) == set(synth.PLANTED_PATTERNS)
    per_case = truth.filter(pc.not_equal(truth["pattern"], "upcoding_hospital"))
    assert per_case["case_id"].null_count == 0
    # every case row names a case of the table, with its hospital; a (pattern, case) at most once
    hosp_of = dict(zip(cases["case_id"].to_pylist(), cases["hospital_id"].to_pylist()))
    pairs = list(zip(per_case["pattern"].to_pylist(), per_case["case_id"].to_pylist()))
    assert len(set(pairs)) == len(pairs)
    assert all(hosp_of[c] == h for c, h in zip(per_case["case_id"].to_pylist(), per_case["hospital_id"].to_pylist()))
    # rows follow the cases' order
    pos = {c: i for i, c in enumerate(cases["case_id"].to_pylist())}
    order = [pos[c] for c in per_case["case_id"].to_pylist()]
    assert order == sorted(order)
    # low-cost stays: about 1.5 % of the cases, LOS 1-2 days, never also over-long
    low = set(truth.filter(pc.equal(truth["pattern"], "low_cost_short_stay"))["case_id"].to_pylist())
    assert abs(len(low) - 0.015 * N) < 4 * np.sqrt(0.015 * N)
    los_of = dict(zip(cases["case_id"].to_pylist(), cases["los"].to_pylist()))
    assert all(los_of[c] <= 2 for c in low)
    over = set(truth.filter(pc.equal(truth["pattern"], "over_long_stay"))["case_id"].to_pylist())
    assert not low & over
    assert abs(len(over) - 0.02 * 0.985 * N) < 4 * np.sqrt(0.02 * N)


def _readmissions(cases: pa.Table) -> set:
    """Case ids of the admissions that start 1-14 days after the same patient's previous discharge."""
    df = cases.select(["case_id", "patient_id", "admit_date", "discharge_date"]).to_pandas()
    df = df.sort_values(["patient_id", "admit_date"])
    same = df["patient_id"].eq(df["patient_id"].shift())
    gap = (df["admit_date"] - df["discharge_date"].shift()).map(lambda d: getattr(d, "days", -1))
    return set(df.loc[same & (gap >= 1) & (gap <= 14), "case_id"])


@pytest.mark.parametrize("chunk_rows", [synth.CHUNK_ROWS, 3000])
def test_readmission_truth_is_exactly_the_data(chunk_rows):
    params = synth.SynthParams(over_long_share=0.03)
    cases, _, truth = synth_region(2026, 20_000, seed=5, params=params, chunk_rows=chunk_rows, planted=True)
    got = truth.filter(pc.equal(truth["pattern"], "readmission_15d"))
    assert set(got["case_id"].to_pylist()) == _readmissions(cases)
    assert got.num_rows > 0.03 * cases.num_rows


def test_truth_leaves_out_rejected_rows():
    from dipengine import reader

    params = synth.SynthParams(over_long_share=0.03, upcoding_hospitals=0.05)
    cases, hosp, truth = synth_region(2026, 10_000, seed=6, bad_rows=0.05, params=params, planted=True)
    out = reader.read_cases(cases, hosp, period="2026")
    accepted = set(cases.filter(pc.is_null(out["reason"]))["case_id"].to_pylist())
    per_case = truth.filter(pc.is_valid(truth["case_id"]))
    assert set(per_case["case_id"].to_pylist()) <= accepted
    # readmissions: those of the data whose case and previous admission are both clean
    assert set(per_case.filter(pc.equal(per_case["pattern"], "readmission_15d"))["case_id"].to_pylist()) <= _readmissions(cases)


def _by_stay(cases: pa.Table):
    """The cases as a frame indexed by (patient, n-th stay of the patient)."""
    df = cases.to_pandas().sort_values(["patient_id", "admit_date"])
    df["stay"] = df.groupby("patient_id").cumcount()
    df["total_fen"] = yuan_to_fen(pa.array(df["total_cost"], pa.decimal128(18, 2)))[0]
    return df.set_index(["patient_id", "stay"]).sort_index()


def test_over_long_stays_against_the_same_region_without_them():
    n = 30_000
    base, _ = synth_region(2026, n, seed=8)
    params = synth.SynthParams(over_long_share=0.04)
    planted, _, truth = synth_region(2026, n, seed=8, params=params, planted=True)
    a, b = _by_stay(base), _by_stay(planted)
    assert a.index.equals(b.index)  # the same patients and stays
    over = b["case_id"].isin(truth.filter(pc.equal(truth["pattern"], "over_long_stay"))["case_id"].to_pylist())
    assert over.sum() > 0.03 * n
    # The planted stays are what changed, and changed as documented.
    changed = a["los"].to_numpy() != b["los"].to_numpy()
    assert (changed == over.to_numpy()).all()
    assert (b.loc[over, "los"] >= 3 * a.loc[over, "los"]).all()
    ta, tb = a.loc[over, "total_fen"], b.loc[over, "total_fen"]
    assert (tb >= ta).all() and (tb <= 1.2 * ta + 1).all() and (tb > ta).mean() > 0.95
    # Nothing else about any case changed ...
    same = ["hospital_id", "insurance_type", "person_type", "insured_region", "remote_filing", "sex", "age",
            "age_days", "discharge_mode", "main_dx", "main_proc"]
    for col in same:
        assert a[col].equals(b[col]), col
    assert [list(x) for x in a["other_dx"]] == [list(x) for x in b["other_dx"]]
    assert (a.loc[~over, "total_fen"] == b.loc[~over, "total_fen"]).all()
    for col in ("fund_paid", "patient_paid", "out_of_catalogue_cost", "class_b_cost"):
        assert (a.loc[~over, col] == b.loc[~over, col]).all(), col
    # ... and only the dates of patients with a planted stay moved.
    touched = b.index.get_level_values(0).isin(b.index[over].get_level_values(0))
    for col in ("admit_date", "discharge_date"):
        assert (a.loc[~touched, col] == b.loc[~touched, col]).all()
    # Stays of one patient never overlap and every date lies in the year.
    assert (b["discharge_date"] - b["admit_date"]).map(lambda d: d.days).eq(b["los"]).all()
    nxt = b.groupby(level=0)["admit_date"].shift(-1)
    assert ((nxt - b["discharge_date"]).dropna().map(lambda d: d.days) >= 1).all()
    assert str(b["admit_date"].min()) >= "2026-01-01" and str(b["discharge_date"].max()) <= "2026-12-31"
    # The low-cost stays are the same ones.
    low = lambda t, df: df["case_id"].isin(t.filter(pc.equal(t["pattern"], "low_cost_short_stay"))["case_id"].to_pylist())
    _, _, truth0 = synth_region(2026, n, seed=8, planted=True)
    assert (low(truth0, a).to_numpy() == low(truth, b).to_numpy()).all()


def test_over_long_stays_stand_out_in_their_group():
    from dipengine import grouper

    params = synth.SynthParams(over_long_share=0.02)
    cases, _, truth = synth_region(2026, 60_000, seed=9, params=params, planted=True)
    g = grouper.group(cases, "demo")
    df = cases.select(["case_id", "los"]).to_pandas().assign(group=g["dip_code"].to_pylist())
    df["over"] = df["case_id"].isin(truth.filter(pc.equal(truth["pattern"], "over_long_stay"))["case_id"].to_pylist())
    ratio = df["los"] / df.groupby("group")["los"].transform("median")
    flagged = ratio >= 2.8
    assert flagged[df["over"]].mean() > 0.95  # recall of a plain rule
    assert df["over"][flagged].mean() > 0.8  # and its precision


@pytest.fixture(scope="module")
def upcoded():
    params = synth.SynthParams(upcoding_hospitals=0.05)
    base, hosp = synth_region(2026, N, seed=12)
    cases, hosp2, truth = synth_region(2026, N, seed=12, params=params, planted=True)
    assert hosp2.equals(hosp)
    ids = truth.filter(pc.equal(truth["pattern"], "upcoding_hospital"))["hospital_id"].to_pylist()
    return base, cases, hosp, truth, ids


def test_upcoding_hospitals_are_drawn_among_levels_2_and_3(upcoded):
    _, _, hosp, truth, ids = upcoded
    rows = truth.filter(pc.equal(truth["pattern"], "upcoding_hospital"))
    assert rows["case_id"].null_count == rows.num_rows == 3 == len(set(ids))  # round(0.05 * 60)
    assert truth["pattern"][:3].to_pylist() == ["upcoding_hospital"] * 3  # first
    level = dict(zip(hosp["hospital_id"].to_pylist(), hosp["level"].to_pylist()))
    assert all(level[h] in (2, 3) for h in ids)
    # The same hospitals in every year of the seed and on the reused registry; at least one.
    params = synth.SynthParams(upcoding_hospitals=0.05)
    for kw in ({}, {"hospitals": hosp}):
        _, _, t = synth_region(2024, 500, seed=12, params=params, planted=True, **kw)
        assert t.filter(pc.equal(t["pattern"], "upcoding_hospital"))["hospital_id"].to_pylist() == ids
    _, _, t = synth_region(2026, 100, seed=12, planted=True, params=synth.SynthParams(upcoding_hospitals=0.001))
    assert t.filter(pc.equal(t["pattern"], "upcoding_hospital")).num_rows == 1
    one_level = hosp.filter(pc.equal(hosp["level"], 1))
    with pytest.raises(ValueError, match="level-2 or level-3"):
        synth_region(2026, 10, hospitals=one_level, params=params)


def test_upcoding_adds_only_severe_secondary_diagnoses(upcoded):
    from dipengine.io import read_table
    from dipengine.rules import longest_prefix

    base, cases, _, _, ids = upcoded
    # Same rows (no date changes); every column but other_dx identical.
    assert base.drop_columns(["other_dx"]).equals(cases.drop_columns(["other_dx"]))
    at = np.isin(cases["hospital_id"].to_numpy(zero_copy_only=False), ids)
    before, after = base["other_dx"].to_pylist(), cases["other_dx"].to_pylist()
    assert all(before[i] == after[i] for i in np.flatnonzero(~at))
    added = [after[i][len(before[i]):] for i in np.flatnonzero(at)]
    assert all(after[i][:len(before[i])] == before[i] for i in np.flatnonzero(at))
    share = np.mean([len(a) > 0 for a in added])
    assert 0.5 < share < 0.65  # upcoding_rate 0.6 (a few draws repeat a code the case has)
    # The added codes: severity III or CCI weight >= 2 in the shipped catalogues, no repeats, never the main code.
    flat = pa.array(sorted({c for a in added for c in a}), pa.string())
    sev, cci = (read_table(str(synth._data_path(n))) for n in ("severity_dx.csv", "cci_weights.csv"))
    main = codes.main_code(flat)
    s_row = longest_prefix(main, sev["dx_prefix"].to_pylist())
    c_row = longest_prefix(main, cci["dx_prefix"].to_pylist())
    s_lvl = [sev["level"][r].as_py() if r >= 0 else None for r in s_row]
    c_w = [int(cci["weight"][r].as_py()) if r >= 0 else 0 for r in c_row]
    assert all(lv == "III" or w >= 2 for lv, w in zip(s_lvl, c_w))
    assert "III" in s_lvl and max(c_w) >= 2
    assert pc.all(codes.is_valid_dx(flat)).as_py()
    main_dx = cases["main_dx"].to_pylist()
    assert all(len(set(x)) == len(x) and main_dx[i] not in x for i, x in enumerate(after))


def test_upcoding_hospitals_stand_out_on_the_demo_rules(upcoded):
    from dipengine import grouper, reader

    _, cases, hosp, _, ids = upcoded
    assert reader.read_cases(cases, hosp, period="2026")["reason"].null_count == cases.num_rows  # all accepted
    g = grouper.group(cases, "demo")
    df = cases.select(["hospital_id"]).to_pandas().assign(aux=pc.is_valid(g["aux_subtype"]).to_numpy(zero_copy_only=False))
    share = df.groupby("hospital_id")["aux"].mean()
    level = dict(zip(hosp["hospital_id"].to_pylist(), hosp["level"].to_pylist()))
    for h in ids:
        peers = share[[x for x in share.index if level[x] == level[h] and x not in ids]]
        assert share[h] > 1.5 * peers.median() and share[h] > peers.max() + 0.1, (h, share[h], peers.describe())


def test_planting_arguments_are_checked():
    for kw in ({"over_long_share": 1.5}, {"upcoding_hospitals": -0.1}, {"upcoding_rate": 2.0},
               {"over_long_factor": (0.5, 2.0)}, {"over_long_factor": (5.0, 3.0)}):
        with pytest.raises(ValueError):
            synth_region(2026, 10, params=synth.SynthParams(**kw))


def test_write_region_stream_writes_the_truth(tmp_path):
    params = synth.SynthParams(over_long_share=0.02, upcoding_hospitals=0.05)
    cases, hosp, truth = synth_region(2026, 5000, seed=2, params=params, chunk_rows=2000, planted=True)
    _, chunks = synth.iter_region(2026, 5000, seed=2, params=params, chunk_rows=2000, planted=True)
    _, _, s = synth.write_region_stream(chunks, hosp, tmp_path / "a", batch_rows=1500)
    assert pq.read_table(tmp_path / "a" / "cases.parquet").equals(cases)
    with pa.ipc.open_file(tmp_path / "a" / "planted.arrow") as f:
        back = f.read_all()
        assert back.equals(truth) and f.num_record_batches == 3
    assert s["planted"] == {p: truth["pattern"].to_pylist().count(p) for p in synth.PLANTED_PATTERNS}
    assert s["planted_path"] == tmp_path / "a" / "planted.arrow"
    # any iterable of pairs; tables alone write no truth
    synth.write_region_stream([(cases, truth)], hosp, tmp_path / "b")
    assert _truth(tmp_path / "b").equals(truth)
    _, _, s = synth.write_region_stream([cases], hosp, tmp_path / "c")
    assert not (tmp_path / "c" / "planted.arrow").exists() and "planted" not in s


def test_cli_writes_planted_truth(tmp_path):
    from dipengine.io import write_table

    code, out, _ = _run(["synth", "--year", "2026", "--cases", "6000", "--out", str(tmp_path / "r"), "--seed", "3",
                         "--over-long", "0.02", "--upcoding-hospitals", "0.05", "--upcoding-rate", "0.5",
                         "--bad-rows", "0.01", "--schema", "nhsa"])
    assert code == 0 and "planted.arrow" in out and "over_long_stay" in out and "upcoding_hospital 3" in out
    params = synth.SynthParams(over_long_share=0.02, upcoding_hospitals=0.05, upcoding_rate=0.5)
    _, _, truth = synth_region(2026, 6000, seed=3, params=params, bad_rows=0.01, planted=True)
    assert _truth(tmp_path / "r").equals(truth)
    # By default: the low-cost stays and readmissions, over the same cases as before.
    code, out, _ = _run(["synth", "--year", "2026", "--cases", "3000", "--out", str(tmp_path / "d"), "--seed", "3"])
    assert code == 0
    base, _, truth = synth_region(2026, 3000, seed=3, planted=True)
    assert pq.read_table(tmp_path / "d" / "cases.parquet").equals(base)
    back = _truth(tmp_path / "d")
    assert back.equals(truth) and set(back["pattern"].to_pylist()) == {"low_cost_short_stay", "readmission_15d"}
    # A registry without level-2/3 hospitals cannot up-code: a usage error, nothing written.
    level1 = tmp_path / "level1.csv"
    _, hosp = synth_region(2026, 1, seed=3)
    write_table(hosp.filter(pc.equal(hosp["level"], 1)), level1)
    code, _, err = _run(["synth", "--year", "2026", "--cases", "10", "--out", str(tmp_path / "x"),
                         "--hospitals", str(level1), "--upcoding-hospitals", "0.1"])
    assert code == 2 and "level-2 or level-3" in err and not (tmp_path / "x").exists()


def _truth(directory):
    with pa.ipc.open_file(directory / "planted.arrow") as f:
        return f.read_all()


def test_a_region_directory_as_input_reads_the_cases_only(tmp_path):
    from dipengine.cli import main
    from pathlib import Path

    from dipengine.io import source_files

    assert main(["synth", "--year", "2026", "--cases", "500", "--out", str(tmp_path / "r"), "--over-long", "0.1"]) == 0
    assert [Path(f).name for f in source_files(str(tmp_path / "r"))] == ["cases.parquet"]
