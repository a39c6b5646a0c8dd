"""``riskmon backtest``: the credit decisions as of chosen dates, computed in process, and their report.

Three engines give the same states: ``columnar`` (default: the invoices folded once with
DuckDB, states as of each date by cumulative sums, :mod:`streams.backtest.columnar`),
``spark`` (the same fold as a PySpark job, :mod:`streams.backtest.spark`) and ``events``
(the live worker's functions over the in-memory adapters, one event at a time,
:mod:`streams.backtest.engine`). Scoring and allocation are the live pipeline's in all
three. This module reads the inputs, draws the progress bars and writes the report.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.cli import UserError, add_bundle_trust_arguments, load_settings, load_trusted_bundle
from streams.dataset import DEFAULT_DATA_DIR, InvoiceFileError

SOLVERS = ("exact", "anneal", "rules")
ENGINES = ("columnar", "spark", "events")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backtest", help="replay history in process and report the credit decisions as of chosen dates")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="data set folder (default: %(default)s)")
    parser.add_argument("--bundle", type=Path, required=True, help="trained model bundle (riskmon train --out)")
    add_bundle_trust_arguments(parser)
    parser.add_argument("--as-of", default="quarterly",
                        help="YYYY-MM-DD[,YYYY-MM-DD...], 'quarterly' or 'monthly' (default: %(default)s)")
    parser.add_argument("--budget", type=float, required=True, help="lending budget in yuan")
    parser.add_argument("--solver", choices=SOLVERS, default="exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", type=Path, default=None, help="JSON scenario file (industry shocks)")
    parser.add_argument("--out", type=Path, default=Path("var/backtest"), help="report folder (default: %(default)s)")
    parser.add_argument("--universe", choices=("all", "labeled"), default="all",
                        help="enterprises the bank lends to: all of enterprises.csv (as the live worker) or the "
                             "123 labeled only (every line then has a known outcome)")
    parser.add_argument("--enterprises", default=None,
                        help="restrict to these enterprises: E1,E2,... or @FILE with one id per line")
    parser.add_argument("--lgd", type=float, default=1.0, help="loss given default (default 1)")
    parser.add_argument("--flat-rate", type=float, default=0.0585, help="rate of the lend-to-everyone baseline")
    parser.add_argument("--flag-threshold", type=float, default=0.5,
                        help="default probability at which an enterprise counts as flagged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache"),
                        help="where the validated, sorted events are cached as Parquet (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true",
                        help="events engine: validate the invoice file again and hold all events in memory instead")
    parser.add_argument("--engine", choices=ENGINES, default="columnar",
                        help="columnar (default: one DuckDB fold, states by cumulative sums), spark (the same fold "
                             "as a PySpark job) or events (the live worker's functions, event by event)")
    parser.add_argument("--spark-master", default="local[2]",
                        help="Spark master URL for --engine spark: local[N], spark://HOST:7077, yarn, ... "
                             "(default: %(default)s)")
    parser.add_argument("--invoices", default=None,
                        help="columnar/spark engines: a Parquet invoice table (file, folder or, for Spark, any "
                             "URL its executors read) with the columns of docs/backtest.md, instead of the data "
                             "set's validated invoices")
    parser.add_argument("--reasons", choices=("lines", "all", "none"), default="lines",
                        help="which rows get their risk factors (integrated gradients, most of the scoring time): "
                             "lines (default: every credit line lent or published as of each date, and its score), "
                             "all (every scored enterprise-date in lines.csv) or none")
    parser.set_defaults(func=run)


def parse_enterprises(spec: str | None) -> set[str] | None:
    """``E1,E2`` or ``@file`` (one id per line) -> a set of ids; None means all."""
    if spec is None:
        return None
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read enterprise list {path}: {exc.strerror}") from None
        ids = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    else:
        ids = {part.strip() for part in spec.split(",") if part.strip()}
    if not ids:
        raise UserError("--enterprises names no enterprise")
    return ids


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


def load_sorted_events(data_dir: Path, wanted: Collection[str] | None, advance: Callable[[int], None]) -> tuple[list[Any], int]:
    """Valid events of the wanted enterprises sorted by issue date (stable), and the rejected count."""
    from streams.dataset import RejectedRow, iter_events

    events = []
    rejected = 0
    n = 0
    for item in iter_events(data_dir):
        n += 1
        if n % 20_000 == 0:
            advance(20_000)
        if isinstance(item, RejectedRow):
            rejected += 1
        elif wanted is None or item.enterprise_id in wanted:
            events.append(item)
    advance(n % 20_000)
    events.sort(key=lambda e: e.issue_date)
    return events, rejected


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    if args.budget <= 0:
        raise UserError(f"--budget must be a positive number of yuan, got {args.budget}")
    if not (args.data / "enterprises.csv").exists():
        raise UserError(f"{args.data} is not a data set folder (no enterprises.csv)")
    from streams.adapters.memory import InMemoryRegistry
    from streams.dataset import load_enterprises

    enterprises = load_enterprises(args.data)
    full_registry = InMemoryRegistry.from_data_dir(args.data)
    wanted = parse_enterprises(args.enterprises)
    if args.universe == "labeled":
        labeled = set(enterprises.loc[enterprises["labeled"] == 1, "enterprise_id"])
        wanted = labeled if wanted is None else wanted & labeled
    if wanted is not None:
        unknown = sorted(wanted - full_registry.enterprise_ids())
        if unknown:
            raise UserError(f"unknown enterprises: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    with _progress(not args.no_progress) as progress:
        # the columnar engine reads, validates and folds in a child process, and the figures are drawn in another
        # that imports matplotlib now (this one never does), while this one imports torch and loads the bundle
        loading = _Background(args, wanted, progress) if args.engine == "columnar" else None
        figures = None
        try:
            figures = _figure_process()
            return _run(args, t_start, progress, enterprises, full_registry, wanted, loading, figures)
        finally:
            if figures is not None:
                figures.close()
            if loading is not None:
                loading.close()


def _figure_process() -> Any:
    """A :class:`streams.backtest.report.FigureProcess` where processes can be forked, else None."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    from streams.backtest.report import FigureProcess

    return FigureProcess()


class _Background:
    """The columnar engine's reading, validating and folding, in a forked child process.

    That work is Arrow and DuckDB code on its own data; in a thread it was starved by the main
    thread's imports (the GIL), in a process it runs beside them on the second core. The child
    sends back the fold tables (kilobytes to megabytes), not the invoices, then finishes writing
    the event cache file; :meth:`join` waits for that.
    """

    def __init__(self, args: argparse.Namespace, wanted: Collection[str] | None, progress: Any) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_load_in_child, args=(args, wanted, send), name="backtest-load")
        self._process.start()
        send.close()
        self._progress = progress
        self._task = progress.add_task("reading, validating and folding the invoices", total=None)
        self._received = False

    def result(self) -> _Loaded:
        try:
            self._received = True
            ok, value = self._receive.recv()
        except EOFError:
            self._process.join()
            raise UserError(f"the process reading the invoices died (exit {self._process.exitcode})") from None
        self._progress.update(self._task, total=1, completed=1)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def join(self) -> None:
        self._process.join()

    def close(self) -> None:
        """:meth:`join`, or end the child if its result was never asked for (this run failed before)."""
        if not self._received:  # the child may be blocked sending the fold: joining would wait forever
            self._process.terminate()
        self._process.join()


def _load_in_child(args: argparse.Namespace, wanted: Collection[str] | None, send: Any) -> None:
    writes: list[Callable[[], None]] = []
    try:
        loaded = _load_columnar(args, wanted, _NoProgress(), writes if args.engine == "columnar" else None)
        loaded.table = None  # the parent reads the cache file only if a scenario needs the invoices
        send.send((True, loaded))
    except BaseException as exc:  # handed to the parent, which raises it
        send.send((False, exc))
        return
    finally:
        send.close()
    for write in writes:  # the event cache file, off the parent's path
        write()


class _NoProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


def _run(args: argparse.Namespace, t_start: float, progress: Any, enterprises: Any, full_registry: Any,
         wanted: set[str] | None, loading: _Background | None, figures: Any = None) -> int:
    from allocator import AllocatorError, ChurnCurves
    from models.errors import ModelError
    from streams.adapters.memory import InMemoryRegistry
    from streams.backtest.outcomes import outcomes_from_enterprises
    from streams.backtest.report import write_report
    from streams.backtest.run import BacktestConfig
    from streams.backtest.scenarios import load_scenario
    from streams.features.names import classify_name

    import torch

    torch.set_num_threads(1)  # tiny nets: one thread is ~5x faster than two (no sync overhead), as in riskmon score
    scenario = None
    if args.scenario is not None:
        try:
            scenario = load_scenario(args.scenario)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    try:
        scorer = load_trusted_bundle(args)
    except (ModelError, FileNotFoundError) as exc:
        raise UserError(f"cannot load the model bundle {args.bundle}: {exc}") from None
    try:
        churn = ChurnCurves.from_csv(args.data / "churn.csv")
    except (AllocatorError, OSError) as exc:
        raise UserError(f"cannot read {args.data / 'churn.csv'}: {exc}") from None
    allocate = make_allocate(churn, lgd=args.lgd)

    if wanted is not None:
        registry = InMemoryRegistry(i for e in sorted(wanted) if (i := full_registry.get(e)) is not None)
    else:
        registry = full_registry
    outcomes = {e: o for e, o in outcomes_from_enterprises(enterprises).items() if wanted is None or e in wanted}
    industry_of = {e: classify_name(full_registry.get(e).name)[0] for e in full_registry.enterprise_ids()}

    config = BacktestConfig(budget_yuan=args.budget, solver=args.solver, seed=args.seed, lgd=args.lgd,
                            flat_rate=args.flat_rate, flag_threshold=args.flag_threshold)
    if args.engine == "events":
        result, n_events, rejected, source = _run_events(args, wanted, progress, registry, scorer, allocate,
                                                         outcomes, churn, config, scenario, industry_of)
    else:
        loaded = loading.result() if loading is not None else _load_columnar(args, wanted, progress)
        result, n_events, rejected, source = _run_columnar(args, wanted, progress, registry, scorer, allocate,
                                                           outcomes, churn, config, scenario, industry_of, loaded,
                                                           loading.join if loading is not None else None)
    if loading is not None:
        loading.join()  # the event cache file is written: the child's CPU and memory are counted below
    extra = {
        "data": str(args.data), "bundle": str(args.bundle), "bundle_version": scorer.version,
        "universe": args.universe, "n_enterprises": len(registry.enterprise_ids()),
        "n_events": n_events, "rejected_rows": rejected, "engine": args.engine,
        "scenario_file": str(args.scenario) if args.scenario else None,
        "event_source": source, "reasons": args.reasons,
    }
    t_report = time.perf_counter()
    paths = write_report(result, args.out, extra, figures=figures.submit if figures is not None else None)
    result.timings_s["report_s"] = time.perf_counter() - t_report
    total_s = time.perf_counter() - t_start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = json.loads(paths["summary.json"].read_text(encoding="utf-8"))
    summary["timings_s"] = {**result.timings_s, "total_s": total_s}
    summary["peak_rss_mb"] = peak_rss_mb
    # the largest child: the process that read and folded the invoices, or the one that drew figures
    summary["peak_rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    paths["summary.json"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _print_summary(result, args.out, total_s, peak_rss_mb)
    return 0


def _dates(args: argparse.Namespace, first: Any, last: Any, n_events: int) -> tuple[Any, ...]:
    from streams.backtest.asof import parse_as_of

    if not n_events or first is None or last is None:
        raise UserError("no valid invoice for the chosen enterprises")
    try:
        return parse_as_of(args.as_of, first, last)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _run_events(args: argparse.Namespace, wanted: Collection[str] | None, progress: Any, registry: Any, scorer: Any,
                allocate: Any, outcomes: Any, churn: Any, config: Any, scenario: Any, industry_of: Any
                ) -> tuple[Any, int, int, str]:
    """The event-by-event replay through the live worker's functions."""
    from allocator import AllocatorError
    from streams.backtest.run import run_backtest

    task = progress.add_task("reading + validating invoices", total=None)
    t0 = time.perf_counter()
    events: Any
    if args.no_cache:
        try:
            events, rejected = load_sorted_events(args.data, wanted, lambda n: progress.advance(task, n))
        except InvoiceFileError as exc:
            raise UserError(str(exc)) from None
        first, last = (events[0].issue_date, events[-1].issue_date) if events else (None, None)
        n_events = len(events)
    else:
        from streams.backtest.eventcache import load_cached_events

        try:
            cached = load_cached_events(args.data, args.cache_dir, lambda n: progress.advance(task, n))
        except InvoiceFileError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"event cache in {args.cache_dir}: {exc}") from None
        cached = cached.only(wanted)
        rejected, n_events = cached.rejected, len(cached)
        first, last = (cached.first_date, cached.last_date) if n_events else (None, None)
        events = cached.iter_events
    load_s = time.perf_counter() - t0
    dates = _dates(args, first, last, n_events)
    runs = 2 if scenario is not None and scenario.changes_events else 1
    replay_task = progress.add_task("replaying in event-time order", total=n_events * runs)
    try:
        result = run_backtest(events, dates, registry, scorer, allocate, outcomes, churn.churn, config,
                              scenario=scenario, industry_of=industry_of,
                              on_progress=lambda n: progress.advance(replay_task, n),
                              clock=time.perf_counter, alert_rules=load_settings().alerts.rules(),
                              reasons=args.reasons)
    except AllocatorError as exc:
        raise UserError(f"allocator: {exc}") from None
    result.timings_s["load_s"] = load_s
    return result, n_events, rejected, "validated on the fly" if args.no_cache else "validated Parquet cache"


@dataclass(slots=True)
class _Loaded:
    """The columnar engines' input: the invoice table (or Parquet path), its as-of dates and, for DuckDB, the fold."""

    table: Any
    parquet: str | None
    source: str
    rejected_before: int
    dates: tuple[Any, ...]
    session: Any = None  # Spark
    base: Any = None  # FoldTables of the unshocked invoices (DuckDB)
    load_s: float = 0.0
    fold_s: float = 0.0


def _load_columnar(args: argparse.Namespace, wanted: Collection[str] | None, progress: Any,
                   deferred_writes: list[Callable[[], None]] | None = None) -> _Loaded:
    """Read (building the event cache on a first run), find the as-of dates, and fold with DuckDB.

    ``deferred_writes`` (DuckDB only): a first run's event cache file is not written but its
    writing appended here, for the caller to run once the fold is sent.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    task = progress.add_task("reading invoices", total=None)
    t0 = time.perf_counter()
    rejected_before = 0
    table: pa.Table | None = None
    parquet: str | None = None
    if args.invoices is not None:
        parquet = str(args.invoices)
        source = f"Parquet table {parquet}"
        if args.engine == "columnar":
            try:
                table = pq.read_table(parquet)
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"cannot read --invoices {parquet}: {exc}") from None
    else:
        from streams.backtest.eventcache import load_cached_events

        try:
            # Spark reads the file; DuckDB folds the table in memory, and the file is written after
            cached = load_cached_events(args.data, args.cache_dir, lambda n: progress.advance(task, n),
                                        defer_write=deferred_writes)
        except InvoiceFileError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"event cache in {args.cache_dir}: {exc}") from None
        rejected_before = cached.rejected
        table, parquet, source = cached.table, str(cached.path), "validated Parquet cache"
    session = None
    if args.engine == "spark":
        from streams.backtest.spark import SparkFoldError, spark_session

        try:
            session = spark_session(args.spark_master)
        except SparkFoldError as exc:
            raise UserError(str(exc)) from None
        span = session.read.parquet(parquet)
        if wanted is not None:
            span = span.where(span.enterprise_id.isin(sorted(wanted)))
        row = span.selectExpr("MIN(CAST(issue_date AS DATE)) AS lo", "MAX(CAST(issue_date AS DATE)) AS hi",
                              "COUNT(*) AS n").collect()[0]
        first, last, n_rows = row["lo"], row["hi"], int(row["n"])
    else:
        if table is None:
            raise UserError("no invoice table")
        if wanted is not None:
            table = table.filter(pc.is_in(table["enterprise_id"], value_set=pa.array(sorted(wanted), pa.string())))
        if "issue_date" in table.column_names and table["issue_date"].type != pa.date32():
            try:
                table = table.set_column(table.column_names.index("issue_date"), "issue_date",
                                         pc.cast(table["issue_date"], pa.date32()))
            except pa.ArrowException as exc:
                raise UserError(f"issue_date must be a date: {exc}") from None
        span = pc.min_max(table["issue_date"]) if table.num_rows else None
        first, last = (span["min"].as_py(), span["max"].as_py()) if span is not None else (None, None)
        n_rows = table.num_rows
    progress.update(task, total=1, completed=1)
    loaded = _Loaded(table, parquet, source, rejected_before, _dates(args, first, last, n_rows), session,
                     load_s=time.perf_counter() - t0)
    if args.engine == "columnar":
        fold_task = progress.add_task(f"folding {n_rows:,} invoices (DuckDB)", total=None)
        t1 = time.perf_counter()
        loaded.base = _fold_duckdb(table, loaded.dates)
        loaded.fold_s = time.perf_counter() - t1
        progress.update(fold_task, total=1, completed=1)
    return loaded


def _fold_duckdb(table: Any, dates: Any) -> Any:
    """``fold_duckdb`` with its errors (a missing column, a bad type) as one line."""
    import pyarrow as pa

    from streams.backtest.foldsql import fold_duckdb

    try:
        return fold_duckdb(table, dates)
    except Exception as exc:  # duckdb's own errors: one line
        if type(exc).__module__.split(".")[0] != "duckdb" and not isinstance(exc, pa.ArrowException):
            raise
        raise UserError(f"cannot fold the invoices: {str(exc).splitlines()[0]}") from None


def _run_columnar(args: argparse.Namespace, wanted: Collection[str] | None, progress: Any, registry: Any,
                  scorer: Any, allocate: Any, outcomes: Any, churn: Any, config: Any, scenario: Any, industry_of: Any,
                  loaded: _Loaded, loading_join: Callable[[], None] | None = None) -> tuple[Any, int, int, str]:
    """One fold into per-bin sums (DuckDB or Spark), states by cumulative sums, scores in large batches."""
    from allocator import AllocatorError
    from streams.backtest.columnar import FoldTables, score_columnar
    from streams.backtest.run import run_backtest
    from streams.backtest.scenarios import shock_table

    dates, session = loaded.dates, loaded.session
    t1 = time.perf_counter()

    def fold(shocked: bool) -> FoldTables:
        if args.engine == "spark":
            from streams.backtest.spark import SparkFoldError, fold_spark

            if shocked:
                raise UserError("--engine spark does not apply scenarios that scale sales; use --engine columnar")
            try:
                return fold_spark(session, loaded.parquet or "", dates, enterprise_ids=wanted)
            except SparkFoldError as exc:
                raise UserError(str(exc)) from None
        if not shocked and loaded.base is not None:
            return loaded.base  # type: ignore[no-any-return]
        src = loaded.table
        if src is None:  # folded in the child process: the invoices are in the event cache file
            import pyarrow.parquet as pq

            if loading_join is not None:
                loading_join()
            src = pq.read_table(loaded.parquet or "")
            if wanted is not None:
                import pyarrow as pa
                import pyarrow.compute as pc

                src = src.filter(pc.is_in(src["enterprise_id"], value_set=pa.array(sorted(wanted), pa.string())))
        if shocked:
            try:
                src = shock_table(src, scenario, industry_of)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        return _fold_duckdb(src, dates)  # type: ignore[no-any-return]

    try:
        folds = {False: fold(False)}
        if scenario is not None and scenario.changes_events:
            folds[True] = fold(True)
    except BaseException:
        if session is not None:
            session.stop()
        raise
    fold_s = loaded.fold_s + time.perf_counter() - t1
    score_task = progress.add_task("scoring enterprise-dates", total=None)

    def replayer(*, shocked: bool, score_transform: Any, blind_ids: Any, reasons: bool) -> Any:
        return score_columnar(folds[shocked], registry, scorer, score_transform=score_transform,
                              blind_ids=blind_ids, reasons=reasons,
                              on_progress=lambda done, total: progress.update(score_task, total=total,
                                                                              completed=done))

    try:
        result = run_backtest([], dates, registry, scorer, allocate, outcomes, churn.churn, config,
                              scenario=scenario, industry_of=industry_of, clock=time.perf_counter,
                              replayer=replayer, alert_rules=load_settings().alerts.rules(),
                              reasons=args.reasons)
    except AllocatorError as exc:
        raise UserError(f"allocator: {exc}") from None
    finally:
        if session is not None:
            session.stop()
    base = folds[False]
    result.timings_s["load_s"] = loaded.load_s
    result.timings_s["fold_s"] = fold_s
    return result, base.n_events, loaded.rejected_before + base.n_rejected, loaded.source


def make_allocate(churn: Any, *, lgd: float = 1.0) -> Any:
    """The live worker's allocator step (``streams.adapters.allocation``) over these churn curves."""
    from streams.adapters.allocation import make_allocate as live_make_allocate  # the worker's own adapter

    return live_make_allocate(churn, lgd=lgd)


def _print_summary(result: Any, out: Path, total_s: float, peak_rss_mb: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="riskmon backtest (realised profit over the labeled enterprises, yuan)")
    for col in ("as of", "lent", "expected", "realised", "rules", "everyone", "AUC"):
        table.add_column(col, justify="right")
    for d in result.base.dates:
        row = d.row()
        auc = row["auc"]
        table.add_row(row["as_of"], f"{row['total_lent']:,.0f}", f"{row['expected_profit']:,.0f}",
                      f"{row['realised_profit']:,.0f}", f"{row['realised_profit_rules']:,.0f}",
                      f"{row['realised_profit_flat']:,.0f}", "-" if auc is None else f"{auc:.3f}")
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)
    console.print(table)
    console.print(f"report: {out / 'report.html'}  ({total_s:.1f} s, peak RSS {peak_rss_mb:,.0f} MB)")


__all__ = ["load_sorted_events", "parse_enterprises", "register", "run"]
