"""A small synthetic data set shaped like the real one (for fast unit tests of the training path)."""

from __future__ import annotations

import numpy as np

from models.schema import NUMERIC_FEATURES, RATINGS, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from models.training import TrainingData


def synthetic_data(n: int = 90, n_labeled: int = 60, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    quality = rng.random(n)  # the latent credit quality
    numeric = rng.normal(size=(n, len(NUMERIC_FEATURES)))
    numeric[:, 0] = quality * 10 + rng.normal(scale=0.5, size=n)
    numeric[:, 1] = -quality * 5 + rng.normal(scale=0.5, size=n)
    numeric[rng.random(numeric.shape) < 0.05] = np.nan
    sequences = rng.normal(size=(n, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)).astype(np.float32)
    sequences[:, 0, :] += quality[:, None].astype(np.float32) * 3
    rating_idx = np.clip((4 * (1 - quality)).astype(int), 0, 3)
    ratings = tuple(RATINGS[r] if i < n_labeled else None for i, r in enumerate(rating_idx))
    defaulted = np.where(np.arange(n) < n_labeled, (rating_idx == 3).astype(float), np.nan)
    categorical = tuple(("manufacturing" if i % 2 else "wholesale_retail", "limited_company") for i in range(n))
    return TrainingData(tuple(f"E{i + 1}" for i in range(n)), numeric, categorical, sequences, ratings, defaulted)
