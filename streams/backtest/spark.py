"""The same invoice fold as a PySpark job, for histories beyond one machine.

Spark reads Parquet invoices (the project's event cache, or any table with the columns of
:data:`streams.backtest.foldsql.INPUT_COLUMNS`), runs the very SQL text DuckDB runs
(:mod:`streams.backtest.foldsql`), and hands back only the small per-(enterprise, bin,
month) and per-(enterprise, direction, bin) sums as Arrow tables. The as-of walk, scoring
and allocation then run on the driver exactly as for the default engine
(:func:`streams.backtest.columnar.score_columnar`).

``master`` is any Spark master URL: ``local[2]`` (this machine, two cores),
``spark://host:7077`` (a standalone cluster), ``yarn`` or ``k8s://...``; on a cluster the
Parquet path must be readable by every executor (HDFS, S3, a shared file system).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

import pyarrow as pa

from streams.backtest.columnar import FoldTables
from streams.backtest.foldsql import COUNTERPARTY_SQL, COUNTS_SQL, INPUT_COLUMNS, MONTHLY_SQL, NAMES_SQL, rows_sql


class SparkFoldError(RuntimeError):
    """The Spark job could not run (no pyspark, no Java, a missing column); the message says what to do."""


def spark_session(master: str = "local[2]", app_name: str = "riskmon-backtest", conf: dict[str, str] | None = None) -> Any:
    """A Spark session on ``master`` (quiet logs, UTC, Arrow transfers)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - pyspark is a dependency
        raise SparkFoldError("pyspark is not installed: pip install pyspark (it needs Java 17)") from exc
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "8"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # Java missing or the master unreachable: say so in one line
        raise SparkFoldError(f"cannot start Spark on {master}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _to_arrow(frame: Any) -> pa.Table:
    """A small Spark result as an Arrow table (``DataFrame.toArrow``, Spark 4)."""
    return frame.toArrow()


def fold_spark(
    session: Any,
    parquet: str | Sequence[str],
    dates: Sequence[dt.date],
    *,
    enterprise_ids: Collection[str] | None = None,
) -> FoldTables:
    """Run the SQL fold over Parquet invoices with Spark and collect the per-bin sums.

    Raises
    ------
    SparkFoldError
        If a required column is missing.
    """
    from pyspark.sql import functions as F

    dates = tuple(sorted(set(dates)))
    paths = [parquet] if isinstance(parquet, str) else list(parquet)
    frame = session.read.parquet(*paths)
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise SparkFoldError(f"{paths[0]}: missing column(s) {', '.join(missing)}; needed: {', '.join(INPUT_COLUMNS)}")
    if "enterprise_name" not in frame.columns:
        frame = frame.withColumn("enterprise_name", F.lit(None).cast("string"))
    if "seq" not in frame.columns:
        # file order within each input split: the tie-break among same-day copies of one event id
        frame = frame.withColumn("seq", F.monotonically_increasing_id())
    if enterprise_ids is not None:
        frame = frame.where(F.col("enterprise_id").isin(sorted(enterprise_ids)))
    frame.createOrReplaceTempView("invoices")
    rows = session.sql(rows_sql(dates)).persist()
    try:
        rows.createOrReplaceTempView("fold_rows")
        monthly = _to_arrow(session.sql(MONTHLY_SQL))
        cps = _to_arrow(session.sql(COUNTERPARTY_SQL))
        names = _to_arrow(session.sql(NAMES_SQL))
        counts = session.sql(COUNTS_SQL).collect()[0]
    finally:
        rows.unpersist()
    return FoldTables(dates, monthly, cps, names, int(counts["n_rows"] or 0), int(counts["n_rejected"] or 0),
                      int(counts["n_duplicates"] or 0))
