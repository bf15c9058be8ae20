"""Reason codes of contract §7, as small integers for kernels and strings for outputs.

Code 0 means "no reason" (the row is fine). The order is also the precedence when a row has
several defects: the first defect found in this order is the one reported.
"""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from dipengine.arrays import sparse_strings

OK = 0
MISSING_FIELD = 1
DUPLICATE_CASE = 2
BAD_VALUE = 3
BAD_DATES = 4
BAD_AMOUNT = 5
INVALID_DX = 6
INVALID_PROC = 7
UNKNOWN_HOSPITAL = 8
EXCLUDED_DX = 9
NO_GROUP = 10

NAMES = [
    None,
    "MISSING_FIELD",
    "DUPLICATE_CASE",
    "BAD_VALUE",
    "BAD_DATES",
    "BAD_AMOUNT",
    "INVALID_DX",
    "INVALID_PROC",
    "UNKNOWN_HOSPITAL",
    "EXCLUDED_DX",
    "NO_GROUP",
]
CODE = {name: i for i, name in enumerate(NAMES) if name}


@functools.cache
def _names() -> pa.Array:  # not at import: pa.array would import pandas
    return pa.array(NAMES, type=pa.string())


def to_strings(codes: np.ndarray) -> pa.Array:
    """int8 reason codes -> Arrow string array (null where the code is 0)."""
    codes = np.asarray(codes)
    rows = np.flatnonzero(codes)
    return sparse_strings(len(codes), rows, _names().take(pa.array(codes[rows].astype(np.int64))))
