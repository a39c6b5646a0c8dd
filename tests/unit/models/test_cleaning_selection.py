from __future__ import annotations

import json

import numpy as np

from models.cleaning import Preprocessor
from models.selection import select_features


def test_preprocessor_uses_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 3))
    test = rng.normal(loc=100.0, size=(5, 3))  # far away: must not move the fitted parameters
    pre = Preprocessor.fit(train, ("a", "b", "c"))
    both = Preprocessor.fit(np.vstack([train, test]), ("a", "b", "c"))
    assert pre != both
    assert pre.fill == tuple(float(v) for v in np.median(train, axis=0))
    z = pre.transform(test)
    assert np.all(z == 1.0)  # clipped to the training range, not rescaled by test rows


def test_preprocessor_fills_gaps_clips_and_round_trips_json() -> None:
    x = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 7.0], [1e9, 6.0]])
    pre = Preprocessor.fit(x, ("a", "b"))
    z = pre.transform(x)
    assert not np.isnan(z).any()
    assert z[1, 1] == 0.0 and z[2, 1] == 1.0
    assert z[0, 1] == z[3, 1]  # the gap takes the training median (6.0)
    assert pre.upper[0] < 1e9  # the outlier is clipped by the MAD rule
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(x), z)


def test_constant_column_is_harmless() -> None:
    x = np.ones((10, 2))
    x[:, 1] = np.arange(10)
    z = Preprocessor.fit(x, ("c", "v")).transform(x)
    assert np.all(z[:, 0] == 0.0) and z[-1, 1] == 1.0


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((120, 8))
    x[:, 3] = x[:, 0] * 0.5 + 1e-9 * rng.random(120)  # collinear with column 0
    y = ((x[:, 0] + x[:, 1]) > 1.0).astype(int)
    return x, y


def test_selection_is_deterministic_and_drops_collinear() -> None:
    x, y = _data()
    cols = tuple("abcdefgh")
    first = select_features(x, y, cols, seed=3, n_runs=4)
    second = select_features(x, y, cols, seed=3, n_runs=4)
    assert first == second
    assert first.dropped_collinear == ("d",)
    assert set(first.selected[:2]) == {"a", "b"}  # the two informative columns rank first
    assert "d" not in first.selected
