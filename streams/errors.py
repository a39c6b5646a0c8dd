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


class StoreRestarted(StoreUnavailable):
    """The store may have lost acknowledged writes (it restarted) since this process last wrote to it.

    Nothing of the failed call was written. Retrying the same items is not enough: events whose
    Kafka offsets were already committed may be missing. The caller rewinds each partition to
    :meth:`streams.ports.FeatureStore.resume_offsets` (which also lets the store write again) and
    reads from there; the store's fences make the events read twice count once.
    """


class CorruptState(StreamError):
    """A stored value could not be decoded (wrong schema version or not our data)."""

    retriable = False


class PublishFailed(StreamError):
    """Not every message of a batch was acknowledged by the broker (``retriable`` unless it never can be)."""

    retriable = True
