"""The rating CNN of paper 000: 1-D convolutions over the monthly invoice history -> A/B/C/D.

Input: sequences (n, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS), standardised per channel
with training statistics, optionally concatenated in the head with the cleaned static
features. Two conv blocks (ReLU), global mean+max pooling over months, a small dense
head. Training: Adam, cross-entropy with balanced class weights, bounded epochs.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> seq = rng.random((30, 6, 24)).astype("float32"); stat = rng.random((30, 3)); y = np.arange(30) % 4
>>> cnn = RatingCNN.fit(seq, stat, y, RatingCNNConfig(epochs=2), seed=0)
>>> cnn.predict_proba(seq, stat).shape
(30, 4)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.nets import balanced_class_weight, build_ensemble, fit_ensemble, predict_proba
from models.schema import RATINGS


@dataclass(frozen=True, slots=True)
class RatingCNNConfig:
    """Architecture and training settings.

    Defaults: candidate C2 of ``docs/models_tuning.md`` (three bagged small CNNs);
    :meth:`original` gives the first configuration (16, 32 channels, one net), which is
    also what :meth:`from_dict` assumes for keys missing from an older manifest.
    """

    conv_channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3
    head: int = 16
    dropout: float = 0.5
    use_static: bool = True
    lr: float = 0.002
    batch_size: int = 16
    epochs: int = 60
    weight_decay: float = 1e-2
    n_models: int = 3  # >1: bagged CNNs on seeds seed + 1000k, probabilities averaged

    @classmethod
    def original(cls) -> RatingCNNConfig:
        """The configuration before tuning: conv 16, 32, head 32, dropout 0.2, weight decay 1e-3, one net."""
        return cls(conv_channels=(16, 32), head=32, dropout=0.2, weight_decay=1e-3, n_models=1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["conv_channels"] = list(self.conv_channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatingCNNConfig:
        values = cls.original().to_dict() | dict(data)
        values["conv_channels"] = tuple(int(c) for c in values["conv_channels"])
        return cls(**values)


class RatingModule(nn.Module):
    """conv blocks over months, pooled, concatenated with static features, -> 4 logits."""

    def __init__(self, n_channels: int, n_static: int, config: RatingCNNConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_channels
        for c in config.conv_channels:
            blocks += [nn.Conv1d(width, c, config.kernel_size, padding=config.kernel_size // 2), nn.ReLU()]
            width = c
        self.conv = nn.Sequential(*blocks)
        self.n_static = n_static if config.use_static else 0
        self.head = nn.Sequential(
            nn.Linear(2 * width + self.n_static, config.head), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.head, len(RATINGS)),
        )

    def forward(self, seq: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        h = self.conv(seq)  # (batch, width, months)
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # (batch, 2*width)
        if self.n_static:
            pooled = torch.cat([pooled, static], dim=1)
        logits: torch.Tensor = self.head(pooled)  # (batch, 4)
        return logits


@dataclass(frozen=True, slots=True)
class RatingCNN:
    """A trained rating CNN with its sequence standardisation."""

    module: nn.Module  # a RatingModule, or an Ensemble of them when config.n_models > 1
    seq_mean: tuple[float, ...]
    seq_std: tuple[float, ...]
    n_static: int
    config: RatingCNNConfig

    @staticmethod
    def _standardise(seq: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        m = np.asarray(mean, dtype=np.float32)[None, :, None]
        s = np.asarray(std, dtype=np.float32)[None, :, None]
        return torch.as_tensor((np.asarray(seq, dtype=np.float32) - m) / s)

    @classmethod
    def fit(cls, seq: np.ndarray, static: np.ndarray, y: np.ndarray, config: RatingCNNConfig,
            seed: int, device: str = "cpu") -> RatingCNN:
        """Fit on sequences (n, C, T), static (n, s) and rating indices ``y`` in 0..3."""
        seq = np.asarray(seq, dtype=np.float32)
        mean = tuple(float(v) for v in seq.mean(axis=(0, 2)))
        std = tuple(float(v) if v > 1e-6 else 1.0 for v in seq.std(axis=(0, 2)))
        n_static = int(static.shape[1])
        y_int = np.asarray(y, dtype=np.int64)
        module = fit_ensemble(
            lambda: RatingModule(seq.shape[1], n_static, config), config.n_models,
            (cls._standardise(seq, mean, std), torch.as_tensor(np.asarray(static, dtype=np.float32))),
            torch.as_tensor(y_int), seed=seed, epochs=config.epochs, batch_size=config.batch_size,
            lr=config.lr, weight_decay=config.weight_decay,
            class_weight=balanced_class_weight(y_int, len(RATINGS)), device=device,
        )
        return cls(module.cpu(), mean, std, n_static, config)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], n_channels: int, n_static: int,
                        seq_mean: tuple[float, ...], seq_std: tuple[float, ...], config: RatingCNNConfig) -> RatingCNN:
        """Rebuild from saved weights (raises RuntimeError on a shape mismatch)."""
        module = build_ensemble(lambda: RatingModule(n_channels, n_static, config), config.n_models)
        module.load_state_dict(state)
        module.eval()
        return cls(module, tuple(seq_mean), tuple(seq_std), n_static, config)

    def predict_proba(self, seq: np.ndarray, static: np.ndarray) -> np.ndarray:
        """Probabilities of A, B, C, D, shape (n, 4)."""
        return predict_proba(self.module, self._standardise(seq, self.seq_mean, self.seq_std),
                             torch.as_tensor(np.asarray(static, dtype=np.float32)))


def rating_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and within-one-grade accuracy of rating indices.

    Examples
    --------
    >>> rating_metrics(np.array([0, 1, 2, 3]), np.array([0, 2, 2, 1]))["within_one"]
    0.75
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(len(RATINGS))), zero_division=0)),
        "within_one": float(np.mean(np.abs(y_true - y_pred) <= 1)),
    }
