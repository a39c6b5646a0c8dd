"""Signed model bundles (issue 11 item 6): the forgeries of the issue are refused, with one line each."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import BUNDLE_FORMAT, load_bundle
from models.errors import BundleError
from models.signing import content_version, public_key_path, sha256_file, sign_bundle
from models.training import TrainConfig, TrainResult, train

from .synthetic import synthetic_data


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "bundle-signing.key"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> TrainResult:
    fast = TrainConfig.fast(seed=5)
    small = replace(fast.eval, n_splits=2, n_repeats=1, selection_runs=2)
    config = replace(fast, eval=small, segment_ks=(2, 3), segment_n_init=1, evaluate=False)
    return train(synthetic_data(), tmp_path_factory.mktemp("b") / "bundle", config, signing_key=keys)


WEIGHTS = "member0_net_rated.pt"


def _copy(result: TrainResult, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(result.bundle_dir, out)
    return out


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _load(bundle: Path, keys: Path, **kw: bool) -> object:
    return load_bundle(bundle, public_key=public_key_path(keys), **kw)


def _tamper_weights(bundle: Path) -> str:
    """Scale one weight of member 0's rating-aware net (a valid state dict that scores differently); its new sha256."""
    path = bundle / WEIGHTS
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state.items() if v.dtype.is_floating_point)
    state[first] = state[first] * 3.0
    torch.save(state, path)
    return sha256_file(path)


def test_the_key_is_generated_outside_the_bundle_private_and_the_version_covers_the_manifest(
        trained: TrainResult, keys: Path) -> None:
    assert keys.is_file() and public_key_path(keys).is_file()
    assert keys.stat().st_mode & 0o077 == 0
    files = {p.name for p in trained.bundle_dir.iterdir()}
    assert "signature.json" in files and not any(name.endswith((".key", ".pub")) for name in files)
    manifest = _manifest(trained.bundle_dir)
    assert manifest["version"] == content_version(manifest, BUNDLE_FORMAT)
    assert {p.name for p in trained.bundle_dir.glob("*.pt")} == set(manifest["files"]) and WEIGHTS in manifest["files"]
    loaded = _load(trained.bundle_dir, keys)
    assert loaded.version == trained.bundle.version  # type: ignore[attr-defined]


def test_editing_the_calibration_in_the_manifest_is_refused(trained: TrainResult, keys: Path, tmp_path: Path) -> None:
    b = _copy(trained, tmp_path, "cal")
    m = _manifest(b)
    platt = m["members"][0]["maps"]["platt_invoice"]
    platt["a"] = float(platt["a"]) * 0.5
    (b / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(BundleError, match="signature does not match the manifest"):
        _load(b, keys)
    # the same edit with a recomputed version string is refused just the same
    m["version"] = content_version(m, BUNDLE_FORMAT)
    (b / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(BundleError, match="signature does not match the manifest"):
        _load(b, keys)


def test_changed_weights_are_refused_with_or_without_updating_their_sha256(
        trained: TrainResult, keys: Path, tmp_path: Path) -> None:
    b = _copy(trained, tmp_path, "plain")  # weights changed, manifest untouched
    _tamper_weights(b)
    with pytest.raises(BundleError, match=r"member0_net_rated\.pt: corrupt weights: sha256 differs"):
        _load(b, keys)

    b = _copy(trained, tmp_path, "updated")  # weights changed and their sha256 entry updated
    m = _manifest(b)
    m["files"][WEIGHTS] = _tamper_weights(b)
    m["version"] = content_version(m, BUNDLE_FORMAT)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="signature does not match"):
        _load(b, keys)

    b = _copy(trained, tmp_path, "deleted")  # weights changed and their sha256 entry deleted
    m = _manifest(b)
    _tamper_weights(b)
    del m["files"][WEIGHTS]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="signature does not match"):
        _load(b, keys)


def test_a_bundle_signed_by_another_key_or_not_signed_is_refused(
        trained: TrainResult, keys: Path, tmp_path: Path) -> None:
    b = _copy(trained, tmp_path, "other")
    m = _manifest(b)
    m["files"][WEIGHTS] = _tamper_weights(b)
    m["version"] = content_version(m, BUNDLE_FORMAT)
    (b / "manifest.json").write_text(json.dumps(m))
    sign_bundle(b, tmp_path / "attacker.key")  # a perfect forgery, but not by the trusted key
    with pytest.raises(BundleError, match="trusted key"):
        _load(b, keys)

    b = _copy(trained, tmp_path, "unsigned")
    (b / "signature.json").unlink()
    with pytest.raises(BundleError, match="bundle is not signed"):
        _load(b, keys)
    # only when told explicitly; the listed hashes are still checked then
    assert _load(b, keys, accept_unsigned=True).version == trained.bundle.version  # type: ignore[attr-defined]
    _tamper_weights(b)
    with pytest.raises(BundleError, match="corrupt weights"):
        _load(b, keys, accept_unsigned=True)


def test_a_missing_trusted_key_is_a_clear_error(trained: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="trusted public key not found"):
        load_bundle(trained.bundle_dir, public_key=tmp_path / "none.pub")


def test_tampered_bundles_change_scores_so_refusing_them_matters(trained: TrainResult, keys: Path, tmp_path: Path) -> None:
    b = _copy(trained, tmp_path, "scores")
    _tamper_weights(b)
    (b / "signature.json").unlink()
    m = _manifest(b)
    m["files"][WEIGHTS] = sha256_file(b / WEIGHTS)
    (b / "manifest.json").write_text(json.dumps(m))
    forged = _load(b, keys, accept_unsigned=True)
    batch = synthetic_data().batch()
    before = np.array([s.default_probability for s in trained.bundle.score_many(batch)])
    after = np.array([s.default_probability for s in forged.score_many(batch)])  # type: ignore[attr-defined]
    assert np.abs(before - after).max() > 1e-6


def test_riskmon_score_refuses_a_tampered_bundle_with_one_line(
        trained: TrainResult, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    b = _copy(trained, tmp_path, "cli")
    m = _manifest(b)
    m["members"][0]["maps"]["platt_invoice"]["b"] = 5.0
    (b / "manifest.json").write_text(json.dumps(m))
    code = main(["score", "--bundle", str(b), "--public-key", str(public_key_path(keys)),
                 "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not (tmp_path / "s.csv").exists()
    assert len(err.splitlines()) == 1 and "signature does not match" in err
