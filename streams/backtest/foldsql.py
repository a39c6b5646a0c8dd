"""The invoice fold as SQL: one text, run by DuckDB in process and by Spark SQL on a cluster.

The streaming fold (:mod:`streams.features.fold`) turns each invoice into integer counter
increments. Summed per (enterprise, as-of bin, month, direction) and per (enterprise,
direction, counterparty, as-of bin), those increments give every counter as of every
as-of date by cumulative sums over the bins. An invoice's *bin* is the index of the first
as-of date on or after its issue date (``len(dates)`` for an invoice after the last one),
so an invoice dated after an as-of date never reaches that date's state.

:func:`rows_sql` reads a view named ``invoices`` with the documented input columns
(:data:`INPUT_COLUMNS`) plus ``seq`` (file order, the tie-break among same-day events) and
use only SQL that DuckDB and Spark SQL read alike (CASE, CAST to DECIMAL and BIGINT,
window functions). Keeping one text is what makes the two engines agree by construction;
the tests check it on the real data.

Examples
--------
>>> import datetime as dt
>>> bin_case([dt.date(2019, 6, 30), dt.date(2019, 12, 31)])
"CASE WHEN issue_date <= DATE '2019-06-30' THEN 0 WHEN issue_date <= DATE '2019-12-31' THEN 1 ELSE 2 END"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

#: Columns a user's invoice table must have (the event cache has them): amounts are
#: decimal strings or decimals in yuan with at most 2 places, ``total`` includes tax.
INPUT_COLUMNS: Final = ("event_id", "enterprise_id", "direction", "issue_date", "counterparty_id",
                        "amount", "total", "status")
#: Optional: the enterprise's name (industry and legal form of enterprises not in the registry).
OPTIONAL_COLUMNS: Final = ("enterprise_name",)

#: The per-direction monthly metrics, in the order of :data:`streams.features.vector.METRICS`.
MONTHLY_METRICS: Final = ("n", "void", "valid", "amt", "tot", "gross", "ret", "retamt")


def bin_case(dates: Sequence[dt.date]) -> str:
    """The SQL expression of an invoice's as-of bin (dates sorted ascending)."""
    whens = " ".join(f"WHEN issue_date <= DATE '{d.isoformat()}' THEN {k}" for k, d in enumerate(dates))
    return f"CASE {whens} ELSE {len(dates)} END" if dates else "0"


def rows_sql(dates: Sequence[dt.date]) -> str:
    """Every input row typed and checked, with its copy number among rows of the same event id
    and its as-of bin. Materialise it as ``fold_rows``; the other statements read that."""
    # Validity as the wire schema has it for the fields the fold reads: a row failing it is counted, not folded.
    return f"""WITH typed AS (
  SELECT enterprise_id, event_id, direction, counterparty_id, status, seq, enterprise_name,
         TRY_CAST(issue_date AS DATE) AS issue_date,
         CAST(TRY_CAST(amount AS DECIMAL(20, 2)) * 100 AS BIGINT) AS amt,
         CAST(TRY_CAST(total AS DECIMAL(20, 2)) * 100 AS BIGINT) AS tot,
         (TRY_CAST(amount AS DECIMAL(30, 6)) = TRY_CAST(amount AS DECIMAL(20, 2))
          AND TRY_CAST(total AS DECIMAL(30, 6)) = TRY_CAST(total AS DECIMAL(20, 2))) AS fen_exact
  FROM invoices
),
checked AS (
  SELECT *, (enterprise_id IS NOT NULL AND event_id IS NOT NULL AND counterparty_id IS NOT NULL
             AND issue_date IS NOT NULL AND direction IN ('in', 'out') AND status IN ('valid', 'void')
             AND amt IS NOT NULL AND tot IS NOT NULL AND fen_exact) AS ok
  FROM typed
)
SELECT enterprise_id, direction, counterparty_id, status, issue_date, enterprise_name, amt, tot,
       COALESCE(ok, FALSE) AS ok,
       ROW_NUMBER() OVER (PARTITION BY COALESCE(ok, FALSE), enterprise_id, event_id ORDER BY issue_date, seq) AS copy_no,
       ROW_NUMBER() OVER (PARTITION BY enterprise_id ORDER BY issue_date, seq) AS pos,
       {bin_case(dates)} AS bin,
       CAST(YEAR(issue_date) * 12 + MONTH(issue_date) - 1 AS INT) AS month
FROM checked"""


#: The folded events: valid rows, the first copy of each event id (the fold skips the others).
_EV = "(SELECT * FROM fold_rows WHERE ok AND copy_no = 1) AS ev"

#: Counter sums per (enterprise, bin, month, direction): the ``m:`` counters of the fold.
MONTHLY_SQL: Final = f"""SELECT enterprise_id, bin, month, direction,
       CAST(COUNT(*) AS BIGINT) AS n,
       CAST(SUM(CASE WHEN status = 'void' THEN 1 ELSE 0 END) AS BIGINT) AS void,
       CAST(SUM(CASE WHEN status = 'valid' THEN 1 ELSE 0 END) AS BIGINT) AS valid,
       CAST(SUM(CASE WHEN status = 'valid' THEN amt ELSE 0 END) AS BIGINT) AS amt,
       CAST(SUM(CASE WHEN status = 'valid' THEN tot ELSE 0 END) AS BIGINT) AS tot,
       CAST(SUM(CASE WHEN status = 'valid' AND amt > 0 THEN amt ELSE 0 END) AS BIGINT) AS gross,
       CAST(SUM(CASE WHEN status = 'valid' AND amt < 0 THEN 1 ELSE 0 END) AS BIGINT) AS ret,
       CAST(SUM(CASE WHEN status = 'valid' AND amt < 0 THEN -amt ELSE 0 END) AS BIGINT) AS retamt
FROM {_EV}
GROUP BY enterprise_id, bin, month, direction"""

#: Per (enterprise, direction, bin): counterparties first invoiced in the bin, and the largest
#: cumulative valid positive fen of one counterparty among those invoiced in the bin. A
#: counterparty's ``cp:`` counter only grows, so it is positive from its first invoice on; its
#: ``cpa:`` counter only grows too, so the largest ``cpa:`` as of bin k is the running maximum of
#: these per-bin maxima.
COUNTERPARTY_SQL: Final = f"""WITH per_bin AS (
  SELECT enterprise_id, direction, counterparty_id, bin,
         SUM(CASE WHEN status = 'valid' AND amt > 0 THEN amt ELSE 0 END) AS cpa
  FROM {_EV} GROUP BY enterprise_id, direction, counterparty_id, bin
),
running AS (
  SELECT enterprise_id, direction, bin,
         SUM(cpa) OVER (PARTITION BY enterprise_id, direction, counterparty_id ORDER BY bin
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum,
         ROW_NUMBER() OVER (PARTITION BY enterprise_id, direction, counterparty_id ORDER BY bin) AS k
  FROM per_bin
)
SELECT enterprise_id, direction, bin,
       CAST(SUM(CASE WHEN k = 1 THEN 1 ELSE 0 END) AS BIGINT) AS new_cp,
       CAST(MAX(cum) AS BIGINT) AS max_cpa
FROM running
GROUP BY enterprise_id, direction, bin"""

#: Each enterprise's first non-empty name in event-time order (valid rows, copies included, as
#: the fold keeps the first name it sees) and the bin it appears in.
NAMES_SQL: Final = """SELECT enterprise_id, enterprise_name, bin FROM (
  SELECT enterprise_id, enterprise_name, bin,
         ROW_NUMBER() OVER (PARTITION BY enterprise_id ORDER BY pos) AS r
  FROM fold_rows WHERE ok AND enterprise_name IS NOT NULL AND enterprise_name <> ''
) AS named WHERE r = 1"""

#: Rows read, rows failing the checks, and extra copies of an event id (skipped like redeliveries).
COUNTS_SQL: Final = """SELECT CAST(COUNT(*) AS BIGINT) AS n_rows,
       CAST(SUM(CASE WHEN ok THEN 0 ELSE 1 END) AS BIGINT) AS n_rejected,
       CAST(SUM(CASE WHEN ok AND copy_no > 1 THEN 1 ELSE 0 END) AS BIGINT) AS n_duplicates
FROM fold_rows"""


@dataclass(frozen=True, slots=True)
class FoldTables:
    """The fold of a whole history as integer sums, ready for the as-of walk.

    ``monthly`` columns: enterprise_id, bin, month, direction, then :data:`MONTHLY_METRICS`.
    ``counterparties`` columns: enterprise_id, direction, bin, new_cp, max_cpa.
    ``names``: enterprise_id, enterprise_name, bin. ``dates``: the sorted as-of dates (bin k
    holds the invoices dated after ``dates[k-1]`` and up to ``dates[k]``; bin ``len(dates)``
    those after the last date).
    """

    dates: tuple[dt.date, ...]
    monthly: pa.Table
    counterparties: pa.Table
    names: pa.Table
    n_rows: int
    n_rejected: int
    n_duplicates: int

    @property
    def n_events(self) -> int:
        """Folded events (valid, first copy of each event id)."""
        return self.n_rows - self.n_rejected - self.n_duplicates


def fold_duckdb(invoices: pa.Table, dates: Sequence[dt.date], *, threads: int | None = None) -> FoldTables:
    """Run the SQL fold over an Arrow table of invoices (the event cache's columns) with DuckDB."""
    import duckdb

    dates = tuple(sorted(set(dates)))
    con = duckdb.connect(":memory:")
    try:
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        table = invoices
        if "seq" not in table.column_names:
            table = table.append_column("seq", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        if "enterprise_name" not in table.column_names:
            table = table.append_column("enterprise_name", pa.nulls(table.num_rows, pa.string()))
        con.register("invoices", table)
        con.execute(f"CREATE TEMP TABLE fold_rows AS {rows_sql(dates)}")
        monthly = pa.table(con.sql(MONTHLY_SQL))
        cps = pa.table(con.sql(COUNTERPARTY_SQL))
        names = pa.table(con.sql(NAMES_SQL))
        n_rows, n_rejected, n_dup = con.execute(COUNTS_SQL).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return FoldTables(dates, monthly, cps, names, int(n_rows or 0), int(n_rejected or 0), int(n_dup or 0))
