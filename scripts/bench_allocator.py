#!/usr/bin/env python
"""Benchmark the credit allocator on the real data set and on synthetic scale-ups.

What it measures (all in one run, written to ``artifacts/bench_allocator.json``):

1. Paper 004's experiment shape: the 123 labeled enterprises, budget 70 M yuan, one (amount,
   rate) per segment, solved exactly (HiGHS MILP) and by annealing; beside it the exact
   per-enterprise optimum.
2. Paper 000's experiment shape: the 123 labeled, budget 100 M yuan, the rule strategy; beside
   it the exact per-enterprise optimum.
3. Annealing vs the exact optimum at budgets 50 / 70 / 100 M yuan (greedy start with the paper's
   schedule; random start as in the paper with 100 and 5 000 moves per temperature), with and
   without a concentration cap (a non-linear extra where the greedy start is not optimal).
4. The exact solver on 100 000 synthetic enterprises (median of repeats), and the MILP
   certificate on 10 000 of them.
5. Annealing's runtime for n = 425, 10^4, 10^5 synthetic enterprises.

Inputs. Without ``--scores``, the default probability is a **model-free proxy**: the empirical
default rate of the enterprise's rating among the 123 labeled, smoothed as (defaults + 0.5) /
(count + 1). Segments are a **proxy** for the model's k-prototypes segments: k-prototypes (k = 4,
kmodes) over invoice aggregates (log valid sales and purchases, gross margin, void and
red-letter rates, monthly sales variation) plus the rating. Strength and stability (for the
rule strategy) are percentile ranks of log valid sales and of minus the coefficient of
variation of monthly valid sales. With ``--scores FILE.csv`` (what ``riskmon score`` writes)
the rows of that file are used instead (all of them, e.g. the 425).

Usage: ``python scripts/bench_allocator.py [--scores FILE.csv] [--out artifacts/bench_allocator.json] [--quick]``
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from allocator import Allocation, Applicant, ChurnCurves, make_problem, solve_anneal, solve_exact, solve_rules  # noqa: E402
from allocator.anneal import greedy_steps  # noqa: E402
from allocator.exact import solve_milp  # noqa: E402
from allocator.result import total_profit_yuan  # noqa: E402
from allocator.units import build_units  # noqa: E402

DATA = ROOT / "data" / "cumcm2020c"
M = 1_000_000


# ----------------------------------------------------------------------------- inputs


def rating_proxy(enterprises: pd.DataFrame) -> dict[str, float]:
    """Smoothed empirical default rate per rating among the labeled: (d + 0.5) / (n + 1)."""
    lab = enterprises[enterprises["labeled"] == 1]
    stats = lab.groupby("rating")["defaulted"].agg(["sum", "count"])
    return {str(r): (float(s) + 0.5) / (float(c) + 1.0) for r, (s, c) in stats.iterrows()}


def invoice_profiles(data_dir: Path) -> pd.DataFrame:
    """Per-enterprise invoice aggregates used for the segment and strength/stability proxies."""
    inv = pd.read_csv(data_dir / "invoices.csv.gz", usecols=["enterprise_id", "direction", "date", "amount", "status"])
    valid = inv[inv["status"] == "valid"]
    out = valid[valid["direction"] == "out"]
    sales = out.groupby("enterprise_id")["amount"].sum()
    purchases = valid[valid["direction"] == "in"].groupby("enterprise_id")["amount"].sum()
    void_rate = (inv["status"] != "valid").groupby(inv["enterprise_id"]).mean()
    neg_rate = (inv["amount"] < 0).groupby(inv["enterprise_id"]).mean()
    monthly = out.assign(month=out["date"].str[:7]).groupby(["enterprise_id", "month"])["amount"].sum()
    cv = monthly.groupby(level=0).agg(lambda s: float(s.std(ddof=0) / abs(s.mean())) if s.mean() else np.nan)
    frame = pd.DataFrame({"sales": sales, "purchases": purchases, "void_rate": void_rate, "neg_rate": neg_rate,
                          "cv": cv}).fillna({"sales": 0.0, "purchases": 0.0})
    frame["log_sales"] = np.log1p(frame["sales"].clip(lower=0))
    frame["log_purchases"] = np.log1p(frame["purchases"].clip(lower=0))
    frame["margin"] = ((frame["sales"] - frame["purchases"]) / frame["sales"].abs().replace(0, np.nan)).clip(-5, 1)
    frame["cv"] = frame["cv"].fillna(frame["cv"].max())
    frame["margin"] = frame["margin"].fillna(-5.0)
    frame["strength"] = frame["log_sales"].rank(pct=True)
    frame["stability"] = (-frame["cv"]).rank(pct=True)
    return frame


def kprototype_segments(profile: pd.DataFrame, ratings: pd.Series, k: int = 4, seed: int = 0) -> pd.Series:
    """Segment proxy: k-prototypes over standardised aggregates plus the rating."""
    from kmodes.kprototypes import KPrototypes

    cols = ["log_sales", "log_purchases", "margin", "void_rate", "neg_rate", "cv"]
    x = profile.loc[ratings.index, cols].astype(float)
    x = (x - x.mean()) / x.std(ddof=0).replace(0, 1)
    data = np.column_stack([x.to_numpy(dtype=object), ratings.to_numpy(dtype=object)])
    labels = KPrototypes(n_clusters=k, init="Cao", random_state=seed, n_init=4).fit_predict(data, categorical=[len(cols)])
    return pd.Series([f"seg{int(v)}" for v in labels], index=ratings.index)


def proxy_applicants() -> tuple[list[Applicant], dict[str, Any]]:
    """The 123 labeled with the rating proxy, k-prototypes segments and invoice strength/stability."""
    ent = pd.read_csv(DATA / "enterprises.csv").set_index("enterprise_id")
    proxy = rating_proxy(ent.reset_index())
    lab = ent[ent["labeled"] == 1]
    profile = invoice_profiles(DATA)
    segments = kprototype_segments(profile, lab["rating"])
    apps = [Applicant(str(e), str(r), proxy[str(r)], segment=segments[e], strength=float(profile.loc[e, "strength"]),
                      stability=float(profile.loc[e, "stability"])) for e, r in lab["rating"].items()]
    return apps, {"source": "123 labeled; default probability = smoothed empirical default rate per rating (proxy)",
                  "rating_proxy": proxy, "segment_proxy": "k-prototypes k=4 over invoice aggregates + rating",
                  "n": len(apps), "segment_sizes": dict(collections.Counter(segments))}


def scored_applicants(path: Path) -> tuple[list[Applicant], list[Applicant]]:
    """All rows of a ``riskmon score`` CSV, and those whose rating is known (the labeled)."""
    from streams.commands.allocate import read_applicants

    apps = read_applicants(path)
    frame = pd.read_csv(path, dtype={"enterprise_id": str})
    if "rating_known" in frame.columns:
        known_ids = set(frame.loc[frame["rating_known"].astype(str).str.lower().isin(["true", "1"]), "enterprise_id"])
    else:
        known_ids = set()
    return apps, [a for a in apps if a.enterprise_id in known_ids]


def synthetic(n: int, seed: int) -> list[Applicant]:
    """Synthetic enterprises: rating shares as among the labeled, p ~ Beta around the rating proxy."""
    rng = np.random.default_rng(seed)
    ratings = rng.choice(list("ABCD"), size=n, p=[27 / 123, 38 / 123, 34 / 123, 24 / 123])
    mean = {"A": 0.02, "B": 0.04, "C": 0.07, "D": 0.9}
    p = np.array([rng.beta(2, 2 / mean[r] - 2) for r in ratings])
    return [Applicant(f"S{i}", str(r), float(pi), segment=f"g{i % 8}", industry=f"i{i % 5}")
            for i, (r, pi) in enumerate(zip(ratings, p))]


# ----------------------------------------------------------------------------- summaries


def summary(result: Allocation) -> dict[str, Any]:
    by_rating: dict[str, dict[str, float]] = {}
    for ln in result.lines:
        d = by_rating.setdefault(ln.rating, {"n": 0, "lines": 0, "amount_yuan": 0, "expected_profit_yuan": 0.0})
        d["n"] += 1
        if ln.amount_yuan:
            d["lines"] += 1
            d["amount_yuan"] += ln.amount_yuan
            d["expected_profit_yuan"] += ln.expected_profit_yuan
    return {"solver": result.solver, "policy": result.policy, "expected_profit_yuan": result.expected_profit_yuan,
            "total_amount_yuan": result.total_amount_yuan, "n_lines": result.n_lines, "optimum_yuan": result.optimum_yuan,
            "gap": result.gap, "runtime_s": result.runtime_s, "notes": list(result.notes),
            "by_rating": dict(sorted(by_rating.items()))}


def segment_table(result: Allocation) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ln in result.lines:
        if ln.rating == "D":
            continue
        d = out.setdefault(ln.segment, {"members_lendable": 0, "amount_yuan": ln.amount_yuan, "rate": ln.rate})
        d["members_lendable"] += 1
    return dict(sorted(out.items()))


def greedy_gap(problem: Any) -> float:
    units = build_units(problem)
    greedy = total_profit_yuan(problem, units, greedy_steps(units), units.best)
    best = solve_exact(problem).expected_profit_yuan
    return (best - greedy) / abs(best) if best else 0.0


def fmt_m(yuan: float) -> str:
    return f"{yuan / M:8.2f}M"


def real_data_experiments(apps: list[Applicant], curves: ChurnCurves, *, quick: bool) -> dict[str, Any]:
    """Paper 004's and paper 000's experiment shapes and annealing-vs-exact gaps on one input set."""
    report: dict[str, Any] = {}
    # 1. paper 004: 70 M, segment policy
    seg_problem = make_problem(apps, 70 * M, curves, policy="segment")
    seg_exact = solve_exact(seg_problem)
    seg_anneal = solve_anneal(seg_problem, seed=0)
    seg_anneal_random = solve_anneal(seg_problem, seed=0, init="random")
    ent70 = solve_exact(make_problem(apps, 70 * M, curves))
    report["paper004_70M_segment"] = {
        "exact_segment": summary(seg_exact), "segments": segment_table(seg_exact),
        "anneal_segment_greedy_start": summary(seg_anneal), "anneal_segment_random_start": summary(seg_anneal_random),
        "exact_enterprise": summary(ent70),
        "paper_reported": {"total_lent_yuan": 68_760_000, "expected_profit_yuan": 633_400,
                           "note": "paper 004 table 6, BP-network probabilities and its own segments"},
    }
    # 2. paper 000: 100 M, rules
    rules100 = solve_rules(make_problem(apps, 100 * M, curves))
    ent100 = solve_exact(make_problem(apps, 100 * M, curves))
    report["paper000_100M_rules"] = {"rules": summary(rules100), "exact_enterprise": summary(ent100)}

    print("\n== experiment shapes (123 labeled unless --scores) ==")
    print(f"{'case':44s} {'profit':>10s} {'lent':>10s} {'lines':>5s}  lines by rating (A/B/C/D)")
    for name, res in (("004: 70M segment policy, exact (MILP)", seg_exact),
                      ("004: 70M segment policy, anneal greedy start", seg_anneal),
                      ("004: 70M segment policy, anneal random start", seg_anneal_random),
                      ("70M per-enterprise exact optimum", ent70),
                      ("000: 100M rule strategy", rules100),
                      ("100M per-enterprise exact optimum", ent100)):
        s = summary(res)
        by = "/".join(str(s["by_rating"].get(r, {}).get("lines", 0)) for r in "ABCD")
        print(f"{name:44s} {res.expected_profit_yuan / 1e4:8.2f}万 {fmt_m(res.total_amount_yuan)} {res.n_lines:5d}  {by}")
    print("segments (exact, 70M):", {k: (v["members_lendable"], v["amount_yuan"], v["rate"])
                                    for k, v in segment_table(seg_exact).items()})

    # 3. anneal vs exact on the real inputs
    print("\n== annealing vs exact optimum (gap = (optimum - anneal) / optimum) ==")
    gaps: list[dict[str, Any]] = []
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("enterprise", {}, {"init": "greedy", "moves_per_temperature": 100}),
        ("enterprise", {}, {"init": "random", "moves_per_temperature": 100}),
        ("enterprise", {}, {"init": "random", "moves_per_temperature": 1000}),
        ("enterprise", {}, {"init": "random", "moves_per_temperature": 5000}),
        ("enterprise", {"segment_cap_share": 0.3}, {"init": "greedy", "moves_per_temperature": 100}),
        ("enterprise", {"segment_cap_share": 0.3}, {"init": "random", "moves_per_temperature": 1000}),
        ("segment", {}, {"init": "greedy", "moves_per_temperature": 100}),
        ("segment", {}, {"init": "greedy", "moves_per_temperature": 1000}),
        ("segment", {}, {"init": "random", "moves_per_temperature": 100}),
        ("segment", {}, {"init": "random", "moves_per_temperature": 1000}),
    ]
    if quick:
        variants = [v for v in variants if v[2]["moves_per_temperature"] <= 1000]
    seeds = range(3)
    for budget in (50 * M, 70 * M, 100 * M):
        for policy, extra, opts in variants:
            problem = make_problem(apps, budget, curves, policy=policy, **extra)  # type: ignore[arg-type]
            exact = solve_exact(problem)
            runs = [solve_anneal(problem, seed=s, **opts) for s in seeds]
            row = {"budget_yuan": budget, "policy": policy, "extras": extra, **opts,
                   "optimum_yuan": exact.expected_profit_yuan, "exact_runtime_s": exact.runtime_s,
                   "greedy_start_gap": greedy_gap(problem),
                   "anneal_gaps": [r.gap for r in runs], "anneal_max_gap": max(r.gap or 0.0 for r in runs),
                   "anneal_runtime_s": statistics.median(r.runtime_s for r in runs), "seeds": list(seeds)}
            gaps.append(row)
            label = f"{budget / M:.0f}M {policy:10s} {json.dumps(extra) if extra else '':26s} {opts['init']:6s} L={opts['moves_per_temperature']:<5d}"
            print(f"{label} optimum {exact.expected_profit_yuan / 1e4:8.2f}万  greedy gap {row['greedy_start_gap']:.2e}  "
                  f"anneal max gap {row['anneal_max_gap']:.2e} over {len(runs)} seeds  {row['anneal_runtime_s']:.2f} s/run")
    report["anneal_vs_exact"] = gaps

    # budgets that are not a multiple of the 1 M maximum line: the greedy start leaves < 100 000 yuan unused
    odd: list[dict[str, Any]] = []
    print("-- budgets off the 1 M grid (greedy start not optimal), enterprise policy, paper schedule --")
    for budget in (50 * M + 50_000, 70 * M + 50_000, 100 * M + 50_000):
        problem = make_problem(apps, budget, curves)
        exact = solve_exact(problem)
        for moves in (100, 1000):
            runs = [solve_anneal(problem, seed=s, moves_per_temperature=moves) for s in seeds]
            row = {"budget_yuan": budget, "moves_per_temperature": moves, "optimum_yuan": exact.expected_profit_yuan,
                   "greedy_start_gap": greedy_gap(problem), "anneal_gaps": [r.gap for r in runs],
                   "anneal_max_gap": max(r.gap or 0.0 for r in runs)}
            odd.append(row)
            print(f"{budget / M:.2f}M L={moves:<5d} greedy gap {row['greedy_start_gap']:.2e}  anneal gaps "
                  + " ".join(f"{g:.2e}" for g in row["anneal_gaps"]))
    report["anneal_vs_exact_off_grid_budgets"] = odd

    return report


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", default=None, help="CSV of scores (enterprise_id, rating, default_probability, segment)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_allocator.json")
    parser.add_argument("--quick", action="store_true", help="skip the slowest runs (random start with 5 000 moves, n = 10^5 anneal)")
    args = parser.parse_args(argv)

    curves = ChurnCurves.from_csv(DATA / "churn.csv")
    report: dict[str, Any] = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                          "cpus": __import__("os").cpu_count()}}
    t = time.perf_counter()
    proxy_apps, source = proxy_applicants()
    source["input_prep_s"] = time.perf_counter() - t
    report["proxy_input"] = source
    inputs: list[tuple[str, list[Applicant]]] = [("labeled123_rating_proxy", proxy_apps)]
    if args.scores:
        scored, known = scored_applicants(Path(args.scores))
        report["scores_input"] = {"file": args.scores, "n": len(scored), "n_rating_known": len(known)}
        inputs += [(f"model_scores_all{len(scored)}", scored), (f"model_scores_labeled{len(known)}", known)]
    print(f"proxy input: {source['source']} (n = {source['n']}, prepared in {source['input_prep_s']:.1f} s)")

    report["inputs"] = {}
    for label, apps in inputs:
        print(f"\n######## input set: {label} (n = {len(apps)})")
        report["inputs"][label] = real_data_experiments(apps, curves, quick=args.quick)

    # 4. exact on 100 000 synthetic enterprises
    print("\n== exact solver on synthetic enterprises ==")
    big = synthetic(100_000, seed=0)
    budget = 25_000 * M + 55_000  # binds: about a quarter of the lendable at max amount, not a multiple of 1 M
    problem = make_problem(big, budget, curves)
    times_solve, times_total = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        result = solve_exact(problem)
        times_total.append(time.perf_counter() - t0)
        times_solve.append(result.runtime_s)
    exact_big = {"n": 100_000, "budget_yuan": budget, "lines": result.n_lines, "expected_profit_yuan": result.expected_profit_yuan,
                 "solve_s_median": statistics.median(times_solve), "solve_s_max": max(times_solve),
                 "with_lines_s_median": statistics.median(times_total), "with_lines_s_max": max(times_total), "repeats": 5,
                 "note": "solve = rates, value table and closed form; with_lines adds the 10^5 AllocationLine values and reason codes"}
    print(f"n=100000: solve {exact_big['solve_s_median']:.3f} s median (max {exact_big['solve_s_max']:.3f}), "
          f"with lines and reasons {exact_big['with_lines_s_median']:.3f} s median; {result.n_lines} lines")
    # MILP certificate on 10 000 (same closed-form optimum?)
    mid = synthetic(10_000, seed=1)
    mid_problem = make_problem(mid, 2_500 * M + 55_000, curves)
    units = build_units(mid_problem)
    t0 = time.perf_counter()
    closed = solve_exact(mid_problem)
    t_closed = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, milp_obj, milp_gap = solve_milp(units, time_limit_s=120)
    t_milp = time.perf_counter() - t0
    milp_check: dict[str, float] = {"closed_form_yuan": closed.expected_profit_yuan, "milp_yuan": milp_obj,
                                   "relative_difference": abs(closed.expected_profit_yuan - milp_obj) / abs(milp_obj),
                                   "closed_form_s": t_closed, "milp_s": t_milp, "milp_reported_gap": milp_gap}
    print(f"n=10000: closed form {closed.expected_profit_yuan:.2f} in {t_closed:.3f} s, HiGHS MILP {milp_obj:.2f} "
          f"in {t_milp:.2f} s (relative difference {milp_check['relative_difference']:.1e})")
    exact_big["milp_check_10k"] = milp_check
    report["exact_scale"] = exact_big

    # 5. anneal runtime growth
    print("\n== annealing runtime growth (greedy start, paper schedule T0=100, Tend=0.01, alpha=0.9) ==")
    growth = []
    for n in (425, 10_000, 100_000):
        apps_n = synthetic(n, seed=2)
        problem = make_problem(apps_n, n * 250_000 + 55_000, curves)
        greedy = greedy_gap(problem)
        for moves in (100, 1000):
            if args.quick and n == 100_000 and moves == 1000:
                continue
            res = solve_anneal(problem, seed=0, moves_per_temperature=moves)
            levels = len(res.trace)
            row = {"n": n, "moves_per_temperature": moves, "levels": levels, "proposals": levels * moves,
                   "runtime_s": res.runtime_s, "gap": res.gap, "greedy_start_gap": greedy,
                   "note": "runtime_s covers the value table, the greedy start and the proposals, not the certificate"}
            growth.append(row)
            print(f"n={n:>6d} L={moves:<5d} {levels * moves:>7d} proposals  {res.runtime_s:7.2f} s  "
                  f"gap {res.gap:.2e} (greedy start {greedy:.2e})")
    report["anneal_growth"] = growth

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
