"""The backtest on a slice of the real data with the real model bundle and the real allocator (slow).

The slice is a data set folder holding every invoice of a few dozen labeled enterprises
(defaulters among them), in the source file's order, so its events and ids are exactly
those of the full data set for these enterprises.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from allocator import ChurnCurves
from streams.adapters.allocation import make_allocate
from streams.adapters.memory import InMemoryRegistry
from streams.backtest.engine import allocate_snapshots, replay
from streams.cli import main
from streams.dataset import DEFAULT_DATA_DIR, load_events
from tests.unit.backtest.helpers import write_slice

pytestmark = pytest.mark.slow

#: 36 labeled enterprises, 9 of them defaulted (E1..E123 are labeled; D ratings default).
SLICE = tuple(f"E{i}" for i in range(90, 124)) + ("E2", "E5")


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slice(DEFAULT_DATA_DIR, tmp_path_factory.mktemp("slice"), set(SLICE))


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    from tests.bundle_fixture import get_test_bundle

    return get_test_bundle()


def test_no_look_ahead_with_the_real_bundle_and_allocator(slice_dir: Path, bundle_dir: Path) -> None:
    from models.bundle import load_bundle

    events, _ = load_events(slice_dir)
    scorer = load_bundle(bundle_dir)
    registry = InMemoryRegistry.from_data_dir(slice_dir)
    allocate = make_allocate(ChurnCurves.from_csv(slice_dir / "churn.csv"))
    as_of = dt.date(2018, 9, 30)
    later = [e for e in events if e.issue_date > as_of]
    assert len(later) > 1000  # the check below is not vacuous
    full = replay(events, [as_of, events[-1].issue_date], registry, scorer).snapshots[0]
    past = replay([e for e in events if e.issue_date <= as_of], [as_of], registry, scorer).snapshots[0]
    assert full.scores == past.scores and full.scores
    assert (full.numeric.tobytes() == past.numeric.tobytes())
    kw = {"budget_yuan": 10_000_000, "solver": "exact", "bundle_version": scorer.version}
    a = allocate_snapshots([full], allocate, registry, **kw)[0]
    b = allocate_snapshots([past], allocate, registry, **kw)[0]
    assert a.lines == b.lines
    assert a.summary.model_dump(exclude={"runtime_s"}) == b.summary.model_dump(exclude={"runtime_s"})
    assert any(line.amount_yuan > 0 for line in a.lines.values())


def _backtest(slice_dir: Path, bundle_dir: Path, out: Path, *extra: str, as_of: str = "quarterly") -> dict:
    code = main(["backtest", "--data", str(slice_dir), "--bundle", str(bundle_dir), "--as-of", as_of,
                 "--budget", "10000000", "--out", str(out), "--no-progress", *extra])
    assert code == 0
    return json.loads((out / "summary.json").read_text())


def test_backtest_command_on_the_slice_is_deterministic_with_or_without_the_cache(
    slice_dir: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = _backtest(slice_dir, bundle_dir, tmp_path / "a", "--solver", "anneal", "--seed", "3", *cache)
    # the second run validates the invoice file again instead of reading the Parquet cache: same result
    second = _backtest(slice_dir, bundle_dir, tmp_path / "b", "--solver", "anneal", "--seed", "3", "--no-cache")
    assert list((tmp_path / "cache").glob("events-*.parquet"))
    assert first["dates"] == second["dates"]
    assert (tmp_path / "a" / "lines.csv").read_bytes() == (tmp_path / "b" / "lines.csv").read_bytes()
    assert first["as_of_dates"][-1] == "2020-02-21" and len(first["dates"]) == len(first["as_of_dates"])
    for row in first["dates"]:
        assert row["total_lent"] <= 10_000_000
    assert (tmp_path / "a" / "report.html").stat().st_size > 10_000


def test_scenario_run_reports_the_difference(slice_dir: Path, bundle_dir: Path, tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[3] / "streams" / "backtest" / "examples" / "covid_2020.json"
    summary = _backtest(slice_dir, bundle_dir, tmp_path, "--scenario", str(scenario), "--cache-dir", str(tmp_path / "c"),
                        as_of="2019-12-31,2020-02-21")
    assert summary["scenario"]["name"] == "covid-2020"
    # the shock starts in 2020: nothing changes before, and the lines move after
    before, after = summary["scenario"]["dates"], summary["dates"]
    assert before[0] == after[0]
    assert (tmp_path / "scenario_diff.csv").read_text().count("\n") > 1


def test_a_byte_order_mark_is_read_and_a_missing_column_is_one_line(
    slice_dir: Path, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    plain = _backtest(slice_dir, bundle_dir, tmp_path / "plain", "--cache-dir", str(tmp_path / "c1"),
                      as_of="2019-12-31,2020-02-21")
    bom_dir = tmp_path / "bom"
    shutil.copytree(slice_dir, bom_dir)
    (bom_dir / "invoices.csv").write_bytes(b"\xef\xbb\xbf" + (slice_dir / "invoices.csv").read_bytes())
    for engine in ("columnar", "events"):
        with_bom = _backtest(bom_dir, bundle_dir, tmp_path / f"bom-{engine}", "--engine", engine,
                             "--cache-dir", str(tmp_path / f"c-{engine}"), as_of="2019-12-31,2020-02-21")
        assert with_bom["dates"] == plain["dates"] and with_bom["n_events"] == plain["n_events"] > 1000
        assert (tmp_path / f"bom-{engine}" / "lines.csv").read_bytes() == (tmp_path / "plain" / "lines.csv").read_bytes()
    broken = tmp_path / "no-status"
    shutil.copytree(slice_dir, broken)
    lines = (slice_dir / "invoices.csv").read_text(encoding="utf-8").splitlines()
    (broken / "invoices.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    for engine in ("columnar", "events"):
        code = main(["backtest", "--data", str(broken), "--bundle", str(bundle_dir), "--budget", "10000000",
                     "--out", str(tmp_path / f"out-{engine}"), "--cache-dir", str(tmp_path / f"c2-{engine}"),
                     "--engine", engine, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.count("\n") == 0 and "invoices.csv: the header has no status column" in err, err
        assert not (tmp_path / f"out-{engine}" / "summary.json").exists()
