"""Shared churn curves and hypothesis strategies for the allocator tests."""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

from allocator import Applicant, ChurnCurves

CHURN_CSV = Path(__file__).resolve().parents[3] / "data" / "cumcm2020c" / "churn.csv"


def real_curves(monotone: bool = False) -> ChurnCurves:
    """The bank's churn table from the repository's data set."""
    return ChurnCurves.from_csv(CHURN_CSV, monotone=monotone)


SMALL_CURVES = ChurnCurves(
    rates=(0.04, 0.06, 0.08, 0.11, 0.15),
    churn_by_rating={"A": (0.0, 0.3, 0.55, 0.7, 0.9), "B": (0.0, 0.25, 0.5, 0.72, 0.88),
                     "C": (0.0, 0.2, 0.45, 0.7, 0.86)},
)

probabilities = st.one_of(st.floats(0.0, 0.2), st.floats(0.0, 1.0), st.sampled_from([0.0, 0.01, 0.05, 1.0]))


@st.composite
def applicant_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 30, segments: int = 3,
                    industries: int = 2) -> list[Applicant]:
    """Applicants with distinct ids, random ratings, probabilities, segments and industries."""
    n = draw(st.integers(min_size, max_size))
    return [
        Applicant(f"E{i}", draw(st.sampled_from("ABCD")), draw(probabilities),
                  segment=f"s{draw(st.integers(0, segments - 1))}",
                  industry=f"i{draw(st.integers(0, industries - 1))}")
        for i in range(n)
    ]
