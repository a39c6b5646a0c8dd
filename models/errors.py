"""Errors of the models package: one base class, each message names the problem and the file."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by :mod:`models`."""


class BundleError(ModelError):
    """A model bundle cannot be loaded or used: missing file, corrupt weights, schema mismatch, wrong shape.

    Examples
    --------
    >>> str(BundleError("schema hash mismatch", "bundle/manifest.json"))
    'bundle/manifest.json: schema hash mismatch'
    """

    def __init__(self, problem: str, path: object | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(problem if path is None else f"{path}: {problem}")


class NotFittedError(ModelError):
    """A model or preprocessor was used before it was fitted."""
