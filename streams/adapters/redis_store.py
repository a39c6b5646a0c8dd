"""Redis adapters: feature state (atomic, idempotent Lua), current scores, credit lines, registry.

Keys are versioned and hash-tagged per enterprise, so every key one script touches
lives in the same Redis Cluster slot::

    {prefix}:v1:{E123}:counters   hash  counter name -> integer (the fold's counters)
    {prefix}:v1:{E123}:seen       set   event ids already applied
    {prefix}:v1:{E123}:meta       hash  name
    {prefix}:v1:enterprises       set   enterprise ids (written beside the script, not in it)
    {prefix}:v1:watermark         str   the latest issue date applied (ISO, compared as text)
    {prefix}:v1:scores            hash  enterprise id -> EnterpriseScore JSON
    {prefix}:v1:lines             hash  enterprise id -> CreditLine JSON
    {prefix}:v1:registry          hash  enterprise id -> {"name":..., "rating":...} JSON

A micro-batch is one pipelined round trip: one EVALSHA per enterprise in the batch
(all its events), each of which SADDs every event id to the seen-set and HINCRBYs the
counters only when the id was new, so a redelivered event never counts twice.
The clients are synchronous (redis-py): the worker runs a batch's store work in one
executor thread, which keeps the pipeline functions shared with the in-process backtest.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import redis

from streams.errors import CorruptState, StoreUnavailable
from streams.events import CreditLine, EnterpriseScore
from streams.features.fold import EnterpriseState
from streams.ports import DeltaItem, EnterpriseInfo
from streams.settings import RedisSettings

KEY_VERSION: Final = "v1"
_WHITESPACE: Final = re.compile(r"\s")

# KEYS: seen, counters, meta.  ARGV: name ('' = none), then per event: event_id, "k1 v1 k2 v2 ..."
# (counter names never hold whitespace: counterparty ids are validated to exclude it).
# Returns one flag per event: 1 applied, 0 duplicate.
_APPLY_LUA: Final = """
local name = ARGV[1]
local flags = {}
local sums = {}
local order = {}
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    local key = nil
    for token in string.gmatch(ARGV[i + 1], '%S+') do
      if key == nil then
        key = token
      else
        local cur = sums[key]
        if #token > 15 then
          -- beyond 15 digits a Lua double is not exact: let Redis add the 64-bit integer itself
          redis.call('HINCRBY', KEYS[2], key, token)
        elseif cur == nil then
          order[#order + 1] = key
          sums[key] = tonumber(token)
        elseif math.abs(cur) > 4e15 then
          redis.call('HINCRBY', KEYS[2], key, string.format('%d', cur))
          sums[key] = tonumber(token)
        else
          sums[key] = cur + tonumber(token)
        end
        key = nil
      end
    end
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
-- one HINCRBY per distinct counter of the batch (sums stay below 2^53, where doubles are exact)
for _, key in ipairs(order) do
  redis.call('HINCRBY', KEYS[2], key, string.format('%d', sums[key]))
end
if name ~= '' then redis.call('HSETNX', KEYS[3], 'name', name) end
return flags
"""

_WATERMARK_LUA: Final = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or ARGV[1] > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return cur
"""


def connect(settings: RedisSettings) -> redis.Redis:
    """A client from settings (AUTH and TLS included); connects lazily, on first use."""
    kwargs: dict[str, Any] = {"socket_timeout": settings.socket_timeout_s, "socket_connect_timeout": settings.socket_timeout_s}
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.ssl:
        kwargs["ssl"] = True
        if settings.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = str(settings.ssl_ca_certs)
    return redis.Redis.from_url(settings.url, **kwargs)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        raise StoreUnavailable(f"Redis refused {what}: {exc}", retriable=False) from exc
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}; is redis-server up (scripts/services up)?") from exc


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{KEY_VERSION}"

    def ent(self, enterprise_id: str, kind: str) -> str:
        return f"{self.base}:{{{enterprise_id}}}:{kind}"

    def glob(self, kind: str) -> str:
        return f"{self.base}:{kind}"


class RedisFeatureStore:
    """:class:`streams.ports.FeatureStore` on Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "riskmon") -> None:
        self._r = client
        self._k = _Keys(prefix)
        self._apply = client.register_script(_APPLY_LUA)
        self._advance = client.register_script(_WATERMARK_LUA)

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        return self.apply_many([DeltaItem(enterprise_id, event_id, delta, name)])[0]

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        if not items:
            return []
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.enterprise_id, []).append(index)
        flags = [False] * len(items)
        with _translated("apply_many"):
            pipe = self._r.pipeline(transaction=False)
            for eid, indices in groups.items():
                name = next((items[i].name for i in indices if items[i].name), None) or ""
                args: list[str] = [name]
                for i in indices:
                    if any(_WHITESPACE.search(key) for key in items[i].delta):
                        raise ValueError(f"counter names must not contain whitespace: {sorted(items[i].delta)}")
                    args.append(items[i].event_id)
                    args.append(" ".join(f"{key} {int(inc)}" for key, inc in items[i].delta.items()))
                self._apply(keys=[self._k.ent(eid, "seen"), self._k.ent(eid, "counters"), self._k.ent(eid, "meta")],
                            args=args, client=pipe)
            pipe.sadd(self._k.glob("enterprises"), *groups)
            results = pipe.execute()
        for indices, group_flags in zip(groups.values(), results, strict=False):
            for i, flag in zip(indices, group_flags, strict=True):
                flags[i] = bool(flag)
        return flags

    def load(self, enterprise_id: str) -> EnterpriseState:
        return self.load_many([enterprise_id])[0]

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = True) -> list[EnterpriseState]:
        if not enterprise_ids:
            return []
        with _translated("load_many"):
            pipe = self._r.pipeline(transaction=False)
            for eid in enterprise_ids:
                pipe.hgetall(self._k.ent(eid, "counters"))
                pipe.hget(self._k.ent(eid, "meta"), "name")
                if with_seen:
                    pipe.smembers(self._k.ent(eid, "seen"))
            results = pipe.execute()
        step = 3 if with_seen else 2
        out = []
        for n, eid in enumerate(enterprise_ids):
            counters_raw, name, *rest = results[n * step : (n + 1) * step]
            try:
                counters = {k.decode(): int(v) for k, v in counters_raw.items()}
            except ValueError as exc:
                raise CorruptState(f"non-integer counter for {eid} under {self._k.base}: {exc}") from exc
            seen = {s.decode() for s in rest[0]} if with_seen else set()
            out.append(EnterpriseState(eid, counters, seen, name.decode() if name else None))
        return out

    def enterprise_ids(self) -> set[str]:
        with _translated("enterprise_ids"):
            return {m.decode() for m in self._r.smembers(self._k.glob("enterprises"))}

    def watermark(self) -> dt.date | None:
        with _translated("watermark"):
            raw = self._r.get(self._k.glob("watermark"))
        return dt.date.fromisoformat(raw.decode()) if raw else None

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        with _translated("advance_watermark"):
            raw = self._advance(keys=[self._k.glob("watermark")], args=[issue_date.isoformat()])
        return dt.date.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))


class RedisScoreStore:
    """:class:`streams.ports.ScoreStore` on one Redis hash (one small row per enterprise)."""

    def __init__(self, client: redis.Redis, prefix: str = "riskmon") -> None:
        self._r = client
        self._key = _Keys(prefix).glob("scores")

    def put_many(self, scores: Sequence[EnterpriseScore]) -> None:
        if scores:
            with _translated("put scores"):
                self._r.hset(self._key, mapping={s.enterprise_id: s.model_dump_json() for s in scores})

    def get(self, enterprise_id: str) -> EnterpriseScore | None:
        with _translated("get score"):
            raw = self._r.hget(self._key, enterprise_id)
        return EnterpriseScore.model_validate_json(raw) if raw else None

    def all(self) -> dict[str, EnterpriseScore]:
        with _translated("all scores"):
            raw = self._r.hgetall(self._key)
        return {k.decode(): EnterpriseScore.model_validate_json(v) for k, v in raw.items()}


class RedisCreditLineStore:
    """:class:`streams.ports.CreditLineStore` on one Redis hash."""

    def __init__(self, client: redis.Redis, prefix: str = "riskmon") -> None:
        self._r = client
        self._key = _Keys(prefix).glob("lines")

    def put_many(self, lines: Sequence[CreditLine]) -> None:
        if lines:
            with _translated("put lines"):
                self._r.hset(self._key, mapping={line.enterprise_id: line.model_dump_json() for line in lines})

    def all(self) -> dict[str, CreditLine]:
        with _translated("all lines"):
            raw = self._r.hgetall(self._key)
        return {k.decode(): CreditLine.model_validate_json(v) for k, v in raw.items()}


class RedisRegistry:
    """:class:`streams.ports.EnterpriseRegistry` on one Redis hash, cached in process.

    The cache is read on first use and again after :meth:`refresh` (clients change rarely).
    """

    def __init__(self, client: redis.Redis, prefix: str = "riskmon") -> None:
        self._r = client
        self._key = _Keys(prefix).glob("registry")
        self._cache: dict[str, EnterpriseInfo] | None = None

    def put_many(self, infos: Sequence[EnterpriseInfo]) -> None:
        if infos:
            with _translated("put registry"):
                self._r.hset(self._key, mapping={
                    i.enterprise_id: json.dumps({"name": i.name, "rating": i.rating}, ensure_ascii=False) for i in infos})
        self._cache = None

    def refresh(self) -> None:
        with _translated("read registry"):
            raw = self._r.hgetall(self._key)
        cache = {}
        for k, v in raw.items():
            eid, row = k.decode(), json.loads(v)
            cache[eid] = EnterpriseInfo(eid, row["name"], row["rating"])
        self._cache = cache

    def _all(self) -> dict[str, EnterpriseInfo]:
        if self._cache is None:
            self.refresh()
        return self._cache or {}

    def get(self, enterprise_id: str) -> EnterpriseInfo | None:
        return self._all().get(enterprise_id)

    def enterprise_ids(self) -> set[str]:
        return set(self._all())


def clear_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (tests and ``riskmon worker --reset``); returns how many."""
    n = 0
    with _translated("clear prefix"):
        for batch in _batched(client.scan_iter(match=f"{prefix}:{KEY_VERSION}:*", count=1000), 500):
            n += client.delete(*batch)
    return n


def _batched(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
