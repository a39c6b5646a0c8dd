#!/usr/bin/env python
"""What reasons cost, and how few integration steps keep them: one run, ratios against its own baselines.

On the real enterprise-dates of a backtest (the columnar fold of the validated event cache, states as
of ``--dates``, known ratings given as the backtest and the worker give them), with a trained bundle:

1. **Cost.** ``score_many(batch, reasons=False)`` vs ``score_many(batch, reasons=True)``, same batch,
   same process: the share of scoring time that the reasons take; and the attributions as captum
   computes them from the per-row outputs (the implementation before this script: one autograd root
   per output) vs from their sum (:func:`models.reasons.integrated_gradients` now), checked equal.
2. **Steps.** Integrated gradients (Gauss-Legendre) with ``--steps`` against a reference of
   ``--reference-steps``: time, captum's convergence delta (completeness: attributions' sum minus
   ``p(x) - p(reference)``, per member, in probability units), the largest attribution difference to
   the reference, and the share of rows whose top reasons (the words a customer reads) are identical
   to the reference's and to the current :data:`models.reasons.IG_STEPS`.
3. **Subsets.** Reasons of every 7th row computed in a batch of their own equal those of the whole batch
   (a row's reasons must not depend on the rest of the batch: the backtest computes them per line).

    scripts/bench_reasons.py --bundle var/bundle [--dates 2018-06-30,2019-06-30,2020-02-21]

Writes ``artifacts/bench_reasons.json``. Timings on a shared machine are wall clock; the ratios are
within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models.reasons as reasons_module  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.reasons import IG_STEPS, top_reasons  # noqa: E402
from models.reasons import integrated_gradients as summed_ig  # noqa: E402
from models.schema import NUMERIC_FEATURES  # noqa: E402
from models.scoring import ScoringBatch  # noqa: E402


def per_output_ig(forward: object, x: np.ndarray, reference: np.ndarray, *fixed: torch.Tensor,
                  n_steps: int = IG_STEPS, with_delta: bool = False) -> np.ndarray:
    """captum's integrated gradients of the per-row outputs, as :mod:`models.reasons` called it before."""
    from captum.attr import IntegratedGradients

    inputs = torch.as_tensor(np.asarray(x, dtype=np.float64))
    base = torch.as_tensor(np.broadcast_to(np.asarray(reference, dtype=np.float64), inputs.shape).copy())
    attr = IntegratedGradients(forward).attribute(inputs, baselines=base, additional_forward_args=fixed or None,
                                                  n_steps=n_steps, method="gausslegendre")
    return attr.detach().numpy()  # type: ignore[no-any-return]


def real_batch(data: Path, cache: Path, dates: list[dt.date]) -> ScoringBatch:
    """Every enterprise with an invoice, as of each date: the backtest's scoring rows (known ratings given)."""
    from streams.adapters.memory import InMemoryRegistry
    from streams.backtest.columnar import fold_duckdb, walk_states
    from streams.backtest.eventcache import load_cached_events
    from streams.features.names import classify_name
    from streams.features.vector import features_from_arrays, sequences_from_window

    table = load_cached_events(data, cache, lambda n: None).table
    registry = InMemoryRegistry.from_data_dir(data)
    ids, numeric, seqs, cats, known = [], [], [], [], []
    for st in walk_states(fold_duckdb(table, dates)):
        x = features_from_arrays(st.arrays)
        s = sequences_from_window(st.arrays.window)
        for i, eid in enumerate(st.enterprise_ids):
            info = registry.get(eid)
            ids.append(eid)
            numeric.append(x[i])
            seqs.append(s[i])
            cats.append(classify_name(info.name if info is not None else st.names[i]))
            known.append(info.rating if info is not None else None)
    return ScoringBatch(ids, np.stack(numeric), cats, np.stack(seqs), known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "var" / "bundle")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "cumcm2020c")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "cache")
    parser.add_argument("--dates", default="2018-06-30,2019-06-30,2020-02-21")
    parser.add_argument("--steps", default="4,8,16,32")
    parser.add_argument("--reference-steps", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_reasons.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the worker and riskmon train: tiny nets

    bundle = load_bundle(args.bundle)
    dates = sorted(dt.date.fromisoformat(d) for d in args.dates.split(","))
    batch = real_batch(args.data, args.cache_dir, dates)
    n = len(batch.enterprise_ids)
    print(f"bundle {bundle.version}: {n} enterprise-dates as of {', '.join(map(str, dates))}", flush=True)
    report: dict[str, object] = {"bundle_version": bundle.version, "rows": n, "dates": [str(d) for d in dates],
                                 "load_average": os.getloadavg(), "ig_steps_now": IG_STEPS}

    # 1. cost of the reasons, same batch, same process
    t = time.perf_counter()
    plain = bundle.score_many(batch, reasons=False)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    full = bundle.score_many(batch, reasons=True)
    t_full = time.perf_counter() - t
    same = all(a.default_probability == b.default_probability and a.rating == b.rating and a.segment == b.segment
               for a, b in zip(plain, full, strict=True))
    report["cost"] = {"score_without_reasons_s": t_plain, "score_with_reasons_s": t_full,
                      "reasons_share": 1 - t_plain / t_full, "other_fields_identical": same}
    print(f"scoring without reasons {t_plain:.1f} s, with {t_full:.1f} s: reasons are {1 - t_plain / t_full:.0%} "
          f"(other fields identical: {same})", flush=True)

    out = bundle.member_outputs(batch)
    t = time.perf_counter()
    summed = bundle.attributions(batch, out)
    t_sum = time.perf_counter() - t
    reasons_module.integrated_gradients = per_output_ig  # what bundle.attributions called before
    try:
        t = time.perf_counter()
        per_output = bundle.attributions(batch, out)
        t_per = time.perf_counter() - t
    finally:
        reasons_module.integrated_gradients = summed_ig
    report["captum_outputs"] = {"per_output_s": t_per, "summed_s": t_sum, "speed_up": t_per / t_sum,
                                "identical": bool(np.array_equal(per_output, summed))}
    print(f"attributions, {IG_STEPS} steps: per-row outputs {t_per:.1f} s, summed {t_sum:.2f} s "
          f"({t_per / t_sum:.0f}x), identical: {np.array_equal(per_output, summed)}", flush=True)

    # 2. integration steps against a fine reference
    raw = np.asarray(batch.numeric, dtype=np.float64)

    def words(attr: np.ndarray) -> list[tuple[str, ...]]:
        return [tuple(top_reasons(attr[i], NUMERIC_FEATURES, raw[i])) for i in range(n)]

    t = time.perf_counter()
    ref_attr, ref_gap = bundle.attributions(batch, out, n_steps=args.reference_steps, with_delta=True)
    t_ref = time.perf_counter() - t
    ref_words = words(ref_attr)
    now_words = [tuple(s.reasons or ()) for s in full]
    rows = []
    for steps in sorted({int(s) for s in args.steps.split(",")}):
        t = time.perf_counter()
        attr, gap = bundle.attributions(batch, out, n_steps=steps, with_delta=True)
        took = time.perf_counter() - t
        w = words(attr)
        row = {"steps": steps, "seconds": took, "seconds_vs_reference": took / t_ref,
               "max_abs_delta": float(gap.max()), "p99_abs_delta": float(np.quantile(gap, 0.99)),
               "max_abs_attr_diff_vs_reference": float(np.abs(attr - ref_attr).max()),
               "top_reasons_equal_reference": float(np.mean([a == b for a, b in zip(w, ref_words, strict=True)])),
               "top_reasons_equal_now": float(np.mean([a == b for a, b in zip(w, now_words, strict=True)]))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["reference"] = {"steps": args.reference_steps, "seconds": t_ref, "max_abs_delta": float(ref_gap.max())}
    report["steps"] = rows

    # 3. a row's reasons do not depend on the rest of its batch
    pick = np.arange(0, n, 7)
    sub = ScoringBatch([batch.enterprise_ids[i] for i in pick], batch.numeric[pick],
                       [batch.categorical[i] for i in pick], batch.sequences[pick],
                       [batch.known_ratings[i] for i in pick])
    alone = bundle.score_many(sub, reasons=True)
    report["subset_reasons_identical"] = all(a.reasons == full[i].reasons for a, i in zip(alone, pick, strict=True))
    print(f"reasons of {len(pick)} rows scored on their own identical to the whole batch's: "
          f"{report['subset_reasons_identical']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
