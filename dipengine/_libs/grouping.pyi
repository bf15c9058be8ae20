from typing import Any

import numpy as np
import numpy.typing as npt

class CompiledRules:
    """A rule set's flat arrays, checked once and held read-only (``grouping.pxd``).

    Raises ``ValueError`` naming the first array whose length, offsets or indices do not fit.
    """

    n_groups: int
    n_sub: int
    n_cat: int
    n_bands: int
    blank: int
    cci1: int
    cci2: int
    cci3: int
    match_all: int
    sev_los: int
    death_mode: int
    cons_max_class: int
    cons_max_level: int
    main_any: int
    n_tie: int
    n_proc: int
    prefix: bool
    def __init__(
        self, *,
        sub_off: npt.NDArray[np.int64], sub_cand: npt.NDArray[np.int32], sub_cons: npt.NDArray[np.int32],
        g_type: npt.NDArray[np.int8], g_rank: npt.NDArray[np.int8], g_avg_fen: npt.NDArray[np.int64],
        g_term_off: npt.NDArray[np.int64], term_off: npt.NDArray[np.int64], term_codes: npt.NDArray[np.int32],
        comp_lookup: npt.NDArray[np.int32], blank: int,
        aux_off: npt.NDArray[np.int64], aux_sub: npt.NDArray[np.int8], aux_coef: npt.NDArray[np.float64],
        band_lo: npt.NDArray[np.int32], band_hi: npt.NDArray[np.int32], cci_cuts: npt.NDArray[np.int32],
        match_all: int, sev_los: int, death_mode: int, cons_max_class: int, cons_max_level: int,
        comp_rank: npt.NDArray[np.int8], tie_order: npt.NDArray[np.int8], proc_parent: npt.NDArray[np.int32],
        main_any: int,
    ) -> None: ...
    def as_dict(self) -> dict[str, Any]: ...

def group_cases(
    rules: CompiledRules,
    pre_reason: npt.NDArray[np.int8], excluded: npt.NDArray[np.int8], sub_id: npt.NDArray[np.int32],
    cat: npt.NDArray[np.int32], p_off: npt.NDArray[np.int64], p_full: npt.NDArray[np.int32],
    p_base: npt.NDArray[np.int32], p_class: npt.NDArray[np.int8], p_level: npt.NDArray[np.int8],
    has_main: npt.NDArray[np.int8], total_fen: npt.NDArray[np.int64], dmode: npt.NDArray[np.int8],
    los: npt.NDArray[np.int32], age_key: npt.NDArray[np.int32], d_off: npt.NDArray[np.int64],
    d_cci_cat: npt.NDArray[np.int32], d_cci_w: npt.NDArray[np.int32], d_sev: npt.NDArray[np.int8],
    out_group: npt.NDArray[np.int32], out_path: npt.NDArray[np.int8], out_reason: npt.NDArray[np.int8],
    out_class: npt.NDArray[np.int8], out_aux: npt.NDArray[np.int8], out_coef: npt.NDArray[np.float64],
    n_threads: int = ...,
) -> None: ...

def proc_csr(
    m_idx: npt.NDArray[np.int32], m_full: npt.NDArray[np.int32], m_base: npt.NDArray[np.int32],
    m_cls: npt.NDArray[np.int8], m_lvl: npt.NDArray[np.int8],
    o_len: npt.NDArray[np.int64], o_idx: npt.NDArray[np.int32], o_full: npt.NDArray[np.int32],
    o_base: npt.NDArray[np.int32], o_cls: npt.NDArray[np.int8], o_lvl: npt.NDArray[np.int8],
    p_off: npt.NDArray[np.int64], has_main: npt.NDArray[np.int8], p_full: npt.NDArray[np.int32],
    p_base: npt.NDArray[np.int32], p_class: npt.NDArray[np.int8], p_level: npt.NDArray[np.int8],
) -> None: ...
def case_codes(
    dx_idx: npt.NDArray[np.int32], sub_u: npt.NDArray[np.int32], cat_u: npt.NDArray[np.int32],
    valid_u: npt.NDArray[np.int8], excl_u: npt.NDArray[np.int8], rejected: npt.NDArray[np.uint8],
    age: npt.NDArray[np.int32], age_days: npt.NDArray[np.int32],
    invalid_dx: int, missing: int, kept: int,
    sub_id: npt.NDArray[np.int32], cat: npt.NDArray[np.int32], pre_reason: npt.NDArray[np.int8],
    excluded: npt.NDArray[np.int8], age_key: npt.NDArray[np.int32],
) -> None: ...
def secondary_codes(
    d_idx: npt.NDArray[np.int32], cat_u: npt.NDArray[np.int32], w_u: npt.NDArray[np.int32],
    sev_u: npt.NDArray[np.int8], d_cat: npt.NDArray[np.int32], d_w: npt.NDArray[np.int32],
    d_sev: npt.NDArray[np.int8],
) -> None: ...
