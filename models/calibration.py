"""Probability calibration maps, fitted on held-out (out-of-fold) predictions only.

A network fitted on its training rows separates them almost perfectly, so its outputs on those
rows are not default probabilities a bank can price with. :mod:`models.crossfit` predicts
every training row of a member with a net that did not see it, and fits on those honest
predictions:

- :class:`Platt`: ``sigmoid(a * logit(p) + b)``, monotone (rankings and AUC unchanged);
- :class:`RatingStack`: ``sigmoid(w_net * logit(p_net) + w_rate * logit(rate) + b)``, a
  logistic stack of the net and the per-rating default rate that shrinks the net toward
  the rate wherever the net adds nothing.

Examples
--------
>>> import numpy as np
>>> cal = Platt.fit(np.array([0.01, 0.02, 0.9, 0.99, 0.97, 0.03]), np.array([0, 0, 1, 1, 0, 0]))
>>> p = cal.apply(np.array([0.0, 0.5, 1.0]))
>>> bool(0.0 < p[0] < p[1] < p[2] < 1.0)
True
>>> Platt.from_dict(cal.to_dict()) == cal
True
>>> Platt.identity().apply(np.array([0.25]))
array([0.25])
>>> RatingStack(0.0, 1.0, 0.0).apply(np.array([0.9]), np.array([0.2])).round(6).tolist()
[0.2]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

#: Raw probabilities are clipped to [EPS, 1 - EPS] before taking log-odds.
EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q / (1 - q))


@dataclass(frozen=True, slots=True)
class Platt:
    """``p -> sigmoid(a * logit(p) + b)``; ``a = 1, b = 0`` is the identity."""

    a: float
    b: float
    method: str = "platt"

    @classmethod
    def identity(cls) -> Platt:
        return cls(1.0, 0.0, "identity")

    @classmethod
    def fit(cls, p_oof: np.ndarray, y: np.ndarray) -> Platt:
        """Fit on out-of-fold probabilities ``p_oof`` and 0/1 labels ``y`` (mild L2, as sklearn's default)."""
        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            return cls.identity()
        z = logit(p_oof).reshape(-1, 1)
        lr = LogisticRegression(C=1.0).fit(z, y)
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def apply(self, p: np.ndarray) -> np.ndarray:
        if self.method == "identity":
            return np.asarray(p, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-(self.a * logit(p) + self.b)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Platt:
        """From a manifest entry; a bundle written before calibration existed gets the identity."""
        if not data:
            return cls.identity()
        return cls(float(data["a"]), float(data["b"]), str(data.get("method", "platt")))


@dataclass(frozen=True, slots=True)
class RatingStack:
    """``p = sigmoid(w_net · logit(p_net) + w_rate · logit(rate) + b)``."""

    w_net: float
    w_rate: float
    b: float

    @classmethod
    def fit(cls, p_net: np.ndarray, rate: np.ndarray, y: np.ndarray, c: float = 1.0) -> RatingStack:
        """L2-regularised logistic regression on held-out net probabilities and the rating's rate."""
        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            return cls(0.0, 1.0, 0.0)
        z = np.column_stack([logit(p_net), logit(rate)])
        lr = LogisticRegression(C=c).fit(z, y)
        return cls(float(lr.coef_[0, 0]), float(lr.coef_[0, 1]), float(lr.intercept_[0]))

    def apply(self, p_net: np.ndarray, rate: np.ndarray) -> np.ndarray:
        z = self.w_net * logit(p_net) + self.w_rate * logit(rate) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def apply_torch(self, p_net: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` on torch tensors (differentiable in ``p_net``, for attributions)."""
        q = p_net.clamp(EPS, 1 - EPS)
        r = rate.clamp(EPS, 1 - EPS)
        return torch.sigmoid(self.w_net * torch.log(q / (1 - q)) + self.w_rate * torch.log(r / (1 - r)) + self.b)

    def to_dict(self) -> dict[str, float]:
        return {"w_net": self.w_net, "w_rate": self.w_rate, "b": self.b}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatingStack:
        return cls(float(data["w_net"]), float(data["w_rate"]), float(data["b"]))
