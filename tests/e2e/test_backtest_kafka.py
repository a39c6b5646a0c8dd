"""The live path and the in-process backtest agree: same credit lines on a slice of the real data.

A real worker process (``riskmon worker``, real Kafka and Redis, the test bundle, the real
allocator) consumes a ``riskmon replay`` of every invoice of 40 real enterprises; then
``riskmon compare`` reads the compacted credit-lines topic and checks it against
``riskmon backtest`` over the same enterprises at the final date.

The slice holds 30 enterprises that invoiced in the data set's last month (February 2020)
and 10 that stopped invoicing months earlier (last invoice 2019-06 .. 2019-11). Features depend
on the as-of *month*; the live worker scores an enterprise when its invoices arrive, so the
scores of the 10 were computed in an earlier month than the watermark's. The leader rescores
such stale scores as of the watermark before allocating (``streams.pipeline.stale_score_ids``),
which is what makes the two paths agree on them too.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streams.dataset import DEFAULT_DATA_DIR
from tests.conftest import free_port
from tests.unit.backtest.helpers import write_slice

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from streams.cli import main; sys.exit(main(sys.argv[1:]))"]
#: 40 enterprises: 30 (11 labeled: 5 D, 3 C, 3 B) that invoiced in February 2020, about 9 000 invoices,
#: and 10 (5 labeled: 4 C, 1 B) whose last invoice is from 2019-06 .. 2019-11, about 1 900 invoices.
SLICE = ("E105", "E417", "E114", "E86", "E410", "E118", "E403", "E407", "E377", "E344", "E365", "E103", "E79",
         "E108", "E97", "E420", "E353", "E119", "E320", "E334", "E391", "E269", "E267", "E342", "E392", "E80",
         "E364", "E326", "E370", "E85",
         # stopped invoicing before December 2019: their live scores go stale unless rescored
         "E104", "E94", "E78", "E43", "E50", "E414", "E423", "E385", "E402", "E192")
BUDGET = "8000000"


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:  # noqa: S310  # local worker
        return json.loads(r.read())


TOKEN = secrets.token_urlsafe(24)  # the worker's RISKMON_WORKER__HTTP_TOKEN in this test


def _allocate(port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/allocate", data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
        return json.loads(r.read())


@pytest.fixture(scope="module")
def bundle_dir() -> Path:
    from tests.bundle_fixture import get_test_bundle

    return get_test_bundle()


@pytest.mark.timeout(600)  # includes training the cached test bundle when its sources changed
def test_live_worker_and_backtest_publish_the_same_credit_lines(
    kafka_bootstrap: str, redis_url: str, unique_name: str, redis_prefix: str, bundle_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RISKMON_KAFKA__BOOTSTRAP": kafka_bootstrap,
        "RISKMON_KAFKA__GROUP_ID": f"{unique_name}-ingest",  # faust's own group is the app id
        "RISKMON_REDIS__URL": redis_url,
        "RISKMON_REDIS__PREFIX": redis_prefix.rstrip(":"),
        "RISKMON_APP_ID": unique_name,
        "RISKMON_STATE_DIR": str(tmp_path / "faust"),
        "RISKMON_WORKER__WEB_PORT": str(free_port()),
        "RISKMON_ALLOCATOR__SOLVER": "exact",
        "RISKMON_WORKER__HTTP_TOKEN": TOKEN,
        **{f"RISKMON_TOPICS__{k.upper()}": f"{unique_name}-{v}" for k, v in (
            ("invoices", "invoices"), ("dlq", "dlq"), ("scores", "scores"), ("credit_lines", "lines"),
            ("allocations", "allocations"))},
    }
    ids = ",".join(SLICE)
    data = write_slice(DEFAULT_DATA_DIR, tmp_path / "data", set(SLICE))  # every tool reads the small file
    # the in-process backtest of the same enterprises, final as-of date = the slice's last invoice date
    out = tmp_path / "backtest"
    bt = subprocess.run([*CLI, "backtest", "--data", str(data), "--bundle", str(bundle_dir),
                         "--enterprises", ids, "--as-of", "quarterly", "--budget", BUDGET, "--out", str(out),
                         "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert bt.returncode == 0, bt.stderr[-2000:]
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115  # closed in finally
    worker = subprocess.Popen([*CLI, "worker", "--bundle", str(bundle_dir), "--data", str(data),
                               "--metrics-port", str(port), "--interval", "1", "--budget", BUDGET,
                               "--loglevel", "warn"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _health(port)
                break
            except OSError:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "worker did not come up"
                time.sleep(1)
        rp = subprocess.run([*CLI, "replay", "--data", str(data), "--max",
                             "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rp.returncode == 0, rp.stderr[-2000:]
        n_events = json.loads((out / "summary.json").read_text())["n_events"]
        deadline = time.monotonic() + 120
        while _health(port)["processed"] < n_events:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"worker processed {_health(port)['processed']} of {n_events}"
            time.sleep(1)
        deadline = time.monotonic() + 120
        while True:  # one allocation over the final scores, whatever the timer did
            try:
                ran = _allocate(port)
                break
            except urllib.error.HTTPError as exc:  # 409: not (yet) the leader, or nothing to allocate yet
                assert exc.code == 409 and time.monotonic() < deadline, exc.read()[-2000:]
                time.sleep(1)
        assert ran["ran"], ran
        cmp = subprocess.run([*CLI, "compare", "--bootstrap", kafka_bootstrap, "--topic", env["RISKMON_TOPICS__CREDIT_LINES"],
                              "--backtest", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert cmp.returncode == 0, cmp.stdout[-4000:] + cmp.stderr[-2000:]
        assert "agree" in cmp.stdout
        # and it does see a difference: the same stream against a backtest with one line changed
        tampered = tmp_path / "tampered"
        tampered.mkdir()
        lines = (out / "lines.csv").read_text().splitlines()
        header = lines[0].split(",")
        row = next(i for i in range(len(lines) - 1, 0, -1) if float(lines[i].split(",")[header.index("amount_yuan")]) > 0)
        cells = lines[row].split(",")
        cells[header.index("amount_yuan")] = str(float(cells[header.index("amount_yuan")]) + 10_000)
        lines[row] = ",".join(cells)
        (tampered / "lines.csv").write_text("\n".join(lines) + "\n")
        bad = subprocess.run([*CLI, "compare", "--bootstrap", kafka_bootstrap, "--topic",
                              env["RISKMON_TOPICS__CREDIT_LINES"], "--backtest", str(tampered)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "1 differences" in bad.stdout, bad.stdout[-3000:]
        final = json.loads((out / "summary.json").read_text())["dates"][-1]
        assert final["n_lines"] > 3 and final["total_lent"] > 0
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
