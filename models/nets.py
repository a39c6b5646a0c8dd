"""Shared torch plumbing: seeded, bounded mini-batch training of a classifier, and inference.

Randomness comes from the ``seed`` argument only (initialisation and batch order run
inside :func:`torch.random.fork_rng`, so global torch state is untouched); on CPU with a
fixed thread count the same seed gives the same weights.

Examples
--------
>>> import torch
>>> x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
>>> def make(): return torch.nn.Linear(3, 2)
>>> a = fit_classifier(make, x, y, seed=1, epochs=3, batch_size=5, lr=0.01)
>>> b = fit_classifier(make, x, y, seed=1, epochs=3, batch_size=5, lr=0.01)
>>> all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


def fit_classifier(
    make: Callable[[], nn.Module],
    x: torch.Tensor | Sequence[torch.Tensor],
    y: torch.Tensor,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    class_weight: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a module with ``make()`` and train it with Adam and cross-entropy; returns it in eval mode.

    ``x`` is one tensor or a tuple of tensors (the module is called as ``module(*xs)``).
    """
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    n = int(y.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = make().to(device)
        gen = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=None if class_weight is None else class_weight.to(device))
        xs_d = tuple(t.to(device) for t in xs)
        y_d = y.to(device)
        module.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size].to(device)
                opt.zero_grad()
                loss = loss_fn(module(*(t[idx] for t in xs_d)), y_d[idx])
                loss.backward()
                opt.step()
    module.eval()
    return module


class Ensemble(nn.Module):
    """Members trained on their own seeds; the output is the log of their mean softmax.

    ``softmax(Ensemble(...)(x))`` is therefore the average of the members' probabilities
    (bagged nets), and the ensemble is a plain module whose ``state_dict`` saves as usual.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(*xs), dim=1) for m in self.members]).mean(dim=0)  # (batch, classes)
        return torch.log(probs.clamp_min(1e-12))


def fit_ensemble(make: Callable[[], nn.Module], n_models: int, x: torch.Tensor | Sequence[torch.Tensor],
                 y: torch.Tensor, seed: int, **kwargs: object) -> nn.Module:
    """:func:`fit_classifier` once (``n_models`` = 1: the plain module) or ``n_models`` times
    with seeds ``seed + 1000·k``, wrapped in :class:`Ensemble`.

    Examples
    --------
    >>> x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
    >>> m = fit_ensemble(lambda: nn.Linear(3, 2), 3, x, y, seed=0, epochs=2, batch_size=4, lr=0.01)
    >>> len(m.members), predict_proba(m, x).sum(axis=1).round(6).tolist() == [1.0] * 12
    (3, True)
    """
    if n_models <= 1:
        return fit_classifier(make, x, y, seed, **kwargs)  # type: ignore[arg-type]
    members = [fit_classifier(make, x, y, seed + 1000 * k, **kwargs) for k in range(n_models)]  # type: ignore[arg-type]
    return Ensemble(members).eval()


def build_ensemble(make: Callable[[], nn.Module], n_models: int) -> nn.Module:
    """An untrained module of the shape :func:`fit_ensemble` returns (to load a state dict into)."""
    return make() if n_models <= 1 else Ensemble([make() for _ in range(n_models)])


def predict_proba(module: nn.Module, *xs: torch.Tensor) -> np.ndarray:
    """Softmax class probabilities, shape (n, classes), float64."""
    with torch.no_grad():
        return torch.softmax(module(*xs), dim=1).double().cpu().numpy()


def balanced_class_weight(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """``n / (classes * count)`` per class (1 where a class is absent)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    weight = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weight, dtype=torch.float32)
