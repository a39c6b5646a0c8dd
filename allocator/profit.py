"""Expected profit of one loan (paper 004, section 3.7), vectorised over numpy arrays.

For a one-year loan of ``amount_yuan`` at ``rate`` to an enterprise with default probability
``p`` and a client-retention probability ``retention`` (1 - churn at that rate):

* expected interest income: ``retention * rate * amount * (1 - p)``
* expected loss: ``retention * lgd * p * amount`` (loss given default, 1 by default)
* expected profit: income - loss = ``retention * (rate * (1 - p) - lgd * p) * amount``
* return per yuan (RAROC-style): expected profit / amount, 0 where nothing is lent.

The bank earns nothing from a client that leaves (probability ``1 - retention``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def profit_per_yuan(rate: npt.ArrayLike, default_probability: npt.ArrayLike, retention: npt.ArrayLike,
                    lgd: float = 1.0) -> FloatArray:
    """Expected profit per yuan lent.

    Examples
    --------
    >>> round(float(profit_per_yuan(0.05, 0.02, 0.8)), 10)  # 0.8 * (0.05 * 0.98 - 0.02)
    0.0232
    """
    r = np.asarray(rate, dtype=float)
    p = np.asarray(default_probability, dtype=float)
    w = np.asarray(retention, dtype=float)
    return np.asarray(w * (r * (1.0 - p) - lgd * p), dtype=float)


def expected_interest_yuan(amount_yuan: npt.ArrayLike, rate: npt.ArrayLike, default_probability: npt.ArrayLike,
                           retention: npt.ArrayLike) -> FloatArray:
    """Expected interest income: ``retention * rate * amount * (1 - p)``.

    Examples
    --------
    >>> round(float(expected_interest_yuan(1_000_000, 0.05, 0.02, 0.8)), 6)
    39200.0
    """
    z = np.asarray(amount_yuan, dtype=float)
    return np.asarray(np.asarray(retention, dtype=float) * np.asarray(rate, dtype=float) * z
                      * (1.0 - np.asarray(default_probability, dtype=float)), dtype=float)


def expected_loss_yuan(amount_yuan: npt.ArrayLike, default_probability: npt.ArrayLike, retention: npt.ArrayLike,
                       lgd: float = 1.0) -> FloatArray:
    """Expected credit loss: ``retention * lgd * p * amount``.

    Examples
    --------
    >>> float(expected_loss_yuan(1_000_000, 0.02, 0.8))
    16000.0
    """
    z = np.asarray(amount_yuan, dtype=float)
    return np.asarray(np.asarray(retention, dtype=float) * lgd * np.asarray(default_probability, dtype=float) * z,
                      dtype=float)


def expected_profit_yuan(amount_yuan: npt.ArrayLike, rate: npt.ArrayLike, default_probability: npt.ArrayLike,
                         retention: npt.ArrayLike, lgd: float = 1.0) -> FloatArray:
    """Expected profit: interest income minus loss (paper 004's ``w * (r z t - (1 - t) z)`` for lgd = 1).

    Examples
    --------
    >>> round(float(expected_profit_yuan(1_000_000, 0.05, 0.02, 0.8)), 6)
    23200.0
    >>> expected_profit_yuan([0, 500_000], 0.05, 0.02, 0.8).round(6).tolist()
    [0.0, 11600.0]
    """
    z = np.asarray(amount_yuan, dtype=float)
    return np.asarray(z * profit_per_yuan(rate, default_probability, retention, lgd), dtype=float)


def return_per_yuan(amount_yuan: npt.ArrayLike, expected_profit: npt.ArrayLike) -> FloatArray:
    """Expected profit per yuan lent (RAROC-style), 0 where nothing is lent.

    Examples
    --------
    >>> return_per_yuan([0, 1_000_000], [0.0, 23200.0]).tolist()
    [0.0, 0.0232]
    """
    z = np.asarray(amount_yuan, dtype=float)
    e = np.asarray(expected_profit, dtype=float)
    out = np.zeros(np.broadcast(z, e).shape)
    np.divide(e, z, out=out, where=z > 0)
    return out
