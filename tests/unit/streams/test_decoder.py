"""The decode process (streams/decoder.py): it decodes what the thread decodes, and it never outlives its worker."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from streams.decoder import _gone, make_decoder
from streams.pipeline import decode_parts
from tests.unit.streams.test_columns import _FIELDS, NOW, _batch
from tests.unit.streams.test_pipeline import MALFORMED, VALID

ROOT = Path(__file__).resolve().parents[3]


def test_the_decode_process_returns_what_the_thread_returns() -> None:
    good = json.dumps(VALID, separators=(",", ":")).encode()
    batch = _batch([good, *MALFORMED.values(), good.replace(b'"E1-out-1-0"', b'"E1-out-2-0"'), None])  # type: ignore[list-item]
    results = []
    for process in (True, False):
        decoder = make_decoder(process)
        try:
            results.append(decoder.submit(decode_parts, batch, NOW).result(timeout=60))
        finally:
            decoder.shutdown()
    (cols_p, dead_p, _), (cols_t, dead_t, _) = results
    for name in _FIELDS:
        assert getattr(cols_p, name).tolist() == getattr(cols_t, name).tolist(), name
    assert len(cols_p) == 2
    assert [(i, d.model_dump()) for i, d in dead_p] == [(i, d.model_dump()) for i, d in dead_t]
    assert len(dead_p) == len(MALFORMED) + 1  # every malformed message and the tombstone, with their reasons


def test_the_decode_process_exits_when_its_worker_is_sigkilled() -> None:
    # a pool process waits on its queue for ever once its parent is gone; this one watches the worker's pid
    script = textwrap.dedent("""
        import datetime as dt, os, signal
        from streams.columns import RecordBatch
        from streams.decoder import _gone, make_decoder
        from streams.pipeline import decode_parts
        if __name__ == "__main__":
            decoder = make_decoder(True)
            decoder.submit(decode_parts, RecordBatch("", [], [], [], [], []), dt.datetime.now(dt.UTC)).result(60)
            print(*decoder._processes, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    with tempfile.TemporaryFile("w+") as out:  # not a pipe: the decode process holds its copy open
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                              timeout=120, check=False)
        out.seek(0)
        text = out.read()
    assert done.returncode == -9, text
    child = int(text.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.2)
    assert not _alive(child), f"the decode process {child} outlived its worker"


def _alive(pid: int) -> bool:
    return not _gone(pid)
