"""Churn curves and the profit formula, checked against the table and by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from allocator import (AllocationInputError, ChurnCurves, expected_interest_yuan, expected_loss_yuan,
                       expected_profit_yuan, profit_per_yuan, return_per_yuan)
from allocator.churn import pool_adjacent_violators
from tests.unit.allocator.strategies import CHURN_CSV, real_curves


def test_interpolation_hits_every_observed_point_and_is_linear_between() -> None:
    table = pd.read_csv(CHURN_CSV)
    curves = real_curves()
    assert len(curves.rates) == 29
    for rating in "ABC":
        for rate, churn in zip(table["rate"], table[f"churn_{rating}"]):
            assert curves.churn(rate, rating) == pytest.approx(churn, abs=1e-15)
        mid = (table["rate"][5] + table["rate"][6]) / 2
        expected = (table[f"churn_{rating}"][5] + table[f"churn_{rating}"][6]) / 2
        assert curves.churn(mid, rating) == pytest.approx(expected, abs=1e-12)
        assert curves.retention(mid, rating) == pytest.approx(1 - expected, abs=1e-12)


def test_raw_curve_is_not_monotone_and_monotone_fit_is() -> None:
    raw = np.asarray(real_curves().churn_by_rating["A"])
    fitted = np.asarray(real_curves(monotone=True).churn_by_rating["A"])
    assert np.any(np.diff(raw) < 0)  # A at 0.1105 vs 0.1145 (DATA.md)
    assert np.all(np.diff(fitted) >= 0)
    # isotonic fit: equal where the raw curve was already increasing around the point, pooled elsewhere
    assert fitted[0] == raw[0]
    i = list(real_curves().rates).index(0.1105)
    assert fitted[i] == pytest.approx((raw[i] + raw[i + 1]) / 2)
    assert fitted.sum() == pytest.approx(raw.sum())  # PAVA preserves the total


def test_pool_adjacent_violators_by_hand() -> None:
    assert pool_adjacent_violators([3.0, 1.0, 2.0]).tolist() == [2.0, 2.0, 2.0]
    assert pool_adjacent_violators([1.0, 2.0, 3.0]).tolist() == [1.0, 2.0, 3.0]


def test_d_is_not_lendable_and_bad_inputs_raise() -> None:
    curves = real_curves()
    assert curves.churn(0.05, "D") == 1.0 and curves.retention(0.05, "D") == 0.0
    with pytest.raises(AllocationInputError, match="unknown rating"):
        curves.churn(0.05, "E")
    with pytest.raises(AllocationInputError, match="outside the churn table"):
        curves.churn(0.2, "A")
    with pytest.raises(AllocationInputError, match="lacks column"):
        ChurnCurves.from_frame(pd.DataFrame({"rate": [0.04, 0.05], "churn_A": [0, 0.1]}))
    with pytest.raises(AllocationInputError, match="strictly increasing"):
        ChurnCurves(rates=(0.05, 0.04), churn_by_rating={"A": (0, 0), "B": (0, 0), "C": (0, 0)})
    with pytest.raises(AllocationInputError, match=r"outside \[0, 1\]"):
        ChurnCurves(rates=(0.04, 0.05), churn_by_rating={"A": (0, 1.5), "B": (0, 0), "C": (0, 0)})


def test_knot_lines_reproduce_the_interpolation() -> None:
    curves = real_curves()
    a, b = curves.knot_lines()
    x = curves.observed_rates
    r = (x[3] + x[4]) / 2
    for j, rating in enumerate("ABC"):
        assert a[j, 3] + b[j, 3] * r == pytest.approx(curves.retention(r, rating))
    assert np.all(a[3] == 0) and np.all(b[3] == 0)


def test_profit_formula_by_hand() -> None:
    # 800 000 yuan at 6 %, p = 0.05, retention 0.7, lgd 1:
    # interest 0.7 * 0.06 * 800000 * 0.95 = 31 920; loss 0.7 * 0.05 * 800000 = 28 000; profit 3 920
    assert expected_interest_yuan(800_000, 0.06, 0.05, 0.7) == pytest.approx(31_920)
    assert expected_loss_yuan(800_000, 0.05, 0.7) == pytest.approx(28_000)
    assert expected_profit_yuan(800_000, 0.06, 0.05, 0.7) == pytest.approx(3_920)
    assert profit_per_yuan(0.06, 0.05, 0.7) == pytest.approx(3_920 / 800_000)
    # lgd 0.45: loss 12 600, profit 19 320
    assert expected_profit_yuan(800_000, 0.06, 0.05, 0.7, lgd=0.45) == pytest.approx(19_320)
    assert return_per_yuan([0, 800_000], [0.0, 3_920.0]).tolist() == pytest.approx([0.0, 0.0049])


def test_profit_is_vectorised() -> None:
    z = np.array([100_000, 500_000, 1_000_000])
    p = np.array([0.0, 0.1, 1.0])
    out = expected_profit_yuan(z, 0.05, p, 0.5)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([2_500.0, 0.5 * (0.05 * 0.9 - 0.1) * 500_000, -500_000.0])
