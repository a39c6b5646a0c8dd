"""The dedup window's hashes: one home for the event-id key and the content hash, row by row and by columns.

Both are 64-bit SipHash-2-4 (``pandas.util.hash_array``, vectorised in C, deterministic across
processes and runs) under the fixed key :data:`HASH_KEY`, stored big-endian as 8 bytes. They are part
of the Redis layout (``v3``): changing them would make a re-send of an event already applied look new.

Examples
--------
>>> id_key("E1-out-7-0") == id_keys(np.array(["E1-out-7-0"], dtype=object)).astype(">u8").tobytes()
True
>>> len(content_key(content_text(("a", "b")))), content_text(("a", "b"))
(8, 'a\\x1fb')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pandas as pd

#: The SipHash key; part of the Redis layout ``v3`` (see the module docstring).
HASH_KEY: Final = "riskmon-dedup-v3"
HASH_BYTES: Final = 8


def _hash(texts: np.ndarray) -> np.ndarray:
    out: np.ndarray = pd.util.hash_array(np.asarray(texts, dtype=object), hash_key=HASH_KEY, categorize=False)
    return out


def id_keys(event_ids: np.ndarray) -> np.ndarray:
    """The dedup window's key of each event id (uint64; its big-endian bytes are stored)."""
    return _hash(event_ids)


def content_text(parts: Sequence[str]) -> str:
    """What an invoice says, as the content hash reads it: its fields but ``produced_at``, ``\\x1f``-joined."""
    return "\x1f".join(parts)


def content_hashes(texts: np.ndarray) -> np.ndarray:
    """The content hash of each :func:`content_text` (uint64): a re-send hashes equal, other content not."""
    return _hash(texts)


def id_key(event_id: str) -> bytes:
    """:func:`id_keys` of one event id, as the 8 bytes stored."""
    return int(_hash(np.array([event_id], dtype=object))[0]).to_bytes(HASH_BYTES, "big")


def content_key(text: str) -> bytes:
    """:func:`content_hashes` of one :func:`content_text`, as the 8 bytes stored."""
    return int(_hash(np.array([text], dtype=object))[0]).to_bytes(HASH_BYTES, "big")
