"""Errors of the allocator package: one base class, one for bad input."""

from __future__ import annotations


class AllocatorError(Exception):
    """Base class of every error the allocator raises."""


class AllocationInputError(AllocatorError, ValueError):
    """The problem as given cannot be solved (bad budget, probability, rating, bounds...).

    The message is one line that says what is wrong and what is expected.
    """


class SolverError(AllocatorError):
    """A solver could not produce or certify a solution (e.g. the MILP hit its time limit)."""
