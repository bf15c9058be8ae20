"""Every public kernel in ``dipengine._libs`` checks its arguments once per call (issue 15, item 7).

Mismatched lengths and out-of-range labels, indices or offsets raise ``ValueError`` naming the
argument, never a crash or a silent wrong result; ``-1`` stays allowed where it means "none".
.ci/run runs this file again against the bounds-checked build (``DIPENGINE_CYTHON_DEBUG=1``),
where an access the checks missed would surface as an ``IndexError``.
"""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipengine._libs.benefits import accumulate_cap
from dipengine._libs.grouping import CompiledRules, case_codes, group_cases, proc_csr, secondary_codes
from dipengine._libs.money import decimal_fen, parse_fen
from dipengine._libs.scoring import count_by_label, score_cases, sum_by_label
from dipengine._libs.validate import SeenSet, needs_trim, split_codes
from dipengine.grouper import encode, kernel_rules, prepare_cases, run_kernel
from dipengine.reader import read_cases
from dipengine.rules import load_rules
from dipengine.synth import synth_region

I32 = np.iinfo(np.int32)
I64 = np.iinfo(np.int64)


def _with(base: dict, **changes) -> dict:
    """A copy of the keyword arguments ``base`` with ``changes`` applied (arrays copied)."""
    out = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in base.items()}
    out.update(changes)
    return out


def _set(a: np.ndarray, i: int, v) -> np.ndarray:
    a = a.copy()
    a[i] = v
    return a


# --------------------------------------------------------------------------- grouping: the rules object


@pytest.fixture(scope="module")
def rs(rules_features):
    return load_rules(rules_features)


@pytest.fixture(scope="module")
def enc(rs, tmp_path_factory):
    cases, _ = synth_region(2026, 600, seed=11, bad_rows=0.05)
    path = tmp_path_factory.mktemp("k") / "cases.parquet"
    pq.write_table(cases, path)
    return encode(prepare_cases(read_cases(path)), rs)


def _outputs(n: int) -> dict:
    return {"out_group": np.full(n, -1, np.int32), "out_path": np.zeros(n, np.int8),
            "out_reason": np.zeros(n, np.int8), "out_class": np.full(n, -1, np.int8),
            "out_aux": np.full(n, -1, np.int8), "out_coef": np.ones(n, np.float64)}


def _group(kr, args: dict, n_threads: int = 1) -> dict:
    group_cases(kr, **args, n_threads=n_threads)
    return args


def test_kernel_rules_built_once_per_rule_set_and_immutable(rs):
    kr = kernel_rules(rs)
    assert isinstance(kr, CompiledRules) and kernel_rules(rs) is kr
    assert kr.n_groups == rs.groups.num_rows and kr.n_cat == 2600
    arrays = kr.as_dict()
    assert not arrays["sub_cand"].flags.writeable  # a checked copy: the caller's arrays may change
    assert not np.shares_memory(arrays["sub_cand"], rs.compiled.sub_cand)


def test_compiled_rules_pickles_and_groups_the_same(rs, enc):
    kr = kernel_rules(rs)
    again = pickle.loads(pickle.dumps(kr))
    n = len(enc["pre_reason"])
    a = _group(kr, {**enc, **_outputs(n)})
    b = _group(again, {**enc, **_outputs(n)})
    for name in _outputs(0):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_group_cases_keyword_call_matches_run_kernel(rs, enc):
    n = len(enc["pre_reason"])
    out = _group(kernel_rules(rs), {**enc, **_outputs(n)}, n_threads=2)
    res = run_kernel(enc, rs, 1)
    np.testing.assert_array_equal(out["out_group"], res.group_index)
    np.testing.assert_array_equal(out["out_path"], res.match_path)
    np.testing.assert_array_equal(out["out_coef"], res.aux_coef)
    assert (res.group_index >= 0).sum() > n // 2  # the cases do group


def _rule_changes(a: dict) -> list:
    ng = len(a["g_type"])
    nb = len(a["band_lo"])
    return [
        ("sub_cand", {"sub_cand": _set(a["sub_cand"], 0, ng)}),
        ("sub_cand", {"sub_cand": _set(a["sub_cand"], 0, -1)}),
        ("sub_cons", {"sub_cons": _set(a["sub_cons"], 0, ng)}),
        ("sub_cons", {"sub_cons": _set(a["sub_cons"], 0, -3)}),
        ("sub_off", {"sub_off": _set(a["sub_off"], -1, a["sub_off"][-1] + 1)}),
        ("sub_off", {"sub_off": a["sub_off"][:-1].copy()}),
        ("sub_off", {"sub_off": _set(a["sub_off"], 1, a["sub_off"][-1] + 5)}),
        ("g_type", {"g_type": _set(a["g_type"], 0, 4)}),
        ("g_rank", {"g_rank": a["g_rank"][:-1].copy()}),
        ("g_avg_fen", {"g_avg_fen": np.append(a["g_avg_fen"], 0)}),
        ("g_term_off", {"g_term_off": _set(a["g_term_off"], 1, -1)}),
        ("g_term_off", {"g_term_off": _set(a["g_term_off"], -1, a["g_term_off"][-1] + 1)}),
        ("term_off", {"term_off": _set(a["term_off"], -1, len(a["term_codes"]) + 1)}),
        ("term_off", {"term_off": np.zeros(0, np.int64)}),
        ("comp_lookup", {"comp_lookup": a["comp_lookup"][:-1].copy()}),
        ("comp_lookup", {"comp_lookup": _set(a["comp_lookup"], 5, ng)}),
        ("comp_lookup", {"comp_lookup": _set(a["comp_lookup"], 5, -2)}),
        ("blank", {"blank": ng}),
        ("blank", {"blank": -2}),
        ("aux_off", {"aux_off": _set(a["aux_off"], -1, len(a["aux_sub"]) + 1)}),
        ("aux_coef", {"aux_coef": np.append(a["aux_coef"], 1.0)}),
        ("aux_sub", {"aux_sub": _set(a["aux_sub"], 0, 6 + nb)}),
        ("aux_sub", {"aux_sub": _set(a["aux_sub"], 0, -1)}),
        ("band_hi", {"band_hi": np.append(a["band_hi"], 0).astype(np.int32)}),
        ("cci_cuts", {"cci_cuts": a["cci_cuts"][:2].copy()}),
        ("comp_rank", {"comp_rank": a["comp_rank"][:3].copy()}),
        ("tie_order", {"tie_order": np.array([0, 1, 2, 3, 0], np.int8)}),
        ("tie_order", {"tie_order": np.array([4], np.int8)}),
        ("tie_order", {"tie_order": np.array([1, 1], np.int8)}),
        # prefix matching: one parent per expression code, each smaller than its child
        ("term_codes", {"proc_parent": np.full(int(a["term_codes"].max()), -1, np.int32)}),
        ("proc_parent", {"proc_parent": np.arange(int(a["term_codes"].max()) + 1, dtype=np.int32)}),
        ("dtype mismatch", {"sub_off": a["sub_off"].astype(np.int32)}),
    ]


def test_compiled_rules_checks_every_array(rs):
    base = kernel_rules(rs).as_dict()
    assert len(base["aux_sub"]) and len(base["band_lo"]) and len(base["term_codes"])  # every part exercised
    CompiledRules(**base)  # the unchanged arguments are fine
    for name, change in _rule_changes(base):
        with pytest.raises(ValueError, match=name):
            CompiledRules(**_with(base, **change))


def test_compiled_rules_accepts_an_empty_rule_set():
    z8, z32, z64 = np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(1, np.int64)
    kr = CompiledRules(sub_off=z64, sub_cand=z32, sub_cons=z32, g_type=z8, g_rank=z8,
                       g_avg_fen=np.zeros(0, np.int64), g_term_off=z64, term_off=z64, term_codes=z32,
                       comp_lookup=np.full(2600 * 4, -1, np.int32), blank=-1, aux_off=z64, aux_sub=z8,
                       aux_coef=np.zeros(0), band_lo=z32, band_hi=z32, cci_cuts=np.array([1, 3, 5], np.int32),
                       match_all=0, sev_los=0, death_mode=5, cons_max_class=0, cons_max_level=0,
                       comp_rank=np.array([11, 8, 7, 6], np.int8), tie_order=np.array([0, 1, 2, 3], np.int8),
                       proc_parent=z32, main_any=0)
    n = 2
    args = {"pre_reason": np.zeros(n, np.int8), "excluded": np.zeros(n, np.int8), "sub_id": np.full(n, -1, np.int32),
            "cat": np.array([-1, 7], np.int32), "p_off": np.zeros(n + 1, np.int64), "p_full": z32, "p_base": z32,
            "p_class": z8, "p_level": z8, "has_main": np.zeros(n, np.int8), "total_fen": np.zeros(n, np.int64),
            "dmode": np.ones(n, np.int8), "los": np.ones(n, np.int32), "age_key": np.zeros(n, np.int32),
            "d_off": np.zeros(n + 1, np.int64), "d_cci_cat": z32, "d_cci_w": z32, "d_sev": z8, **_outputs(n)}
    out = _group(kr, args)
    assert out["out_group"].tolist() == [-1, -1] and out["out_path"].tolist() == [5, 5]  # NO_GROUP, no crash


# --------------------------------------------------------------------------- grouping: per-case arrays

CASE_ARRAYS = ("pre_reason", "excluded", "sub_id", "cat", "p_off", "p_full", "p_base", "p_class", "p_level",
               "has_main", "total_fen", "dmode", "los", "age_key", "d_off", "d_cci_cat", "d_cci_w", "d_sev")


@pytest.mark.parametrize("name", CASE_ARRAYS + tuple(_outputs(0)))
@pytest.mark.parametrize("delta", [-1, 1])
def test_group_cases_mismatched_lengths(rs, enc, name, delta):
    args = {**enc, **_outputs(len(enc["pre_reason"]))}
    a = args[name]
    args[name] = a[:-1].copy() if delta < 0 else np.append(a, a[-1:]).astype(a.dtype)
    with pytest.raises(ValueError, match=name):
        group_cases(kernel_rules(rs), **args)


def _groupable_entry(enc) -> int:
    """A procedure entry of a case that reaches the class scan (not rejected, not excluded)."""
    ok = (enc["pre_reason"] == 0) & (enc["excluded"] == 0) & (np.diff(enc["p_off"]) > 0)
    return int(enc["p_off"][np.flatnonzero(ok)[0]])


def _aux_case(enc, kr) -> int:
    """A case whose group has auxiliary subtypes, so that the kernel reads its d_off."""
    n = len(enc["pre_reason"])
    out = _group(kr, {**enc, **_outputs(n)})
    aux_off = kr.as_dict()["aux_off"]
    g = out["out_group"]
    has = (g >= 0) & (aux_off[np.maximum(g, 0) + 1] > aux_off[np.maximum(g, 0)])
    return int(np.flatnonzero(has)[len(np.flatnonzero(has)) // 2])


def _case_changes(enc, kr) -> list:
    n = len(enc["pre_reason"])
    n_p, n_d = len(enc["p_full"]), len(enc["d_cci_cat"])
    mid = n // 2
    pe = _groupable_entry(enc)
    ax = _aux_case(enc, kr)
    return [
        ("sub_id", {"sub_id": _set(enc["sub_id"], mid, kr.n_sub)}),
        ("sub_id", {"sub_id": _set(enc["sub_id"], mid, -2)}),
        ("sub_id", {"sub_id": _set(enc["sub_id"], n - 1, I32.max)}),
        ("sub_id", {"sub_id": _set(enc["sub_id"], 0, I32.min)}),
        ("cat", {"cat": _set(enc["cat"], mid, kr.n_cat)}),
        ("cat", {"cat": _set(enc["cat"], mid, -2)}),
        ("cat", {"cat": _set(enc["cat"], 0, I32.max)}),
        ("p_class", {"p_class": _set(enc["p_class"], pe, 4)}),
        ("p_class", {"p_class": _set(enc["p_class"], pe, 127)}),
        ("p_off", {"p_off": _set(enc["p_off"], mid, n_p + 1)}),
        ("p_off", {"p_off": _set(enc["p_off"], mid, -1)}),
        ("p_off", {"p_off": _set(enc["p_off"], mid, I64.max)}),
        ("p_off", {"p_off": _set(enc["p_off"], mid, I64.min)}),
        ("p_off", {"p_off": _set(enc["p_off"], n, n_p + 1)}),
        ("p_off", {"p_off": _set(enc["p_off"], 0, 1)}),
        ("d_off", {"d_off": _set(enc["d_off"], ax + 1, n_d + 1)}),
        ("d_off", {"d_off": _set(enc["d_off"], ax, -5)}),
        ("d_off", {"d_off": _set(enc["d_off"], ax, I64.max)}),
        ("d_off", {"d_off": _set(enc["d_off"], n, n_d - 1)}),
        ("d_off", {"d_off": _set(enc["d_off"], 0, -1)}),
    ]


def test_group_cases_out_of_range_indices(rs, enc):
    kr = kernel_rules(rs)
    n = len(enc["pre_reason"])
    for name, change in _case_changes(enc, kr):
        for threads in (1, 2):
            with pytest.raises(ValueError, match=name):
                group_cases(kr, **_with({**enc, **_outputs(n)}, **change), n_threads=threads)


def test_group_cases_none_allowed_where_documented(rs, enc):
    """-1 means none in sub_id and cat, a negative p_class "not counted": such cases group (or
    not) without an error."""
    kr = kernel_rules(rs)
    n = len(enc["pre_reason"])
    args = _with({**enc, **_outputs(n)}, sub_id=np.full(n, -1, np.int32), cat=np.full(n, -1, np.int32),
                 p_class=np.tile(np.array([-1, -2, -128], np.int8), len(enc["p_class"]))[:len(enc["p_class"])])
    group_cases(kr, **args)
    assert set(args["out_group"].tolist()) <= {-1, kr.blank}


def test_group_cases_refuses_none_arguments(rs, enc):
    args = {**enc, **_outputs(len(enc["pre_reason"]))}
    with pytest.raises(TypeError):
        group_cases(None, **args)
    with pytest.raises(ValueError, match="rules"):
        group_cases(CompiledRules.__new__(CompiledRules), **args)  # never initialised
    with pytest.raises(TypeError):
        group_cases(kernel_rules(rs), **{**args, "sub_id": None})


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_group_cases_garbage_indices_raise_or_group(rs, enc, data):
    """Random values in the index arrays: a ValueError or a result, never a crash."""
    kr = kernel_rules(rs)
    n = len(enc["pre_reason"])
    args = {**enc, **_outputs(n)}
    name = data.draw(st.sampled_from(["sub_id", "cat", "p_off", "d_off", "p_class"]))
    a = args[name].copy()
    info = np.iinfo(a.dtype)
    k = data.draw(st.integers(0, len(a) - 1))
    a[k] = data.draw(st.one_of(st.integers(-3, 3), st.integers(int(info.min), int(info.max))))
    args[name] = a
    try:
        group_cases(kr, **args, n_threads=data.draw(st.sampled_from([1, 2])))
    except ValueError as e:
        assert name in str(e)


# --------------------------------------------------------------------------- grouping: encoders

PROC = {
    "m_idx": np.array([0, -1, 1], np.int32), "m_full": np.array([10, 11], np.int32),
    "m_base": np.array([10, 11], np.int32), "m_cls": np.array([3, -1], np.int8), "m_lvl": np.array([2, 0], np.int8),
    "o_len": np.array([1, 0, 2], np.int64), "o_idx": np.array([0, -1, 1], np.int32),
    "o_full": np.array([20, 21], np.int32), "o_base": np.array([20, 21], np.int32),
    "o_cls": np.array([1, 0], np.int8), "o_lvl": np.array([0, 1], np.int8),
    "p_off": np.zeros(4, np.int64), "has_main": np.zeros(3, np.int8), "p_full": np.zeros(5, np.int32),
    "p_base": np.zeros(5, np.int32), "p_class": np.zeros(5, np.int8), "p_level": np.zeros(5, np.int8),
}


def test_proc_csr_valid_call():
    a = _with(PROC)
    proc_csr(**a)
    assert a["p_off"].tolist() == [0, 2, 2, 5] and a["p_full"].tolist() == [10, 20, 11, -1, 21]


@pytest.mark.parametrize("name, change", [
    ("m_idx", {"m_idx": _set(PROC["m_idx"], 0, 2)}),
    ("m_idx", {"m_idx": _set(PROC["m_idx"], 1, -2)}),
    ("m_idx", {"m_idx": _set(PROC["m_idx"], 1, I32.min)}),
    ("o_idx", {"o_idx": _set(PROC["o_idx"], 0, 2)}),
    ("o_idx", {"o_idx": _set(PROC["o_idx"], 2, -7)}),
    ("o_len", {"o_len": _set(PROC["o_len"], 0, -1)}),
    ("o_len", {"o_len": _set(PROC["o_len"], 2, 3)}),
    ("o_len", {"o_len": _set(PROC["o_len"], 2, 1)}),
    ("o_len", {"o_len": _set(PROC["o_len"], 0, I64.max)}),
    ("o_len", {"o_len": PROC["o_len"][:2].copy()}),
    ("m_base", {"m_base": PROC["m_base"][:1].copy()}),
    ("m_lvl", {"m_lvl": np.zeros(3, np.int8)}),
    ("o_cls", {"o_cls": PROC["o_cls"][:1].copy()}),
    ("has_main", {"has_main": np.zeros(2, np.int8)}),
    ("p_off", {"p_off": np.zeros(3, np.int64)}),
    ("p_level", {"p_level": np.zeros(4, np.int8)}),
    ("p_full", {k: np.zeros(4, PROC[k].dtype) for k in ("p_full", "p_base", "p_class", "p_level")}),
    ("p_full", {k: np.zeros(6, PROC[k].dtype) for k in ("p_full", "p_base", "p_class", "p_level")}),
])
def test_proc_csr_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        proc_csr(**_with(PROC, **change))


CODES = {
    "dx_idx": np.array([0, -1, 1], np.int32), "sub_u": np.array([4, -1], np.int32), "cat_u": np.array([7, 8], np.int32),
    "valid_u": np.array([1, 0], np.int8), "excl_u": np.array([0, 1], np.int8), "rejected": np.zeros(3, np.uint8),
    "age": np.array([30, 0, -1], np.int32), "age_days": np.array([-1, 20, -1], np.int32),
    "invalid_dx": 3, "missing": 1, "kept": 127,
    "sub_id": np.zeros(3, np.int32), "cat": np.zeros(3, np.int32), "pre_reason": np.zeros(3, np.int8),
    "excluded": np.zeros(3, np.int8), "age_key": np.zeros(3, np.int32),
}


def test_case_codes_valid_call():
    a = _with(CODES)
    case_codes(**a)
    assert a["sub_id"].tolist() == [4, -1, -1] and a["age_key"].tolist() == [30 * 365, 20, -1]


@pytest.mark.parametrize("name, change", [
    ("dx_idx", {"dx_idx": _set(CODES["dx_idx"], 2, 2)}),
    ("dx_idx", {"dx_idx": _set(CODES["dx_idx"], 1, -2)}),
    ("dx_idx", {"dx_idx": _set(CODES["dx_idx"], 0, I32.max)}),
    ("cat_u", {"cat_u": CODES["cat_u"][:1].copy()}),
    ("valid_u", {"valid_u": np.zeros(3, np.int8)}),
    ("excl_u", {"excl_u": np.zeros(1, np.int8)}),
    ("rejected", {"rejected": np.zeros(2, np.uint8)}),
    ("age", {"age": np.zeros(4, np.int32)}),
    ("age_days", {"age_days": np.zeros(2, np.int32)}),
    ("sub_id", {"sub_id": np.zeros(2, np.int32)}),
    ("age_key", {"age_key": np.zeros(4, np.int32)}),
])
def test_case_codes_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        case_codes(**_with(CODES, **change))


SEC = {
    "d_idx": np.array([0, -1, 1], np.int32), "cat_u": np.array([2, -1], np.int32), "w_u": np.array([1, 0], np.int32),
    "sev_u": np.array([3, 0], np.int8), "d_cat": np.zeros(3, np.int32), "d_w": np.zeros(3, np.int32),
    "d_sev": np.zeros(3, np.int8),
}


def test_secondary_codes_valid_call():
    a = _with(SEC)
    secondary_codes(**a)
    assert a["d_cat"].tolist() == [2, -1, -1] and a["d_sev"].tolist() == [3, 0, 0]


@pytest.mark.parametrize("name, change", [
    ("d_idx", {"d_idx": _set(SEC["d_idx"], 2, 2)}),
    ("d_idx", {"d_idx": _set(SEC["d_idx"], 1, -2)}),
    ("w_u", {"w_u": np.zeros(1, np.int32)}),
    ("sev_u", {"sev_u": np.zeros(3, np.int8)}),
    ("d_cat", {"d_cat": np.zeros(2, np.int32)}),
    ("d_sev", {"d_sev": np.zeros(4, np.int8)}),
])
def test_secondary_codes_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        secondary_codes(**_with(SEC, **change))


# --------------------------------------------------------------------------- scoring and sums

THRESH = np.array([0.0, 0.5, 2.0, 3.0])
SCORE = {
    "kind": np.array([0, 1, 2], np.int8), "base_score": np.array([0.0, 100.0, 50.0]),
    "aux_coef": np.ones(3), "level_coef": np.ones(3), "total_cost_fen": np.array([0, 1000, 500], np.int64),
    "ref_fen": np.array([0, 1000, 1000], np.int64), "level": np.array([1, 2, 3], np.int8),
    "low_ratio": THRESH, "high_ratio": THRESH + 0.1, "extreme_ratio": THRESH + 1.0,
    "high_formula": 0, "apply_coef_to_outliers": False, "blank_factor": 1.0, "extreme_rule": 0,
    "low_inclusive": False,
    "high_inclusive": False,
    "ratio_out": np.zeros(3), "deviation_out": np.zeros(3, np.int8), "points_e4_out": np.zeros(3, np.int64),
}


def test_score_cases_valid_call():
    a = _with(SCORE)
    score_cases(**a)
    assert a["points_e4_out"].tolist() == [0, 1_000_000, 250_000]


@pytest.mark.parametrize("name, change", [
    ("kind", {"kind": _set(SCORE["kind"], 1, 3)}),
    ("kind", {"kind": _set(SCORE["kind"], 1, -1)}),
    ("base_score", {"base_score": np.zeros(2)}),
    ("aux_coef", {"aux_coef": np.zeros(4)}),
    ("level_coef", {"level_coef": np.zeros(2)}),
    ("total_cost_fen", {"total_cost_fen": np.zeros(2, np.int64)}),
    ("ref_fen", {"ref_fen": np.zeros(4, np.int64)}),
    ("level", {"level": np.zeros(2, np.int8)}),
    ("low_ratio", {"low_ratio": THRESH[:3].copy()}),
    ("high_ratio", {"high_ratio": np.append(THRESH, 9.0)}),
    ("extreme_ratio", {"extreme_ratio": np.zeros(0)}),
    ("ratio_out", {"ratio_out": np.zeros(2)}),
    ("deviation_out", {"deviation_out": np.zeros(2, np.int8)}),
    ("points_e4_out", {"points_e4_out": np.zeros(4, np.int64)}),
])
def test_score_cases_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        score_cases(**_with(SCORE, **change))


LABELS = np.array([0, 1, -1, 1], np.int32)
VALUES = np.array([5, 6, 7, 8], np.int64)


def test_sums_by_label_valid_call():
    out, cnt = np.zeros(2, np.int64), np.zeros(2, np.int64)
    sum_by_label(LABELS, VALUES, out)
    count_by_label(LABELS, cnt)
    assert out.tolist() == [5, 14] and cnt.tolist() == [1, 2]


@pytest.mark.parametrize("labels", [_set(LABELS, 3, 2), _set(LABELS, 0, -2), _set(LABELS, 0, I32.max),
                                    _set(LABELS, 0, I32.min)])
def test_sums_by_label_reject_out_of_range_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        sum_by_label(labels, VALUES, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="labels"):
        count_by_label(labels, np.zeros(2, np.int64))


@pytest.mark.parametrize("values", [VALUES[:3].copy(), np.append(VALUES, 1)])
def test_sum_by_label_rejects_mismatched_values(values):
    with pytest.raises(ValueError, match="values"):
        sum_by_label(LABELS, values, np.zeros(2, np.int64))


def test_sum_by_label_into_empty_out():
    with pytest.raises(ValueError, match="labels"):
        sum_by_label(LABELS, VALUES, np.zeros(0, np.int64))
    out = np.zeros(0, np.int64)
    sum_by_label(np.full(4, -1, np.int32), VALUES, out)  # every row skipped: fine


# --------------------------------------------------------------------------- benefits

CAP = {
    "order": np.array([0, 2, 1], np.int64), "patient": np.array([0, 1, 0], np.int64),
    "raw_fen": np.array([100, 50, 100], np.int64), "cap_fen": np.array([150, 150, 150], np.int64),
    "out_fen": np.zeros(3, np.int64), "out_reached": np.zeros(3, np.int8),
}


def test_accumulate_cap_valid_call():
    a = _with(CAP)
    accumulate_cap(**a)
    assert a["out_fen"].tolist() == [100, 50, 50] and a["out_reached"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("name, change", [
    ("order", {"order": _set(CAP["order"], 1, 3)}),
    ("order", {"order": _set(CAP["order"], 1, -1)}),
    ("order", {"order": _set(CAP["order"], 0, I64.max)}),
    ("raw_fen", {"raw_fen": np.zeros(2, np.int64)}),
    ("cap_fen", {"cap_fen": np.zeros(4, np.int64)}),
    ("out_fen", {"out_fen": np.zeros(2, np.int64)}),
    ("out_reached", {"out_reached": np.zeros(2, np.int8)}),
])
def test_accumulate_cap_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        accumulate_cap(**_with(CAP, **change))


# --------------------------------------------------------------------------- money

TEXT = {
    "data": np.frombuffer(b"1.502x", np.uint8).copy(), "offsets": np.array([0, 4, 5, 6], np.int64),
    "valid": np.ones(3, np.uint8), "out": np.zeros(3, np.int64), "status": np.zeros(3, np.int8),
}


def test_parse_fen_valid_call():
    a = _with(TEXT)
    parse_fen(**a)
    assert a["out"].tolist() == [150, 200, 0] and a["status"].tolist() == [0, 0, 2]


@pytest.mark.parametrize("name, change", [
    ("offsets", {"offsets": np.array([0, 4, 5, 7], np.int64)}),
    ("offsets", {"offsets": np.array([0, 5, 4, 6], np.int64)}),
    ("offsets", {"offsets": np.array([-1, 4, 5, 6], np.int64)}),
    ("offsets", {"offsets": np.array([0, 4, 5, I64.max], np.int64)}),
    ("offsets", {"offsets": np.array([0, 4, 5], np.int64)}),
    ("valid", {"valid": np.ones(2, np.uint8)}),
    ("status", {"status": np.zeros(4, np.int8)}),
])
def test_parse_fen_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        parse_fen(**_with(TEXT, **change))


def test_parse_fen_null_rows_need_no_offsets():
    a = _with(TEXT, offsets=np.array([0, 4, 5, 99], np.int64), valid=np.array([1, 1, 0], np.uint8))
    parse_fen(**a)  # the bad range is on a null row, never read
    assert a["status"].tolist() == [0, 0, 1]


DEC = {
    "words": np.array([150, 0, -20, -1, 7, 0], np.int64), "offset": 0, "mult": 1,
    "valid": np.ones(3, np.uint8), "out": np.zeros(3, np.int64), "status": np.zeros(3, np.int8),
}


def test_decimal_fen_valid_call():
    a = _with(DEC)
    decimal_fen(**a)
    assert a["out"].tolist() == [150, -20, 7] and a["status"].tolist() == [0, 3, 0]
    b = _with(DEC, offset=1, valid=np.ones(2, np.uint8), out=np.zeros(2, np.int64), status=np.zeros(2, np.int8))
    decimal_fen(**b)
    assert b["out"].tolist() == [-20, 7]


@pytest.mark.parametrize("name, change", [
    ("words", {"offset": 1}),
    ("words", {"words": np.zeros(5, np.int64)}),
    ("offset", {"offset": -1}),
    ("mult", {"mult": 0}),
    ("mult", {"mult": -10}),
    ("valid", {"valid": np.ones(2, np.uint8)}),
    ("status", {"status": np.zeros(2, np.int8)}),
])
def test_decimal_fen_rejects(name, change):
    with pytest.raises(ValueError, match=name):
        decimal_fen(**_with(DEC, **change))


# --------------------------------------------------------------------------- validate

STR = {"data": np.frombuffer(b"abcd", np.uint8).copy(), "offsets": np.array([0, 1, 2, 4], np.int64),
       "valid": np.ones(3, np.uint8)}
BAD_OFFSETS = [np.array([0, 1, 2, 5], np.int64), np.array([0, 2, 1, 4], np.int64), np.array([-1, 1, 2, 4], np.int64),
               np.array([0, I64.max, 2, 4], np.int64), np.array([0, 1, 2, I64.min], np.int64)]


def test_seen_set_rejects_and_remembers_nothing():
    seen = SeenSet()
    for offsets in BAD_OFFSETS:
        with pytest.raises(ValueError, match="offsets"):
            seen.mark(STR["data"], offsets, STR["valid"], np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="offsets"):
        seen.mark(STR["data"], STR["offsets"][:3].copy(), STR["valid"], np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="valid"):
        seen.mark(STR["data"], STR["offsets"], np.ones(2, np.uint8), np.zeros(3, np.uint8))
    assert len(seen) == 0
    out = np.zeros(3, np.uint8)
    seen.mark(STR["data"], STR["offsets"], STR["valid"], out)
    assert len(seen) == 3 and out.tolist() == [0, 0, 0]


@pytest.mark.parametrize("offsets", BAD_OFFSETS)
def test_needs_trim_and_split_codes_reject_bad_offsets(offsets):
    with pytest.raises(ValueError, match="offsets"):
        needs_trim(STR["data"], offsets, STR["valid"])
    with pytest.raises(ValueError, match="offsets"):
        split_codes(STR["data"], offsets, STR["valid"])


def test_needs_trim_and_split_codes_reject_mismatched_lengths():
    for valid in (np.ones(2, np.uint8), np.ones(4, np.uint8)):
        with pytest.raises(ValueError, match="offsets"):
            needs_trim(STR["data"], STR["offsets"], valid)
        with pytest.raises(ValueError, match="offsets"):
            split_codes(STR["data"], STR["offsets"], valid)
    with pytest.raises(ValueError, match="offsets"):
        split_codes(STR["data"], np.zeros(0, np.int64), np.ones(0, np.uint8))


def test_needs_trim_and_split_codes_valid_calls():
    assert needs_trim(**STR) is False
    data, offsets, counts = split_codes(**STR)
    assert bytes(data) == b"abcd" and counts.tolist() == [1, 1, 1]
    assert split_codes(np.zeros(1, np.uint8), np.zeros(1, np.int64), np.ones(0, np.uint8))[2].tolist() == []
