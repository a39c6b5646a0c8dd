from __future__ import annotations

import numpy as np
import torch

from models.default_net import DefaultNet, DefaultNetConfig, build_mlp
from models.rating_cnn import RatingCNN, RatingCNNConfig, RatingModule, rating_metrics
from models.schema import RATINGS, SEQUENCE_CHANNELS, SEQUENCE_MONTHS


def test_default_net_has_paper_architecture_and_is_seed_deterministic() -> None:
    net = build_mlp(16, DefaultNetConfig.paper().hidden)
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes == [(128, 16), (128,), (256, 128), (256,), (2, 256), (2,)]
    rng = np.random.default_rng(0)
    x = rng.random((30, 4))
    y = (x[:, 0] > 0.5).astype(int)
    cfg = DefaultNetConfig(epochs=3)  # the tuned default; the paper's is checked in test_ensembles
    a = DefaultNet.fit(x, y, cfg, seed=7).predict_proba(x)
    b = DefaultNet.fit(x, y, cfg, seed=7).predict_proba(x)
    c = DefaultNet.fit(x, y, cfg, seed=8).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_default_net_learns_a_separable_problem() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((80, 3))
    y = (x[:, 0] > 0.5).astype(int)
    p = DefaultNet.fit(x, y, DefaultNetConfig(epochs=40), seed=0).predict_proba(x)
    assert np.mean((p > 0.5) == y) > 0.9


def test_rating_cnn_shapes() -> None:
    cfg = RatingCNNConfig()
    module = RatingModule(len(SEQUENCE_CHANNELS), 5, cfg)
    logits = module(torch.zeros(3, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS), torch.zeros(3, 5))
    assert logits.shape == (3, len(RATINGS))
    no_static = RatingModule(len(SEQUENCE_CHANNELS), 5, RatingCNNConfig(use_static=False))
    assert no_static(torch.zeros(2, len(SEQUENCE_CHANNELS), 12), torch.zeros(2, 5)).shape == (2, 4)
    rng = np.random.default_rng(0)
    seq = rng.random((12, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)).astype(np.float32)
    cnn = RatingCNN.fit(seq, rng.random((12, 5)), np.arange(12) % 4, RatingCNNConfig(epochs=1), seed=0)
    p = cnn.predict_proba(seq, rng.random((12, 5)))
    assert p.shape == (12, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_rating_metrics() -> None:
    m = rating_metrics(np.array([0, 1, 2, 3, 3]), np.array([0, 1, 3, 1, 3]))
    assert m["accuracy"] == 0.6 and m["within_one"] == 0.8
    assert 0 < m["macro_f1"] < 1
