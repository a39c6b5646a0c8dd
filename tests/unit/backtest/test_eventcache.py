"""The validated Parquet cache gives exactly the events ``load_events`` gives, in the same order."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from streams.backtest.eventcache import cache_key, load_cached_events
from streams.dataset import DEFAULT_DATA_DIR, load_events

HEADER = ["enterprise_id", "direction", "invoice_no", "date", "counterparty_id", "amount", "tax", "total", "status"]
ROWS = [
    ["E2", "out", "0007", "2019-03-02", "B1", "100.00", "13.00", "113.00", "valid"],
    ["E1", "in", "1", "2019-03-01", "A1", "50.00", "6.50", "56.50", " valid"],  # dirt: leading space
    ["E1", "in", "1", "2019-03-01", "A1", "50.00", "6.50", "56.50", "valid"],  # repeated triple: a second event
    ["E1", "out", "9", "2019-01-15", "B2", "-20.00", "-2.60", "-22.60", "valid"],  # a return
    ["E1", "out", "10", "2019-01-15", "B2", "20.00", "2.60", "22.60", "void"],
    ["E2", "out", "8", "2019-02-01", "B1", "10.00", "1.30", "99.00", "valid"],  # rejected: inconsistent total
    ["E3", "in", "5", "2018-12-31", "A2", "1.00", "0.13", "1.13", "valid"],
]


def _data(tmp: Path) -> Path:
    d = tmp / "data"
    d.mkdir()
    shutil.copy(DEFAULT_DATA_DIR / "enterprises.csv", d / "enterprises.csv")
    with open(d / "invoices.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(ROWS)
    return d


def test_cached_events_equal_load_events_in_order(tmp_path: Path) -> None:
    data = _data(tmp_path)
    expected, rejected = load_events(data)
    built = load_cached_events(data, tmp_path / "cache")
    assert built.path.exists() and built.rejected == len(rejected) == 1
    again = load_cached_events(data, tmp_path / "cache")  # read back from the Parquet file
    for cached in (built, again):
        events = list(cached.iter_events(batch_rows=2))
        assert [e.model_dump() for e in events] == [e.model_dump() for e in expected]
        assert events == expected
        assert [e.amount_cents for e in events] == [e.amount_cents for e in expected]
    assert (again.first_date, again.last_date) == (expected[0].issue_date, expected[-1].issue_date)
    only = again.only({"E1"})
    assert [e.event_id for e in only.iter_events()] == [e.event_id for e in expected if e.enterprise_id == "E1"]


def test_a_changed_invoice_file_gets_a_new_cache(tmp_path: Path) -> None:
    data = _data(tmp_path)
    key = cache_key(data)
    with open(data / "invoices.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["E3", "in", "6", "2019-01-01", "A2", "1.00", "0.13", "1.13", "valid"])
    assert cache_key(data) != key
    assert len(load_cached_events(data, tmp_path / "cache")) == 7


def test_a_deferred_cache_write_gives_the_same_file(tmp_path: Path) -> None:
    data = _data(tmp_path)
    writes: list = []
    built = load_cached_events(data, tmp_path / "cache", defer_write=writes)
    assert not built.path.exists() and len(writes) == 1
    writes[0]()
    assert built.path.exists() and not list((tmp_path / "cache").glob("*.tmp"))
    again = load_cached_events(data, tmp_path / "cache")
    assert again.table.equals(built.table) and again.rejected == built.rejected == 1
