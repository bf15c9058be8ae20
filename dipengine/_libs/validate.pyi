"""Stubs of the compiled kernels. Every function raises ``ValueError`` (naming the argument) when
array lengths disagree or an index, label or offset is out of range; see ``cext/validate.pyx``."""

import numpy as np
import numpy.typing as npt

class SeenSet:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def reserve(self, more_keys: int, more_bytes: int) -> None: ...
    def mark(
        self,
        data: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        valid: npt.NDArray[np.uint8],
        out: npt.NDArray[np.uint8],
    ) -> None: ...

def needs_trim(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    valid: npt.NDArray[np.uint8],
) -> bool: ...

def split_codes(
    data: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    valid: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int32]]: ...
