"""Comparing two sets of credit lines: the in-process backtest's and the live stream's.

Pure: the ``riskmon compare`` command reads the lines (the backtest's ``lines.csv``,
the ``credit-lines`` topic) and calls :func:`compare_lines`.

Examples
--------
>>> a = {"E1": (500_000.0, 0.0585), "E2": (0.0, 0.0)}
>>> b = {"E1": (500_000.0, 0.0585), "E3": (100_000.0, 0.05)}
>>> [(d.enterprise_id, d.kind) for d in compare_lines(a, b)]
[('E3', 'amount')]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: Amounts are whole multiples of 10 000 yuan: any real difference is far above this.
DEFAULT_AMOUNT_TOL_YUAN = 0.5
DEFAULT_RATE_TOL = 1e-6


@dataclass(frozen=True, slots=True)
class LineDiff:
    """One enterprise whose lines differ (an absent line counts as amount 0, rate 0)."""

    enterprise_id: str
    kind: Literal["amount", "rate"]
    expected_amount_yuan: float
    actual_amount_yuan: float
    expected_rate: float
    actual_rate: float


def compare_lines(
    expected: Mapping[str, tuple[float, float]],
    actual: Mapping[str, tuple[float, float]],
    *,
    amount_tol_yuan: float = DEFAULT_AMOUNT_TOL_YUAN,
    rate_tol: float = DEFAULT_RATE_TOL,
) -> list[LineDiff]:
    """Differences between ``{enterprise_id: (amount_yuan, rate)}`` maps, sorted by id.

    An enterprise without a line on one side compares as ``(0, 0)``; the rate of a zero
    line is not compared (no loan, no rate).

    Examples
    --------
    >>> compare_lines({"E1": (100_000.0, 0.05)}, {"E1": (100_000.0, 0.0500000001)})
    []
    >>> compare_lines({"E1": (100_000.0, 0.05)}, {"E1": (100_000.0, 0.06)})[0].kind
    'rate'
    """
    out: list[LineDiff] = []
    for eid in sorted(set(expected) | set(actual)):
        ea, er = expected.get(eid, (0.0, 0.0))
        aa, ar = actual.get(eid, (0.0, 0.0))
        if abs(ea - aa) > amount_tol_yuan:
            out.append(LineDiff(eid, "amount", ea, aa, er, ar))
        elif ea > 0 and abs(er - ar) > rate_tol:
            out.append(LineDiff(eid, "rate", ea, aa, er, ar))
    return out
