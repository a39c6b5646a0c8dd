"""A real model bundle for tests, trained once on the project's data and cached.

``get_test_bundle()`` returns the folder of a fast bundle (``TrainConfig.fast``: few epochs,
no CV) trained on the full real data set, cached under
``var/test-bundle-<hash>/`` where the hash covers the sources of ``models/`` and
``streams/features/`` and the data files' sizes; a source change retrains it. Training
takes about 1-2 minutes (most of it folding the 1.1 M invoices); a cache hit is instant.
A file lock makes concurrent test processes train it once.

Usage in a test::

    from tests.bundle_fixture import get_test_bundle
    from models.bundle import load_bundle
    bundle = load_bundle(get_test_bundle())

``get_test_feature_table()`` returns the folded feature table (also cached, as ``.npz``)
for tests that need the real inputs as well.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED = 0


def _source_hash() -> str:
    h = hashlib.sha256()
    for folder in ("models", "streams/features"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    data = ROOT / "data" / "cumcm2020c"
    for name in ("enterprises.csv", "invoices.csv.gz"):
        p = data / name
        h.update(f"{name}:{p.stat().st_size if p.exists() else -1}".encode())
    return h.hexdigest()[:12]


def _cache_dir() -> Path:
    return ROOT / "var" / f"test-bundle-{_source_hash()}"


def get_test_feature_table() -> object:
    """The feature table of all 425 enterprises as of 2020-02-21 (a ``FeatureTable``), cached."""
    from streams.features.batch import LAST_INVOICE_DATE, FeatureTable, build_feature_table

    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "features.npz"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            table = build_feature_table(as_of=LAST_INVOICE_DATE)
            tmp = cache / "features.tmp.npz"
            np.savez(tmp, ids=np.array(table.enterprise_ids), numeric=table.numeric, sequences=table.sequences,
                     categorical=np.array(table.categorical), ratings=np.array([r or "" for r in table.ratings]),
                     defaulted=table.defaulted)
            tmp.replace(path)
    z = np.load(path)
    return FeatureTable(
        enterprise_ids=tuple(str(i) for i in z["ids"]),
        numeric=z["numeric"],
        categorical=tuple((str(a), str(b)) for a, b in z["categorical"]),
        sequences=z["sequences"],
        ratings=tuple(str(r) if r else None for r in z["ratings"]),
        defaulted=z["defaulted"],
        as_of=LAST_INVOICE_DATE,
    )


def get_test_bundle() -> Path:
    """Folder of a fast real bundle (trained on first use, then cached)."""
    import torch

    from models.training import TrainConfig, TrainingData, train

    cache = _cache_dir()
    bundle = cache / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    table = get_test_feature_table()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (bundle / "manifest.json").exists():
            return bundle
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            data = TrainingData(table.enterprise_ids, table.numeric, table.categorical,  # type: ignore[attr-defined]
                                table.sequences, table.ratings, table.defaulted)  # type: ignore[attr-defined]
            config = TrainConfig.fast(SEED)
            config = replace(config, evaluate=False, split_73=False, control=False)
            tmp = cache / "bundle.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            result = train(data, tmp, config)
            (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
            shutil.rmtree(bundle, ignore_errors=True)
            tmp.replace(bundle)
        finally:
            torch.set_num_threads(threads)
    return bundle
