"""Stubs of the compiled kernels. Every function raises ``ValueError`` (naming the argument) when
array lengths disagree or an index, label or offset is out of range; see ``cext/money.pyx``."""

import numpy as np
import numpy.typing as npt

def parse_fen(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    valid: npt.NDArray[np.uint8],
    out: npt.NDArray[np.int64],
    status: npt.NDArray[np.int8],
) -> None: ...

def decimal_fen(
    words: npt.NDArray[np.int64],
    offset: int,
    mult: int,
    valid: npt.NDArray[np.uint8],
    out: npt.NDArray[np.int64],
    status: npt.NDArray[np.int8],
) -> None: ...
