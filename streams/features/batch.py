"""The batch feature table: every enterprise's features as of one date, through the same fold.

There is no second feature implementation: the table is the incremental fold
(:func:`streams.features.fold_all`) over every invoice dated on or before ``as_of``,
read out with :func:`~streams.features.to_vector` and :func:`~streams.features.to_sequence`.
The models package receives plain arrays from here (``models`` never imports ``streams``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.schema import NUMERIC_FEATURES, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events, load_enterprises, parse_rating
from streams.events import InvoiceEvent
from streams.features.fold import EnterpriseState, fold_all
from streams.features.names import classify_name
from streams.features.vector import to_sequence, to_vector

#: The last invoice date of the CUMCM 2020 C data set (the default as-of date).
LAST_INVOICE_DATE = dt.date(2020, 2, 21)


@dataclass(frozen=True, slots=True)
class FeatureTable:
    """Per-enterprise model inputs, rows in ``enterprise_ids`` order.

    Attributes
    ----------
    enterprise_ids : n ids (enterprises.csv order).
    numeric : (n, len(NUMERIC_FEATURES)) float64, NaN where undefined.
    categorical : n ``(industry, legal_form)`` tuples read from the name.
    sequences : (n, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS) float32.
    ratings : n known ratings or None.
    defaulted : (n,) float64, 1/0 where known, NaN otherwise.
    as_of : the date the features are computed as of.
    """

    enterprise_ids: tuple[str, ...]
    numeric: np.ndarray
    categorical: tuple[tuple[str, str], ...]
    sequences: np.ndarray
    ratings: tuple[str | None, ...]
    defaulted: np.ndarray
    as_of: dt.date

    def labeled_mask(self) -> np.ndarray:
        """Rows with both a known rating and a known default flag."""
        return np.asarray(np.array([r is not None for r in self.ratings]) & ~np.isnan(self.defaulted))


def events_until(events: Iterable[InvoiceEvent | RejectedRow], as_of: dt.date) -> Iterable[InvoiceEvent]:
    """Valid events issued on or before ``as_of`` (rejected rows dropped)."""
    for event in events:
        if not isinstance(event, RejectedRow) and event.issue_date <= as_of:
            yield event


def table_from_states(
    states: dict[str, EnterpriseState],
    enterprise_ids: Iterable[str],
    names: dict[str, str],
    ratings: dict[str, str | None],
    defaulted: dict[str, float],
    as_of: dt.date,
) -> FeatureTable:
    """Read the feature table out of folded states (an enterprise with no invoice gets an empty state)."""
    ids = tuple(enterprise_ids)
    numeric = np.empty((len(ids), len(NUMERIC_FEATURES)), dtype=np.float64)
    sequences = np.empty((len(ids), len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS), dtype=np.float32)
    for i, eid in enumerate(ids):
        state = states.get(eid) or EnterpriseState(eid)
        vector = to_vector(state, as_of)
        numeric[i] = [vector[name] for name in NUMERIC_FEATURES]
        sequences[i] = to_sequence(state, as_of)
    return FeatureTable(
        enterprise_ids=ids,
        numeric=numeric,
        categorical=tuple(classify_name(names.get(eid)) for eid in ids),
        sequences=sequences,
        ratings=tuple(ratings.get(eid) for eid in ids),
        defaulted=np.array([defaulted.get(eid, math.nan) for eid in ids], dtype=np.float64),
        as_of=as_of,
    )


def build_feature_table(
    data_dir: Path = DEFAULT_DATA_DIR,
    as_of: dt.date = LAST_INVOICE_DATE,
    enterprise_ids: Collection[str] | None = None,
) -> FeatureTable:
    """Fold the data set's invoices up to ``as_of`` and return every enterprise's features.

    Streams the invoice file (memory stays low); about 40 s on the full 1.1 M invoices.

    Parameters
    ----------
    data_dir : a folder laid out like ``data/cumcm2020c``.
    as_of : only invoices issued on or before this date are folded.
    enterprise_ids : restrict to these enterprises (default: all of enterprises.csv).
    """
    enterprises = load_enterprises(data_dir)
    ids = [eid for eid in enterprises["enterprise_id"] if enterprise_ids is None or eid in enterprise_ids]
    wanted = set(ids)
    states = fold_all(e for e in events_until(iter_events(data_dir), as_of) if e.enterprise_id in wanted)
    names = dict(zip(enterprises["enterprise_id"], enterprises["name"], strict=True))
    ratings: dict[str, str | None] = {
        eid: parse_rating(r)
        for eid, r in zip(enterprises["enterprise_id"], enterprises["rating"].astype(object), strict=True)
    }
    defaulted = {
        eid: float(d)
        for eid, d in zip(enterprises["enterprise_id"], enterprises["defaulted"], strict=True)
        if d == d  # not NaN
    }
    return table_from_states(states, ids, names, ratings, defaulted, as_of)
