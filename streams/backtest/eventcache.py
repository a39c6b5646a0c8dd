"""A cached, validated, event-time-sorted columnar copy of a data set's invoice events.

The cache is built once (:func:`streams.backtest.bulkvalidate.validated_table`: the
invoice file read column-wise, the rows the column rules vouch for kept as they are and
every other row judged by :func:`streams.dataset.validate_row`, the very validation the
stream applies), sorted by issue date (stable, so same-day events keep file order, as
``load_events``), and written as Parquet under ``var/cache/``. Its file name carries the
sha256 of the invoice file and of the validation code (``streams/events.py``,
``streams/dataset.py``, ``streams/backtest/bulkvalidate.py``), so a changed data file or
validator never reads a stale cache.

A replay then reads the columns (a few hundred MB) and builds each
:class:`~streams.events.InvoiceEvent` just before it is folded, with pydantic's
``model_construct`` (no second validation: the values are the validated ones), so the
events never all live in memory at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import streams.backtest.bulkvalidate as bulkvalidate_module
import streams.dataset as dataset_module
import streams.events as events_module
from streams.backtest.bulkvalidate import table_of, validated_table
from streams.events import InvoiceEvent

CACHE_FORMAT = 2


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _invoice_file(data_dir: Path) -> Path:
    for name in ("invoices.csv.gz", "invoices.csv"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"no invoices.csv.gz or invoices.csv in {data_dir}")


def cache_key(data_dir: Path) -> str:
    """Hash of the invoice file, the validation code and the cache format (24 hex)."""
    h = hashlib.sha256()
    h.update(_sha256_file(_invoice_file(data_dir)).encode())
    for module in (events_module, dataset_module, bulkvalidate_module):
        h.update(Path(str(module.__file__)).read_bytes())
    h.update(str(CACHE_FORMAT).encode())
    return h.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class CachedEvents:
    """The valid events as columns, sorted by issue date, and the number of rejected rows."""

    table: pa.Table
    rejected: int
    path: Path

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def only(self, enterprise_ids: Collection[str] | None) -> CachedEvents:
        """The events of these enterprises (all for None), order kept."""
        if enterprise_ids is None:
            return self
        mask = pc.is_in(self.table["enterprise_id"], value_set=pa.array(sorted(enterprise_ids), pa.string()))
        return CachedEvents(self.table.filter(mask), self.rejected, self.path)

    @property
    def first_date(self) -> dt.date:
        return self.table["issue_date"][0].as_py()  # type: ignore[no-any-return]

    @property
    def last_date(self) -> dt.date:
        return self.table["issue_date"][-1].as_py()  # type: ignore[no-any-return]

    def iter_events(self, batch_rows: int = 50_000) -> Iterator[InvoiceEvent]:
        """The events in event-time order, each built just before it is yielded."""
        construct = InvoiceEvent.model_construct
        fields = frozenset(("event_id", "enterprise_id", "direction", "invoice_no", "issue_date",
                            "counterparty_id", "amount", "tax", "total", "status", "produced_at"))
        for batch in self.table.to_batches(max_chunksize=batch_rows):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                name = cols["enterprise_name"][i]
                yield construct(
                    _fields_set=set(fields) | ({"enterprise_name"} if name is not None else set()),
                    event_id=cols["event_id"][i], enterprise_id=cols["enterprise_id"][i],
                    direction=cols["direction"][i], invoice_no=cols["invoice_no"][i],
                    issue_date=cols["issue_date"][i], counterparty_id=cols["counterparty_id"][i],
                    amount=Decimal(cols["amount"][i]), tax=Decimal(cols["tax"][i]), total=Decimal(cols["total"][i]),
                    status=cols["status"][i], produced_at=dt.datetime.fromisoformat(cols["produced_at"][i]),
                    enterprise_name=name,
                )


def build_cache(data_dir: Path, path: Path, on_row: Callable[[int], None] | None = None, *,
                defer_write: list[Callable[[], None]] | None = None) -> CachedEvents:
    """Validate every row (:func:`~streams.backtest.bulkvalidate.validated_table`), sort, write the Parquet file.

    ``defer_write``: append the writing of the file to this list instead of writing it (the caller
    runs it when the table is no longer in a hurry); a reader never sees half a file (written under
    a temporary name, then renamed).
    """
    table, source_row, rejected = validated_table(data_dir, _invoice_file(data_dir))
    if on_row is not None:
        on_row(table.num_rows + rejected)
    # stable sort by issue date: same-day events keep file order, exactly like load_events
    order = pc.sort_indices(pa.table({"d": table["issue_date"], "i": pa.array(source_row, pa.int64())}),
                            sort_keys=[("d", "ascending"), ("i", "ascending")])
    table = table.take(order).replace_schema_metadata({"rejected": str(rejected), "format": str(CACHE_FORMAT)})
    path.parent.mkdir(parents=True, exist_ok=True)
    if defer_write is not None:
        defer_write.append(lambda: _write(table, path))
    else:
        _write(table, path)
    return CachedEvents(table, rejected, path)


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # atomic: a crashed build never leaves a half file under the final name


def load_cached_events(data_dir: Path, cache_dir: Path, on_row: Callable[[int], None] | None = None, *,
                       defer_write: list[Callable[[], None]] | None = None) -> CachedEvents:
    """The cached events of ``data_dir``, building the cache first if it is missing (see :func:`build_cache`)."""
    path = cache_dir / f"events-{cache_key(data_dir)}.parquet"
    if path.exists():
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        return CachedEvents(table.replace_schema_metadata(None), int(meta.get(b"rejected", b"0")), path)
    return build_cache(data_dir, path, on_row, defer_write=defer_write)


__all__ = ["CachedEvents", "build_cache", "cache_key", "load_cached_events", "table_of"]
