from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main


def test_score_with_a_missing_bundle_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bundle directory not found" in err[0]


def test_train_with_a_missing_data_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "enterprises.csv" in err[0]


def test_holdout_file_with_unknown_ids_is_rejected(tmp_path: Path) -> None:
    from streams.cli import UserError
    from streams.commands.train import read_holdout

    f = tmp_path / "h.txt"
    f.write_text("E1\n\nE999 # not there\n")
    with pytest.raises(UserError, match="E999"):
        read_holdout(f, {"E1", "E2"})
    f.write_text("E1\n# c\nE2\n")
    assert read_holdout(f, {"E1", "E2"}) == ["E1", "E2"]
