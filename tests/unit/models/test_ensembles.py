from __future__ import annotations

import numpy as np
import torch

from models.default_net import DefaultNet, DefaultNetConfig, build_mlp
from models.nets import Ensemble
from models.rating_cnn import RatingCNN, RatingCNNConfig
from models.schema import SEQUENCE_CHANNELS, SEQUENCE_MONTHS


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((30, 4))
    return x, (x[:, 0] > 0.5).astype(int)


def test_paper_config_is_the_paper_architecture() -> None:
    cfg = DefaultNetConfig.paper()
    assert (cfg.hidden, cfg.dropout, cfg.n_models, cfg.weight_decay) == ((128, 256), 0.0, 1, 1e-4)
    shapes = [tuple(p.shape) for p in build_mlp(16, cfg.hidden, dropout=cfg.dropout).parameters()]
    assert shapes == [(128, 16), (128,), (256, 128), (256,), (2, 256), (2,)]


def test_old_manifest_config_without_new_keys_loads_as_one_plain_net() -> None:
    old = {"hidden": [128, 256], "lr": 0.001, "batch_size": 10, "epochs": 60, "weight_decay": 1e-4, "balanced": True}
    cfg = DefaultNetConfig.from_dict(old)
    assert cfg == DefaultNetConfig.paper()
    assert DefaultNetConfig.from_dict(cfg.to_dict()) == cfg
    cnn_old = {k: v for k, v in RatingCNNConfig.original().to_dict().items() if k != "n_models"}
    assert RatingCNNConfig.from_dict(cnn_old) == RatingCNNConfig.original()


def test_bagged_net_is_deterministic_averages_members_and_round_trips() -> None:
    x, y = _xy()
    cfg = DefaultNetConfig(hidden=(8,), dropout=0.3, n_models=3, epochs=3)
    a = DefaultNet.fit(x, y, cfg, seed=5)
    b = DefaultNet.fit(x, y, cfg, seed=5)
    assert isinstance(a.module, Ensemble) and len(a.module.members) == 3
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    members = [torch.softmax(m(torch.as_tensor(x, dtype=torch.float32)), dim=1)[:, 1] for m in a.module.members]
    np.testing.assert_allclose(a.predict_proba(x), torch.stack(members).mean(dim=0).double().detach().numpy(), rtol=1e-5)
    loaded = DefaultNet.from_state_dict(a.module.state_dict(), a.n_inputs, DefaultNetConfig.from_dict(cfg.to_dict()))
    np.testing.assert_array_equal(loaded.predict_proba(x), a.predict_proba(x))


def test_bagged_cnn_round_trips() -> None:
    rng = np.random.default_rng(1)
    seq = rng.random((12, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)).astype(np.float32)
    static = rng.random((12, 3))
    cfg = RatingCNNConfig(conv_channels=(4, 8), head=8, n_models=2, epochs=1)
    cnn = RatingCNN.fit(seq, static, np.arange(12) % 4, cfg, seed=0)
    p = cnn.predict_proba(seq, static)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    again = RatingCNN.from_state_dict(cnn.module.state_dict(), len(SEQUENCE_CHANNELS), 3, cnn.seq_mean, cnn.seq_std,
                                      RatingCNNConfig.from_dict(cfg.to_dict()))
    np.testing.assert_array_equal(again.predict_proba(seq, static), p)
