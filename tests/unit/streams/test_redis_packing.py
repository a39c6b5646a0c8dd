"""The apply script's per-enterprise arguments computed for a whole batch at once equal the same arguments
computed enterprise by enterprise (the month runs and the offsets-ascend flag; no Redis needed)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.redis_store import _ascending_by_group, _runs_by_group


def _runs_of_one(months: np.ndarray) -> bytes:
    """One enterprise's months in event order as ``"month count "`` runs, one event at a time."""
    out: list[list[int]] = []
    for m in months.tolist():
        if out and out[-1][0] == m:
            out[-1][1] += 1
        else:
            out.append([m, 1])
    return "".join(f"{m} {c} " for m, c in out).encode()


events = st.lists(st.tuples(st.integers(0, 5), st.integers(24_230, 24_234), st.integers(-1, 40)), min_size=1,
                  max_size=60)


@settings(max_examples=300, deadline=None)
@given(events)
def test_runs_and_ascending_by_group_equal_the_per_enterprise_ones(rows: list[tuple[int, int, int]]) -> None:
    rows.sort(key=lambda r: r[0])  # grouped, event order kept within a group (a stable sort)
    codes, months, offsets = (np.asarray(c, dtype=np.int64) for c in zip(*rows, strict=True))
    present, starts = np.unique(codes, return_index=True)
    bounds = [*starts.tolist(), len(codes)]
    runs, ascending = _runs_by_group(codes, months, starts), _ascending_by_group(codes, offsets, starts)
    assert len(runs) == len(ascending) == len(present)
    for j in range(len(present)):
        s, e = bounds[j], bounds[j + 1]
        assert runs[j] == _runs_of_one(months[s:e])
        assert ascending[j] == ("1" if all(a <= b for a, b in zip(offsets[s:e - 1], offsets[s + 1:e])) else "0")
