"""The invoice file validated column-wise, with the row-by-row verdicts.

Validating 1.1 M rows one by one through pydantic took about a minute on a loaded machine.
Here the file is read with pyarrow's CSV reader and the rules of
:class:`streams.events.InvoiceEvent` are applied to whole columns, but only to *vouch*
for rows: a row is *plain* when every cell has the simplest shape that the model accepts
unchanged (ids of printable ASCII without spaces or braces and within their lengths,
``in``/``out``, ``valid``/``void``, a ``YYYY-MM-DD`` date from 2000 on, amounts like
``-12.30`` with at most 12 integer digits) and the rules across fields hold (amount + tax
within one fen of the total, no opposite signs). A plain row's validated values are its
own strings, so its columns go to the cache as they are. Every other row (dirt that the
model may strip or lower-case, or reject) goes through
:func:`streams.dataset.validate_row`, the very function the row-by-row path calls, so
the two cannot disagree on a verdict. A file the column reader might split differently
from Python's ``csv`` module (any double quote, a byte-order mark, a missing or repeated
column, a ragged row) is read row by row altogether.

``tests/unit/backtest/test_bulkvalidate.py`` checks that both give the same table on the
real data, on crafted dirty rows and on random ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from streams.dataset import INVOICE_COLUMNS, RejectedRow, iter_events, validate_row
from streams.events import InvoiceEvent, MIN_ISSUE_DATE

#: The source columns ``streams.dataset.row_to_payload`` reads.
SOURCE_COLUMNS = INVOICE_COLUMNS
#: The cache's columns, in order.
EVENT_SCHEMA = pa.schema([*((name, pa.string()) for name in (
    "event_id", "enterprise_id", "direction", "invoice_no", "counterparty_id", "amount", "tax", "total", "status",
    "produced_at")), ("issue_date", pa.date32()), ("enterprise_name", pa.string())])

# printable ASCII without space and braces: what check_identifier passes unchanged (no stripping either)
_ID = r"^[\x21-\x7a\x7c\x7e]{1,64}$"
_AMOUNT = r"^-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"  # |x| < 10^12 yuan, at most 2 places: str(Decimal(x)) == x
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_EVENT_ID_MAX = 128
#: produced_at of a historical invoice (streams.dataset.produced_at_for): 18:00 China time on its issue day
_PRODUCED_SUFFIX = "T18:00:00+08:00"


def read_columns(path: Path) -> pa.Table | None:
    """The source columns as strings, file order; None when the file must be read row by row.

    Without a double quote or a byte-order mark, pyarrow's and Python's CSV readers split rows alike.
    """
    with pa.input_stream(str(path), compression="detect") as stream:
        raw = stream.read()
    if b'"' in raw or raw.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        table = pacsv.read_csv(pa.BufferReader(raw), convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(SOURCE_COLUMNS, pa.string()), strings_can_be_null=False))
    except pa.ArrowInvalid:  # ragged rows, bad UTF-8, ...: the row-by-row reader says what is wrong
        return None
    names = table.column_names
    if len(set(names)) != len(names) or not set(SOURCE_COLUMNS) <= set(names):
        return None
    if any(table[c].type != pa.string() for c in SOURCE_COLUMNS):
        return None
    return table.select(list(SOURCE_COLUMNS)).combine_chunks()


def occurrence_index(table: pa.Table) -> np.ndarray:
    """For each row, how many earlier rows have the same raw (enterprise, direction, invoice_no)."""
    n = table.num_rows
    codes = [pc.dictionary_encode(table[c]).combine_chunks().indices.to_numpy().astype(np.int64)
             for c in ("enterprise_id", "direction", "invoice_no")]
    order = np.lexsort((np.arange(n), codes[2], codes[1], codes[0]))  # by triple, then file order
    sorted_codes = [c[order] for c in codes]
    new_group = np.ones(n, dtype=bool)
    if n:
        new_group[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in sorted_codes])
    position = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group, position, 0))
    k = np.empty(n, dtype=np.int64)
    k[order] = position - group_start
    return k


def _fen(column: pa.ChunkedArray | pa.Array, plain: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Yuan strings of the ``plain`` rows (shaped like ``_AMOUNT``) as integer fen (other rows 0)."""
    text = pc.if_else(plain, column, "0")
    dot = pc.find_substring(text, ".").to_numpy(zero_copy_only=False)
    length = pc.binary_length(text).to_numpy(zero_copy_only=False)
    places = np.where(dot >= 0, length - dot - 1, 0)  # 0, 1 or 2 digits after the point
    digits: np.ndarray = pc.cast(pc.replace_substring(text, ".", ""), pa.int64()).to_numpy(zero_copy_only=False)
    scale: np.ndarray = np.array([100, 10, 1], dtype=np.int64)[places]
    fen: np.ndarray = digits * scale
    return fen


def plain_rows(table: pa.Table, event_ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Which rows the column rules vouch for, and their issue dates (null elsewhere)."""
    mask = pc.and_(pc.match_substring_regex(table["enterprise_id"], _ID),
                   pc.match_substring_regex(table["counterparty_id"], _ID))
    mask = pc.and_(mask, pc.match_substring_regex(table["invoice_no"], _ID))
    mask = pc.and_(mask, pc.is_in(table["direction"], value_set=pa.array(["in", "out"])))
    mask = pc.and_(mask, pc.is_in(table["status"], value_set=pa.array(["valid", "void"])))
    mask = pc.and_(mask, pc.less_equal(pc.utf8_length(event_ids), _EVENT_ID_MAX))
    for column in ("amount", "tax", "total"):
        mask = pc.and_(mask, pc.match_substring_regex(table[column], _AMOUNT))
    mask = pc.and_(mask, pc.match_substring_regex(table["date"], _DATE))
    text = pc.if_else(mask, table["date"], "2000-01-01")
    dates = pc.cast(pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32())
    # strptime rolls 2019-02-30 over to March: a date is plain only if it prints back as it was written
    mask = pc.and_(mask, pc.fill_null(pc.equal(pc.cast(dates, pa.string()), text), False))
    mask = pc.and_(mask, pc.fill_null(pc.greater_equal(dates, pa.scalar(MIN_ISSUE_DATE, pa.date32())), False))
    amount, tax, total = (_fen(table[c], mask) for c in ("amount", "tax", "total"))
    plain = mask.to_numpy(zero_copy_only=False)
    plain &= np.abs(amount + tax - total) <= 1  # TOTAL_TOLERANCE_YUAN = 0.01
    plain &= ~(((amount > 0) & ((tax < 0) | (total < 0))) | ((amount < 0) & ((tax > 0) | (total > 0))))
    return plain, dates


def _check_rules_unchanged() -> None:
    """The plain-row shortcuts above assume these rule constants; fail loudly if they move."""
    from decimal import Decimal

    from streams.events import MAX_ABS_YUAN, TOTAL_TOLERANCE_YUAN

    if TOTAL_TOLERANCE_YUAN != Decimal("0.01") or MAX_ABS_YUAN < Decimal("1e12"):
        raise RuntimeError("streams.events' amount rules changed: update streams/backtest/bulkvalidate.py")


def validated_table(data_dir: Path, invoice_file: Path) -> tuple[pa.Table, np.ndarray, int]:
    """Every valid event as the cache's columns, its source row index, and the number of rejected rows.

    Rows are in file order (not yet sorted by date).
    """
    _check_rules_unchanged()
    source = read_columns(invoice_file)
    if source is None:
        return rowwise_table(data_dir)
    k = occurrence_index(source)
    event_ids = pc.binary_join_element_wise(source["enterprise_id"], source["direction"], source["invoice_no"],
                                            pc.cast(pa.array(k), pa.string()), "-")
    plain, dates = plain_rows(source, event_ids)
    index = np.flatnonzero(plain)
    take = pa.array(index)
    dates_plain = dates.take(take)
    fast = pa.table({
        "event_id": event_ids.take(take),
        "enterprise_id": source["enterprise_id"].take(take),
        "direction": source["direction"].take(take),
        "invoice_no": source["invoice_no"].take(take),
        "counterparty_id": source["counterparty_id"].take(take),
        "amount": source["amount"].take(take),
        "tax": source["tax"].take(take),
        "total": source["total"].take(take),
        "status": source["status"].take(take),
        "produced_at": pc.binary_join_element_wise(pc.cast(dates_plain, pa.string()), _PRODUCED_SUFFIX, ""),
        "issue_date": dates_plain,
        "enterprise_name": pa.nulls(len(index), pa.string()),
    }, schema=EVENT_SCHEMA)
    # the rest: the row-by-row verdict, one row at a time
    others = np.flatnonzero(~plain)
    rows = source.take(pa.array(others)).to_pylist()
    ids = event_ids.take(pa.array(others)).to_pylist()
    valid: list[InvoiceEvent] = []
    valid_index: list[int] = []
    for i, row, event_id in zip(others.tolist(), rows, ids, strict=True):
        item = validate_row(i + 2, row, event_id)
        if isinstance(item, InvoiceEvent):
            valid.append(item)
            valid_index.append(i)
    table = pa.concat_tables([fast, table_of(valid)])
    return table, np.concatenate([index, np.asarray(valid_index, dtype=np.int64)]), len(others) - len(valid)


def rowwise_table(data_dir: Path) -> tuple[pa.Table, np.ndarray, int]:
    """:func:`validated_table` by :func:`streams.dataset.iter_events` alone, every row through pydantic."""
    valid: list[InvoiceEvent] = []
    index: list[int] = []
    rejected = 0
    for i, item in enumerate(iter_events(data_dir)):
        if isinstance(item, RejectedRow):
            rejected += 1
        else:
            valid.append(item)
            index.append(i)
    return table_of(valid), np.asarray(index, dtype=np.int64), rejected


def table_of(events: list[InvoiceEvent]) -> pa.Table:
    """Events as the cache's columns, in the given order (decimals as strings, as validated)."""
    columns: dict[str, list[object]] = {name: [] for name in EVENT_SCHEMA.names}
    for item in events:
        columns["event_id"].append(item.event_id)
        columns["enterprise_id"].append(item.enterprise_id)
        columns["direction"].append(item.direction)
        columns["invoice_no"].append(item.invoice_no)
        columns["counterparty_id"].append(item.counterparty_id)
        columns["amount"].append(str(item.amount))
        columns["tax"].append(str(item.tax))
        columns["total"].append(str(item.total))
        columns["status"].append(item.status)
        columns["produced_at"].append(item.produced_at.isoformat())
        columns["issue_date"].append(item.issue_date)
        columns["enterprise_name"].append(item.enterprise_name)
    return pa.table(columns, schema=EVENT_SCHEMA)
