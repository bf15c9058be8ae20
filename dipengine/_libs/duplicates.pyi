"""Stubs of the compiled kernels. Every function raises ``ValueError`` (naming the argument) when
array lengths disagree or an offset is out of range; see ``cext/duplicates.pyx``."""

import numpy as np
import numpy.typing as npt

def partition_rows(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    valid: npt.NDArray[np.uint8],
    salt: int,
    order: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
) -> int: ...
