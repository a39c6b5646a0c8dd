"""Redis SIGKILLed inside a pipelined write, restarted: every score input equals what Redis holds (issue 11.3).

The test runs its own redis-server (``appendfsync always``) on a free port, folds real invoices
through the worker's store stack (CachedFeatureStore over RedisFeatureStore, Kafka-like offsets),
kills the server while a 10 000-event batch is being written, restarts it, and retries the batch
as the worker does. Then, for every enterprise, the cached counters (what the worker scores from)
equal a fresh read from Redis, and the features computed from both are the same; and Redis equals
the batch fold (with ``always``, nothing acknowledged is lost; what was not acknowledged is redone).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from streams.adapters.cached import CachedFeatureStore
from streams.adapters.redis_store import RedisFeatureStore
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.errors import StoreUnavailable
from streams.features.fold import fold_all
from streams.features.vector import to_vector
from streams.pipeline import Source, apply_events

pytestmark = pytest.mark.services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                return proc
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


def _aof_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.aof*") if p.is_file())


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_scores_come_from_what_redis_holds_after_a_kill_inside_a_write(tmp_path: Path) -> None:
    events = sorted((e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 60_000) if not isinstance(e, RejectedRow)),
                    key=lambda e: e.issue_date)
    partition: dict[str, int] = {}
    offsets = [0] * 4
    sources = []
    for e in events:
        p = partition.setdefault(e.enterprise_id, len(partition) % 4)
        sources.append(Source("invoices", p, offsets[p]))
        offsets[p] += 1
    port = _free_port()
    proc = _start(port, tmp_path)
    client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1)
    store = CachedFeatureStore(RedisFeatureStore(client, "kill"))
    batch = 10_000
    killed_at = None
    try:
        start = 0
        while start < len(events):
            chunk, srcs = events[start : start + batch], sources[start : start + batch]
            if start == 2 * batch and killed_at is None:  # kill while this batch's pipeline is executing
                ids = sorted({e.enterprise_id for e in events[:start]})
                store.load_many(ids)  # every enterprise cached, as in a worker that scored them
                size0 = _aof_bytes(tmp_path)

                def killer(size0: int = size0) -> None:
                    deadline = time.monotonic() + 30
                    while _aof_bytes(tmp_path) <= size0 + 2_000 and time.monotonic() < deadline:
                        time.sleep(0.0005)
                    os.kill(proc.pid, signal.SIGKILL)

                thread = threading.Thread(target=killer)
                thread.start()
                with pytest.raises(StoreUnavailable):
                    apply_events(store, chunk, srcs)
                thread.join()
                killed_at = _aof_bytes(tmp_path) - size0
                proc.wait()
                proc = _start(port, tmp_path)
                partly = RedisFeatureStore(client, "kill").load_many(ids)
                assert sum(s.n_events for s in partly) > 2 * batch, "the kill landed before any of the batch was written"
                continue  # the worker retries the same batch
            apply_events(store, chunk, srcs)
            start += batch
        expected = fold_all(events)
        fresh = {s.enterprise_id: s for s in RedisFeatureStore(client, "kill").load_many(sorted(expected))}
        cached = {s.enterprise_id: s for s in store.load_many(sorted(expected))}
        as_of = max(e.issue_date for e in events)
        for eid, want in expected.items():
            assert fresh[eid].counters == want.counters, eid
            assert cached[eid].counters == fresh[eid].counters, eid
            a, b = to_vector(cached[eid], as_of), to_vector(fresh[eid], as_of)
            assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a), eid
        assert killed_at is not None and killed_at > 0
    finally:
        client.close()
        proc.kill()
        proc.wait()
