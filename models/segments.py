"""Customer segments by k-prototypes (paper 004): numeric features plus rating, industry, legal form.

- :func:`elbow` fits k = 2..10 and records the cost; :func:`knee` picks k as the point
  of the cost curve farthest from the chord joining its first and last points (after
  scaling both axes to [0, 1]; the "kneedle" rule).
- :func:`fit_segments` fits the chosen k and names the segments from their profiles:
  segments are ranked by mean default probability (lowest first). With k = 4 the best is
  ``high-end`` and the worst ``low-end``; of the middle two, the one with the higher
  median profit growth is ``potential`` and the other ``mid-end``. Other k give
  ``tier-1`` .. ``tier-k`` in the same order.
- :meth:`Segmenter.assign` puts a new enterprise in the nearest prototype under the
  k-prototypes distance: squared Euclidean over numeric + ``gamma`` x categorical mismatches.
- :meth:`Segmenter.aligned_to` keeps labels stable across refits: the new prototypes are
  matched to the old ones (Hungarian assignment on the same distance) and take their names.

Examples
--------
>>> import numpy as np
>>> seg = Segmenter(numeric_columns=("x",), prototypes_numeric=((0.0,), (1.0,)),
...     prototypes_categorical=(("A", "m", "f"), ("D", "m", "f")), gamma=0.5, names=("good", "bad"))
>>> seg.assign(np.array([[0.9], [0.2]]), [("D", "m", "f"), ("D", "m", "f")])
['bad', 'good']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

SEGMENT_CATEGORICAL: tuple[str, ...] = ("rating", "industry", "legal_form")


@dataclass(frozen=True, slots=True)
class Segmenter:
    """Prototypes (numeric part, categorical part), gamma, and one name per segment."""

    numeric_columns: tuple[str, ...]
    prototypes_numeric: tuple[tuple[float, ...], ...]
    prototypes_categorical: tuple[tuple[str, ...], ...]
    gamma: float
    names: tuple[str, ...]

    def distances(self, numeric: np.ndarray, categorical: Sequence[Sequence[str]]) -> np.ndarray:
        """k-prototypes distance of each row to each prototype, shape (n, k)."""
        protos = np.asarray(self.prototypes_numeric, dtype=np.float64)  # (k, d)
        x = np.asarray(numeric, dtype=np.float64)  # (n, d)
        num = ((x[:, None, :] - protos[None, :, :]) ** 2).sum(axis=2)
        cats = np.asarray([list(c) for c in categorical], dtype=object).reshape(len(x), -1)
        pcat = np.asarray(self.prototypes_categorical, dtype=object)
        mismatch = (cats[:, None, :] != pcat[None, :, :]).sum(axis=2)
        return np.asarray(num + self.gamma * mismatch)

    def assign_index(self, numeric: np.ndarray, categorical: Sequence[Sequence[str]]) -> np.ndarray:
        """Index of the nearest prototype per row (ties go to the lowest index)."""
        return np.asarray(np.argmin(self.distances(numeric, categorical), axis=1))

    def assign(self, numeric: np.ndarray, categorical: Sequence[Sequence[str]]) -> list[str]:
        """Name of the nearest segment per row."""
        return [self.names[i] for i in self.assign_index(numeric, categorical)]

    def aligned_to(self, previous: Segmenter) -> Segmenter:
        """These prototypes reordered and renamed to match ``previous`` (same k and columns)."""
        if len(previous.names) != len(self.names) or previous.numeric_columns != self.numeric_columns:
            return self
        cost = previous.distances(np.asarray(self.prototypes_numeric), self.prototypes_categorical)  # (new, old)
        rows, cols = linear_sum_assignment(cost)
        order = [int(r) for _, r in sorted(zip(cols, rows, strict=True))]  # new index for each old slot
        return Segmenter(
            self.numeric_columns,
            tuple(self.prototypes_numeric[i] for i in order),
            tuple(self.prototypes_categorical[i] for i in order),
            self.gamma,
            previous.names,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(SEGMENT_CATEGORICAL),
            "prototypes_numeric": [list(p) for p in self.prototypes_numeric],
            "prototypes_categorical": [list(p) for p in self.prototypes_categorical],
            "gamma": self.gamma,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segmenter:
        return cls(
            tuple(data["numeric_columns"]),
            tuple(tuple(float(v) for v in p) for p in data["prototypes_numeric"]),
            tuple(tuple(str(v) for v in p) for p in data["prototypes_categorical"]),
            float(data["gamma"]),
            tuple(data["names"]),
        )


def _fit_kprototypes(numeric: np.ndarray, categorical: Sequence[Sequence[str]], k: int, seed: int,
                     gamma: float | None, n_init: int) -> tuple[Any, np.ndarray]:
    from kmodes.kprototypes import KPrototypes

    x = np.hstack([np.asarray(numeric, dtype=object), np.asarray([list(c) for c in categorical], dtype=object)])
    d = numeric.shape[1]
    model = KPrototypes(n_clusters=k, init="Cao", n_init=n_init, gamma=gamma, random_state=seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = model.fit_predict(x, categorical=list(range(d, x.shape[1])))
    return model, np.asarray(labels)


def elbow(numeric: np.ndarray, categorical: Sequence[Sequence[str]], seed: int,
          ks: Sequence[int] = tuple(range(2, 11)), n_init: int = 3) -> dict[int, float]:
    """k-prototypes cost for each k (gamma fixed from the data so costs are comparable)."""
    gamma = 0.5 * float(np.mean(np.asarray(numeric, dtype=np.float64).std(axis=0)))
    return {int(k): float(_fit_kprototypes(numeric, categorical, k, seed, gamma, n_init)[0].cost_) for k in ks}


def knee(costs: Mapping[int, float]) -> int:
    """The k farthest from the chord of the scaled cost curve (max-distance knee rule).

    Examples
    --------
    >>> knee({2: 100.0, 3: 60.0, 4: 30.0, 5: 25.0, 6: 22.0, 7: 20.0})
    4
    """
    ks = np.array(sorted(costs), dtype=np.float64)
    cs = np.array([costs[int(k)] for k in ks], dtype=np.float64)
    if len(ks) < 3 or cs.max() == cs.min():
        return int(ks[0])
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (cs - cs.min()) / (cs.max() - cs.min())
    # distance below the chord from (0, y0) to (1, y_end)
    chord = y[0] + (y[-1] - y[0]) * x
    return int(ks[int(np.argmax(chord - y))])


def name_segments(default_rate: Sequence[float], profit_growth: Sequence[float]) -> tuple[str, ...]:
    """Names from profiles (see module doc).

    Examples
    --------
    >>> name_segments([0.5, 0.05, 0.2, 0.1], [0.0, 0.1, 0.9, 0.2])
    ('low-end', 'high-end', 'potential', 'mid-end')
    """
    k = len(default_rate)
    order = list(np.argsort(np.asarray(default_rate), kind="stable"))
    names = [""] * k
    if k == 4:
        names[order[0]], names[order[3]] = "high-end", "low-end"
        mid = sorted(order[1:3], key=lambda i: -float(profit_growth[i]))
        names[mid[0]], names[mid[1]] = "potential", "mid-end"
    else:
        for rank, i in enumerate(order, start=1):
            names[i] = f"tier-{rank}"
    return tuple(names)


def fit_segments(numeric: np.ndarray, categorical: Sequence[Sequence[str]], columns: Sequence[str], k: int,
                 default_probability: np.ndarray, profit_growth: np.ndarray, seed: int, n_init: int = 3,
                 previous: Segmenter | None = None) -> tuple[Segmenter, np.ndarray, list[dict[str, Any]]]:
    """Fit k prototypes, name them, and return (segmenter, labels, profiles).

    ``categorical`` rows are ``(rating, industry, legal_form)``; ``default_probability`` and
    ``profit_growth`` (raw, may hold NaN) only name and profile the segments.
    """
    numeric = np.asarray(numeric, dtype=np.float64)
    model, _ = _fit_kprototypes(numeric, categorical, k, seed, None, n_init)
    centroids = model.cluster_centroids_
    d = numeric.shape[1]
    seg = Segmenter(
        tuple(columns),
        tuple(tuple(float(v) for v in row[:d]) for row in centroids),
        tuple(tuple(str(v) for v in row[d:]) for row in centroids),
        float(model.gamma),
        tuple(f"segment-{i}" for i in range(k)),
    )
    labels = seg.assign_index(numeric, categorical)
    pg = np.asarray(profit_growth, dtype=np.float64)
    rate = [float(np.mean(default_probability[labels == i])) if np.any(labels == i) else 1.0 for i in range(k)]
    growth = [float(np.nanmedian(pg[labels == i])) if np.any((labels == i) & np.isfinite(pg)) else 0.0 for i in range(k)]
    seg = Segmenter(seg.numeric_columns, seg.prototypes_numeric, seg.prototypes_categorical, seg.gamma,
                    name_segments(rate, growth))
    if previous is not None:
        seg = seg.aligned_to(previous)
        labels = seg.assign_index(numeric, categorical)
    profiles = []
    cats = [list(c) for c in categorical]
    for i, name in enumerate(seg.names):
        member = labels == i
        ratings = [c[0] for c, m in zip(cats, member, strict=True) if m]
        profiles.append({
            "segment": name,
            "n": int(member.sum()),
            "mean_default_probability": float(np.mean(default_probability[member])) if member.any() else float("nan"),
            "median_profit_growth": float(np.nanmedian(pg[member])) if (member & np.isfinite(pg)).any() else float("nan"),
            "ratings": {r: ratings.count(r) for r in ("A", "B", "C", "D")},
            "prototype_categorical": list(seg.prototypes_categorical[i]),
        })
    return seg, labels, profiles
