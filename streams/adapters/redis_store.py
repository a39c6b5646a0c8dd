"""Redis adapters: feature state (atomic, exactly-once Lua), current scores, credit lines, registry.

Key layout (``docs/streaming.md``, "Redis layout"). Every key one Lua call touches carries
the enterprise's hash tag, so it lives in one Redis Cluster slot; portfolio-wide state is
split into :data:`SHARDS` hashes by a bucket tag, so no single key holds every enterprise::

    {prefix}:v2:{E123}:counters     hash  month counters and counterparty summaries (what scoring reads)
    {prefix}:v2:{E123}:cp           hash  counterparty counters cp:{d}:{id} / cpa:{d}:{id}
    {prefix}:v2:{E123}:meta         hash  name; newest (newest applied issue month); {topic}/{partition} -> last applied offset
    {prefix}:v2:{E123}:dd:{YYYYMM}  hash  dedup window: blake2b-8(event_id) -> content hash, newest `window` months only
    {prefix}:v2:{sNN}:enterprises   set   enterprise ids of bucket NN (crc32(id) % SHARDS)
    {prefix}:v2:{sNN}:scores        hash  enterprise id -> EnterpriseScore JSON
    {prefix}:v2:{sNN}:lines         hash  enterprise id -> CreditLine JSON
    {prefix}:v2:{sNN}:registry      hash  enterprise id -> {"name":..., "rating":...} JSON
    {prefix}:v2:watermark           str   the event-time watermark (ISO, compared as text)
    {prefix}:v2:latest              zset  client id -> its latest issue date (YYYYMMDD): the watermark's quorum
    {prefix}:v2:checkpoints         hash  {topic}/{partition} -> offset below which every event is applied (worker)
    {prefix}:v2:{E123}:alerts       hash  alert rule family (score, sales, line) -> WatchState JSON
    {prefix}:v2:alerts              hash  portfolio-wide alert subject (drift:..., dlq:...) -> WatchState JSON

A micro-batch is one pipelined round trip, not a transaction: per enterprise one EVALSHA
carrying the batch's deltas folded in Python into one sum, plus one SADD per bucket. The
script judges every event (offset fence, dedup window; :mod:`streams.adapters.dedup` is the
same rule in Python) and, when all are new, adds the sum and records them; otherwise it
writes nothing and says why, and the store sends the applied ones again, folded anew (a
second round trip, only for enterprises with a duplicate or a dead letter in the batch).
Either way the script returns the counters the batch named, after the write.
The clients are synchronous (redis-py): the worker runs a batch's store work in one
executor thread, which keeps the pipeline functions shared with the in-process backtest.

**Restarts that lose writes** (the worker's store, ``guard_restarts=True``; standalone Redis). A Redis
that restarts keeps what its append-only file holds, which may end before writes it acknowledged
(``appendfsync everysec``: up to about a second on a crash or a stalled disk) while the worker has
committed their Kafka offsets. So the store calls its scripts by EVALSHA only, under a name this
process alone uses: a restarted Redis has forgotten every script and answers NOSCRIPT without running
anything, which the store raises as :class:`~streams.errors.StoreRestarted`. With each batch's first
round trip it also records, per partition, the offset below which the previous batches are handled
(``checkpoints``, after their writes in the same ordered log, so it survives only as far as they do).
The worker then rewinds to :meth:`RedisFeatureStore.resume_offsets` and reads again; the fences make
the re-read events count once. Redis Cluster is not covered (a failover loses writes per shard).
``redis+cluster://`` (or ``rediss+cluster://``) URLs select redis-py's cluster client.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import redis
import redis.cluster

from streams.adapters.dedup import content_key, fence_field, id_hash
from streams.alerts import WatchState
from streams.errors import CorruptState, StoreRestarted, StoreUnavailable
from streams.events import CreditLine, EnterpriseScore
from streams.features.fold import EnterpriseState, check_delta
from streams.ports import DEAD_LETTER_VERDICTS, DEFAULT_DEDUP_WINDOW_MONTHS, DeltaItem, EnterpriseInfo, StoreWrite, Verdict
from streams.settings import RedisSettings

KEY_VERSION: Final = "v2"
#: Buckets of the portfolio-wide hashes (scores, lines, registry, enterprise sets); part of the layout.
SHARDS: Final = 16
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_VERDICTS: Final = {"a": Verdict.APPLIED, "r": Verdict.REDELIVERED, "d": Verdict.DUPLICATE,
                    "c": Verdict.CONFLICT, "l": Verdict.LATE}

# KEYS: counters, cp, meta (one slot: the enterprise's tag; the dedup keys are built from ARGV[4], same tag).
# ARGV: name ('' none), fence field ('' none), window months, dedup key prefix, n events, fence ceiling
#       (-1: none; a resent subset must not fence past a dead letter left out of it), then per event: id hash, content hash, issue month index, offset; then the folded delta: key, value, ...
# Returns {verdicts (one letter per event: a r d c l), field, value, ...} with every counter the delta names.
_APPLY_LUA: Final = """
local counters, cps, meta = KEYS[1], KEYS[2], KEYS[3]
local name, fence, window, ddprefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n, ceiling = tonumber(ARGV[5]), tonumber(ARGV[6])
local first_delta = 7 + 4 * n
local function ddkey(m) return ddprefix .. string.format('%04d%02d', math.floor(m / 12), m % 12 + 1) end
local function bigger(a, b)  -- non-negative integers as decimal strings
  if #a ~= #b then return #a > #b end
  return a > b
end
local function as_text(v, key, hash)  -- HINCRBY replies are doubles in Lua: exact below 2^53 only
  if math.abs(v) < 2^53 then return string.format('%d', v) end
  return redis.call('HGET', hash, key)
end
local last = -1
if fence ~= '' then last = tonumber(redis.call('HGET', meta, fence) or '-1') end
local old_newest = tonumber(redis.call('HGET', meta, 'newest') or '0')
local newest = old_newest
local verdicts, pending, recorded = {}, {}, {}
local fence_to, blocked, all_new = -1, false, true
for i = 0, n - 1 do
  local at = 7 + 4 * i
  local idh, content, month, off = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local v
  if fence ~= '' and off <= last then
    v = 'r'
  elseif month <= newest - window then
    v = 'l'
  else
    local pk = month .. ':' .. idh
    local prev = pending[pk]
    if prev == nil then prev = redis.call('HGET', ddkey(month), idh) end
    if not prev then
      v = 'a'
      pending[pk] = content
      recorded[#recorded + 1] = {month, idh, content}
      if month > newest then newest = month end
    elseif prev == content then
      v = 'd'
    else
      v = 'c'
    end
  end
  verdicts[#verdicts + 1] = v
  if v ~= 'a' then all_new = false end
  if fence ~= '' then
    if v == 'c' or v == 'l' then blocked = true
    elseif (not blocked) and off > fence_to then fence_to = off end
  end
end
if all_new and n > 0 then
  for j = first_delta, #ARGV, 2 do
    local key, inc = ARGV[j], ARGV[j + 1]
    local d = string.match(key, '^cp:([^:]*)')
    local da = string.match(key, '^cpa:([^:]*)')
    if d then
      local new = redis.call('HINCRBY', cps, key, inc)
      local old = new - tonumber(inc)
      if old <= 0 and new > 0 then redis.call('HINCRBY', counters, 's:ncp_' .. d, 1)
      elseif new <= 0 and old > 0 then redis.call('HINCRBY', counters, 's:ncp_' .. d, -1) end
    elseif da then
      local new = as_text(redis.call('HINCRBY', cps, key, inc), key, cps)
      redis.call('HINCRBY', counters, 's:cpasum_' .. da, inc)
      local cur = redis.call('HGET', counters, 's:cpamax_' .. da)
      if (not cur) or bigger(new, cur) then redis.call('HSET', counters, 's:cpamax_' .. da, new) end
    else
      redis.call('HINCRBY', counters, key, inc)
    end
  end
  if ceiling >= 0 and fence_to > ceiling then fence_to = ceiling end
  if fence ~= '' and fence_to > last then redis.call('HSET', meta, fence, fence_to) end
  if newest > old_newest then
    for m = math.max(old_newest - window + 1, 0), math.min(newest - window, old_newest) do
      redis.call('DEL', ddkey(m))
    end
    redis.call('HSET', meta, 'newest', newest)
  end
  for _, r in ipairs(recorded) do
    if r[1] > newest - window then redis.call('HSET', ddkey(r[1]), r[2], r[3]) end
  end
  if name ~= '' then redis.call('HSETNX', meta, 'name', name) end
end
local fields, named = {}, {}
for j = first_delta, #ARGV, 2 do
  local key = ARGV[j]
  local d = string.match(key, '^cpa?:([^:]*)')
  local names = d and {'s:ncp_' .. d, 's:cpasum_' .. d, 's:cpamax_' .. d} or {key}
  for _, f in ipairs(names) do
    if not named[f] then named[f] = true; fields[#fields + 1] = f end
  end
end
local out = {table.concat(verdicts)}
for start = 1, #fields, 1000 do
  local chunk = {}
  for k = start, math.min(start + 999, #fields) do chunk[#chunk + 1] = fields[k] end
  local values = redis.call('HMGET', counters, unpack(chunk))
  for k, f in ipairs(chunk) do
    out[#out + 1] = f
    out[#out + 1] = values[k] or '0'
  end
end
return out
"""

# KEYS: checkpoints.  ARGV: field, offset, ...  Run by EVALSHA only, like the apply script (see the module docstring).
_CHECKPOINT_LUA: Final = """
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return 1
"""

_WATERMARK_LUA: Final = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or ARGV[1] > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return cur
"""

# KEYS: latest (zset).  ARGV: id1, yyyymmdd1, id2, yyyymmdd2, ..., quorum.  Each client's latest date only
# grows (ZADD GT); returns the quorum-th most recent (false when none). One key per script: Redis Cluster safe.
_QUORUM_LUA: Final = """
for i = 1, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 1], ARGV[i])
end
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return false end
local k = math.min(tonumber(ARGV[#ARGV]), n) - 1
return redis.call('ZREVRANGE', KEYS[1], k, k, 'WITHSCORES')[2]
"""

# KEYS: latest.  ARGV: yyyymmdd.  The operator's correction lowers every client's latest date above the new
# watermark to it (else the quorum would push the watermark straight back); returns how many.
_CLAMP_LUA: Final = """
local above = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
for _, member in ipairs(above) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], member)
end
return #above
"""


def _yyyymmdd(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def connect(settings: RedisSettings) -> Any:
    """A client from settings (AUTH and TLS included); connects lazily, on first use.

    ``redis+cluster://host:port/0`` (``rediss+cluster://`` with TLS) gives redis-py's
    :class:`redis.cluster.RedisCluster`, which routes each key to the master of its slot.
    """
    kwargs: dict[str, Any] = {"socket_timeout": settings.socket_timeout_s, "socket_connect_timeout": settings.socket_timeout_s}
    if settings.username:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.ssl:
        kwargs["ssl"] = True
        if settings.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = str(settings.ssl_ca_certs)
    scheme, sep, rest = settings.url.partition("://")
    if sep and scheme in _CLUSTER_SCHEMES:
        return redis.cluster.RedisCluster.from_url(f"{_CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
    return redis.Redis.from_url(settings.url, **kwargs)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except redis.exceptions.NoScriptError as exc:  # only the guarded store's EVALSHA gets here
        raise StoreRestarted(f"Redis has forgotten this worker's scripts during {what}: it restarted and may have "
                             "lost acknowledged writes; rewind to resume_offsets()") from exc
    except redis.exceptions.ResponseError as exc:
        raise StoreUnavailable(f"Redis refused {what}: {exc}", retriable=False) from exc
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}; is redis-server up (scripts/services up)?") from exc


def shard_of(enterprise_id: str) -> int:
    """The bucket of an enterprise in the portfolio-wide hashes (stable: crc32).

    Examples
    --------
    >>> shard_of("E1"), shard_of("E1") == shard_of("E1")
    (5, True)
    """
    return zlib.crc32(enterprise_id.encode()) % SHARDS


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{KEY_VERSION}"

    def ent(self, enterprise_id: str, kind: str) -> str:
        return f"{self.base}:{{{enterprise_id}}}:{kind}"

    def glob(self, kind: str) -> str:
        return f"{self.base}:{kind}"

    def shard(self, n: int, kind: str) -> str:
        return f"{self.base}:{{s{n:02d}}}:{kind}"

    def shards(self, kind: str) -> list[str]:
        return [self.shard(n, kind) for n in range(SHARDS)]


def _by_shard(ids: Sequence[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for eid in ids:
        out.setdefault(shard_of(eid), []).append(eid)
    return out


class _Immediate:
    """The part of a pipeline the feature store uses, sending each command at once (Redis Cluster)."""

    def __init__(self, client: Any) -> None:
        self._r = client
        self._results: list[Any] = []

    def evalsha(self, *args: Any) -> None:
        self._results.append(self._r.evalsha(*args))

    def script_load(self, script: str) -> Any:
        return self._r.script_load(script)

    def sadd(self, key: str, *members: str) -> None:
        self._results.append(self._r.sadd(key, *members))

    def execute(self) -> list[Any]:
        out, self._results = self._results, []
        return out


class RedisFeatureStore:
    """:class:`streams.ports.FeatureStore` on Redis (see the module docstring for the layout)."""

    def __init__(self, client: Any, prefix: str = "riskmon", *,
                 dedup_window_months: int = DEFAULT_DEDUP_WINDOW_MONTHS, guard_restarts: bool = False) -> None:
        self._r = client
        self._k = _Keys(prefix)
        self._window = str(dedup_window_months)
        # guarded: scripts named for this process only (a comment), so another worker's reload cannot hide a restart
        self._guard = guard_restarts and not isinstance(client, redis.cluster.RedisCluster)
        name = f"\n-- riskmon feature store {uuid.uuid4().hex}\n" if self._guard else ""
        self._apply = client.register_script(_APPLY_LUA + name)
        self._checkpoint = client.register_script(_CHECKPOINT_LUA + name)
        self._checkpoints_key = self._k.glob("checkpoints")
        self._armed = not self._guard  # a guarded store writes only after resume_offsets()
        self._pending: dict[str, int] = {}  # fence field -> next offset, applied; recorded with the next batch
        self._advance = client.register_script(_WATERMARK_LUA)
        self._quorum = client.register_script(_QUORUM_LUA)
        self._latest_key = self._k.glob("latest")
        self._clamp = client.register_script(_CLAMP_LUA)

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        return self.apply_many([DeltaItem(enterprise_id, event_id, delta, name)]).applied[0]

    def _write_pipeline(self) -> Any:
        # redis-py's cluster pipeline refuses EVALSHA: on a cluster each call goes to its slot's master at once
        if isinstance(self._r, redis.cluster.RedisCluster):
            return _Immediate(self._r)
        return self._r.pipeline(transaction=False)

    def _call(self, pipe: Any, eid: str, fence: str | None, group: Sequence[DeltaItem], ceiling: int) -> None:
        name = next((item.name for item in group if item.name), None) or ""
        args: list[str | bytes | int] = [name, fence or "", self._window, self._k.ent(eid, "dd:"), len(group), ceiling]
        folded: dict[str, int] = {}
        for item in group:
            args += [id_hash(item.event_id), content_key(item), item.month, item.offset]
            for key, inc in item.delta.items():
                folded[key] = folded.get(key, 0) + inc
        for key, total in folded.items():
            args += [key, total]
        keys = [self._k.ent(eid, "counters"), self._k.ent(eid, "cp"), self._k.ent(eid, "meta")]
        if self._guard:  # never loaded behind our back: NOSCRIPT is how a restart shows
            pipe.evalsha(self._apply.sha, len(keys), *keys, *args)
        else:
            self._apply(keys=keys, args=args, client=pipe)

    def apply_many(self, items: Sequence[DeltaItem]) -> StoreWrite:
        if not items:
            return StoreWrite([], {})
        for item in items:
            check_delta(item.delta)
        if not self._armed:
            raise StoreRestarted("the feature store has not checked where to resume since it (or Redis) started; "
                                 "rewind to resume_offsets()")
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault((item.enterprise_id, fence_field(item)), []).append(index)
        verdicts: list[Verdict] = [Verdict.APPLIED] * len(items)
        counters: dict[str, dict[str, int]] = {}
        todo = {key: indices for key, indices in groups.items()}
        ceilings: dict[tuple[str, str | None], int] = {}  # the fence stays below a group's first dead letter
        first = True
        for _attempt in range(4):
            with self._guarded("apply_many"):
                pipe = self._write_pipeline()
                recorded = dict(self._pending) if first and self._guard else {}
                if recorded:  # after the previous batches' writes, before this one's: a lower bound in the log
                    pipe.evalsha(self._checkpoint.sha, 1, self._checkpoints_key,
                                 *(x for kv in recorded.items() for x in kv))
                for (eid, fence), indices in todo.items():
                    self._call(pipe, eid, fence, [items[i] for i in indices], ceilings.get((eid, fence), -1))
                if first:
                    for n, ids in _by_shard(list(dict.fromkeys(eid for eid, _ in groups))).items():
                        pipe.sadd(self._k.shard(n, "enterprises"), *ids)
                results = pipe.execute()[1 if recorded else 0:]
            if recorded and self._pending == recorded:
                self._pending = {}
            again: dict[tuple[str, str | None], list[int]] = {}
            for (key, indices), result in zip(todo.items(), results, strict=False):
                letters = result[0].decode() if isinstance(result[0], bytes) else str(result[0])
                values = counters.setdefault(key[0], {})
                for f, v in zip(result[1::2], result[2::2], strict=True):
                    try:
                        values[f.decode()] = int(v)
                    except ValueError as exc:
                        raise CorruptState(f"non-integer counter {f!r} for {key[0]} under {self._k.base}") from exc
                judged = [_VERDICTS[ch] for ch in letters]
                dead = [items[i].offset for i, v in zip(indices, judged, strict=True) if v in DEAD_LETTER_VERDICTS]
                if dead:
                    ceilings[key] = min([ceilings.get(key, dead[0]), *dead]) - 1
                if first:
                    for i, verdict in zip(indices, judged, strict=True):
                        verdicts[i] = verdict
                    applied = [i for i, v in zip(indices, judged, strict=True) if v is Verdict.APPLIED]
                    if applied and len(applied) < len(indices):  # nothing written: send the new ones alone
                        again[key] = applied
                elif any(v is not Verdict.APPLIED for v in judged):  # judged again differently: a second writer
                    for i, verdict in zip(indices, judged, strict=True):
                        verdicts[i] = verdict
                    applied = [i for i, v in zip(indices, judged, strict=True) if v is Verdict.APPLIED]
                    if applied:
                        again[key] = applied
            if not again:
                return StoreWrite(verdicts, counters)
            todo, first = again, False
        raise StoreUnavailable("apply_many: the verdicts kept changing between attempts (another writer?)")

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        """:func:`_translated`; a restart found disarms the store until :meth:`resume_offsets`."""
        try:
            with _translated(what):
                yield
        except StoreRestarted:
            self._armed, self._pending = False, {}
            raise

    def handled(self, topic: str, next_offsets: Mapping[int, int]) -> None:
        if self._guard and self._armed:
            for partition, offset in next_offsets.items():
                fence = f"{topic}/{partition}"
                self._pending[fence] = max(self._pending.get(fence, 0), offset)

    def sync(self) -> None:
        if not self._guard:
            return
        if not self._armed:
            raise StoreRestarted("the feature store has not checked where to resume; rewind to resume_offsets()")
        recorded = dict(self._pending)
        with self._guarded("sync"):
            self._r.evalsha(self._checkpoint.sha, 1, self._checkpoints_key, *(x for kv in recorded.items() for x in kv))
        if self._pending == recorded:
            self._pending = {}

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int] | None:
        """The recorded checkpoints of these partitions; loads this store's scripts, so it writes again.

        One pipeline, so one connection and one Redis process: the scripts are loaded into the
        server whose checkpoints are read (a restart in between would make the next write NOSCRIPT).
        """
        if not self._guard:
            return None
        if self._armed and self._pending:  # a rebalance, not a restart: what this process applied counts
            try:
                self.sync()
            except StoreRestarted:
                pass  # the pending checkpoint went with the writes it covered
        with _translated("resume_offsets"):
            pipe = self._r.pipeline(transaction=False)
            pipe.script_load(self._apply.script)
            pipe.script_load(self._checkpoint.script)
            pipe.hmget(self._checkpoints_key, [f"{topic}/{p}" for p in partitions])
            *_, raw = pipe.execute()
        self._armed, self._pending = True, {}
        return {p: int(v) for p, v in zip(partitions, raw, strict=True) if v is not None}

    def load(self, enterprise_id: str) -> EnterpriseState:
        return self.load_many([enterprise_id], with_counterparties=True)[0]

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = False,
                  with_counterparties: bool = False) -> list[EnterpriseState]:
        if not enterprise_ids:
            return []
        with _translated("load_many"):
            pipe = self._r.pipeline(transaction=False)
            for eid in enterprise_ids:
                pipe.hgetall(self._k.ent(eid, "counters"))
                pipe.hget(self._k.ent(eid, "meta"), "name")
                if with_counterparties:
                    pipe.hgetall(self._k.ent(eid, "cp"))
            results = pipe.execute()
        step = 3 if with_counterparties else 2
        out = []
        for n, eid in enumerate(enterprise_ids):
            counters_raw, name, *rest = results[n * step : (n + 1) * step]
            try:
                counters = {k.decode(): int(v) for k, v in counters_raw.items()}
                cps = {k.decode(): int(v) for k, v in rest[0].items()} if with_counterparties else {}
            except ValueError as exc:
                raise CorruptState(f"non-integer counter for {eid} under {self._k.base}: {exc}") from exc
            out.append(EnterpriseState(eid, counters, set(), name.decode() if name else None, cps))
        return out

    def enterprise_ids(self) -> set[str]:
        with _translated("enterprise_ids"):
            pipe = self._r.pipeline(transaction=False)
            for key in self._k.shards("enterprises"):
                pipe.smembers(key)
            return {m.decode() for members in pipe.execute() for m in members}

    def watermark(self) -> dt.date | None:
        with _translated("watermark"):
            raw = self._r.get(self._k.glob("watermark"))
        return dt.date.fromisoformat(raw.decode()) if raw else None

    def invalidate(self, enterprise_ids: Iterable[str] | None = None) -> None:
        """Nothing is cached in process: every read goes to Redis."""

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        with _translated("advance_watermark"):
            raw = self._advance(keys=[self._k.glob("watermark")], args=[issue_date.isoformat()])
        return dt.date.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))

    def advance_watermark_quorum(self, latest: Mapping[str, dt.date], quorum: int) -> dt.date | None:
        args: list[str | int] = []
        for eid, day in latest.items():
            args += [eid, _yyyymmdd(day)]
        with _translated("advance_watermark_quorum"):
            raw = self._quorum(keys=[self._latest_key], args=[*args, quorum])
        if raw is None:
            return self.watermark()
        v = int(float(raw))
        return self.advance_watermark(dt.date(v // 10000, v // 100 % 100, v % 100))  # monotone, atomic

    def set_watermark(self, day: dt.date) -> int:
        with _translated("set_watermark"):
            n = self._clamp(keys=[self._latest_key], args=[_yyyymmdd(day)])
            self._r.set(self._k.glob("watermark"), day.isoformat())
        return int(n)

    def latest_dates(self, n: int) -> list[tuple[str, dt.date]]:
        with _translated("latest_dates"):
            rows: list[tuple[bytes, float]] = self._r.zrevrange(
                self._latest_key, 0, max(0, n - 1), withscores=True)
        out = []
        for member, score in rows:
            v = int(score)
            out.append((member.decode(), dt.date(v // 10000, v // 100 % 100, v % 100)))
        return out


class _ShardedHash:
    """A portfolio-wide map enterprise id -> bytes, split into SHARDS hashes by a bucket tag."""

    def __init__(self, client: Any, prefix: str, kind: str) -> None:
        self._r = client
        self._k = _Keys(prefix)
        self._kind = kind

    def put(self, mapping: Mapping[str, str], what: str) -> None:
        if not mapping:
            return
        with _translated(what):
            pipe = self._r.pipeline(transaction=False)
            for n, ids in _by_shard(list(mapping)).items():
                pipe.hset(self._k.shard(n, self._kind), mapping={eid: mapping[eid] for eid in ids})
            pipe.execute()

    def get(self, enterprise_id: str, what: str) -> bytes | None:
        with _translated(what):
            raw: bytes | None = self._r.hget(self._k.shard(shard_of(enterprise_id), self._kind), enterprise_id)
        return raw

    def all(self, what: str) -> dict[str, bytes]:
        with _translated(what):
            pipe = self._r.pipeline(transaction=False)
            for key in self._k.shards(self._kind):
                pipe.hgetall(key)
            return {k.decode(): v for part in pipe.execute() for k, v in part.items()}


class RedisScoreStore:
    """:class:`streams.ports.ScoreStore` on one Redis hash (one small row per enterprise)."""

    def __init__(self, client: Any, prefix: str = "riskmon") -> None:
        self._h = _ShardedHash(client, prefix, "scores")

    def put_many(self, scores: Sequence[EnterpriseScore]) -> None:
        self._h.put({s.enterprise_id: s.model_dump_json() for s in scores}, "put scores")

    def get(self, enterprise_id: str) -> EnterpriseScore | None:
        raw = self._h.get(enterprise_id, "get score")
        return EnterpriseScore.model_validate_json(raw) if raw else None

    def all(self) -> dict[str, EnterpriseScore]:
        return {k: EnterpriseScore.model_validate_json(v) for k, v in self._h.all("all scores").items()}


class RedisCreditLineStore:
    """:class:`streams.ports.CreditLineStore` on one Redis hash."""

    def __init__(self, client: Any, prefix: str = "riskmon") -> None:
        self._h = _ShardedHash(client, prefix, "lines")

    def put_many(self, lines: Sequence[CreditLine]) -> None:
        self._h.put({line.enterprise_id: line.model_dump_json() for line in lines}, "put lines")

    def all(self) -> dict[str, CreditLine]:
        return {k: CreditLine.model_validate_json(v) for k, v in self._h.all("all lines").items()}


class RedisAlertStateStore:
    """:class:`streams.ports.AlertStateStore` on Redis: per-enterprise hashes (hash-tagged), one global hash.

    A key ``family:subject`` whose subject is a known enterprise family (``score``, ``sales``,
    ``line``) lives in ``{prefix}:v1:{subject}:alerts``; the others in ``{prefix}:v1:alerts``.
    """

    _PER_ENTERPRISE: Final = ("score", "sales", "line")

    def __init__(self, client: redis.Redis, prefix: str = "riskmon") -> None:
        self._r = client
        self._k = _Keys(prefix)

    def _where(self, key: str) -> tuple[str, str]:
        family, _, subject = key.partition(":")
        if family in self._PER_ENTERPRISE and subject:
            return self._k.ent(subject, "alerts"), family
        return self._k.glob("alerts"), key

    def load_many(self, keys: Sequence[str]) -> dict[str, WatchState | None]:
        if not keys:
            return {}
        with _translated("load alert states"):
            pipe = self._r.pipeline(transaction=False)
            for key in keys:
                pipe.hget(*self._where(key))
            raw = pipe.execute()
        return {key: WatchState.from_json(value) for key, value in zip(keys, raw, strict=True)}

    def put_many(self, states: Mapping[str, WatchState]) -> None:
        if not states:
            return
        with _translated("put alert states"):
            pipe = self._r.pipeline(transaction=False)
            for key, state in states.items():
                name, field_ = self._where(key)
                pipe.hset(name, field_, state.to_json())
            pipe.execute()


class RedisRegistry:
    """:class:`streams.ports.EnterpriseRegistry` on one Redis hash, cached in process.

    The cache is read on first use and again after :meth:`refresh` (clients change rarely).
    """

    def __init__(self, client: Any, prefix: str = "riskmon") -> None:
        self._h = _ShardedHash(client, prefix, "registry")
        self._cache: dict[str, EnterpriseInfo] | None = None

    def put_many(self, infos: Sequence[EnterpriseInfo]) -> None:
        self._h.put({i.enterprise_id: json.dumps({"name": i.name, "rating": i.rating}, ensure_ascii=False)
                     for i in infos}, "put registry")
        self._cache = None

    def refresh(self) -> None:
        cache = {}
        for eid, v in self._h.all("read registry").items():
            row = json.loads(v)
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


def clear_prefix(client: Any, prefix: str) -> int:
    """Delete every key under ``prefix`` (tests and ``riskmon worker --reset``); returns how many.

    Keys of the older layout ``{prefix}:v1:*`` go too. On a cluster, keys are deleted one
    by one (a multi-key DEL must stay within one slot).
    """
    n = 0
    cluster = isinstance(client, redis.cluster.RedisCluster)
    with _translated("clear prefix"):
        for version in ("v1", KEY_VERSION):
            for batch in _batched(client.scan_iter(match=f"{prefix}:{version}:*", count=1000), 500):
                if cluster:
                    pipe = client.pipeline(transaction=False)
                    for key in batch:
                        pipe.delete(key)
                    n += sum(pipe.execute())
                else:
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
