"""The worker's one-line advice on Redis's hash encoding (docs/performance.md, "Redis hash encoding")."""

from __future__ import annotations

from typing import Any

import redis

from streams.adapters.redis_store import LISTPACK_ENTRIES_ADVISED, encoding_advice


class _Configured(redis.Redis):
    """A client (never connected) whose CONFIG GET answers ``value``, or raises ``error``."""

    def __init__(self, value: str | None = None, error: Exception | None = None) -> None:
        super().__init__()
        self.value, self.error = value, error

    def config_get(self, pattern: str = "*", *args: Any, **kwargs: Any) -> dict[str, str]:  # type: ignore[override]
        if self.error is not None:
            raise self.error
        return {} if self.value is None else {"hash-max-listpack-entries": self.value}


def test_a_redis_above_the_advised_listpack_size_gets_one_line() -> None:
    advice = encoding_advice(_Configured("512"))
    assert advice is not None and "\n" not in advice
    assert "512" in advice and str(LISTPACK_ENTRIES_ADVISED) in advice and "docs/performance.md" in advice


def test_no_advice_when_fine_or_when_it_cannot_be_told() -> None:
    assert encoding_advice(_Configured(str(LISTPACK_ENTRIES_ADVISED))) is None
    assert encoding_advice(_Configured("16")) is None
    assert encoding_advice(_Configured(None)) is None  # an older Redis without the setting
    assert encoding_advice(_Configured(error=redis.exceptions.NoPermissionError("CONFIG not allowed"))) is None
    assert encoding_advice(object()) is None  # a cluster client or anything else: not asked
