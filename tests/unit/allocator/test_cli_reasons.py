"""``riskmon allocate`` (success and every input error as one line) and the reason codes / diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator import Applicant, allocate, diff, make_problem, solve_exact
from streams.cli import main
from tests.unit.allocator.strategies import real_curves

CURVES = real_curves()
HEADER = "enterprise_id,rating,default_probability,segment,industry,extra\n"
ROWS = "E1,A,0.01,s1,i1,x\nE2,B,0.03,s1,i2,x\nE3,C,0.06,s2,i1,x\nE4,D,0.9,s2,i2,x\n"


def write(tmp_path: Path, text: str, name: str = "scores.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("solver", ["exact", "anneal", "rules"])
def test_cli_writes_the_allocation(tmp_path: Path, solver: str) -> None:
    scores = write(tmp_path, HEADER + ROWS)
    out = tmp_path / "out" / "alloc.json"
    assert main(["allocate", "--scores", str(scores), "--budget", "2500000", "--solver", solver,
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["solver"] == solver
    assert [ln["enterprise_id"] for ln in data["lines"]] == ["E1", "E2", "E3", "E4"]
    assert data["total_amount"] == sum(ln["amount"] for ln in data["lines"]) <= 2_500_000
    assert data["lines"][3]["amount"] == 0 and data["lines"][3]["reasons"] == ["rating_D"]
    assert set(data["lines"][0]) >= {"amount", "rate", "expected_profit", "reasons"}
    if solver == "anneal":
        assert data["optimum"] >= data["expected_profit"] - 1e-6 and data["gap"] >= -1e-9
    if solver == "exact":
        assert data["gap"] == 0.0 and data["optimum"] == data["expected_profit"]


def test_cli_segment_policy(tmp_path: Path) -> None:
    scores = write(tmp_path, HEADER + ROWS)
    out = tmp_path / "alloc.json"
    assert main(["allocate", "--scores", str(scores), "--budget", "3000000", "--policy", "segment",
                 "--solver", "anneal", "--seed", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["policy"] == "segment" and data["total_amount"] <= 3_000_000


@pytest.mark.parametrize(("text", "budget", "message"), [
    (HEADER + ROWS, "-1", "budget -1.0 must be"),
    (HEADER + "E1,A,1.5,s1,i1,x\n", "1e6", "outside [0, 1]"),
    (HEADER + "E1,A,-0.1,s1,i1,x\n", "1e6", "outside [0, 1]"),
    (HEADER + "E1,A,abc,s1,i1,x\n", "1e6", "not a number"),
    (HEADER + "E1,Z,0.1,s1,i1,x\n", "1e6", "unknown rating 'Z'"),
    (HEADER, "1e6", "has no rows"),
    ("", "1e6", "is empty"),
    ("enterprise_id,rating,default_probability\nE1,A,0.1\n", "1e6", "lacks column(s) segment"),
    (HEADER + "E1,A,0.1,s1,i1,x\nE1,B,0.1,s1,i1,x\n", "1e6", "appears twice"),
    (HEADER + ROWS, "nan", "budget nan must be"),
])
def test_cli_input_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, budget: str,
                                       message: str) -> None:
    scores = write(tmp_path, text)
    out = tmp_path / "alloc.json"
    assert main(["allocate", "--scores", str(scores), f"--budget={budget}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not out.exists()


def test_cli_missing_file_and_bad_churn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "--scores", str(tmp_path / "nope.csv"), "--budget", "1e6"]) == 2
    assert "does not exist" in capsys.readouterr().err
    scores = write(tmp_path, HEADER + ROWS)
    churn = write(tmp_path, "rate,churn_A\n0.04,0\n", "churn.csv")
    assert main(["allocate", "--scores", str(scores), "--budget", "1e6", "--churn", str(churn)]) == 2
    assert "lacks column" in capsys.readouterr().err


def test_reason_codes() -> None:
    apps = [Applicant("E1", "A", 0.01), Applicant("E2", "A", 0.01), Applicant("E3", "C", 0.5),
            Applicant("E4", "D", 0.9), Applicant("E5", "B", 0.02)]
    result = solve_exact(make_problem(apps, 1_500_000, CURVES))
    reasons = {ln.enterprise_id: ln.reasons for ln in result.lines}
    assert reasons["E4"] == ("rating_D",)
    assert reasons["E3"] == ("negative_expected_profit",)
    assert reasons["E1"] == ("lent", "at_max_amount", "rate_capped_by_churn")
    assert reasons["E2"] == ("lent", "rate_capped_by_churn", "budget_exhausted")
    assert reasons["E5"] == ("budget_exhausted",)
    capped = solve_exact(make_problem([Applicant("E1", "A", 0.01, segment="s"), Applicant("E2", "A", 0.01, segment="s")],
                                      5_000_000, CURVES, segment_cap_share=0.3))
    assert capped.total_amount_yuan == 1_500_000
    assert any("concentration_cap" in ln.reasons for ln in capped.lines)


def test_diff_explains_changes() -> None:
    before_apps = [Applicant("E1", "A", 0.01), Applicant("E2", "B", 0.02), Applicant("E3", "A", 0.01)]
    after_apps = [Applicant("E1", "A", 0.01), Applicant("E2", "C", 0.4), Applicant("E4", "A", 0.005)]
    before = allocate(make_problem(before_apps, 3_000_000, CURVES))
    after = allocate(make_problem(after_apps, 3_000_000, CURVES))
    changes = diff(before, after)
    assert "E1" not in changes  # unchanged
    assert changes["E2"][:2] == ("amount_decreased", "rate_decreased")  # declined now
    assert changes["E2"][-2:] == ("rating_changed:B->C", "default_probability_increased")
    assert changes["E3"] == ("line_closed",)  # no longer scored
    assert changes["E4"] == ("new",)
    assert diff(None, before) == {"E1": ("new",), "E2": ("new",), "E3": ("new",)}
