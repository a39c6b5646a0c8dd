"""The default-probability BP network of paper 004 (table 3): in -> 128 -> 256 -> 2, ReLU.

Trained with Adam at learning rate 0.001, cross-entropy, mini-batches of 10 (the paper's
setting; everything is in :class:`DefaultNetConfig`). Class 1 = defaulted.

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

from models.nets import balanced_class_weight, fit_classifier, predict_proba


@dataclass(frozen=True, slots=True)
class DefaultNetConfig:
    """Architecture and training settings (paper 004 table 3 by default)."""

    hidden: tuple[int, ...] = (128, 256)
    lr: float = 0.001
    batch_size: int = 10
    epochs: int = 60
    weight_decay: float = 1e-4
    balanced: bool = True  # weight the classes by inverse frequency (27 defaults in 123)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DefaultNetConfig:
        values = dict(data)
        values["hidden"] = tuple(int(h) for h in values.get("hidden", (128, 256)))
        return cls(**values)


def build_mlp(n_inputs: int, hidden: tuple[int, ...], n_outputs: int = 2) -> nn.Sequential:
    """in -> hidden... -> n_outputs with ReLU between layers."""
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class DefaultNet:
    """A trained network and its config; inputs are cleaned, selected features (n, n_inputs)."""

    module: nn.Sequential
    n_inputs: int
    config: DefaultNetConfig

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: DefaultNetConfig, seed: int, device: str = "cpu") -> DefaultNet:
        n_inputs = int(x.shape[1])
        y_int = np.asarray(y, dtype=np.int64)
        module = fit_classifier(
            lambda: build_mlp(n_inputs, config.hidden),
            torch.as_tensor(np.asarray(x, dtype=np.float32)),
            torch.as_tensor(y_int),
            seed=seed, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            weight_decay=config.weight_decay,
            class_weight=balanced_class_weight(y_int, 2) if config.balanced else None,
            device=device,
        )
        return cls(module.cpu(), n_inputs, config)  # type: ignore[arg-type]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], n_inputs: int, config: DefaultNetConfig) -> DefaultNet:
        """Rebuild from saved weights (raises RuntimeError on a shape mismatch)."""
        module = build_mlp(n_inputs, config.hidden)
        module.load_state_dict(state)
        module.eval()
        return cls(module, n_inputs, config)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Default probability per row, shape (n,)."""
        return predict_proba(self.module, torch.as_tensor(np.asarray(x, dtype=np.float32)))[:, 1]
