from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, strategies as st

from dipengine.money import largest_remainder, round_half_up, yuan_to_fen


def fen(values):
    return yuan_to_fen(pa.array(values))


def test_text_amounts_are_exact():
    out, st_ = fen(["0.10", "0.20", "12345678.905", "0.005", "0.0049", " 1,234.5 ", "1e3", "1.5E+2"])
    assert out.tolist() == [10, 20, 1234567891, 1, 0, 123450, 100000, 15000]
    assert st_.tolist() == [0] * 8
    assert out[0] + out[1] == 30


def test_float_amounts_use_shortest_text():
    out, st_ = fen([0.1 + 0.2, 12345678.905, 0.125])
    assert out.tolist() == [30, 1234567891, 13]
    assert st_.tolist() == [0, 0, 0]


def test_bad_amounts_are_flagged_not_raised():
    out, st_ = fen(["-3", "abc", "", None, "1.2.3", "99999999999999999", "1e"])
    assert st_.tolist() == [3, 2, 1, 1, 2, 4, 2]
    assert out[0] == -300


def test_decimal_and_integer_columns():
    assert fen(pa.array([Decimal("1.23"), None], pa.decimal128(10, 2)))[0].tolist() == [123, 0]
    assert yuan_to_fen(pa.array([7, None]))[0].tolist() == [700, 0]


@given(st.decimals(min_value=0, max_value=10**9, places=4, allow_nan=False))
def test_matches_decimal_half_up(d):
    expected = int((d * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert fen([str(d)])[0][0] == expected


def test_round_half_up():
    assert round_half_up(np.array([0.5, 1.5, 2.4999, -0.5])).tolist() == [1, 2, 2, -1]


@given(st.lists(st.floats(min_value=0.001, max_value=1e6), min_size=1, max_size=50),
       st.integers(min_value=0, max_value=10**12))
def test_largest_remainder_adds_up(shares, total):
    parts = largest_remainder(np.array(shares), total)
    assert parts.sum() == total
    assert (parts >= 0).all()
    exact = np.array(shares) / sum(shares) * total
    assert np.all(np.abs(parts - exact) < 1.0 + 1e-6 * total)
