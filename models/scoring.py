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
    # the invoice factors that raised default_probability most, in words (models.reasons)
    reasons: tuple[str, ...] = ()
    # the best baseline, scored in shadow beside the served probability (champion/challenger)
    challenger_default_probability: float | None = None


class Scorer(Protocol):
    """Anything that scores a batch (the trained bundle)."""

    @property
    def version(self) -> str: ...

    def score_many(self, batch: ScoringBatch) -> list[Score]: ...
