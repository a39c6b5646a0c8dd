"""Customer churn against the loan rate, per rating (the bank's ``churn.csv``).

``churn(rate, rating)`` is the share of clients of that rating who go to another bank when
offered ``rate``; ``retention = 1 - churn`` is the chance the loan is taken at all. Between the
29 observed rates the curve is interpolated linearly. The raw curve is not monotone in a few
places (A at 0.1105 vs 0.1145); ``monotone=True`` replaces each rating's points by their
isotonic (non-decreasing) least-squares fit, computed with pool-adjacent-violators.

Rating D is not lent to: its churn is 1 and its retention 0 at every rate, so any expected
profit computed for D is 0 and every solver leaves D without a line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from allocator.errors import AllocationInputError

Rating = Literal["A", "B", "C", "D"]
RATINGS: tuple[str, ...] = ("A", "B", "C", "D")
LENDABLE_RATINGS: tuple[str, ...] = ("A", "B", "C")

FloatArray = npt.NDArray[np.float64]


def pool_adjacent_violators(values: npt.ArrayLike) -> FloatArray:
    """Non-decreasing least-squares fit of ``values`` (equal weights).

    Examples
    --------
    >>> pool_adjacent_violators([1.0, 3.0, 2.0, 4.0]).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    y = np.asarray(values, dtype=float)
    means: list[float] = []
    sizes: list[int] = []
    for v in y:
        means.append(float(v))
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = means[-2] * sizes[-2] + means[-1] * sizes[-1]
            size = sizes[-2] + sizes[-1]
            means[-2:] = [total / size]
            sizes[-2:] = [size]
    return np.repeat(np.asarray(means), sizes)


@dataclass(frozen=True, slots=True)
class ChurnCurves:
    """Churn rate against loan rate for ratings A, B and C.

    Parameters
    ----------
    rates
        The observed rates, strictly increasing.
    churn_by_rating
        For each of ``A``, ``B``, ``C`` the churn at each observed rate, in [0, 1].

    Examples
    --------
    >>> curves = ChurnCurves(rates=(0.04, 0.06), churn_by_rating={"A": (0.0, 0.2), "B": (0.0, 0.4), "C": (0.1, 0.5)})
    >>> round(curves.churn(0.05, "A"), 6), round(curves.retention(0.05, "B"), 6), curves.retention(0.05, "D")
    (0.1, 0.8, 0.0)
    """

    rates: tuple[float, ...]
    churn_by_rating: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=float)
        if rates.ndim != 1 or rates.size < 2:
            raise AllocationInputError("churn curves need at least two observed rates")
        if not np.all(np.isfinite(rates)) or np.any(np.diff(rates) <= 0):
            raise AllocationInputError("churn curve rates must be finite and strictly increasing")
        missing = [r for r in LENDABLE_RATINGS if r not in self.churn_by_rating]
        if missing:
            raise AllocationInputError(f"churn curves lack rating(s) {', '.join(missing)}")
        for rating in LENDABLE_RATINGS:
            values = np.asarray(self.churn_by_rating[rating], dtype=float)
            if values.shape != rates.shape:
                raise AllocationInputError(f"churn curve {rating} has {values.size} points for {rates.size} rates")
            if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
                raise AllocationInputError(f"churn curve {rating} has values outside [0, 1]")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, frame: Any, *, monotone: bool = False) -> ChurnCurves:
        """Build from a table with columns ``rate``, ``churn_A``, ``churn_B``, ``churn_C``.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"rate": [0.04, 0.05, 0.06], "churn_A": [0.0, 0.3, 0.2],
        ...                    "churn_B": [0.0, 0.1, 0.2], "churn_C": [0.0, 0.1, 0.3]})
        >>> ChurnCurves.from_frame(df, monotone=True).churn_by_rating["A"]
        (0.0, 0.25, 0.25)
        """
        columns = ["rate"] + [f"churn_{r}" for r in LENDABLE_RATINGS]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise AllocationInputError(f"churn table lacks column(s) {', '.join(missing)}")
        table = frame.sort_values("rate")
        rates = tuple(float(v) for v in table["rate"])
        churn: dict[str, tuple[float, ...]] = {}
        for rating in LENDABLE_RATINGS:
            values = np.asarray(table[f"churn_{rating}"], dtype=float)
            if monotone:
                values = pool_adjacent_violators(values)
            churn[rating] = tuple(float(v) for v in values)
        return cls(rates=rates, churn_by_rating=churn)

    @classmethod
    def from_csv(cls, path: str | Path, *, monotone: bool = False) -> ChurnCurves:
        """Read the bank's ``churn.csv`` (see :meth:`from_frame`)."""
        import pandas as pd

        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise AllocationInputError(f"cannot read churn table {path}: {exc}") from exc
        return cls.from_frame(frame, monotone=monotone)

    # -- queries -------------------------------------------------------------------------------
    @property
    def observed_rates(self) -> FloatArray:
        """The observed rates as an array."""
        return np.asarray(self.rates, dtype=float)

    def _check_rate(self, rate: FloatArray) -> None:
        lo, hi = self.rates[0], self.rates[-1]
        if np.any(~np.isfinite(rate)) or np.any(rate < lo - 1e-12) or np.any(rate > hi + 1e-12):
            raise AllocationInputError(f"rate outside the churn table's range [{lo}, {hi}]")

    def churn(self, rate: float, rating: str) -> float:
        """Churn at ``rate`` for ``rating`` (1.0 for D, which is not lent to)."""
        return float(self.churn_many(np.asarray([rate]), rating)[0])

    def retention(self, rate: float, rating: str) -> float:
        """``1 - churn(rate, rating)``; 0.0 for D."""
        return 1.0 - self.churn(rate, rating)

    def churn_many(self, rates: npt.ArrayLike, rating: str) -> FloatArray:
        """Churn at each of ``rates`` for one rating.

        Examples
        --------
        >>> curves = ChurnCurves(rates=(0.04, 0.06), churn_by_rating={"A": (0.0, 0.2), "B": (0.0, 0.4), "C": (0.1, 0.5)})
        >>> curves.churn_many([0.04, 0.06], "C").tolist()
        [0.1, 0.5]
        """
        r = np.asarray(rates, dtype=float)
        self._check_rate(r)
        if rating == "D":
            return np.ones_like(r)
        if rating not in LENDABLE_RATINGS:
            raise AllocationInputError(f"unknown rating {rating!r}; expected one of A, B, C, D")
        return np.asarray(np.interp(r, self.observed_rates, np.asarray(self.churn_by_rating[rating], dtype=float)),
                          dtype=float)

    def retention_table(self, rates: npt.ArrayLike) -> FloatArray:
        """Retention at ``rates`` for each rating in :data:`RATINGS` order, shape ``(4, len(rates))``."""
        return np.stack([1.0 - self.churn_many(rates, rating) for rating in RATINGS])

    def knot_lines(self) -> tuple[FloatArray, FloatArray]:
        """Retention as ``a + b * rate`` on each interval between observed rates.

        Returns ``(a, b)``, each of shape ``(4, len(rates) - 1)`` in :data:`RATINGS` order
        (D rows are 0: retention 0 everywhere).
        """
        x = self.observed_rates
        ret = self.retention_table(x)  # (4, K+1)
        b = np.diff(ret, axis=1) / np.diff(x)  # (4, K)
        a = ret[:, :-1] - b * x[:-1]
        return a, b
