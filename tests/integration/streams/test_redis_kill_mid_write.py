"""Redis SIGKILLed inside a pipelined write, restarted: every score input equals what Redis holds (issue 11.3).

The test runs its own redis-server (``appendfsync always``) on a free port, folds real invoices
through the worker's store stack (CachedFeatureStore over RedisFeatureStore, Kafka-like offsets),
kills the server inside a 10 000-event batch's write, restarts it, and retries the batch as the
worker does. The client talks to Redis through a small proxy that, for that batch, holds Redis's
replies back: the kill comes once the append-only file holds the batch's first script whole, so
Redis has applied (part of) the batch and the worker has had no reply, whatever the machine's
speed (before, the kill raced the reply, and in one CI run the reply won). Then, for every
enterprise, the cached counters (what the worker scores from) equal a fresh read from Redis, and
the features computed from both are the same; and Redis equals the batch fold (with ``always``, nothing acknowledged is lost; what was not acknowledged is redone).

A second test restarts a server running ``scripts/services``' own configuration (locked down) and checks
that every feature written before the restart is still there (issue 11: the chaos suite's Redis faults).
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
from streams.errors import StoreRestarted, StoreUnavailable
from streams.features.fold import fold_all
from streams.features.vector import to_vector
from streams.pipeline import Source, apply_events
from tests.conftest import free_port  # noqa

pytestmark = pytest.mark.services

REPO_ROOT = Path(__file__).resolve().parents[3]


def _start(port: int, folder: Path, config: Path | None = None, **auth: str) -> subprocess.Popen[bytes]:
    """redis-server on ``port`` with its data in ``folder``: our own settings, or ``config`` with its place moved."""
    place = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    if config is None:
        args = ["redis-server", *place, "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    else:  # options after the file override it: the deployed configuration, on our port and folder
        args = ["redis-server", str(config), *place, "--daemonize", "no", "--pidfile", str(folder / "redis.pid"),
                "--logfile", str(folder / "redis.log")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.2, **auth).ping():  # type: ignore[arg-type]
                return proc
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


class _ReplyHoldingProxy:
    """TCP proxy to a Redis port that forwards every request and, while ``hold`` is set, drops the replies.

    ``arm()``: ``hold`` is set just before the next request holding an EVALSHA is forwarded (redis-py asks
    SCRIPT EXISTS first and waits for that reply), so the replies from that call on are dropped.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.armed = threading.Event()
        self.hold = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # Redis is down: the client sees its connection closed
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def arm(self) -> None:
        self.hold.clear()
        self.armed.set()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        tail = b""
        try:
            while data := source.recv(1 << 16):
                if not replies and self.armed.is_set() and b"EVALSHA" in tail + data:
                    self.hold.set()
                    self.armed.clear()
                tail = data[-8:]
                if not (replies and self.hold.is_set()):
                    sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):  # one side gone: the other sees the connection closed
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()


def _aof_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.aof*") if p.is_file())


def _whole_scripts_since(folder: Path, size0: int) -> int:
    """Lua calls logged complete (MULTI ... EXEC) since the AOF held ``size0`` bytes; a torn last one is dropped on load."""
    base = sum(p.stat().st_size for p in folder.rglob("*.aof*") if p.is_file() and not p.name.endswith(".incr.aof"))
    (incr,) = folder.rglob("*.incr.aof")
    with incr.open("rb") as f:
        f.seek(max(0, size0 - base))
        return f.read().count(b"\r\nEXEC\r\n")


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
    port = free_port()
    proc = _start(port, tmp_path)
    proxy = _ReplyHoldingProxy(port)
    client = redis.Redis(port=proxy.port, socket_timeout=5, socket_connect_timeout=1)
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
                    while _whole_scripts_since(tmp_path, size0) < 1 and time.monotonic() < deadline:
                        time.sleep(0.0005)
                    os.kill(proc.pid, signal.SIGKILL)

                proxy.arm()  # from the batch's first script on no reply reaches the worker: the kill lands before it hears back
                thread = threading.Thread(target=killer)
                thread.start()
                with pytest.raises(StoreUnavailable):
                    apply_events(store, chunk, srcs)
                thread.join()
                killed_at = _aof_bytes(tmp_path) - size0
                proc.wait()
                assert proxy.hold.is_set(), "the batch sent no script"
                proxy.hold.clear()
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
        proxy.close()
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_the_deployed_redis_config_keeps_every_lua_write_across_a_restart(tmp_path: Path) -> None:
    """``scripts/services``' own redis.conf (locked down: ``user default off``) on a free port.

    Each batch's writes are Lua calls, which Redis 7 logs to the AOF as MULTI/EXEC blocks. On restart the
    AOF is replayed by a client running as the *default* user, and Redis (before 8, redis/redis#14541)
    re-checks that user's ACL at EXEC: with the default user's commands taken away, every block is
    refused (NOPERM in the log) and the server comes back without any feature written since start.
    """
    from streams.settings import Settings

    config = Path(os.environ.get("RISKMON_VAR", REPO_ROOT / "var" / "services")) / "redis" / "redis.conf"
    if not config.is_file():
        pytest.fail(f"no {config}: run scripts/services up")
    settings = Settings().redis
    auth = {"username": settings.username or "default", "password": settings.password.get_secret_value()} \
        if settings.password is not None else {}
    events = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 3_000) if not isinstance(e, RejectedRow)]
    sources = [Source("invoices", 0, offset) for offset in range(len(events))]
    port = free_port()
    proc = _start(port, tmp_path, config, **auth)
    client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1, **auth)  # type: ignore[arg-type]
    try:
        for start in range(0, len(events), 500):
            apply_events(RedisFeatureStore(client, "restart"), events[start : start + 500], sources[start : start + 500])
        client.shutdown()  # graceful: the AOF is flushed and fsynced (``scripts/services down``)
        proc.wait()
        client.close()
        proc = _start(port, tmp_path, config, **auth)
        expected = fold_all(events)
        stored = {s.enterprise_id: s for s in RedisFeatureStore(client, "restart").load_many(sorted(expected),
                                                                                           with_counterparties=True)}
        log = (tmp_path / "redis.log").read_text(errors="replace")
        for eid, want in expected.items():
            assert (stored[eid].counters, stored[eid].counterparties) == (want.counters, want.counterparties), \
                f"{eid} after a restart; redis.log: {[x for x in log.splitlines() if 'CRITICAL' in x][:1]}"
    finally:
        client.close()
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_a_redis_that_lost_its_last_writes_is_found_and_read_again_from_its_checkpoints(tmp_path: Path) -> None:
    """Redis comes back without writes it had acknowledged (the append-only file cut, as after a crash
    with ``appendfsync everysec``) while the worker had moved on: the guarded store refuses to write
    (NOSCRIPT), and reading again from ``resume_offsets`` ends exactly at the batch fold."""
    events = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 6_000) if not isinstance(e, RejectedRow)]
    sources = [Source("invoices", 0, offset) for offset in range(len(events))]
    port = free_port()
    proc = _start(port, tmp_path)
    client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1)
    store = CachedFeatureStore(RedisFeatureStore(client, "lost", guard_restarts=True))
    batch = 500
    try:
        with pytest.raises(StoreRestarted):  # a new store writes only once it has checked where to resume
            apply_events(store, events[:batch], sources[:batch])
        assert store.resume_offsets("invoices", [0]) == {}
        for start in range(0, 6 * batch, batch):
            apply_events(store, events[start : start + batch], sources[start : start + batch])
            store.handled("invoices", {0: start + batch})  # the worker, once the batch's offsets are committed
            if start == 2 * batch:
                (aof,) = tmp_path.rglob("*.incr.aof")
                kept = aof.stat().st_size  # what survives: up to the writes of the batch at offset 1000
        store.sync()  # the idle worker's call: records the last batch's checkpoint
        assert store.resume_offsets("invoices", [0]) == {0: 6 * batch}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with aof.open("r+b") as f:
            f.truncate(kept + 7)  # and a torn command after it (aof-load-truncated)
        proc = _start(port, tmp_path)
        lost = RedisFeatureStore(client, "lost").load_many(sorted({e.enterprise_id for e in events}))
        assert sum(s.n_events for s in lost) < 6 * batch, "nothing was lost; the test proves nothing"
        with pytest.raises(StoreRestarted):  # found by the idle worker's check ...
            store.sync()
        with pytest.raises(StoreRestarted):  # ... and the next batch is refused, none of it written
            apply_events(store, events[6 * batch : 7 * batch], sources[6 * batch : 7 * batch])
        resume = store.resume_offsets("invoices", [0])
        assert resume[0] <= 2 * batch  # a lower bound of what survived
        for start in range(resume[0], len(events), batch):
            apply_events(store, events[start : start + batch], sources[start : start + batch])
        expected = fold_all(events)
        fresh = {s.enterprise_id: s for s in RedisFeatureStore(client, "lost").load_many(sorted(expected),
                                                                                        with_counterparties=True)}
        cached = {s.enterprise_id: s for s in store.load_many(sorted(expected))}
        for eid, want in expected.items():
            assert (fresh[eid].counters, fresh[eid].counterparties) == (want.counters, want.counterparties), eid
            assert cached[eid].counters == want.counters, eid
    finally:
        client.close()
        proc.kill()
        proc.wait()
