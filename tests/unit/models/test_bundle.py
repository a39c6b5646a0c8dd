from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.errors import BundleError, ModelError
from models.evaluation import EvalConfig, shuffled_control
from models.default_net import DefaultNetConfig
from models.schema import NUMERIC_FEATURES
from models.scoring import ScoringBatch
from models.training import TrainConfig, TrainResult, train

from .synthetic import synthetic_data


def _config(evaluate: bool = False) -> TrainConfig:
    fast = TrainConfig.fast(seed=3)
    e = fast.eval
    small = EvalConfig(2, 1, 2, e.net, e.cnn, ("bp_net", "logistic_regression"), ("rating_cnn", "majority"))
    return TrainConfig(fast.seed, small, (2, 3, 4), 1, evaluate=evaluate, split_73=False, control=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(synthetic_data(), tmp_path_factory.mktemp("b") / "bundle", _config())


def _copy(result: TrainResult, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(result.bundle_dir, out)
    return out


def test_round_trip_gives_identical_scores(trained: TrainResult) -> None:
    data = synthetic_data()
    batch = data.batch()
    loaded = load_bundle(trained.bundle_dir)
    assert loaded.version == trained.bundle.version
    assert loaded.score_many(batch) == trained.bundle.score_many(batch)
    scores = loaded.score_many(data.batch(known=False))
    assert {s.rating for s in scores} <= {"A", "B", "C", "D"}
    assert all(0.0 <= s.default_probability <= 1.0 and not s.rating_known for s in scores)
    assert {s.segment for s in scores} <= set(loaded.segmenter.names)
    manifest = json.loads((trained.bundle_dir / "manifest.json").read_text())
    assert manifest["selected_features"] == list(loaded.selected)
    assert "pickle" not in (trained.bundle_dir / "manifest.json").read_text()


def test_known_rating_is_used_and_predicted_otherwise(trained: TrainResult) -> None:
    data = synthetic_data()
    known = trained.bundle.score_many(data.batch(np.arange(5), known=True))
    assert [s.rating for s in known] == list(data.ratings[:5])
    assert all(s.rating_known for s in known)


def test_missing_corrupt_and_mismatched_bundles_fail_clearly(trained: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nope")

    b = _copy(trained, tmp_path / "1")
    (b / "default_net_rated.pt").unlink()
    with pytest.raises(BundleError, match=r"default_net_rated\.pt: missing weights file"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "2")
    raw = bytearray((b / "rating_cnn.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (b / "rating_cnn.pt").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"rating_cnn\.pt: corrupt weights: sha256"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "3")  # garbage whose checksum the manifest agrees with: torch.load must fail
    (b / "default_net_invoice.pt").write_bytes(b"not a torch file")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"].pop("default_net_invoice.pt")
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"default_net_invoice\.pt: corrupt weights"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "4")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["schema_hash"] = "0" * 16
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json: schema hash mismatch"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "5")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["net_invoice"]["n_inputs"] += 1
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"default_net_invoice\.pt: wrong shapes"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "6")
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable manifest"):
        load_bundle(b)


def test_wrong_batch_shape_is_a_bundle_error(trained: TrainResult) -> None:
    batch = ScoringBatch(["E1"], np.zeros((1, len(NUMERIC_FEATURES) - 1)), [("unknown", "other")],
                         np.zeros((1, 6, 24), dtype=np.float32), [None])
    with pytest.raises(BundleError, match="batch.numeric has shape"):
        trained.bundle.score_many(batch)


def test_holdout_rows_take_no_part_in_fitting(tmp_path: Path) -> None:
    data = synthetic_data()
    holdout = ["E1", "E2", "E3", "E4", "E5", "E6"]
    a = train(data, tmp_path / "a", _config(), holdout=holdout)
    numeric = data.numeric.copy()
    numeric[:6] = 1e6  # wild values in the holdout rows must not change anything that was fitted
    changed = type(data)(data.enterprise_ids, numeric, data.categorical, data.sequences, data.ratings, data.defaulted)
    b = train(changed, tmp_path / "b", _config(), holdout=holdout)
    assert a.bundle.preprocessor == b.bundle.preprocessor
    assert a.bundle.selected == b.bundle.selected
    assert a.bundle.manifest["files"] == b.bundle.manifest["files"]  # identical weights
    assert set(a.metrics["holdout"]) >= {"default_auc", "default_auc_with_rating", "rating_accuracy", "n"}
    assert a.metrics["holdout"]["n"] == 6


def test_same_seed_gives_same_metrics(tmp_path: Path) -> None:
    data = synthetic_data(n=70, n_labeled=48)
    one = train(data, tmp_path / "one", _config(evaluate=True))
    two = train(data, tmp_path / "two", _config(evaluate=True))
    strip = lambda m: {k: v for k, v in m.items() if k != "timings_s"}  # noqa: E731
    assert strip(one.metrics) == strip(two.metrics)
    assert one.bundle.version == two.bundle.version


def test_shuffled_labels_give_chance_level_auc() -> None:
    data = synthetic_data(n=120, n_labeled=120, seed=4)
    y = data.defaulted.astype(int)
    cfg = EvalConfig(n_splits=4, n_repeats=2, selection_runs=2, net=DefaultNetConfig(epochs=10))
    models = ("logistic_regression", "bp_net")
    shuffled = shuffled_control(data.numeric, y, NUMERIC_FEATURES, seed=0, config=cfg, models=models)
    for stats in shuffled.values():
        assert 0.3 < stats["mean"] < 0.7
    # the same pipeline on the true labels is far from chance: the control has power
    from models.evaluation import default_cv

    real = default_cv(data.numeric, np.zeros(len(y), dtype=int), y, NUMERIC_FEATURES, 0,
                      EvalConfig(4, 1, 2, DefaultNetConfig(epochs=10), default_models=("logistic_regression",)),
                      settings=("invoice_only",))
    assert real.summary["invoice_only"]["logistic_regression"]["auc"]["mean"] > 0.85


def test_parallel_folds_give_the_same_cv_results() -> None:
    from dataclasses import replace

    from models.evaluation import default_cv

    data = synthetic_data(n=60, n_labeled=60, seed=2)
    y = data.defaulted.astype(int)
    r = np.array([["A", "B", "C", "D"].index(x) for x in data.ratings])
    cfg = EvalConfig(3, 1, 2, DefaultNetConfig(epochs=3), default_models=("bp_net", "logistic_regression"))
    serial = default_cv(data.numeric, r, y, NUMERIC_FEATURES, 5, cfg)
    parallel = default_cv(data.numeric, r, y, NUMERIC_FEATURES, 5, replace(cfg, n_jobs=2))
    assert serial.summary == parallel.summary


def test_default_probabilities_are_calibrated_and_the_calibration_travels(trained: TrainResult, tmp_path: Path) -> None:
    from models.calibration import Platt

    manifest = json.loads((trained.bundle_dir / "manifest.json").read_text())
    assert set(manifest["calibration"]) == {"net_invoice", "net_rated"}
    loaded = load_bundle(trained.bundle_dir)
    assert loaded.calibration_rated == Platt.from_dict(manifest["calibration"]["net_rated"])
    assert loaded.calibration_rated.method == "platt"
    data = synthetic_data()
    batch = data.batch(np.array([i for i, r in enumerate(data.ratings) if r is not None]), known=True)
    raw = loaded.net_rated.predict_proba(np.hstack([loaded.selected_features(batch.numeric),
                                                    np.eye(4)[[("A", "B", "C", "D").index(r) for r in batch.known_ratings]]]))
    calibrated = np.array([s.default_probability for s in loaded.score_many(batch)])
    # monotone map of the raw net output, strictly inside (0, 1)
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(calibrated[order]) >= -1e-12)
    assert np.all((calibrated > 0.0) & (calibrated < 1.0))
    # a bundle written before calibration existed loads with the identity map
    old = _copy(trained, tmp_path)
    m = json.loads((old / "manifest.json").read_text())
    del m["calibration"]
    (old / "manifest.json").write_text(json.dumps(m))
    plain = load_bundle(old)
    assert plain.calibration_rated == Platt.identity()
    assert np.allclose([s.default_probability for s in plain.score_many(batch)], raw, atol=1e-6)
