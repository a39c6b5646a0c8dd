"""``riskmon train`` / ``riskmon score`` end to end on the real data set (slow: each folds 1.1 M invoices)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from models.schema import RATINGS
from streams.cli import main

pytestmark = pytest.mark.slow


def test_train_fast_with_holdout_writes_bundle_metrics_and_report(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("E3\nE40\nE80\nE119\n# a comment\nE200\n")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--fast", "--seed", "1", "--holdout", str(holdout)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["holdout"]["n"] == 4  # E200 is unlabeled
    assert set(metrics["holdout"]) >= {"default_auc", "default_auc_with_rating", "rating_accuracy", "n"}
    assert metrics["n_enterprises"] == 420 and metrics["n_labeled"] == 119
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["holdout_ids"] == ["E119", "E200", "E3", "E40", "E80"]
    for name in ("report.md", "roc.png", "confusion.png", "elbow.png", "segments.png"):
        assert (out / name).stat().st_size > 0
    assert "bp_net" in (out / "report.md").read_text()


def test_score_writes_one_row_per_enterprise(tmp_path: Path) -> None:
    from tests.bundle_fixture import get_test_bundle

    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(get_test_bundle()), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 425 and frame["enterprise_id"].is_unique
    assert {"rating", *(f"rating_p_{r}" for r in RATINGS), "default_probability", "segment", "strength",
            "stability"} <= set(frame.columns)
    known = frame[frame["rating_known"]]
    assert len(known) == 123 and set(frame["rating"]) <= set(RATINGS)
    assert frame["default_probability"].between(0, 1).all()
    assert (frame[[f"rating_p_{r}" for r in RATINGS]].sum(axis=1) - 1).abs().max() < 1e-4

