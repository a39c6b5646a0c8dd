"""Redis adapters: feature state (atomic, exactly-once Lua), current scores, credit lines, registry.

Key layout (``docs/streaming.md``, "Redis layout"). Every key one Lua call touches carries
the enterprise's hash tag, so it lives in one Redis Cluster slot; portfolio-wide state is
split into :data:`SHARDS` hashes by a bucket tag, so no single key holds every enterprise::

    {prefix}:v3:{E123}:counters     hash  month counters and counterparty summaries (what scoring reads)
    {prefix}:v3:{E123}:cp           hash  counterparty counters cp:{d}:{id} / cpa:{d}:{id}
    {prefix}:v3:{E123}:meta         hash  name; newest (newest applied issue month); {topic}/{partition} -> last applied offset
    {prefix}:v3:{E123}:dd:{YYYYMM}  hash  dedup window: event-id key -> content key (8 bytes each, streams.hashing), newest `window` months only
    {prefix}:v3:{sNN}:enterprises   set   enterprise ids of bucket NN (crc32(id) % SHARDS)
    {prefix}:v3:{sNN}:scores        hash  enterprise id -> EnterpriseScore JSON
    {prefix}:v3:{sNN}:lines         hash  enterprise id -> CreditLine JSON
    {prefix}:v3:{sNN}:registry      hash  enterprise id -> {"name":..., "rating":...} JSON
    {prefix}:v3:watermark           str   the event-time watermark (ISO, compared as text)
    {prefix}:v3:latest              zset  client id -> its latest issue date (YYYYMMDD): the watermark's quorum
    {prefix}:v3:checkpoints         hash  {topic}/{partition} -> offset below which every event is applied (worker)
    {prefix}:v3:{E123}:alerts       hash  alert rule family (score, sales, line) -> WatchState JSON
    {prefix}:v3:alerts              hash  portfolio-wide alert subject (drift:..., dlq:...) -> WatchState JSON

A micro-batch is one pipelined round trip, not a transaction: one EVALSHA per up to
:data:`GROUPS_PER_CALL` enterprises and about :data:`EVENTS_PER_CALL` events (one enterprise per call on a
Redis Cluster, where a script's keys share a slot), each enterprise's events packed into a few binary arguments (event-id and content
keys, months, offsets) and its deltas folded into one sum before they leave Python, plus one SADD
per bucket. The script judges every event (offset fence, dedup window; :mod:`streams.adapters.dedup`
is the same rule in Python) and, when all of an enterprise's are new, adds the sum and records them;
otherwise it writes nothing for that enterprise and says why, and the store sends the applied ones
again, folded anew (a second round trip, only for enterprises with a duplicate or a dead letter).
:meth:`RedisFeatureStore.apply_columns` takes a batch as columns (the worker's hot path);
:meth:`RedisFeatureStore.apply_many` one item per event; both send the same packed groups.
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
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import redis
import redis.cluster

from streams.adapters.dedup import content_hash, fence_field, id_hash
from streams.alerts import WatchState
from streams.errors import CorruptState, StoreRestarted, StoreUnavailable
from streams.events import CreditLine, EnterpriseScore
from streams.features.fold import EnterpriseState, check_delta, fold_columns, joined_runs
from streams.ports import (DEAD_LETTER_VERDICTS, DEFAULT_DEDUP_WINDOW_MONTHS, ColumnsWrite, DeltaItem, EnterpriseInfo,
                           StoreWrite, Verdict, VERDICT_LETTERS)
from streams.settings import RedisSettings

if TYPE_CHECKING:
    from streams.columns import InvoiceColumns

KEY_VERSION: Final = "v3"  # v3: the dedup window keyed by SipHash (streams.hashing); v2 state is not read
#: Enterprises one apply script takes on a standalone Redis (a cluster takes one: a script's keys share a slot).
GROUPS_PER_CALL: Final = 64
#: A call closes once its enterprises hold this many events (an enterprise's events never split): a script blocks
#: Redis while it runs, so a large batch is several calls of bounded length, not one long one.
EVENTS_PER_CALL: Final = 16_384
#: Redis's ``hash-max-listpack-entries`` riskmon is tuned for (Redis's default is 512): :func:`encoding_advice`.
LISTPACK_ENTRIES_ADVISED: Final = 64
#: Buckets of the portfolio-wide hashes (scores, lines, registry, enterprise sets); part of the layout.
SHARDS: Final = 16
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_VERDICTS: Final = {chr(code): verdict for verdict, code in VERDICT_LETTERS.items()}

# One call applies the groups of several enterprises (standalone Redis; one enterprise per call on a cluster).
# KEYS: per group: counters, cp, meta (one slot: the enterprise's tag; its dedup keys ``...:dd:YYYYMM`` are built
#       from the counters key, same tag).
# ARGV: window months, then per group 11 values: name ('' none), fence field ('' none), fence ceiling (-1: none; a
#       resent subset must not fence past a dead letter left out of it), event-id keys (8 bytes each), content keys
#       (8 bytes each), issue months as runs "month count month count " in event order, offsets (int64
#       little-endian each; they ascend when an enterprise's events come from one partition), then the folded
#       delta in three parts (names hold no whitespace): the counters as "key value key value ", with
#       s:cpasum_{d} the sum of the direction's cpa increments when it has any; then for direction 'in' and for 'out'
#       its counterparties as "id count amount id count amount " (the increments of cp:{d}:{id} and
#       cpa:{d}:{id}; '-': not in the delta); '1' when the offsets ascend.
# Returns per group: the verdicts (one letter per event: a r d c l), then "field value field value " for every
#       counter the delta names (counterparty keys: their summaries), after the write.
# Redis work per group is a fixed number of commands (reads with HMGET, writes with one variadic HSET per hash),
# whatever its events and counters: a command called from Lua costs far more than the Lua arithmetic.
_APPLY_LUA: Final = """
local window = tonumber(ARGV[1])
local out = {}
local LIMIT = 4e15  -- below 2^52: the sum of two such doubles is exact
local function bigger(a, b)  -- non-negative integers as decimal strings
  if #a ~= #b then return #a > #b end
  return a > b
end
local function ym(m) return string.format('%04d%02d', math.floor(m / 12), m % 12 + 1) end
-- unpack() has a stack limit: at most 1000 values per command (ranges of the list, never copies)
local function hmget(hash, fields)  -- field -> value (false when absent)
  local got = {}
  for s = 1, #fields, 1000 do
    local e = math.min(s + 999, #fields)
    local values = redis.call('HMGET', hash, unpack(fields, s, e))
    for k = s, e do got[fields[k]] = values[k - s + 1] end
  end
  return got
end
local function hset(hash, pairs)  -- field value field value ...
  for s = 1, #pairs, 1000 do redis.call('HSET', hash, unpack(pairs, s, math.min(s + 999, #pairs))) end
end
local function add(hash, key, old, inc, written)  -- the exact sum as text; HINCRBY where doubles cannot hold it
  local x, y = tonumber(old or '0'), tonumber(inc)
  if math.abs(x) < LIMIT and math.abs(y) < LIMIT and #inc < 16 then return string.format('%d', x + y) end
  redis.call('HINCRBY', hash, key, inc)
  written[key] = true
  return redis.call('HGET', hash, key)
end
local function parse(payload)
  local keys, incs = {}, {}
  for key, inc in string.gmatch(payload, '(%S+) (%S+)') do keys[#keys + 1] = key; incs[#incs + 1] = inc end
  return keys, incs
end
for g = 0, (#KEYS / 3) - 1 do
  local counters, cps, meta = KEYS[3 * g + 1], KEYS[3 * g + 2], KEYS[3 * g + 3]
  local at = 2 + 11 * g
  local name, fence, ceiling = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local ids, contents, months, offsets = ARGV[at + 3], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local mk, mi = parse(ARGV[at + 7])
  local cpd = {}  -- direction -> its counterparties {ids, count increments, amount increments} ('-': none)
  for d, payload in pairs({['in'] = ARGV[at + 8], out = ARGV[at + 9]}) do
    if payload ~= '' then
      local cids, cinc, ainc = {}, {}, {}
      for id, c, a in string.gmatch(payload, '(%S+) (%S+) (%S+)') do
        local j = #cids + 1
        cids[j] = id; cinc[j] = c; ainc[j] = a
      end
      cpd[d] = {cids, cinc, ainc}
    end
  end
  local ascending = ARGV[at + 10] == '1'
  local ddprefix = string.sub(counters, 1, #counters - 8) .. 'dd:'
  local n = #ids / 8
  local m0 = redis.call('HMGET', meta, 'newest', fence ~= '' and fence or 'newest')
  local old_newest = tonumber(m0[1] or '0')
  local last = -1
  if fence ~= '' then last = tonumber(m0[2] or '-1') end
  local function offset(i) return (struct.unpack('<i8', offsets, 8 * i - 7)) end
  -- an enterprise's events come in offset order: the redelivered ones (at or below the fence) are a prefix
  local skip, redelivered = 0, nil
  if fence ~= '' and not ascending then  -- not in offset order (a caller's own batch): judged one by one
    redelivered = {}
    for k = 1, n do redelivered[k] = offset(k) <= last end
  elseif fence ~= '' and n > 0 and offset(1) <= last then
    local lo, hi = 1, n  -- the last position whose offset is <= last
    while lo < hi do
      local mid = math.floor((lo + hi + 1) / 2)
      if offset(mid) <= last then lo = mid else hi = mid - 1 end
    end
    skip = lo
  end
  -- months come as runs "month count month count ..." in event order
  local runs = {}
  for m, c in string.gmatch(months, '(%d+) (%d+)') do runs[#runs + 1] = {tonumber(m), tonumber(c)} end
  local asked = {}  -- month -> event-id keys whose window entry is read (one HMGET per month)
  local idh = {}
  local i = 0
  for _, run in ipairs(runs) do
    local m, l = run[1], asked[run[1]]
    for _ = 1, run[2] do
      i = i + 1
      if i > skip and not (redelivered and redelivered[i]) then
        idh[i] = string.sub(ids, 8 * i - 7, 8 * i)
        if not l then l = {}; asked[m] = l end
        l[#l + 1] = idh[i]
      end
    end
  end
  local seen = {}
  for m, l in pairs(asked) do seen[m] = hmget(ddprefix .. ym(m), l) end
  local newest = old_newest
  local verdicts = nil  -- built only once an event is not applied (the common batch applies all)
  local pending, bymonth = {}, {}  -- bymonth: month -> id content id content ... of the events recorded, in order
  local first_blocked = n + 1
  i = 0
  for _, run in ipairs(runs) do
    local month = run[1]
    local pend = pending[month]
    if not pend then pend = {}; pending[month] = pend end
    local rec = bymonth[month]
    if not rec then rec = {}; bymonth[month] = rec end
    local got = seen[month]
    for _ = 1, run[2] do
      i = i + 1
      local v = 'a'
      if i <= skip or (redelivered and redelivered[i]) then
        v = 'r'
      elseif month <= newest - window then
        v = 'l'
      else
        local id = idh[i]
        local before = pend[id]
        if before == nil then before = got[id] end
        if not before then
          local content = string.sub(contents, 8 * i - 7, 8 * i)
          pend[id] = content
          rec[#rec + 1] = id
          rec[#rec + 1] = content
          if month > newest then newest = month end
        elseif before == string.sub(contents, 8 * i - 7, 8 * i) then
          v = 'd'
        else
          v = 'c'
        end
      end
      if v ~= 'a' and not verdicts then
        verdicts = {}
        for k = 1, i - 1 do verdicts[k] = 'a' end
      end
      if verdicts then verdicts[i] = v end
      if (v == 'c' or v == 'l') and i < first_blocked then first_blocked = i end
    end
  end
  local all_new = verdicts == nil
  -- the fence moves to the last event before the first dead letter (which Kafka must redeliver)
  local fence_to = -1
  if fence ~= '' and first_blocked > 1 then
    if ascending then
      fence_to = offset(first_blocked - 1)
    else
      for k = 1, first_blocked - 1 do fence_to = math.max(fence_to, offset(k)) end
    end
  end
  -- the counters the delta names, and the counterparty summaries of every direction it touches
  local named, inmk = {}, {}
  for _, key in ipairs(mk) do named[#named + 1] = key; inmk[key] = true end
  for d in pairs(cpd) do  -- the sum s:cpasum_{d} comes with the counters when an amount was added
    named[#named + 1] = 's:ncp_' .. d; named[#named + 1] = 's:cpamax_' .. d
    if not inmk['s:cpasum_' .. d] then named[#named + 1] = 's:cpasum_' .. d end
  end
  local now = hmget(counters, named)
  if all_new and n > 0 then
    local written, cwritten, pairs_c, pairs_p = {}, {}, {}, {}
    for i, key in ipairs(mk) do now[key] = add(counters, key, now[key], mi[i], written) end
    for d, c in pairs(cpd) do
      local cids, cinc, ainc = c[1], c[2], c[3]
      local cpk, cak, fields = {}, {}, {}
      for j = 1, #cids do
        if cinc[j] ~= '-' then cpk[j] = 'cp:' .. d .. ':' .. cids[j]; fields[#fields + 1] = cpk[j] end
        if ainc[j] ~= '-' then cak[j] = 'cpa:' .. d .. ':' .. cids[j]; fields[#fields + 1] = cak[j] end
      end
      local cpnow = hmget(cps, fields)
      local nk, xk = 's:ncp_' .. d, 's:cpamax_' .. d
      local dncp, maxv = 0, now[xk]
      for j = 1, #cids do
        local key = cpk[j]
        if key then
          local old = cpnow[key]
          local new = add(cps, key, old, cinc[j], cwritten)
          local o, v = tonumber(old or '0'), tonumber(new)
          if o <= 0 and v > 0 then dncp = dncp + 1 elseif v <= 0 and o > 0 then dncp = dncp - 1 end
          if not cwritten[key] then pairs_p[#pairs_p + 1] = key; pairs_p[#pairs_p + 1] = new end
        end
        key = cak[j]
        if key then
          local new = add(cps, key, cpnow[key], ainc[j], cwritten)
          if not cwritten[key] then pairs_p[#pairs_p + 1] = key; pairs_p[#pairs_p + 1] = new end
          if (not maxv) or bigger(new, maxv) then maxv = new end
        end
      end
      if dncp ~= 0 then now[nk] = string.format('%d', tonumber(now[nk] or '0') + dncp) end
      now[xk] = maxv
    end
    for _, key in ipairs(named) do
      if now[key] and not written[key] then pairs_c[#pairs_c + 1] = key; pairs_c[#pairs_c + 1] = now[key] end
    end
    if #pairs_c > 0 then hset(counters, pairs_c) end
    if #pairs_p > 0 then hset(cps, pairs_p) end
    if ceiling >= 0 and fence_to > ceiling then fence_to = ceiling end
    local mpairs = {}
    if fence ~= '' and fence_to > last then mpairs[#mpairs + 1] = fence; mpairs[#mpairs + 1] = fence_to end
    if newest > old_newest then
      for m = math.max(old_newest - window + 1, 0), math.min(newest - window, old_newest) do
        redis.call('DEL', ddprefix .. ym(m))
      end
      mpairs[#mpairs + 1] = 'newest'; mpairs[#mpairs + 1] = newest
    end
    if #mpairs > 0 then redis.call('HSET', meta, unpack(mpairs)) end
    for m, l in pairs(bymonth) do  -- the months still in the window after this batch
      if m > newest - window and #l > 0 then hset(ddprefix .. ym(m), l) end
    end
    if name ~= '' then redis.call('HSETNX', meta, 'name', name) end
  end
  local text = {}
  for _, key in ipairs(named) do
    text[#text + 1] = key
    text[#text + 1] = now[key] or '0'
  end
  out[#out + 1] = verdicts and table.concat(verdicts) or string.rep('a', n)
  out[#out + 1] = table.concat(text, ' ')
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


def encoding_advice(client: Any) -> str | None:
    """One line when Redis keeps hashes of more than :data:`LISTPACK_ENTRIES_ADVISED` entries as listpacks.

    The apply script reads and writes counterparty counters and the dedup window many fields per command;
    in a listpack each field is a linear scan (docs/performance.md, "Redis hash encoding"). None when the
    setting is fine, or cannot be read (a cluster client, CONFIG not permitted).
    """
    if not isinstance(client, redis.Redis):
        return None
    try:
        value = client.config_get("hash-max-listpack-entries").get("hash-max-listpack-entries")
    except redis.exceptions.RedisError:
        return None
    if value is None or not str(value).isdigit() or int(value) <= LISTPACK_ENTRIES_ADVISED:
        return None
    return (f"Redis keeps hashes of up to {value} entries as listpacks (hash-max-listpack-entries): riskmon's "
            f"feature writes take about twice the Redis time per invoice they take at {LISTPACK_ENTRIES_ADVISED} "
            f"(docs/performance.md, 'Redis hash encoding')")


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


@dataclass(frozen=True, slots=True)
class _Groups:
    """A batch's events grouped by enterprise and fence, as the apply script takes them (event order kept)."""

    codes: np.ndarray  # group of each event
    eids: list[str]  # per group
    fences: list[str]  # per group ('' none)
    names: list[str | None]  # per group
    ids: np.ndarray  # uint64 per event
    contents: np.ndarray  # uint64 per event
    months: np.ndarray  # per event
    offsets: np.ndarray  # per event
    fold: Any  # rows (ascending positions, grouped) -> the folded delta payload of each group code
    first_payloads: list[tuple[bytes, bytes, bytes]] | None = None  # fold() of every row (the first attempt)


@dataclass(frozen=True, slots=True)
class PreparedColumns:
    """What :meth:`RedisFeatureStore.apply_columns` computes from a batch before it talks to Redis: the groups
    (enterprise and partition) and every group's folded delta as the apply script's payloads. It depends on the
    columns alone, so the worker computes it in its decode process, off the worker's GIL."""

    codes: np.ndarray  # int64: the group of each row
    first: np.ndarray  # per group: its first row
    payloads: list[tuple[bytes, bytes, bytes]]  # per group: the fold of all its rows

    @property
    def n_groups(self) -> int:
        return len(self.first)


def prepare_columns(cols: InvoiceColumns) -> PreparedColumns:
    """The groups of a batch and their folded deltas (:class:`PreparedColumns`); pure."""
    if not len(cols):
        return PreparedColumns(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), [])
    has_fence = cols.offset >= 0
    part = np.where(has_fence, cols.partition + 1, 0)
    ent_codes, _ = pd.factorize(cols.enterprise_id)
    codes_, combined = pd.factorize(ent_codes.astype(np.int64) * (int(part.max()) + 1) + part)
    codes = codes_.astype(np.int64)
    n = len(combined)
    first = np.full(n, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    rows = np.argsort(codes, kind="stable")  # the first attempt's order (RedisFeatureStore._apply_groups)
    return PreparedColumns(codes, first, _fold_payloads(cols, codes, rows, n))


def _fold_payloads(cols: InvoiceColumns, codes: np.ndarray, rows: np.ndarray,
                   n_groups: int) -> list[tuple[bytes, bytes, bytes]]:
    """The apply script's payloads of each group code, folded from the events at ``rows``."""
    month = cols.month[rows]
    return fold_columns(codes[rows], (month // 12) * 100 + month % 12 + 1, cols.out[rows], cols.void[rows],
                        cols.amount_cents[rows], cols.total_cents[rows], cols.counterparty_id[rows]).payloads(n_groups)


def _runs_by_group(codes: np.ndarray, months: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """Per group, its events' issue months as runs ``"month count month count "`` in event order (a batch's
    events of an enterprise mostly share one or two months); ``codes`` ascending (a group's events together, in
    event order), ``starts`` the first position of each group; one text per group, in that order."""
    n = len(codes)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (codes[1:] != codes[:-1]) | (months[1:] != months[:-1])
    at = np.flatnonzero(new_run)
    counts = np.diff(np.append(at, n))
    text = pc.binary_join_element_wise(pc.cast(pa.array(months[at]), pa.string()),
                                       pc.cast(pa.array(counts), pa.string()), "", " ")
    return joined_runs(text, np.append(np.searchsorted(at, starts), len(at)))  # a group's first event opens a run


def _ascending_by_group(codes: np.ndarray, offsets: np.ndarray, starts: np.ndarray) -> list[str]:
    """Per group (``codes`` ascending, ``starts`` as :func:`_runs_by_group`): ``"1"`` when its offsets ascend."""
    falls = np.flatnonzero((offsets[1:] < offsets[:-1]) & (codes[1:] == codes[:-1])) + 1
    flags = np.full(len(starts), "1", dtype=object)
    flags[np.searchsorted(starts, falls, side="right") - 1] = "0"
    return flags.tolist()


def _payload(delta: Mapping[str, int]) -> tuple[bytes, bytes, bytes]:
    """A folded delta as the apply script's three payloads: the counters (with ``s:cpasum_{d}``, the sum of a
    direction's ``cpa`` increments, when it has any), then per direction ``in``, ``out`` its counterparties as
    ``"id count amount "`` (``-``: that counter is not in the delta)."""
    counters: dict[str, int] = {}
    cps: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    for key, inc in delta.items():
        kind = 2 if key.startswith("cpa:") else 1 if key.startswith("cp:") else 0
        if kind == 0:
            counters[key] = counters.get(key, 0) + inc
            continue
        direction, _, cid = key[kind + 2:].partition(":")
        cps[direction == "out"].setdefault(cid, ["-", "-"])[kind - 1] = str(inc)
        if kind == 2:
            summary = f"s:cpasum_{direction}"
            counters[summary] = counters.get(summary, 0) + inc
    return ("".join(f"{k} {v} " for k, v in counters.items()).encode(),
            *("".join(f"{cid} {c} {a} " for cid, (c, a) in side.items()).encode() for side in cps))  # type: ignore[return-value]


def _first_names(names: Sequence[str | None] | np.ndarray, codes: np.ndarray, n: int) -> list[str | None]:
    """Per group, the first name its events carry (None: none)."""
    out: list[str | None] = [None] * n
    named = np.flatnonzero(np.asarray([bool(x) for x in names], dtype=bool)) if not isinstance(names, np.ndarray) \
        else np.flatnonzero(names != None)  # noqa: E711 - elementwise
    for i in named.tolist():
        if names[i] and out[codes[i]] is None:
            out[codes[i]] = names[i]
    return out


class RedisFeatureStore:
    """:class:`streams.ports.FeatureStore` on Redis (see the module docstring for the layout)."""

    def __init__(self, client: Any, prefix: str = "riskmon", *,
                 dedup_window_months: int = DEFAULT_DEDUP_WINDOW_MONTHS, guard_restarts: bool = False) -> None:
        self._r = client
        self._k = _Keys(prefix)
        self._window = str(dedup_window_months)
        self._groups_per_call = 1 if isinstance(client, redis.cluster.RedisCluster) else GROUPS_PER_CALL
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

    def apply_many(self, items: Sequence[DeltaItem]) -> StoreWrite:
        if not items:
            return StoreWrite([], {})
        for item in items:
            check_delta(item.delta)
        eids = [item.enterprise_id for item in items]
        fences = [fence_field(item) or "" for item in items]
        codes, keys = pd.factorize(pd.Series([f"{e}\x00{f}" for e, f in zip(eids, fences, strict=True)]))
        n = len(keys)
        first = [0] * n
        for i in range(len(items) - 1, -1, -1):
            first[codes[i]] = i
        ids = np.frombuffer(b"".join(id_hash(item) for item in items), dtype=">u8")
        contents = np.frombuffer(b"".join(content_hash(item) for item in items), dtype=">u8")

        def fold(rows: np.ndarray) -> list[tuple[bytes, bytes, bytes]]:
            sums: list[dict[str, int]] = [{} for _ in range(n)]
            for i in rows.tolist():
                total = sums[codes[i]]
                for key, inc in items[i].delta.items():
                    total[key] = total.get(key, 0) + inc
            return [_payload(d) for d in sums]

        groups = _Groups(codes=np.asarray(codes, dtype=np.int64), eids=[eids[first[g]] for g in range(n)],
                         fences=[fences[first[g]] for g in range(n)],
                         names=_first_names([item.name for item in items], codes, n),
                         ids=ids, contents=contents, months=np.asarray([item.month for item in items], dtype=np.int64),
                         offsets=np.asarray([item.offset for item in items], dtype=np.int64), fold=fold)
        letters, counters = self._apply_groups(groups)
        return StoreWrite([_VERDICTS[chr(c)] for c in letters.tolist()], counters)

    def apply_columns(self, cols: InvoiceColumns, prepared: object | None = None) -> ColumnsWrite:
        """:meth:`apply_many` for a batch of invoices as columns: one verdict letter per row, the counters after.

        ``prepared``: :func:`prepare_columns` of these columns, computed elsewhere (the worker's decode process).
        """
        if not len(cols):
            return ColumnsWrite(np.empty(0, dtype=np.uint8), {})
        if not isinstance(prepared, PreparedColumns) or len(prepared.codes) != len(cols):
            prepared = prepare_columns(cols)
        codes, first, n = prepared.codes, prepared.first, prepared.n_groups
        has_fence = cols.offset >= 0
        topic = cols.topic
        groups = _Groups(codes=codes, eids=[str(e) for e in cols.enterprise_id[first]],
                         fences=[f"{topic}/{int(p)}" if h else "" for p, h in
                                 zip(cols.partition[first].tolist(), has_fence[first].tolist(), strict=True)],
                         names=_first_names(cols.name, codes, n), ids=cols.id_hash, contents=cols.content_hash,
                         months=cols.month.astype(np.int64), offsets=cols.offset,
                         fold=partial(_fold_payloads, cols, codes, n_groups=n),
                         first_payloads=prepared.payloads)
        letters, counters = self._apply_groups(groups)
        return ColumnsWrite(letters, counters)

    @staticmethod
    def column_preparer() -> Callable[[InvoiceColumns], object]:
        return prepare_columns

    def _apply_groups(self, groups: _Groups) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
        """Judge and apply every group; the verdict letters per event (its order) and the counters after."""
        if not self._armed:
            raise StoreRestarted("the feature store has not checked where to resume since it (or Redis) started; "
                                 "rewind to resume_offsets()")
        n_events = len(groups.codes)
        letters = np.full(n_events, ord("a"), dtype=np.uint8)
        counters: dict[str, dict[str, int]] = {}
        ceilings: dict[int, int] = {}  # the fence stays below a group's first dead letter
        rows = np.arange(n_events)
        first = True
        for _attempt in range(4):
            order = rows[np.argsort(groups.codes[rows], kind="stable")]
            codes = groups.codes[order]
            present, starts = np.unique(codes, return_index=True)
            bounds = np.append(starts, len(order)).tolist()
            payloads = groups.first_payloads if first and groups.first_payloads is not None else groups.fold(order)
            ids = groups.ids[order].astype(">u8").tobytes()
            contents = groups.contents[order].astype(">u8").tobytes()
            months_sorted = groups.months[order]
            offsets_sorted = groups.offsets[order]
            offsets = offsets_sorted.astype("<i8").tobytes()
            runs = _runs_by_group(codes, months_sorted, starts)
            ascending = _ascending_by_group(codes, offsets_sorted, starts)
            calls: list[tuple[list[str], list[Any]]] = []
            keys: list[str] = []
            args: list[Any] = [self._window]
            call_start = 0  # first event of the call being built
            for j, g in enumerate(present.tolist()):
                s, e = bounds[j], bounds[j + 1]
                eid = groups.eids[g]
                keys += [self._k.ent(eid, "counters"), self._k.ent(eid, "cp"), self._k.ent(eid, "meta")]
                args += [groups.names[g] or "", groups.fences[g], ceilings.get(g, -1), ids[8 * s:8 * e],
                         contents[8 * s:8 * e], runs[j], offsets[8 * s:8 * e], *payloads[g], ascending[j]]
                full = len(keys) >= 3 * self._groups_per_call or e - call_start >= EVENTS_PER_CALL
                if full or j == len(present) - 1:
                    calls.append((keys, args))
                    keys, args, call_start = [], [self._window], e
            with self._guarded("apply"):
                pipe = self._write_pipeline()
                recorded = dict(self._pending) if first and self._guard else {}
                if recorded:  # after the previous batches' writes, before this one's: a lower bound in the log
                    pipe.evalsha(self._checkpoint.sha, 1, self._checkpoints_key,
                                 *(x for kv in recorded.items() for x in kv))
                for call_keys, call_args in calls:
                    if self._guard:  # never loaded behind our back: NOSCRIPT is how a restart shows
                        pipe.evalsha(self._apply.sha, len(call_keys), *call_keys, *call_args)
                    else:
                        self._apply(keys=call_keys, args=call_args, client=pipe)
                if first:
                    for shard, ids_ in _by_shard(list(dict.fromkeys(groups.eids))).items():
                        pipe.sadd(self._k.shard(shard, "enterprises"), *ids_)
                results = pipe.execute()[1 if recorded else 0:][:len(calls)]
            if recorded and self._pending == recorded:
                self._pending = {}
            replies = [x for result in results for x in result]
            for j, g in enumerate(present.tolist()):
                eid = groups.eids[g]
                fields = replies[2 * j + 1].decode().split()
                try:
                    counters.setdefault(eid, {}).update(zip(fields[0::2], map(int, fields[1::2]), strict=True))
                except ValueError as exc:
                    raise CorruptState(f"non-integer counter for {eid} under {self._k.base}") from exc
            judged_all = np.frombuffer(b"".join(replies[0::2]), dtype=np.uint8)
            if len(judged_all) != len(order):
                raise CorruptState(f"the apply script judged {len(judged_all)} events of {len(order)}")
            if first:
                letters[order] = judged_all
            again: list[np.ndarray] = []
            # only groups with an event not applied need more (the common batch has none)
            for j in np.flatnonzero(np.add.reduceat(judged_all != ord("a"), starts)).tolist():
                g = int(present[j])
                judged = judged_all[bounds[j]:bounds[j + 1]]
                at = order[bounds[j]:bounds[j + 1]]
                dead = (judged == ord("c")) | (judged == ord("l"))
                if dead.any():
                    lowest = int(groups.offsets[at][dead].min()) - 1
                    ceilings[g] = min(ceilings.get(g, lowest), lowest)
                applied = judged == ord("a")
                letters[at] = judged  # a second judgement that differs: another writer
                if applied.any():  # nothing written: send the new ones alone
                    again.append(at[applied])
            if not again:
                return letters, counters
            rows, first = np.sort(np.concatenate(again)), False
        raise StoreUnavailable("apply: the verdicts kept changing between attempts (another writer?)")

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
        for version in ("v1", "v2", KEY_VERSION):
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
