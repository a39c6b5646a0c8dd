"""The versioned model bundle: a directory of state dicts plus a JSON manifest; the live :class:`Scorer`.

Layout::

    manifest.json            format, version, schema + schema_hash, data hash, preprocessor,
                             segments, cross-fitting (fold membership: ids per fold + sha256),
                             one entry per member (selected features, net configs, CNN
                             standardisation, calibration maps), metrics summary, sha256 of each
                             weights file, torch/python versions
    member{k}_net_invoice.pt state_dict of member k's invoice-only default net
    member{k}_net_rated.pt   state_dict of member k's rating-aware default net
    member{k}_rating_cnn.pt  state_dict of member k's rating CNN

Nothing is pickled: weights are loaded with ``torch.load(weights_only=True)``, everything
else is JSON. Baseline sklearn models are never stored (they exist for the report only).

Cross-fitting (:mod:`models.crossfit`): member ``k`` was fitted on every labeled training
enterprise outside fold ``k``. A labeled enterprise is scored by the one member that did not
see its label; every other enterprise by the mean of all members' probabilities.

Scoring path (:meth:`ModelBundle.score_many`), per member:

1. numeric features -> cleaning (training medians, MAD clip, min-max; shared, label-free)
   -> the member's selected columns;
2. rating: the known rating if given, else the argmax of the members' mean CNN probabilities;
3. default probability: the member's rating-aware net, fed the selected features plus the
   rating vector (one-hot of the known rating, or the member CNN's A..D probabilities),
   stacked with the per-rating default rate (:class:`models.crossfit.RatingStack`, fitted on
   the member's inner out-of-fold predictions); the invoice-only probability is the member's
   invoice net, Platt-scaled on the same inner predictions;
4. challenger (in shadow): the member's per-rating default rate (expected over the CNN's
   probabilities when the rating is predicted), the strongest baseline on log loss;
5. reasons: integrated gradients of the served probability against the median enterprise
   (:mod:`models.reasons`), the top factors that raised it, in words with the raw values;
6. segment: nearest k-prototype over (globally selected cleaned features; rating, industry,
   legal form).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.calibration import Platt, RatingStack
from models.cleaning import Preprocessor
from models.crossfit import DefaultMember, folds_hash, member_weights
from models.default_net import DefaultNet, DefaultNetConfig
from models.errors import BundleError
from models.rating_cnn import RatingCNN, RatingCNNConfig
from models.schema import NUMERIC_FEATURES, RATINGS, SEQUENCE_CHANNELS, SEQUENCE_MONTHS, schema_dict, schema_hash
from models.scoring import ReasonsWanted, Score, ScoringBatch, reasons_mask
from models.segments import Segmenter
from models.signing import DEFAULT_KEY, content_version, public_key_path, sha256_file, sign_bundle, verify_bundle

BUNDLE_FORMAT = 2
MANIFEST = "manifest.json"
MEMBER_FILES = {"net_invoice": "net_invoice.pt", "net_rated": "net_rated.pt", "cnn": "rating_cnn.pt"}


def member_file(k: int, key: str) -> str:
    """File name of member ``k``'s weights for ``key`` (a key of :data:`MEMBER_FILES`)."""
    return f"member{k}_{MEMBER_FILES[key]}"


@dataclass(frozen=True, slots=True)
class Member:
    """One cross-fitted member: its feature selection, default nets (+ maps) and rating CNN."""

    selected: tuple[str, ...]
    default: DefaultMember
    cnn: RatingCNN

    def x(self, cleaned: np.ndarray) -> np.ndarray:
        """The member's columns of the cleaned numeric features."""
        return cleaned[:, [NUMERIC_FEATURES.index(c) for c in self.selected]]


@dataclass(frozen=True, slots=True)
class MemberOutputs:
    """Every member's view of a batch; ``weights`` (n, K) says which members count for which row."""

    weights: np.ndarray  # (n, K)
    rating_probabilities: np.ndarray  # (K, n, 4)
    invoice_only: np.ndarray  # (K, n)
    rated: np.ndarray  # (K, n)
    ratings: list[str]
    challenger: np.ndarray  # (K, n): the per-rating default rate of the member's training rows

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Weighted mean over members of (K, n, ...) values -> (n, ...)."""
        w = self.weights.T.reshape(self.weights.shape[1], self.weights.shape[0], *([1] * (values.ndim - 2)))
        return np.asarray((w * values).sum(axis=0))


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """Everything the live scorer needs; implements :class:`models.scoring.Scorer`."""

    manifest: dict[str, Any]
    preprocessor: Preprocessor
    selected: tuple[str, ...]  # the global selection (segments)
    members: tuple[Member, ...]
    folds: tuple[tuple[str, ...], ...]
    segmenter: Segmenter

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
        for i, known in enumerate(batch.known_ratings):
            if known is not None and known not in RATINGS:
                raise BundleError(f"unknown rating {known!r} for {batch.enterprise_ids[i]}")

    def cleaned(self, numeric: np.ndarray) -> np.ndarray:
        """Cleaned numeric features (n, len(NUMERIC_FEATURES))."""
        return self.preprocessor.transform(np.asarray(numeric, dtype=np.float64))

    def selected_features(self, numeric: np.ndarray) -> np.ndarray:
        """Cleaned, globally selected features (n, len(selected)) (the segments' inputs)."""
        return self.cleaned(numeric)[:, [NUMERIC_FEATURES.index(c) for c in self.selected]]

    def member_outputs(self, batch: ScoringBatch) -> MemberOutputs:
        """Every member's CNN probabilities and default probabilities for the batch."""
        self._check(batch)
        cleaned = self.cleaned(batch.numeric)
        seq = np.asarray(batch.sequences, dtype=np.float32)
        weights = member_weights(batch.enterprise_ids, self.folds)
        xs = [m.x(cleaned) for m in self.members]
        probs = np.stack([m.cnn.predict_proba(seq, x) for m, x in zip(self.members, xs, strict=True)])  # (K, n, 4)
        known = np.array([k is not None for k in batch.known_ratings])
        known_vec = np.array([np.eye(len(RATINGS))[RATINGS.index(k)] if k is not None else np.zeros(len(RATINGS))
                              for k in batch.known_ratings]).reshape(len(known), len(RATINGS))
        inv, rated, rate = [], [], []
        for m, x, p in zip(self.members, xs, probs, strict=True):
            rating_vec = np.where(known[:, None], known_vec, p)
            inv.append(m.default.invoice_only(x))
            rated.append(m.default.rated(x, rating_vec))
            rate.append(rating_vec @ np.asarray(m.default.rates))
        out = MemberOutputs(weights, probs, np.stack(inv), np.stack(rated), [], np.stack(rate))
        mean_probs = out.mean(probs)
        ratings = [str(k) if k is not None else RATINGS[int(mean_probs[i].argmax())]
                   for i, k in enumerate(batch.known_ratings)]
        return MemberOutputs(weights, probs, out.invoice_only, out.rated, ratings, out.challenger)

    def default_probability_invoice_only(self, batch: ScoringBatch) -> np.ndarray:
        """Cross-fitted default probability from invoice features alone, (n,)."""
        if len(batch.enterprise_ids) == 0:
            return np.zeros(0)
        out = self.member_outputs(batch)
        return out.mean(out.invoice_only)

    def attributions(self, batch: ScoringBatch, out: MemberOutputs, rows: np.ndarray | None = None, *,
                     n_steps: int | None = None, with_delta: bool = False) -> Any:
        """Integrated-gradients attribution of the served default probability to each raw feature,
        (n, len(NUMERIC_FEATURES)), averaged over members like the probability (:mod:`models.reasons`).

        ``rows`` (a boolean mask (n,), default all) limits the work to those rows; the others are 0.
        A row's attribution depends on that row's inputs only, not on the rest of the batch.
        ``n_steps`` overrides :data:`models.reasons.IG_STEPS` (for measuring it); ``with_delta`` also
        returns each row's largest absolute completeness gap over its members (n,), probability units.
        """
        from models.reasons import IG_STEPS, integrated_gradients

        n = len(batch.enterprise_ids)
        wanted = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        total = np.zeros((n, len(NUMERIC_FEATURES)))
        gap = np.zeros(n)
        if not wanted.any():
            return (total, gap) if with_delta else total
        cleaned = self.cleaned(batch.numeric)
        reference = self.cleaned(np.asarray([self.preprocessor.fill]))[0]
        known = np.array([k is not None for k in batch.known_ratings])
        known_vec = np.array([np.eye(len(RATINGS))[RATINGS.index(k)] if k is not None else np.zeros(len(RATINGS))
                              for k in batch.known_ratings]).reshape(len(known), len(RATINGS))
        for k, m in enumerate(self.members):
            idx = np.flatnonzero((out.weights[:, k] > 0) & wanted)
            if len(idx) == 0:
                continue
            cols = np.array([NUMERIC_FEATURES.index(c) for c in m.selected], dtype=np.int64)
            rating_vec = torch.as_tensor(np.where(known[idx, None], known_vec[idx], out.rating_probabilities[k, idx]))
            got = integrated_gradients(m.default.rated_torch, cleaned[np.ix_(idx, cols)], reference[cols], rating_vec,
                                       n_steps=n_steps or IG_STEPS, with_delta=with_delta)
            attr = got[0] if with_delta else got
            if with_delta:
                gap[idx] = np.maximum(gap[idx], np.abs(got[1]))
            total[np.ix_(idx, cols)] += out.weights[idx, k][:, None] * attr
        return (total, gap) if with_delta else total

    def score_many(self, batch: ScoringBatch, *, reasons: ReasonsWanted = True) -> list[Score]:
        """Score a batch (see the module doc for which path gives each field).

        ``reasons`` (True, False or a boolean mask (n,)) says which rows get their reasons: the
        attributions are most of the cost of scoring. The other rows get ``reasons=None``; every
        other field is the same either way, and a row's reasons do not depend on the other rows.
        """
        from models.reasons import top_reasons

        self._check(batch)
        n = len(batch.enterprise_ids)
        if n == 0:
            return []
        explain = reasons_mask(reasons, n)
        out = self.member_outputs(batch)
        attr = self.attributions(batch, out, explain)
        raw = np.asarray(batch.numeric, dtype=np.float64)
        probs, pd_, p_inv = out.mean(out.rating_probabilities), out.mean(out.rated), out.mean(out.invoice_only)
        challenger = out.mean(out.challenger)
        cats = [(r, c[0], c[1]) for r, c in zip(out.ratings, batch.categorical, strict=True)]
        segments = self.segmenter.assign(self.selected_features(batch.numeric), cats)
        return [
            Score(
                enterprise_id=str(batch.enterprise_ids[i]),
                rating=out.ratings[i],
                rating_known=batch.known_ratings[i] is not None,
                rating_probabilities={r: float(probs[i, j]) for j, r in enumerate(RATINGS)},
                default_probability=float(pd_[i]),
                segment=segments[i],
                default_probability_invoice_only=float(p_inv[i]),
                reasons=tuple(top_reasons(attr[i], NUMERIC_FEATURES, raw[i])) if explain[i] else None,
                challenger_default_probability=float(challenger[i]),
            )
            for i in range(n)
        ]


def save_bundle(out_dir: Path, *, preprocessor: Preprocessor, selected: Sequence[str], members: Sequence[Member],
                folds: Sequence[Sequence[str]], segmenter: Segmenter, data_hash: str,
                metrics_summary: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                crossfit: Mapping[str, Any] | None = None, signing_key: Path | None = None) -> Path:
    """Write a bundle directory (created if needed), sign it and return it.

    The version covers the whole manifest (which lists the sha256 of every weights file); the
    signature is made with ``signing_key`` (default ``var/keys/bundle-signing.key``, created when
    missing), see :mod:`models.signing`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    for k, m in enumerate(members):
        modules = {"net_invoice": m.default.net_invoice.module, "net_rated": m.default.net_rated.module,
                   "cnn": m.cnn.module}
        for key, module in modules.items():
            path = out_dir / member_file(k, key)
            torch.save(module.state_dict(), path)
            files[path.name] = sha256_file(path)
        entries.append(_member_entry(m, k, folds[k]))
    folds_list = [list(f) for f in folds]
    manifest: dict[str, Any] = {
        "bundle_format": BUNDLE_FORMAT,
        "data_hash": data_hash,
        "schema": schema_dict(),
        "schema_hash": schema_hash(),
        "selected_features": list(selected),
        "preprocessor": preprocessor.to_dict(),
        "crossfit": {**dict(crossfit or {}), "k": len(folds_list), "folds": folds_list,
                     "folds_sha256": folds_hash(folds_list),
                     "rule": "a labeled enterprise in fold k is scored by member k only (fitted without fold k); "
                             "every other enterprise by the mean of all members"},
        "members": entries,
        "segments": segmenter.to_dict(),
        "metrics": dict(metrics_summary),
        "files": files,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    if extra:
        manifest.update(extra)
    # the version names the whole manifest (weights, maps, fold membership, ...), and through its sha256
    # entries every file (models.signing)
    manifest = {"bundle_format": BUNDLE_FORMAT, "version": content_version(manifest, BUNDLE_FORMAT), **manifest}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sign_bundle(out_dir, signing_key or DEFAULT_KEY)
    return out_dir


def _member_entry(m: Member, k: int, fold: Sequence[str]) -> dict[str, Any]:
    d = m.default
    return {
        "fold": k,
        "n_fold_ids": len(fold),
        "selected_features": list(m.selected),
        "net_invoice": {"n_inputs": d.net_invoice.n_inputs, "config": d.net_invoice.config.to_dict()},
        "net_rated": {"n_inputs": d.net_rated.n_inputs, "config": d.net_rated.config.to_dict(),
                      "inputs": list(m.selected) + [f"rating_{r}" for r in RATINGS]},
        "cnn": {"n_channels": len(SEQUENCE_CHANNELS), "n_static": m.cnn.n_static, "seq_mean": list(m.cnn.seq_mean),
                "seq_std": list(m.cnn.seq_std), "config": m.cnn.config.to_dict()},
        "maps": d.maps_to_dict(),
    }


def _load_state(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError("missing weights file", path)
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise BundleError("corrupt weights: sha256 differs from the manifest", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged archive
        raise BundleError(f"corrupt weights: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", path) from exc
    if not isinstance(state, dict):
        raise BundleError("weights file does not hold a state dict", path)
    return state


def load_bundle(bundle_dir: Path | str, *, public_key: Path | None = None, accept_unsigned: bool = False) -> ModelBundle:
    """Load and check a bundle; every problem raises :class:`BundleError` naming the file.

    The signature is checked first against the trusted ``public_key`` (default
    ``var/keys/bundle-signing.pub``), then the content version and every listed file's sha256
    (:func:`models.signing.verify_bundle`). An unsigned bundle is refused unless ``accept_unsigned``.

    Raises
    ------
    BundleError
        Missing or wrong signature, version or sha256 that do not match the content, missing
        directory or file, unreadable manifest, other bundle format, schema hash
        mismatch (the bundle was trained on other feature columns), corrupt weights or
        weights whose shapes do not fit the manifest.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise BundleError("bundle directory not found", bundle_dir)
    if not path.is_file():
        raise BundleError("missing manifest", path)
    manifest = verify_bundle(bundle_dir, public_key or public_key_path(DEFAULT_KEY),
                             accept_unsigned=accept_unsigned).manifest
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
        entries = manifest["members"]
        folds = tuple(tuple(str(i) for i in f) for f in manifest["crossfit"]["folds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"malformed manifest: {type(exc).__name__} {exc}", path) from exc
    if pre.columns != NUMERIC_FEATURES or any(c not in NUMERIC_FEATURES for c in selected):
        raise BundleError("preprocessor columns or selected features do not match the schema", path)
    if len(entries) != len(folds) or not entries:
        raise BundleError(f"{len(entries)} members for {len(folds)} folds", path)
    if manifest["crossfit"].get("folds_sha256") != folds_hash([list(f) for f in folds]):
        raise BundleError("fold membership does not match its sha256", path)
    members = tuple(_load_member(bundle_dir, path, k, entry, files) for k, entry in enumerate(entries))
    if segmenter.numeric_columns != selected:
        raise BundleError("input sizes in the manifest do not match the selected features", path)
    return ModelBundle(manifest, pre, selected, members, folds, segmenter)


def _load_member(bundle_dir: Path, path: Path, k: int, entry: Mapping[str, Any], files: Mapping[str, str]) -> Member:
    """Member ``k`` from its manifest entry and weights files (every problem is a :class:`BundleError`)."""
    try:
        selected = tuple(entry["selected_features"])
        net_cfg = entry["net_invoice"], entry["net_rated"]
        cnn_cfg = entry["cnn"]
        maps = entry["maps"]
        platt, stack = Platt.from_dict(maps["platt_invoice"]), RatingStack.from_dict(maps["stack_rated"])
        rates = tuple(float(r) for r in maps["rates"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"malformed member {k}: {type(exc).__name__} {exc}", path) from exc
    if any(c not in NUMERIC_FEATURES for c in selected) or len(rates) != len(RATINGS):
        raise BundleError(f"member {k}: selected features or rates do not match the schema", path)
    states = {key: _load_state(bundle_dir / member_file(k, key), files.get(member_file(k, key)))
              for key in MEMBER_FILES}
    nets = []
    for key, cfg in zip(("net_invoice", "net_rated"), net_cfg, strict=True):
        try:
            nets.append(DefaultNet.from_state_dict(states[key], int(cfg["n_inputs"]), DefaultNetConfig.from_dict(cfg["config"])))
        except (RuntimeError, KeyError, TypeError) as exc:
            raise BundleError(f"wrong shapes: {str(exc).splitlines()[0]}", bundle_dir / member_file(k, key)) from exc
    try:
        cnn = RatingCNN.from_state_dict(states["cnn"], int(cnn_cfg["n_channels"]), int(cnn_cfg["n_static"]),
                                        tuple(cnn_cfg["seq_mean"]), tuple(cnn_cfg["seq_std"]),
                                        RatingCNNConfig.from_dict(cnn_cfg["config"]))
    except (RuntimeError, KeyError, TypeError) as exc:
        raise BundleError(f"wrong shapes: {str(exc).splitlines()[0]}", bundle_dir / member_file(k, "cnn")) from exc
    if nets[0].n_inputs != len(selected) or nets[1].n_inputs != len(selected) + len(RATINGS) \
            or cnn.n_static != len(selected):
        raise BundleError(f"member {k}: input sizes in the manifest do not match the selected features", path)
    return Member(selected, DefaultMember(nets[0], nets[1], platt, stack, rates), cnn)
