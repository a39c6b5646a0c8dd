"""Errors raised by the streaming shell; one base class, a ``retriable`` flag where it matters."""

from __future__ import annotations


class StreamError(Exception):
    """Base class of riskmon's stream-side errors.

    ``retriable`` says whether retrying the same operation later may succeed
    (a store that is restarting) or not (a corrupt value).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class StoreUnavailable(StreamError):
    """The feature/score store could not be reached or answered with an error."""

    retriable = True


class CorruptState(StreamError):
    """A stored value could not be decoded (wrong schema version or not our data)."""

    retriable = False


class PublishFailed(StreamError):
    """Not every message of a batch was acknowledged by the broker (``retriable`` unless it never can be)."""

    retriable = True
