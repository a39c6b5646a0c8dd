"""The versioned model bundle: a directory of state dicts plus a JSON manifest; the live :class:`Scorer`.

Layout::

    manifest.json            format, version, schema + schema_hash, data hash, preprocessor,
                             selected features, net configs, CNN standardisation, segments,
                             metrics summary, sha256 of each weights file, torch/python versions
    default_net_invoice.pt   state_dict of the invoice-only default net
    default_net_rated.pt     state_dict of the rating-aware default net
    rating_cnn.pt            state_dict of the rating CNN

Nothing is pickled: weights are loaded with ``torch.load(weights_only=True)``, everything
else is JSON. Baseline sklearn models are never stored (they exist for the report only).

Scoring path (:meth:`ModelBundle.score_many`):

1. numeric features -> cleaning (training medians, MAD clip, min-max) -> selected columns;
2. rating: the known rating if given, else the CNN's argmax;
3. default probability: the *rating-aware* net, fed the selected features plus the rating
   vector: one-hot of the known rating, or the CNN's A..D probabilities (a soft one-hot)
   when the rating is predicted, then Platt-calibrated (``models.calibration``; fitted on
   5-fold out-of-fold predictions at training time, stored in the manifest). The invoice-only net's probability is available from
   :meth:`ModelBundle.default_probability_invoice_only`;
4. segment: nearest k-prototype over (selected cleaned features; rating, industry, legal form).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.calibration import Platt
from models.cleaning import Preprocessor
from models.default_net import DefaultNet, DefaultNetConfig
from models.errors import BundleError
from models.rating_cnn import RatingCNN, RatingCNNConfig
from models.schema import NUMERIC_FEATURES, RATINGS, SEQUENCE_CHANNELS, SEQUENCE_MONTHS, schema_dict, schema_hash
from models.scoring import Score, ScoringBatch
from models.segments import Segmenter

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
WEIGHT_FILES = {"net_invoice": "default_net_invoice.pt", "net_rated": "default_net_rated.pt", "cnn": "rating_cnn.pt"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """Everything the live scorer needs; implements :class:`models.scoring.Scorer`."""

    manifest: dict[str, Any]
    preprocessor: Preprocessor
    selected: tuple[str, ...]
    net_invoice: DefaultNet
    net_rated: DefaultNet
    cnn: RatingCNN
    segmenter: Segmenter
    calibration_invoice: Platt = Platt.identity()
    calibration_rated: Platt = Platt.identity()

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    # --- the pieces of the scoring path -------------------------------------------------
    def _check(self, batch: ScoringBatch) -> None:
        n = len(batch.enterprise_ids)
        expect = {
            "numeric": (np.shape(batch.numeric), (n, len(NUMERIC_FEATURES))),
            "sequences": (np.shape(batch.sequences), (n, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)),
        }
        for name, (got, want) in expect.items():
            if tuple(got) != want:
                raise BundleError(f"batch.{name} has shape {tuple(got)}, expected {want}")
        if len(batch.categorical) != n or len(batch.known_ratings) != n:
            raise BundleError(f"batch has {n} ids but {len(batch.categorical)} categorical rows "
                              f"and {len(batch.known_ratings)} known ratings")

    def selected_features(self, numeric: np.ndarray) -> np.ndarray:
        """Cleaned, selected features (n, len(selected)) from raw numeric (n, len(NUMERIC_FEATURES))."""
        idx = [NUMERIC_FEATURES.index(c) for c in self.selected]
        return self.preprocessor.transform(np.asarray(numeric, dtype=np.float64))[:, idx]

    def rating_probabilities(self, numeric: np.ndarray, sequences: np.ndarray) -> np.ndarray:
        """The CNN's A..D probabilities, (n, 4)."""
        return self.cnn.predict_proba(sequences, self.selected_features(numeric))

    def default_probability_invoice_only(self, numeric: np.ndarray) -> np.ndarray:
        """Default probability from invoice features alone, (n,)."""
        return self.calibration_invoice.apply(self.net_invoice.predict_proba(self.selected_features(numeric)))

    def score_many(self, batch: ScoringBatch) -> list[Score]:
        """Score a batch (see the module doc for which path gives each field)."""
        self._check(batch)
        n = len(batch.enterprise_ids)
        if n == 0:
            return []
        x = self.selected_features(batch.numeric)
        probs = self.cnn.predict_proba(np.asarray(batch.sequences, dtype=np.float32), x)  # (n, 4)
        rating_vec = probs.copy()
        ratings: list[str] = []
        for i, known in enumerate(batch.known_ratings):
            if known is not None:
                if known not in RATINGS:
                    raise BundleError(f"unknown rating {known!r} for {batch.enterprise_ids[i]}")
                rating_vec[i] = np.eye(len(RATINGS))[RATINGS.index(known)]
                ratings.append(str(known))
            else:
                ratings.append(RATINGS[int(probs[i].argmax())])
        pd_ = self.calibration_rated.apply(self.net_rated.predict_proba(np.hstack([x, rating_vec])))
        cats = [(r, c[0], c[1]) for r, c in zip(ratings, batch.categorical, strict=True)]
        segments = self.segmenter.assign(x, cats)
        return [
            Score(
                enterprise_id=str(batch.enterprise_ids[i]),
                rating=ratings[i],
                rating_known=batch.known_ratings[i] is not None,
                rating_probabilities={r: float(probs[i, j]) for j, r in enumerate(RATINGS)},
                default_probability=float(pd_[i]),
                segment=segments[i],
            )
            for i in range(n)
        ]


def save_bundle(out_dir: Path, *, preprocessor: Preprocessor, selected: Sequence[str], net_invoice: DefaultNet,
                net_rated: DefaultNet, cnn: RatingCNN, segmenter: Segmenter, data_hash: str,
                metrics_summary: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                calibration: Mapping[str, Platt] | None = None) -> Path:
    """Write a bundle directory (created if needed) and return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = {"net_invoice": net_invoice.module, "net_rated": net_rated.module, "cnn": cnn.module}
    files: dict[str, str] = {}
    for key, module in modules.items():
        path = out_dir / WEIGHT_FILES[key]
        torch.save(module.state_dict(), path)
        files[WEIGHT_FILES[key]] = _sha256(path)
    calibration_dict = {key: cal.to_dict() for key, cal in (calibration or {}).items()}
    # the version names what scores: the weights and, when present, the calibration maps
    identity: dict[str, Any] = {**files, "calibration": calibration_dict} if calibration_dict else dict(files)
    version = f"{BUNDLE_FORMAT}-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    manifest: dict[str, Any] = {
        "bundle_format": BUNDLE_FORMAT,
        "version": version,
        "data_hash": data_hash,
        "schema": schema_dict(),
        "schema_hash": schema_hash(),
        "selected_features": list(selected),
        "preprocessor": preprocessor.to_dict(),
        "net_invoice": {"n_inputs": net_invoice.n_inputs, "config": net_invoice.config.to_dict()},
        "net_rated": {"n_inputs": net_rated.n_inputs, "config": net_rated.config.to_dict(),
                      "inputs": list(selected) + [f"rating_{r}" for r in RATINGS]},
        "cnn": {"n_channels": len(SEQUENCE_CHANNELS), "n_static": cnn.n_static, "seq_mean": list(cnn.seq_mean),
                "seq_std": list(cnn.seq_std), "config": cnn.config.to_dict()},
        "segments": segmenter.to_dict(),
        "calibration": calibration_dict,
        "metrics": dict(metrics_summary),
        "files": files,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    if extra:
        manifest.update(extra)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out_dir


def _load_state(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError("missing weights file", path)
    if expected_sha is not None and _sha256(path) != expected_sha:
        raise BundleError("corrupt weights: sha256 differs from the manifest", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged archive
        raise BundleError(f"corrupt weights: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", path) from exc
    if not isinstance(state, dict):
        raise BundleError("weights file does not hold a state dict", path)
    return state


def load_bundle(bundle_dir: Path | str) -> ModelBundle:
    """Load and check a bundle; every problem raises :class:`BundleError` naming the file.

    Raises
    ------
    BundleError
        Missing directory or file, unreadable manifest, other bundle format, schema hash
        mismatch (the bundle was trained on other feature columns), corrupt weights or
        weights whose shapes do not fit the manifest.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise BundleError("bundle directory not found", bundle_dir)
    if not path.is_file():
        raise BundleError("missing manifest", path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"unreadable manifest: {exc}", path) from exc
    if not isinstance(manifest, dict) or manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle format {manifest.get('bundle_format') if isinstance(manifest, dict) else '?'}"
                          f" is not {BUNDLE_FORMAT}", path)
    if manifest.get("schema_hash") != schema_hash():
        raise BundleError(f"schema hash mismatch: bundle {manifest.get('schema_hash')} vs code {schema_hash()} "
                          "(retrain with `riskmon train`)", path)
    try:
        pre = Preprocessor.from_dict(manifest["preprocessor"])
        selected = tuple(manifest["selected_features"])
        segmenter = Segmenter.from_dict(manifest["segments"])
        files = manifest["files"]
        net_cfg = manifest["net_invoice"], manifest["net_rated"]
        cnn_cfg = manifest["cnn"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"malformed manifest: {type(exc).__name__} {exc}", path) from exc
    if pre.columns != NUMERIC_FEATURES or any(c not in NUMERIC_FEATURES for c in selected):
        raise BundleError("preprocessor columns or selected features do not match the schema", path)
    states = {key: _load_state(bundle_dir / name, files.get(name)) for key, name in WEIGHT_FILES.items()}
    try:
        net_invoice = DefaultNet.from_state_dict(states["net_invoice"], int(net_cfg[0]["n_inputs"]),
                                                 DefaultNetConfig.from_dict(net_cfg[0]["config"]))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise BundleError(f"wrong shapes: {str(exc).splitlines()[0]}", bundle_dir / WEIGHT_FILES["net_invoice"]) from exc
    try:
        net_rated = DefaultNet.from_state_dict(states["net_rated"], int(net_cfg[1]["n_inputs"]),
                                               DefaultNetConfig.from_dict(net_cfg[1]["config"]))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise BundleError(f"wrong shapes: {str(exc).splitlines()[0]}", bundle_dir / WEIGHT_FILES["net_rated"]) from exc
    try:
        cnn = RatingCNN.from_state_dict(states["cnn"], int(cnn_cfg["n_channels"]), int(cnn_cfg["n_static"]),
                                        tuple(cnn_cfg["seq_mean"]), tuple(cnn_cfg["seq_std"]),
                                        RatingCNNConfig.from_dict(cnn_cfg["config"]))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise BundleError(f"wrong shapes: {str(exc).splitlines()[0]}", bundle_dir / WEIGHT_FILES["cnn"]) from exc
    if net_invoice.n_inputs != len(selected) or net_rated.n_inputs != len(selected) + len(RATINGS) \
            or cnn.n_static != len(selected) or segmenter.numeric_columns != selected:
        raise BundleError("input sizes in the manifest do not match the selected features", path)
    try:
        calibration = manifest.get("calibration") or {}
        cal_invoice, cal_rated = Platt.from_dict(calibration.get("net_invoice")), Platt.from_dict(calibration.get("net_rated"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"malformed calibration: {type(exc).__name__} {exc}", path) from exc
    return ModelBundle(manifest, pre, selected, net_invoice, net_rated, cnn, segmenter, cal_invoice, cal_rated)
