"""The explicit, versioned wire codec: JSON (UTF-8) for every event, never pickle.

Examples
--------
>>> import datetime as dt
>>> from streams.events import DeadLetter
>>> dl = DeadLetter(reason="empty", error="empty message", source_topic="invoices", source_partition=0,
...     source_offset=5, raw_base64="", failed_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
>>> decode(encode(dl), DeadLetter) == dl
True
>>> encode_key("E1")
b'E1'
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """An event as JSON bytes (its ``schema_version`` travels inside)."""
    return event.model_dump_json().encode()


def decode(raw: bytes | str, model: type[M]) -> M:
    """Validate JSON bytes as ``model`` (raises pydantic's ValidationError when invalid)."""
    return model.model_validate_json(raw)


def encode_key(key: str) -> bytes:
    return key.encode()


def decode_key(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw is not None else None
