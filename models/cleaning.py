"""Cleaning as in paper 004: fill gaps, clip outliers by median absolute deviation, min-max scale.

A :class:`Preprocessor` is fitted on training rows only and then applied to any row;
its parameters are plain JSON (:meth:`Preprocessor.to_dict` / :meth:`Preprocessor.from_dict`),
so a model bundle stores them without pickle.

Gaps. A feature vector has no time axis (the monthly history does), so a gap (NaN: a
growth over an empty year, a rate with no invoices) is filled with the training median
of that column: the one-point "interpolation" that does not look at other rows' labels.

Clipping. Values beyond ``median ± k · 1.4826 · MAD`` are clipped (``k`` = 5 by
default: the invoice counts are heavy-tailed and a tighter clip flattens real
differences). Where the MAD is zero (a column that is mostly one value), the
interquartile range is used instead, and where that is zero too, the column is not clipped.

Examples
--------
>>> import numpy as np
>>> x = np.array([[1.0, 10.0], [2.0, np.nan], [3.0, 30.0], [1000.0, 20.0]])
>>> pre = Preprocessor.fit(x, ("a", "b"))
>>> z = pre.transform(x)
>>> bool(np.isnan(z).any()), float(z.min()), float(z.max())
(False, 0.0, 1.0)
>>> Preprocessor.from_dict(pre.to_dict()) == pre
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True)
class Preprocessor:
    """Fitted cleaning parameters, one entry per column."""

    columns: tuple[str, ...]
    fill: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    mad_k: float = 5.0

    @classmethod
    def fit(cls, x: np.ndarray, columns: Sequence[str], mad_k: float = 5.0) -> Preprocessor:
        """Fit on training rows ``x`` (n, d); NaN marks a gap."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(columns):
            raise ValueError(f"x has shape {x.shape}, expected (n, {len(columns)})")
        fill: list[float] = []
        lower: list[float] = []
        upper: list[float] = []
        lo_seen: list[float] = []
        hi_seen: list[float] = []
        for j in range(x.shape[1]):
            col = x[:, j]
            col = col[np.isfinite(col)]
            if col.size == 0:
                for values in (fill, lower, upper, lo_seen, hi_seen):
                    values.append(0.0)
                continue
            med = float(np.median(col))
            spread = MAD_TO_SD * float(np.median(np.abs(col - med)))
            if spread == 0.0:
                q1, q3 = np.percentile(col, [25, 75])
                spread = float(q3 - q1) / 1.349
            lo, hi = (med - mad_k * spread, med + mad_k * spread) if spread > 0 else (float(col.min()), float(col.max()))
            clipped = np.clip(col, lo, hi)
            fill.append(med)
            lower.append(lo)
            upper.append(hi)
            lo_seen.append(float(clipped.min()))
            hi_seen.append(float(clipped.max()))
        return cls(tuple(columns), tuple(fill), tuple(lower), tuple(upper), tuple(lo_seen), tuple(hi_seen), float(mad_k))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Fill, clip and scale rows ``x`` (n, d) to float64; training rows land in [0, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"x has shape {x.shape}, expected (n, {len(self.columns)})")
        fill = np.asarray(self.fill)
        out = np.where(np.isfinite(x), x, fill)
        out = np.clip(out, np.asarray(self.lower), np.asarray(self.upper))
        lo, hi = np.asarray(self.minimum), np.asarray(self.maximum)
        width = np.where(hi > lo, hi - lo, 1.0)
        return np.asarray(np.clip((out - lo) / width, 0.0, 1.0))

    def subset(self, columns: Sequence[str]) -> Preprocessor:
        """The same parameters restricted to ``columns`` (in that order)."""
        idx = [self.columns.index(c) for c in columns]

        def pick(values: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(values[i] for i in idx)

        return Preprocessor(tuple(columns), pick(self.fill), pick(self.lower), pick(self.upper),
                            pick(self.minimum), pick(self.maximum), self.mad_k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters."""
        return {
            "columns": list(self.columns),
            "fill": list(self.fill),
            "lower": list(self.lower),
            "upper": list(self.upper),
            "minimum": list(self.minimum),
            "maximum": list(self.maximum),
            "mad_k": self.mad_k,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild from :meth:`to_dict` output; raises KeyError/ValueError on a malformed dict."""
        cols = tuple(str(c) for c in data["columns"])
        fill, lower, upper, minimum, maximum = (tuple(float(v) for v in data[k])
                                                 for k in ("fill", "lower", "upper", "minimum", "maximum"))
        if any(len(f) != len(cols) for f in (fill, lower, upper, minimum, maximum)):
            raise ValueError("preprocessor parameter lengths differ from the number of columns")
        return cls(cols, fill, lower, upper, minimum, maximum, mad_k=float(data.get("mad_k", 5.0)))
