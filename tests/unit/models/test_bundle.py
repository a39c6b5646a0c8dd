from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.bundle import ModelBundle, load_bundle
from models.errors import BundleError, ModelError
from models.evaluation import EvalConfig, shuffled_control
from models.default_net import DefaultNetConfig
from models.schema import NUMERIC_FEATURES
from models.scoring import ScoringBatch
from models.training import TrainConfig, TrainingData, TrainResult, train

from .synthetic import synthetic_data


def _config(evaluate: bool = False) -> TrainConfig:
    fast = TrainConfig.fast(seed=3)
    small = replace(fast.eval, n_splits=2, n_repeats=1, selection_runs=2,
                    default_models=("served", "rating_rate", "base_rate", "bp_net", "logistic_regression"),
                    rating_models=("rating_cnn", "majority"))
    return replace(fast, eval=small, segment_ks=(2, 3, 4), segment_n_init=1, evaluate=evaluate)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(synthetic_data(), tmp_path_factory.mktemp("b") / "bundle", _config())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    """Rewrite a manifest as a signer would (new version, new signature): what the loader checks next."""
    from models.signing import DEFAULT_KEY, content_version, sign_bundle

    manifest["version"] = content_version(manifest, int(manifest["bundle_format"]))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    sign_bundle(bundle, DEFAULT_KEY)


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
    (b / "member1_net_rated.pt").unlink()
    with pytest.raises(BundleError, match=r"member1_net_rated\.pt: missing weights file"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "2")
    raw = bytearray((b / "member0_rating_cnn.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (b / "member0_rating_cnn.pt").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"member0_rating_cnn\.pt: corrupt weights: sha256"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "3")  # garbage whose checksum the manifest agrees with: torch.load must fail
    (b / "member2_net_invoice.pt").write_bytes(b"not a torch file")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"].pop("member2_net_invoice.pt")
    _write_manifest(b, manifest)
    with pytest.raises(BundleError, match=r"member2_net_invoice\.pt: corrupt weights"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "4")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["schema_hash"] = "0" * 16
    _write_manifest(b, manifest)
    with pytest.raises(BundleError, match=r"manifest\.json: schema hash mismatch"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "5")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["members"][0]["net_invoice"]["n_inputs"] += 1
    _write_manifest(b, manifest)
    with pytest.raises(BundleError, match=r"member0_net_invoice\.pt: wrong shapes"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "5b")  # fold membership edited by hand: its sha256 no longer matches
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["crossfit"]["folds"][0].append("E999")
    _write_manifest(b, manifest)
    with pytest.raises(BundleError, match=r"fold membership does not match its sha256"):
        load_bundle(b)

    b = _copy(trained, tmp_path / "5c")  # a bundle of the format before cross-fitting
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["bundle_format"] = 1
    _write_manifest(b, manifest)
    with pytest.raises(BundleError, match=r"bundle format 1 is not 2"):
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


def test_manifest_records_fold_membership_and_each_member(trained: TrainResult) -> None:
    data = synthetic_data()
    manifest = json.loads((trained.bundle_dir / "manifest.json").read_text())
    folds = manifest["crossfit"]["folds"]
    labeled = {e for e, r in zip(data.enterprise_ids, data.ratings, strict=True) if r is not None}
    assert sorted(sum(folds, [])) == sorted(labeled)  # every labeled training enterprise in exactly one fold
    assert len(manifest["members"]) == len(folds) == 3
    assert all(set(m["maps"]) == {"platt_invoice", "stack_rated", "rates"} for m in manifest["members"])


def _flip(data: TrainingData, eid: str) -> TrainingData:
    y = data.defaulted.copy()
    i = data.enterprise_ids.index(eid)
    y[i] = 1.0 - y[i]
    return TrainingData(data.enterprise_ids, data.numeric, data.categorical, data.sequences, data.ratings, y)


def test_planted_label_flip_moves_only_the_scores_of_members_that_saw_it(trained: TrainResult, tmp_path: Path) -> None:
    """Flipping one enterprise's default label retrains every member but the one that never saw it:
    the enterprise's own score and its fold-mates' (scored by that member) stay bit-identical,
    while enterprises scored by the other members, and the unlabeled (scored by all), move."""
    data = synthetic_data()
    folds = trained.bundle.folds
    target = folds[1][0]
    flipped = train(_flip(data, target), tmp_path / "flip", _config())
    assert flipped.bundle.folds == folds  # folds are stratified by rating, never by the label
    batch = data.batch()
    before = {s.enterprise_id: s for s in trained.bundle.score_many(batch)}
    after = {s.enterprise_id: s for s in flipped.bundle.score_many(batch)}
    for eid in folds[1]:
        assert after[eid].default_probability == before[eid].default_probability
        assert after[eid].default_probability_invoice_only == before[eid].default_probability_invoice_only
    others = [e for k, f in enumerate(folds) if k != 1 for e in f]
    assert any(after[e].default_probability != before[e].default_probability for e in others)
    unlabeled = [e for e, r in zip(data.enterprise_ids, data.ratings, strict=True) if r is None]
    assert any(after[e].default_probability != before[e].default_probability for e in unlabeled)


def test_a_labeled_enterprise_is_scored_by_its_out_of_fold_member_alone(trained: TrainResult) -> None:
    data = synthetic_data()
    bundle = trained.bundle
    out = bundle.member_outputs(data.batch())
    scores = bundle.score_many(data.batch())
    for i, s in enumerate(scores):
        k = next((k for k, f in enumerate(bundle.folds) if s.enterprise_id in f), None)
        expected = out.rated[:, i].mean() if k is None else out.rated[k, i]
        assert s.default_probability == pytest.approx(float(expected), abs=1e-12)
    # the same enterprise under another id (a new, unlabeled enterprise) gets the mean of all members
    i = data.enterprise_ids.index(bundle.folds[0][0])
    batch = data.batch(np.array([i]))
    renamed = ScoringBatch(["NEW1"], batch.numeric, batch.categorical, batch.sequences, batch.known_ratings)
    assert bundle.score_many(renamed)[0].default_probability == pytest.approx(float(out.rated[:, i].mean()), rel=1e-6)


def test_training_reports_cross_fitted_metrics_and_invariants(trained: TrainResult) -> None:
    inv = trained.metrics["invariants"]
    assert set(inv) >= {"largest_share", "mean_by_rating", "rising_a_to_d", "ok"}
    assert inv["n"] == 90
    oof = trained.metrics["training_rows_out_of_fold"]
    assert oof["n"] == 60 and oof["log_loss"] > 0


def _net_only(bundle: ModelBundle) -> ModelBundle:
    """The synthetic labels are the rating itself, so the trained stack leans on the rating's rate;
    this serves the net alone, so that invoice factors move the probability."""
    from models.calibration import RatingStack

    return replace(bundle, members=tuple(
        replace(m, default=replace(m.default, stack_rated=RatingStack(1.0, 0.0, 0.0))) for m in bundle.members))


def test_reasons_name_the_factor_that_actually_moved_the_probability(trained: TrainResult) -> None:
    """An enterprise equal to the median enterprise (the attribution reference) but for one
    factor: that factor, and only it, is named when it raised the probability, in words with
    its own value; when it lowered the probability no reason is given."""
    from models.reasons import describe

    bundle = _net_only(trained.bundle)
    k, eid = 0, bundle.folds[0][0]  # scored by member 0 alone
    member = bundle.members[k]
    pre = bundle.preprocessor
    median = np.asarray(pre.fill, dtype=np.float64)

    def score(raw: np.ndarray) -> object:
        batch = ScoringBatch([eid], raw[None, :], [("manufacturing", "limited_company")],
                             np.zeros((1, 6, 24), dtype=np.float32), ["B"])
        return bundle.score_many(batch)[0]

    base = score(median)
    assert base.reasons == ()  # the reference itself has nothing to explain
    moved = []
    for name in member.selected:
        j = NUMERIC_FEATURES.index(name)
        for value in (pre.lower[j], pre.upper[j]):
            raw = median.copy()
            raw[j] = value
            s = score(raw)
            moved.append((s.default_probability - base.default_probability, name, value, s))
    up = max(moved, key=lambda t: t[0])
    down = min(moved, key=lambda t: t[0])
    assert up[0] > 1e-3 and down[0] < -1e-4
    assert up[3].reasons == (describe(up[1], up[2]),)
    assert down[3].reasons == ()
    # integrated gradients are complete: the attributions add up to the change from the reference
    raw = median.copy()
    raw[NUMERIC_FEATURES.index(up[1])] = up[2]
    batch = ScoringBatch([eid], raw[None, :], [("manufacturing", "limited_company")],
                         np.zeros((1, 6, 24), dtype=np.float32), ["B"])
    attr = bundle.attributions(batch, bundle.member_outputs(batch))
    assert attr.sum() == pytest.approx(up[0], rel=0.05, abs=1e-4)
    assert score(raw).reasons == up[3].reasons  # the same inputs give the same reasons


def test_every_score_carries_reasons_in_words(trained: TrainResult) -> None:
    scores = _net_only(trained.bundle).score_many(synthetic_data().batch())
    with_reasons = [s for s in scores if s.reasons]
    assert len(with_reasons) > len(scores) // 2
    assert all(r.split(":")[0] in NUMERIC_FEATURES and len(r.split(": ", 1)[1]) > 3
               for s in with_reasons for r in s.reasons)
    assert all(len(s.reasons) <= 3 for s in scores)


def test_reasons_only_where_asked_and_the_same_whichever_batch_computes_them(trained: TrainResult) -> None:
    """``score_many(batch, reasons=...)``: every other field is the same; a row's reasons are the same
    in the whole batch, in a mask over it and in a batch of its own (the backtest explains per line)."""
    bundle = _net_only(trained.bundle)
    batch = synthetic_data().batch()
    full = bundle.score_many(batch)
    none = bundle.score_many(batch, reasons=False)
    assert all(s.reasons is None for s in none)
    assert [replace(s, reasons=None) for s in full] == none
    assert sum(1 for s in full if s.reasons) > len(full) // 2
    mask = np.arange(len(full)) % 3 == 1
    some = bundle.score_many(batch, reasons=mask)
    assert [s.reasons for s in some] == [f.reasons if m else None for f, m in zip(full, mask, strict=True)]
    rows = np.flatnonzero(mask)[::-1]  # another order, another batch size
    alone = bundle.score_many(ScoringBatch([batch.enterprise_ids[i] for i in rows], batch.numeric[rows],
                                           [batch.categorical[i] for i in rows], batch.sequences[rows],
                                           [batch.known_ratings[i] for i in rows]))
    assert [s.reasons for s in alone] == [full[i].reasons for i in rows]
    with pytest.raises(ValueError, match="reasons mask"):
        bundle.score_many(batch, reasons=[True])


def test_integrated_gradients_of_the_summed_outputs_equal_captums_per_row_ones(trained: TrainResult) -> None:
    """models.reasons gives captum the batch's sum of outputs (one backward pass): the attributions
    must be bit for bit those of captum on the per-row outputs, for every member's served function."""
    from captum.attr import IntegratedGradients

    import torch

    from models.reasons import IG_STEPS, integrated_gradients

    bundle = trained.bundle
    batch = synthetic_data().batch()
    cleaned = bundle.cleaned(batch.numeric)
    reference = bundle.cleaned(np.asarray([bundle.preprocessor.fill]))[0]
    rating_vec = torch.as_tensor(np.eye(4)[np.arange(len(cleaned)) % 4])
    for m in bundle.members:
        cols = [NUMERIC_FEATURES.index(c) for c in m.selected]
        x = cleaned[:, cols]
        ours, gap = integrated_gradients(m.default.rated_torch, x, reference[cols], rating_vec, with_delta=True)
        inputs = torch.as_tensor(x)
        theirs = IntegratedGradients(m.default.rated_torch).attribute(
            inputs, baselines=torch.as_tensor(np.broadcast_to(reference[cols], x.shape).copy()),
            additional_forward_args=(rating_vec,), n_steps=IG_STEPS, method="gausslegendre")
        np.testing.assert_array_equal(ours, theirs.detach().numpy())
        assert np.abs(gap).max() < 5e-3  # completeness: the sums add up to p(x) - p(reference)
