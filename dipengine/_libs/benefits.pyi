"""Stubs of the compiled kernels. Every function raises ``ValueError`` (naming the argument) when
array lengths disagree or an index, label or offset is out of range; see ``cext/benefits.pyx``."""

import numpy as np
import numpy.typing as npt

def accumulate_cap(
    order: npt.NDArray[np.int64],
    patient: npt.NDArray[np.int64],
    raw_fen: npt.NDArray[np.int64],
    cap_fen: npt.NDArray[np.int64],
    out_fen: npt.NDArray[np.int64],
    out_reached: npt.NDArray[np.int8],
) -> None: ...
