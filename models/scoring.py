"""What a trained model bundle takes and gives: the contract between ``models`` and ``streams``.

The stream (and the backtest, and ``riskmon score``) build a :class:`ScoringBatch`
from the feature fold and call :meth:`Scorer.score_many`; the bundle in
``models/bundle.py`` implements it. Arrays follow :mod:`models.schema` column order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class ScoringBatch:
    """Inputs for ``n`` enterprises.

    Attributes
    ----------
    enterprise_ids : n ids.
    numeric : (n, len(NUMERIC_FEATURES)) float64, raw feature values, NaN where undefined.
    categorical : n tuples ``(industry, legal_form)``.
    sequences : (n, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS) float32 monthly history.
    known_ratings : n known ratings (``"A"``..``"D"``) or None where the bank has none.
    """

    enterprise_ids: Sequence[str]
    numeric: np.ndarray
    categorical: Sequence[tuple[str, str]]
    sequences: np.ndarray
    known_ratings: Sequence[str | None]


@dataclass(frozen=True, slots=True)
class Score:
    """The model view of one enterprise."""

    enterprise_id: str
    rating: str  # known rating if given, else the CNN's
    rating_known: bool
    rating_probabilities: dict[str, float]  # the CNN's A..D probabilities
    default_probability: float
    segment: str
    # cross-fitted like default_probability; None from a scorer that does not give it
    default_probability_invoice_only: float | None = None
    # the invoice factors that raised default_probability most, in words (models.reasons);
    # None where the caller did not ask for them (``score_many(batch, reasons=False)``)
    reasons: tuple[str, ...] | None = ()
    # the best baseline, scored in shadow beside the served probability (champion/challenger)
    challenger_default_probability: float | None = None


#: Which rows of a batch get reasons: all (True), none (False), or a mask of n booleans.
ReasonsWanted = bool | Sequence[bool] | np.ndarray


def reasons_mask(reasons: ReasonsWanted, n: int) -> np.ndarray:
    """The rows that get reasons, as a boolean array (n,).

    Examples
    --------
    >>> reasons_mask(True, 2).tolist(), reasons_mask(False, 2).tolist(), reasons_mask([False, True], 2).tolist()
    ([True, True], [False, False], [False, True])
    """
    if isinstance(reasons, bool | np.bool_):
        return np.full(n, bool(reasons))
    mask = np.asarray(reasons, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"reasons mask has shape {mask.shape}, expected ({n},)")
    return mask


class Scorer(Protocol):
    """Anything that scores a batch (the trained bundle).

    ``reasons`` says which rows get their reasons (the costly part of scoring: attributions);
    the others get ``Score.reasons = None``. Everything else in a score does not depend on it.
    """

    @property
    def version(self) -> str: ...

    def score_many(self, batch: ScoringBatch, *, reasons: ReasonsWanted = True) -> list[Score]: ...
