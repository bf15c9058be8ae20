# cython: language_level=3
"""Argument checks shared by the kernels (``cimport``-ed; inline, so compiled into each module).

Every public kernel checks, once per call, that its arrays' lengths agree (:func:`check_len`) and
that the label, index and offset arrays it follows stay in range (folded into its loop, an error
flag raised after it). The ``*_error`` helpers run only on the error path: they locate the first
offending element with numpy so the ``ValueError`` names the argument, the position and the value.
"""
from libc.stdint cimport int64_t


cdef inline bint offsets_ok(const int64_t[::1] offsets, int64_t total) noexcept nogil:
    """Do ``offsets`` never decrease and stay inside ``[0, total]`` (one pass, no branch taken
    on good data)?"""
    cdef Py_ssize_t r, n = offsets.shape[0]
    cdef bint ok = True
    if n == 0:
        return True
    ok = offsets[0] >= 0 and offsets[n - 1] <= total
    for r in range(n - 1):
        ok &= offsets[r + 1] >= offsets[r]
    return ok


cdef inline int check_len(str name, Py_ssize_t got, Py_ssize_t want, str what) except -1:
    """Raise ``ValueError`` unless array ``name`` has ``want`` elements (``what`` says why)."""
    if got != want:
        raise ValueError(f"{name} has length {got}, expected {want} ({what})")
    return 0


cdef inline object range_error(str name, object values, long long lo, long long hi):
    """``ValueError`` naming the first element of ``values`` outside ``[lo, hi]``."""
    import numpy as np

    a = np.asarray(values)
    bad = np.flatnonzero((a < lo) | (a > hi))
    if len(bad) == 0:  # not reached: the kernel saw one
        return ValueError(f"{name} holds a value outside [{lo}, {hi}]")
    k = int(bad[0])
    return ValueError(f"{name}[{k}] = {a[k]} is out of range [{lo}, {hi}]")


cdef inline object offsets_error(str name, object offsets, long long lo, long long hi, str what):
    """``ValueError`` naming the first pair ``offsets[r], offsets[r + 1]`` that is not an
    increasing range inside ``[lo, hi]`` (``what``: the array the offsets point into)."""
    import numpy as np

    a = np.asarray(offsets, dtype=np.int64)
    m = len(a) - 1
    bad = np.flatnonzero((a[:m] < lo) | (a[1:] < a[:m]) | (a[1:] > hi))
    if len(bad) == 0:  # not reached: the kernel saw one
        return ValueError(f"{name} is not an increasing range inside [{lo}, {hi}] ({what})")
    r = int(bad[0])
    return ValueError(f"{name}[{r}:{r + 2}] = ({a[r]}, {a[r + 1]}) is not an increasing range inside "
                      f"[{lo}, {hi}] ({what})")
