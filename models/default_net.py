"""The default-probability BP network: an MLP over the cleaned, selected features -> 2 classes.

The default configuration is the small regularised MLP chosen by the pre-registered
selection in ``docs/models_tuning.md`` (in -> 32 -> 2, dropout 0.3, weight decay 1e-2);
paper 004's table 3 architecture (in -> 128 -> 256 -> 2, ReLU, Adam lr 0.001,
mini-batches of 10) is :meth:`DefaultNetConfig.paper`. Class 1 = defaulted.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.random((40, 5)); y = (x[:, 0] > 0.5).astype(int)
>>> model = DefaultNet.fit(x, y, DefaultNetConfig(epochs=5), seed=0)
>>> p = model.predict_proba(x)
>>> p.shape, bool(((p >= 0) & (p <= 1)).all())
((40,), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.nets import balanced_class_weight, build_ensemble, fit_ensemble, predict_proba


@dataclass(frozen=True, slots=True)
class DefaultNetConfig:
    """Architecture and training settings.

    Defaults: candidate D1 of ``docs/models_tuning.md``; :meth:`paper` gives paper 004 table 3.
    A manifest written before ``dropout``/``n_models`` existed holds the paper's values, so
    :meth:`from_dict` fills missing keys from :meth:`paper`.
    """

    hidden: tuple[int, ...] = (32,)
    lr: float = 0.001
    batch_size: int = 10
    epochs: int = 60
    weight_decay: float = 1e-2
    balanced: bool = True  # weight the classes by inverse frequency (27 defaults in 123)
    dropout: float = 0.3  # after each hidden ReLU (none in the paper)
    n_models: int = 1  # >1: bagged nets on seeds seed + 1000k, probabilities averaged

    @classmethod
    def paper(cls) -> DefaultNetConfig:
        """Paper 004 table 3 exactly: 128 -> 256, no dropout, one net."""
        return cls(hidden=(128, 256), weight_decay=1e-4, dropout=0.0, n_models=1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DefaultNetConfig:
        values = cls.paper().to_dict() | dict(data)
        values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)


def build_mlp(n_inputs: int, hidden: tuple[int, ...], n_outputs: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """in -> hidden... -> n_outputs with ReLU (and dropout, when > 0) between layers."""
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class DefaultNet:
    """A trained network and its config; inputs are cleaned, selected features (n, n_inputs)."""

    module: nn.Module  # an nn.Sequential, or an Ensemble of them when config.n_models > 1
    n_inputs: int
    config: DefaultNetConfig

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: DefaultNetConfig, seed: int, device: str = "cpu") -> DefaultNet:
        n_inputs = int(x.shape[1])
        y_int = np.asarray(y, dtype=np.int64)
        module = fit_ensemble(
            lambda: build_mlp(n_inputs, config.hidden, dropout=config.dropout), config.n_models,
            torch.as_tensor(np.asarray(x, dtype=np.float32)),
            torch.as_tensor(y_int),
            seed=seed, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            weight_decay=config.weight_decay,
            class_weight=balanced_class_weight(y_int, 2) if config.balanced else None,
            device=device,
        )
        return cls(module.cpu(), n_inputs, config)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], n_inputs: int, config: DefaultNetConfig) -> DefaultNet:
        """Rebuild from saved weights (raises RuntimeError on a shape mismatch)."""
        module = build_ensemble(lambda: build_mlp(n_inputs, config.hidden, dropout=config.dropout), config.n_models)
        module.load_state_dict(state)
        module.eval()
        return cls(module, n_inputs, config)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Default probability per row, shape (n,)."""
        return predict_proba(self.module, torch.as_tensor(np.asarray(x, dtype=np.float32)))[:, 1]
