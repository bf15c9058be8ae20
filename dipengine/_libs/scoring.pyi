"""Stubs of the compiled kernels. Every function raises ``ValueError`` (naming the argument) when
array lengths disagree or an index, label or offset is out of range; see ``cext/scoring.pyx``."""

import numpy as np
import numpy.typing as npt

def score_cases(
    kind: npt.NDArray[np.int8],
    base_score: npt.NDArray[np.float64],
    aux_coef: npt.NDArray[np.float64],
    level_coef: npt.NDArray[np.float64],
    total_cost_fen: npt.NDArray[np.int64],
    ref_fen: npt.NDArray[np.int64],
    level: npt.NDArray[np.int8],
    low_ratio: npt.NDArray[np.float64],
    high_ratio: npt.NDArray[np.float64],
    extreme_ratio: npt.NDArray[np.float64],
    high_formula: int,
    apply_coef_to_outliers: bool,
    blank_factor: float,
    extreme_rule: int,
    low_inclusive: bool,
    high_inclusive: bool,
    ratio_out: npt.NDArray[np.float64],
    deviation_out: npt.NDArray[np.int8],
    points_e4_out: npt.NDArray[np.int64],
) -> None: ...
def sum_by_label(
    labels: npt.NDArray[np.int32], values: npt.NDArray[np.int64], out: npt.NDArray[np.int64]
) -> None: ...
def count_by_label(labels: npt.NDArray[np.int32], out: npt.NDArray[np.int64]) -> None: ...
