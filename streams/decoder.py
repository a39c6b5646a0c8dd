"""Where the worker decodes its polled batches: a process of its own (default), or a thread.

Decoding (Arrow's JSON reader, the vectorised rules, hashing: :func:`streams.pipeline.decode_parts`) is
most of the worker's Python per message. In a thread it shares one GIL with the Kafka fetch and the
store's fold; measured with Kafka, Redis and the worker on two cores, half the machine stayed idle
(docs/performance.md, "Earlier: a decode process and larger batches"). The process is started by a fork server (never forked from
the worker, which runs threads) and imports :mod:`streams.pipeline` and the feature store's module; a batch
goes over as its raw messages, and its columns, dead letters and the store's pure first step
(:meth:`~streams.ports.FeatureStore.column_preparer`: for Redis, the batch grouped and folded into the apply
script's payloads) come back. The process exits when the worker is gone, also
when the worker was SIGKILLed (a pool process would otherwise wait on its queue for ever).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

ORPHAN_CHECK_S = 1.0


def make_decoder(process: bool) -> Executor:
    """One decode process (``process``) or one thread; either runs one batch at a time."""
    if not process:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskmon-decode")
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_exit_with, initargs=(os.getpid(),))


def _exit_with(worker_pid: int) -> None:
    """In the decode process: exit as soon as the worker process is gone (its parent is the fork server)."""

    def watch() -> None:
        while not _gone(worker_pid):
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="riskmon-orphan-guard", daemon=True).start()


def _gone(pid: int) -> bool:
    """The process has exited (also when it is a zombie its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the pid now belongs to another user
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False  # no /proc (not Linux): a zombie is taken for alive until it is reaped
