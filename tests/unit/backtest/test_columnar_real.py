"""The columnar engine, the streaming fold and the Spark job agree on the real data (slow).

Every counter (to the fen) and every feature vector (bit for bit) of every enterprise at
every quarterly as-of date of the full CUMCM data set; then the same fold run by Spark in
local mode gives identical tables.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from streams.backtest.asof import parse_as_of
from streams.backtest.columnar import FoldTables, counters_of, fold_duckdb, nan_equal, walk_states
from streams.backtest.engine import chunk_by_as_of
from streams.backtest.eventcache import CachedEvents, load_cached_events
from streams.dataset import DEFAULT_DATA_DIR
from streams.features.fold import EnterpriseState, apply_invoice
from streams.features.vector import WINDOW_MONTHS, features_from_arrays, month_index, to_vector

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cached() -> CachedEvents:
    # the CLI's own cache folder: keyed by the data and validator hashes, so sharing it is safe
    return load_cached_events(DEFAULT_DATA_DIR, ROOT / "var" / "cache")


@pytest.fixture(scope="module")
def quarterly(cached: CachedEvents) -> tuple[dt.date, ...]:
    return parse_as_of("quarterly", cached.first_date, cached.last_date)


@pytest.fixture(scope="module")
def duck(cached: CachedEvents, quarterly: tuple[dt.date, ...]) -> FoldTables:
    return fold_duckdb(cached.table, quarterly)


def _m_counters(state: EnterpriseState, as_of: dt.date) -> dict[str, int]:
    end = month_index(as_of)
    return {k: v for k, v in state.counters.items() if k.startswith("m:") and v
            and end - WINDOW_MONTHS < int(k[2:6]) * 12 + int(k[6:8]) - 1 <= end}


def test_every_counter_and_feature_vector_at_every_quarter_equals_the_streaming_fold(
        cached: CachedEvents, quarterly: tuple[dt.date, ...], duck: FoldTables) -> None:
    by_date: dict[dt.date, list] = {}
    for st in walk_states(duck):  # one chunk: all 425 enterprises
        by_date.setdefault(st.as_of, []).append(st)
    states: dict[str, EnterpriseState] = {}
    checked = 0
    for as_of, batch in chunk_by_as_of(cached.iter_events(), quarterly, key=lambda e: e.issue_date):
        if as_of is None:
            for event in batch:
                states[event.enterprise_id] = apply_invoice(states.get(event.enterprise_id), event)
            continue
        walked = by_date.get(as_of, [])
        ids = [e for st in walked for e in st.enterprise_ids]
        assert sorted(ids) == sorted(states), as_of
        for st in walked:
            rows = features_from_arrays(st.arrays)
            for i, eid in enumerate(st.enterprise_ids):
                state = states[eid]
                assert counters_of(st, i) == _m_counters(state, as_of), (eid, as_of)
                expected = to_vector(state, as_of)
                assert nan_equal(dict(zip(expected, rows[i].tolist(), strict=True)), expected), (eid, as_of)
                checked += 1
        assert sum(st.n_events for st in walked[:1]) == sum(s.n_events for s in states.values())
    assert checked > 3_000  # 425 enterprises x 14 quarters, minus those not yet invoicing


def _sorted(table: pa.Table, keys: list[str]) -> dict[str, list]:
    t = table.sort_by([(k, "ascending") for k in keys])
    return {name: [None if v is None else (int(v) if isinstance(v, (int, np.integer)) else v)
                   for v in t.column(name).to_pylist()] for name in t.column_names}


def test_the_spark_job_folds_the_real_data_into_the_same_tables(
        cached: CachedEvents, quarterly: tuple[dt.date, ...], duck: FoldTables) -> None:
    from streams.backtest.spark import fold_spark, spark_session

    session = spark_session("local[2]")
    try:
        spark = fold_spark(session, str(cached.path), quarterly)
    finally:
        session.stop()
    assert (spark.n_rows, spark.n_rejected, spark.n_duplicates) == (duck.n_rows, duck.n_rejected, duck.n_duplicates)
    keys = ["enterprise_id", "bin", "month", "direction"]
    assert _sorted(spark.monthly, keys) == _sorted(duck.monthly, keys)
    keys = ["enterprise_id", "direction", "bin"]
    assert _sorted(spark.counterparties, keys) == _sorted(duck.counterparties, keys)
    assert _sorted(spark.names, ["enterprise_id"]) == _sorted(duck.names, ["enterprise_id"])
