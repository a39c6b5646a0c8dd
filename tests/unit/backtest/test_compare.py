"""The comparison of two sets of credit lines, and reading a backtest's lines.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from streams.backtest.compare import compare_lines
from streams.cli import UserError, main
from streams.commands.compare import backtest_lines


def test_missing_and_zero_lines_compare_equal_and_rates_of_zero_lines_are_ignored() -> None:
    assert compare_lines({"E1": (0.0, 0.07)}, {}) == []
    diffs = compare_lines({"E1": (100_000.0, 0.05), "E2": (200_000.0, 0.06)}, {"E2": (210_000.0, 0.06)})
    assert [(d.enterprise_id, d.kind, d.actual_amount_yuan) for d in diffs] == [("E1", "amount", 0.0),
                                                                                  ("E2", "amount", 210_000.0)]


def test_backtest_lines_takes_the_last_date_unless_told(tmp_path: Path) -> None:
    pd.DataFrame({"as_of": ["2019-12-31", "2020-02-21"], "enterprise_id": ["E1", "E1"],
                  "amount_yuan": [100_000.0, 200_000.0], "rate": [0.05, 0.06]}).to_csv(tmp_path / "lines.csv")
    assert backtest_lines(tmp_path) == ("2020-02-21", {"E1": (200_000.0, 0.06)})
    assert backtest_lines(tmp_path, "2019-12-31")[1] == {"E1": (100_000.0, 0.05)}
    with pytest.raises(UserError, match="no lines as of 2018-01-01"):
        backtest_lines(tmp_path, "2018-01-01")


def test_compare_without_a_backtest_is_a_one_line_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--backtest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lines.csv not found" in err and len(err.strip().splitlines()) == 1
