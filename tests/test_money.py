from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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


# --------------------------------------------------------------------------- one value (issue 15, deliver 8)

from dipengine import money  # noqa: E402


@pytest.mark.parametrize("text, fen", [
    ("1.005", 101), ("2.675", 268), ("0.005", 1), ("0.0049", 0), ("-0.005", -1), ("-1.005", -101),
    (" 1,234.5 ", 123450), ("1e3", 100000), ("1.5E+2", 15000), (".5", 50), ("5.", 500), ("+7", 700),
    ("12345678.905", 1234567891), ("0", 0), ("100000000000", 10**13)])
def test_yuan_text_to_fen_exact_half_up(text, fen):
    assert money.yuan_text_to_fen(text) == fen


@pytest.mark.parametrize("text", ["", "  ", "abc", "1.2.3", "1e", "nan", "inf", "-", ".", "e5", "1_000", ",5",
                                  "1e99", "100000000000000"])
def test_yuan_text_to_fen_rejects(text):
    with pytest.raises(ValueError):
        money.yuan_text_to_fen(text)


def test_max_decimals():
    assert money.yuan_text_to_fen("12.30", max_decimals=2) == 1230
    with pytest.raises(ValueError, match="more than 2 decimals"):
        money.yuan_text_to_fen("1.005", max_decimals=2)
    assert money.yuan_value_to_fen(630000000, max_decimals=2) == 63_000_000_000
    assert money.yuan_value_to_fen(0.1, max_decimals=2) == 10
    with pytest.raises(ValueError):
        money.yuan_value_to_fen(0.125, max_decimals=2)


def test_float_and_value_conversions():
    # Before (rules.py, scoring.py, estimate.py, reference.py): floor(1.005 * 100 + 0.5) == 100.
    assert money.yuan_float_to_fen(1.005) == 101 and money.yuan_float_to_fen(2.675) == 268
    assert money.yuan_value_to_fen(Decimal("1.005")) == 101
    assert money.yuan_value_to_fen("1.005") == 101
    for bad in (True, None, float("nan"), float("inf"), Decimal("NaN"), [1]):
        with pytest.raises(ValueError):
            money.yuan_value_to_fen(bad)


@given(st.decimals(min_value=-10**9, max_value=10**9, places=4, allow_nan=False))
def test_text_parser_matches_column_parser_and_decimal(d):
    text = str(d)
    expected = int((d * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert money.yuan_text_to_fen(text) == expected
    col, status = yuan_to_fen(pa.array([text]))
    assert col[0] == expected and status[0] in (0, 3)


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_float_path_matches_column_path(x):
    assert money.yuan_float_to_fen(x) == yuan_to_fen(pa.array([x], pa.float64()))[0][0]


@given(st.integers(min_value=-10**15, max_value=10**15))
def test_fen_to_yuan_text_round_trips(f):
    assert money.yuan_text_to_fen(money.fen_to_yuan_text(f)) == f
    assert money.yuan_text_to_fen(money.fen_to_yuan_text(f, trim=True)) == f
    assert money.yuan_text_to_fen(money.format_yuan(f)) == f


def test_fen_to_yuan_text_forms():
    assert money.fen_to_yuan_text(101) == "1.01"
    assert money.fen_to_yuan_text(-5) == "-0.05"
    assert money.fen_to_yuan_text(1230, trim=True) == "12.3" and money.fen_to_yuan_text(1200, trim=True) == "12"
    assert money.fen_to_yuan_text(np.int64(7)) == "0.07"
    assert money.format_yuan(-123456789) == "-1,234,567.89"
    with pytest.raises(TypeError):
        money.fen_to_yuan_text(1.5)


def test_fen_to_decimal_is_exact():
    fen = np.array([0, 1, -1, 123456789012, -100], np.int64)
    from dipengine.money import fen_to_decimal

    arr = fen_to_decimal(fen, np.array([True, True, True, True, False]))
    assert arr.cast(pa.string()).to_pylist() == ["0.00", "0.01", "-0.01", "1234567890.12", None]
    assert str(pc.sum(arr).as_py()) == "1234567890.12"  # nulls skipped, exact
