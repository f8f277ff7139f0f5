"""Metrics and usage: materialized per (metric, customer, hour, group) cells, kept current by
every commit, merged into any window at query time.

Every commit that changes effective events calls :meth:`Usage.refresh_changed` inside its own
transaction: it finds the (customer, hour) units whose effective events may have changed (rows
written or flipped by the commit and every other version of their keys), deletes their cells
and re-aggregates them from the effective events of those units only (for the units a filterless
replace backfill wholly owns, from its own rows: see :class:`Replacement`). A metric's creation and
:meth:`Usage.recompute` rebuild from all history; :meth:`Usage.verify` compares the cells with
a from-scratch computation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
from sqlglot import exp

from engine.context import Context, as_utc, from_storage
from engine.customers import both_ids, new_id
from engine.errors import ConstraintViolation, ResourceNotFound
from engine.metrics import Aggregate, ParsedMetric, parse_metric
from engine.models import Metric
from engine.queries import (
    bind,
    create_temp_table,
    customer_key,
    drop_temp_table,
    effective_events,
    hour_bucket,
    insert_rows,
    reflected_backfills,
    table_ref,
    template,
    union_all,
    units_join,
)
from engine.schema import BACKFILLS, CUSTOMERS, METRICS, USAGE_CELLS, USAGE_DISTINCT
from engine.storage import Prepared

__all__ = ["Granularity", "Metrics", "Progress", "Replacement", "Usage"]

Granularity = Literal["hour", "day", "month"] | None
Progress = Callable[[int, int], None]

_GRANULARITIES = ("hour", "day", "month")
_CELL_COLUMNS = [c.name for c in USAGE_CELLS.columns]
_DISTINCT_COLUMNS = [c.name for c in USAGE_DISTINCT.columns]

# Units (customer, hour) a commit touched: the rows it wrote, the older rows those supersede,
# and (for a backfill close or revert) the rows the backfill deprecates. Each part reads a small
# table or pruned files (by version, or by the backfill's timeframe).
_WRITTEN_AT_VERSION = """
SELECT customer_id, external_customer_id, "timestamp"
FROM lake.main.stored_events WHERE version = :version
"""

_SUPERSEDED_AT_VERSION = """
SELECT customer_id, external_customer_id, "timestamp"
FROM lake.main.supersessions WHERE superseded_by = :version
"""

# `promoted`: the rows the backfill's close wrote (see Usage.refresh_changed).
_TOUCHED_BY_BACKFILL = """
SELECT customer_id, external_customer_id, "timestamp" FROM promoted
UNION ALL
SELECT customer_id, external_customer_id, "timestamp"
FROM lake.main.supersessions WHERE by_backfill_id = :backfill_id
UNION ALL
SELECT customer_id, external_customer_id, "timestamp"
FROM lake.main.deprecations
WHERE backfill_id = :backfill_id AND "timestamp" >= :start AND "timestamp" < :end
"""

#: Up to this many customers in a commit's units, the scan for their events tests the
#: customer ids itself (a long IN list would cost more per row than the join it spares).
_FEW_CUSTOMERS = 64

#: Up to this many reflected backfills are listed in the refresh query as literals.
_FEW_REFLECTED = 1000

_AFFECTED_UNITS = """
SELECT DISTINCT :customer_key AS customer_key, :bucket AS bucket FROM touched AS s
"""

# The stored cells of the (customer, hour) units that rows being added fall in (see
# Usage.add_new_events).
_MET_CELLS = """
SELECT t.metric_id, t.customer_key, t.customer_id, t.external_customer_id, t.bucket,
       t.group_value, t.events, t.total, t.minimum, t.maximum
FROM lake.main.usage_cells AS t
SEMI JOIN (SELECT DISTINCT __customer_key, __bucket FROM added_events) AS u
  ON t.customer_key = u.__customer_key AND t.bucket = u.__bucket
WHERE t.bucket >= :first AND t.bucket <= :last
"""

# The cells of the units the added rows fall in: the stored ones (`met_cells`) merged with the
# added rows' own (`added_cells`), cell by cell.
_FOLDED_CELLS = """
SELECT metric_id, customer_key, any_value(customer_id), any_value(external_customer_id), bucket,
       group_value, sum(events), sum(total), min(minimum), max(maximum)
FROM (SELECT * FROM met_cells UNION ALL SELECT * FROM added_cells)
GROUP BY metric_id, customer_key, bucket, group_value
"""

_DELETE_MET_CELLS = """
DELETE FROM lake.main.usage_cells AS t USING met_cells AS m
WHERE t.bucket >= :first AND t.bucket <= :last
  AND t.metric_id = m.metric_id AND t.customer_key = m.customer_key AND t.bucket = m.bucket
  AND t.group_value IS NOT DISTINCT FROM m.group_value
"""

# The distinct values of the added rows that their cells do not hold yet.
_NEW_DISTINCT_VALUES = """
SELECT n.metric_id, n.customer_key, n.customer_id, n.external_customer_id, n.bucket,
       n.group_value, n.value
FROM added_distinct AS n
ANTI JOIN (
  SELECT * FROM lake.main.usage_distinct WHERE bucket >= :first AND bucket <= :last
) AS o
  ON o.metric_id = n.metric_id AND o.customer_key = n.customer_key AND o.bucket = n.bucket
 AND o.group_value IS NOT DISTINCT FROM n.group_value AND o.value = n.value
"""

# The rows a backfill's close wrote, read back from the store (by a revert).
_PROMOTED_BY_CLOSE = """
SELECT customer_id, external_customer_id, "timestamp"
FROM lake.main.stored_events WHERE version = :close_version AND backfill_id = :backfill_id
"""

# The rows a backfill's close promoted (joined to the units they alone fill by _Promoted.rows).
_PROMOTED_IN_UNITS = """
SELECT l.idempotency_key, l.event_name, l."timestamp", l.customer_id, l.external_customer_id,
       l.properties, l.version, l.backfill_id
FROM promoted AS l
WHERE l."timestamp" >= :start AND l."timestamp" < :end
"""


@dataclass(frozen=True)
class _Promoted:
    """The rows a closing :class:`Replacement` promoted (table ``rows_table``), and the units
    they alone fill."""

    rows_table: str
    start: datetime
    end: datetime
    customer_keys: tuple[str, ...] | None

    def holds_only_its_rows(self) -> exp.Expr:
        """Units (``customer_key``, ``bucket``) wholly inside the timeframe and scope."""
        bucket = exp.column("bucket")
        conditions: list[exp.Expr] = [
            bucket >= exp.convert(self.start),
            bucket <= exp.convert(self.end - timedelta(hours=1)),
        ]
        if self.customer_keys is not None:
            keys = [exp.convert(key) for key in self.customer_keys]
            conditions.append(exp.column("customer_key").isin(*keys))
        return exp.func("coalesce", exp.and_(*conditions), exp.false())

    def rows(self, *, units: str) -> exp.Select:
        query = bind(
            _PROMOTED_IN_UNITS,
            start=self.start,
            end=self.end,
            ctes={"promoted": exp.select("*").from_(self.rows_table)},
        )
        assert isinstance(query, exp.Select)
        return query.join(units_join(units, table="l"))


@dataclass(frozen=True)
class Replacement:
    """A closing backfill that replaces every event of its timeframe (no deprecation filter),
    for every customer (``customer_keys`` None) or the customers keyed so
    (:func:`engine.queries.customer_key`). Once it closes, a (customer, hour) unit that lies
    wholly inside its timeframe and scope holds its promoted rows and nothing else: every older
    row there is deprecated, and no newer row exists yet. Those units are aggregated from the
    promoted rows alone, without the effective-events query (its scan of every customer's rows
    in the touched hours and its anti-joins were a quarter of a close)."""

    customer_keys: tuple[str, ...] | None


@dataclass(frozen=True)
class _CustomerCells:
    """One customer's in-memory cells of one metric, sorted by bucket, so that a timeframe is
    two binary searches and a slice."""

    cells: pl.DataFrame
    buckets: npt.NDArray[np.datetime64]

    @classmethod
    def of(cls, cells: pl.DataFrame, column: str, customer: str) -> _CustomerCells:
        mine = cells.filter(pl.col(column) == customer).sort("bucket")
        return cls(mine, mine.get_column("bucket").to_numpy())

    def select(self, start: datetime, end: datetime) -> pl.DataFrame:
        low, high = np.searchsorted(
            self.buckets, [np.datetime64(start, "us"), np.datetime64(end, "us")], side="left"
        )
        return self.cells.slice(int(low), int(high - low))


@dataclass(frozen=True)
class _Registered:
    metric: Metric
    parsed: ParsedMetric


def _metric(row: tuple[Any, ...]) -> Metric:
    id_, name, sql, description, metadata, status, created_at = row
    created = from_storage(created_at)
    assert created is not None
    return Metric(
        id=id_,
        name=name,
        sql=sql,
        description=description,
        metadata=json.loads(metadata) if metadata else {},
        status=status,
        created_at=created,
    )


#: Event rows to aggregate: a table's name, or a query.
_Source = str | exp.Query


def _as_event_rows(source: _Source) -> exp.Expr:
    if isinstance(source, str):
        return exp.to_table(source).as_("e")
    return source.subquery("e")


@dataclass(frozen=True)
class _Terms:
    """A metric's row-level expressions over event rows ``e``: the value it aggregates, the
    rows it counts, its group, and the cell's customer key and hour."""

    value: exp.Expr
    where: exp.Expr
    group: exp.Expr
    customer_key: exp.Expr
    bucket: exp.Expr

    @classmethod
    def of(cls, metric: _Registered) -> _Terms:
        parsed = metric.parsed
        return cls(
            parsed.value(table="e"),
            parsed.where(table="e"),
            parsed.group_value(table="e"),
            customer_key(table="e"),
            hour_bucket(table="e"),
        )


def _cells(metric: _Registered, source: _Source, terms: _Terms | None = None) -> exp.Select:
    """Hour cells of ``metric`` aggregated from the event rows of ``source`` (read through
    ``terms`` when it holds them computed, see :func:`_with_property_terms`)."""
    parsed = metric.parsed
    terms = terms or _Terms.of(metric)

    def value() -> exp.Expr:
        return terms.value.copy()

    return (
        exp.select(
            exp.alias_(exp.convert(metric.metric.id), "metric_id"),
            exp.alias_(terms.customer_key.copy(), "customer_key"),
            exp.alias_(exp.func("any_value", exp.column("customer_id", table="e")), "customer_id"),
            exp.alias_(
                exp.func("any_value", exp.column("external_customer_id", table="e")),
                "external_customer_id",
            ),
            exp.alias_(terms.bucket.copy(), "bucket"),
            exp.alias_(terms.group.copy(), "group_value"),
            exp.alias_(exp.func("count", value()), "events"),
            exp.alias_(exp.func("sum", value()) if _numeric(parsed) else exp.null(), "total"),
            exp.alias_(exp.func("min", value()) if _numeric(parsed) else exp.null(), "minimum"),
            exp.alias_(exp.func("max", value()) if _numeric(parsed) else exp.null(), "maximum"),
        )
        .from_(_as_event_rows(source))
        .where(terms.where.copy())
        .group_by(terms.customer_key.copy(), terms.bucket.copy(), terms.group.copy())
        .having(exp.func("count", value()) > exp.Literal.number(0))
    )


def _distinct_values(
    metric: _Registered, source: _Source, terms: _Terms | None = None
) -> exp.Select:
    terms = terms or _Terms.of(metric)
    return (
        exp.select(
            exp.alias_(exp.convert(metric.metric.id), "metric_id"),
            exp.alias_(terms.customer_key.copy(), "customer_key"),
            exp.alias_(exp.column("customer_id", table="e"), "customer_id"),
            exp.alias_(exp.column("external_customer_id", table="e"), "external_customer_id"),
            exp.alias_(terms.bucket.copy(), "bucket"),
            exp.alias_(terms.group.copy(), "group_value"),
            exp.alias_(terms.value.copy(), "value"),
        )
        .distinct()
        .from_(_as_event_rows(source))
        .where(exp.and_(terms.where.copy(), terms.value.copy().is_(exp.null()).not_()))
    )


#: The event columns every metric's cells read (the customer's ids).
_CELL_KEY_COLUMNS = ("customer_id", "external_customer_id")


def _with_property_terms(
    metrics: list[_Registered], events: exp.Query
) -> tuple[exp.Select, dict[str, _Terms]]:
    """``events`` (rows of the event columns) narrowed for aggregating ``metrics``: the
    customer key and the hour, and each part of their terms that reads only ``properties`` (a
    JSON extraction and what is made of it: a cast, a type test, a whole filter on properties),
    computed once per row as columns of their own, and only the event columns the terms still
    read. Returns that query and each metric's terms over it.

    Every metric's terms otherwise parse each row's JSON for each property they name (tokens
    twice for the sample metrics), and a temporary table of the events copies the JSON text:
    at 10M events, one slice of 3.2M rows took 1.1 s to copy and 1.4 s to aggregate."""
    # by the term itself: sqlglot trees compare and hash by structure
    computed: dict[exp.Expr, tuple[str, exp.Expr]] = {}

    def lift(node: exp.Expr) -> exp.Expr:
        columns = list(node.find_all(exp.Column))
        if (
            isinstance(node, exp.Column)
            or not columns
            or any(column.name != "properties" for column in columns)
        ):
            return node
        name, _ = computed.setdefault(node, (f"__property_term_{len(computed)}", node.copy()))
        return exp.column(name, table="e")

    narrowed = [
        _Terms(
            plain.value.transform(lift),
            plain.where.transform(lift),
            plain.group.transform(lift),
            exp.column("__customer_key", table="e"),
            exp.column("__bucket", table="e"),
        )
        for plain in map(_Terms.of, metrics)
    ]
    lifted = {name for name, _ in computed.values()}
    read = {
        column.name
        for term in narrowed
        for part in (term.value, term.where, term.group)
        for column in part.find_all(exp.Column)
    }
    event_columns = [*_CELL_KEY_COLUMNS, *sorted(read - lifted - set(_CELL_KEY_COLUMNS))]
    query = exp.select(
        *(exp.column(name, table="e", quoted=True) for name in event_columns),
        exp.alias_(customer_key(table="e"), "__customer_key"),
        exp.alias_(hour_bucket(table="e"), "__bucket"),
        *(exp.alias_(tree, name) for name, tree in computed.values()),
    ).from_(events.subquery("e"))
    return query, {metric.metric.id: term for metric, term in zip(metrics, narrowed, strict=True)}


def _numeric(parsed: ParsedMetric) -> bool:
    return parsed.aggregate in (Aggregate.SUM, Aggregate.MIN, Aggregate.MAX, Aggregate.AVG)


def _merged_value(parsed: ParsedMetric) -> exp.Expr:
    """The metric's value over a group of cells (``c``) or distinct rows."""
    column = {
        Aggregate.COUNT: exp.func("sum", exp.column("events", table="c")),
        Aggregate.SUM: exp.func("sum", exp.column("total", table="c")),
        Aggregate.MIN: exp.func("min", exp.column("minimum", table="c")),
        Aggregate.MAX: exp.func("max", exp.column("maximum", table="c")),
        Aggregate.AVG: exp.Div(
            this=exp.func("sum", exp.column("total", table="c")),
            expression=exp.func("sum", exp.column("events", table="c")),
        ),
        Aggregate.COUNT_DISTINCT: exp.Count(
            this=exp.Distinct(expressions=[exp.column("value", table="c")])
        ),
    }[parsed.aggregate]
    return exp.cast(column, "DOUBLE")


# Window of each row's bucket at the asked granularity, clipped to the asked timeframe, with
# the customer named both ways (the events named it one way; the customers table knows both).
_USAGE = """
SELECT coalesce(c.customer_id, by_external.id) AS customer_id,
       coalesce(c.external_customer_id, by_id.external_customer_id) AS external_customer_id,
       greatest(:window_start, :timeframe_start) AS timeframe_start,
       least(:window_end, :timeframe_end) AS timeframe_end,
       :group_value AS group_value,
       :value AS value
FROM cells AS c
LEFT JOIN known_customers AS by_id ON by_id.id = c.customer_id
LEFT JOIN known_customers AS by_external
  ON by_external.external_customer_id = c.external_customer_id
WHERE c.metric_id = :metric_id AND c.bucket >= :hour_start AND c.bucket < :timeframe_end
  AND :customer_filter
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1 NULLS LAST, 2 NULLS LAST, 3, 5 NULLS LAST
"""


class Metrics:
    """``store.metrics``: define Orb-style SQL metrics (materialized on creation)."""

    def __init__(self, context: Context, usage: Usage) -> None:
        self._context = context
        self._usage = usage

    def create(
        self,
        *,
        name: str,
        sql: str,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> Metric:
        """Define a metric and materialize it over all history, in one commit.

        ``progress(done, total)`` is called as history is aggregated (for progress bars).

        >>> store.metrics.create(name="tokens",  # doctest: +SKIP
        ...     sql="SELECT sum(tokens) FROM events WHERE event_name = 'completion'")
        """
        if not isinstance(name, str) or not name.strip():
            raise ConstraintViolation("name must be a non-empty string", field="name")
        parse_metric(sql)
        if metadata is not None and (
            not isinstance(metadata, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise ConstraintViolation("metadata must map strings to strings", field="metadata")
        metric = Metric(
            id=new_id(),
            name=name,
            sql=sql,
            description=description,
            metadata=dict(metadata or {}),
            status="active",
            created_at=from_storage(self._context.now()),  # type: ignore[arg-type]
        )
        storage = self._context.storage
        with storage.write():
            row = exp.select(
                *(exp.cast(exp.convert(v), "VARCHAR") for v in (metric.id, name, sql, description)),
                exp.cast(exp.convert(json.dumps(metric.metadata)), "JSON"),
                exp.cast(exp.convert(metric.status), "VARCHAR"),
                exp.convert(self._context.now()),
            )
            storage.execute(exp.insert(row, table_ref(METRICS)))
            self._usage.rebuild([metric.id], progress=progress)
        return metric

    def get(self, metric_id: str) -> Metric:
        """The metric ``metric_id`` (``ResourceNotFound`` otherwise)."""
        rows = self._context.storage.rows(
            exp.select(*METRICS.column_names)
            .from_(table_ref(METRICS))
            .where(exp.column("id").eq(exp.convert(metric_id)))
        )
        if not rows:
            raise ResourceNotFound(f"metric {metric_id!r} does not exist", metric_id=metric_id)
        return _metric(rows[0])

    def list(self) -> list[Metric]:
        """Every metric, oldest first."""
        rows = self._context.storage.rows(
            exp.select(*METRICS.column_names).from_(table_ref(METRICS)).order_by("created_at", "id")
        )
        return [_metric(row) for row in rows]


class Usage:
    """Materialized usage: refresh on commits, query, preview, recompute, verify."""

    def __init__(self, context: Context) -> None:
        self._context = context
        # Usage reads are served from in-memory copies of the cells, the customers and the
        # metric registry, reloaded when the store has a newer snapshot: a DuckLake query costs
        # milliseconds of catalog reads, the copies answer in well under one.
        self._cached_snapshot: int | None = None
        self._cached_metrics: dict[str, _Registered] = {}
        # Per metric: its cells (or distinct values) with the customer named both ways.
        self._resolved_cells: dict[str, pl.DataFrame] = {}
        # Per metric, customer id column and customer: that customer's cells, once read.
        self._customer_cells: dict[tuple[str, str, str], _CustomerCells] = {}
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        # The registry as writers last read it (see _registered_for_write).
        self._registry_rows: list[tuple[Any, ...]] = []
        self._registry: list[_Registered] = []

    def _refresh_cache(self) -> None:
        """On a new snapshot: reload the customers and the metric registry, and forget the
        cells (each metric's are loaded again when first read)."""
        storage = self._context.storage
        snapshot = storage.snapshot_id()
        if snapshot == self._cached_snapshot:
            return

        def read() -> list[_Registered]:
            storage.execute(
                create_temp_table("cached_customers", exp.select("*").from_(table_ref(CUSTOMERS)))
            )
            return self._registered()

        metrics = storage.consistent_read(read)
        self._cached_metrics = {m.metric.id: m for m in metrics}
        self._resolved_cells = {}
        self._customer_cells = {}
        self._cached_snapshot = snapshot

    def _cells_in_memory(self, metric: _Registered) -> pl.DataFrame:
        """The metric's cells (distinct values for ``count(DISTINCT ...)``) with the customer
        named both ways, as of the cached snapshot or later."""
        metric_id = metric.metric.id
        cells = self._resolved_cells.get(metric_id)
        if cells is None:
            distinct = metric.parsed.aggregate is Aggregate.COUNT_DISTINCT
            query = _resolved_cells(
                table_ref(USAGE_DISTINCT if distinct else USAGE_CELLS), distinct=distinct
            ).where(exp.column("metric_id", table="c").eq(exp.convert(metric_id)))
            cells = _frame(self._context.storage.arrow(query))
            self._resolved_cells[metric_id] = cells
        return cells

    def _customer_cells_in_memory(
        self, metric: _Registered, column: str, name: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """The cells of one customer (``column`` is ``customer_id`` or ``external_customer_id``)
        with buckets in ``[start, end)``. The customer's cells are found once per snapshot (a
        pass over the metric's cells); a filter over every cell on each call grew with the
        history (5 ms per call over 150 days at 50M events), and sorting all cells up front cost
        the first call after a commit up to 250 ms more."""
        key = (metric.metric.id, column, name)
        found = self._customer_cells.get(key)
        if found is None:
            found = _CustomerCells.of(self._cells_in_memory(metric), column, name)
            self._customer_cells[key] = found
        return found.select(start, end)

    # -- the registry -------------------------------------------------------------------------

    def _registered(self, metric_ids: list[str] | None = None) -> list[_Registered]:
        metrics = [_metric(row) for row in self._context.storage.rows(_registry(metric_ids))]
        return [_Registered(m, parse_metric(m.sql)) for m in metrics]

    def _registered_for_write(self) -> list[_Registered]:
        """Every metric, inside a write: read and parsed again only when the registry changed
        (:meth:`Storage.small_table_rows`), not on every commit."""
        rows = self._context.storage.small_table_rows(METRICS, _registry(None))
        if rows != self._registry_rows:
            metrics = [_metric(row) for row in rows]
            self._registry = [_Registered(m, parse_metric(m.sql)) for m in metrics]
            self._registry_rows = rows
        return self._registry

    # -- maintenance (inside a write transaction) ---------------------------------------------

    def add_new_events(self, written: exp.Query) -> None:
        """Fold the rows a live commit wrote into the cells, when each is a new effective event
        and nothing else changed: no key of them was stored before, and no backfill deprecates
        them. The cells they fall in gain their aggregates (a count and a sum add up, a minimum
        and a maximum compare, distinct values join the set), so the older events of those
        cells are not read again: re-aggregating them was most of a live batch's refresh (0.07
        s of a 500-event batch at 10M events, 0.22 s of a 100k batch)."""
        metrics = self._registered_for_write()
        if not metrics:
            return
        storage = self._context.storage
        events, terms = _with_property_terms(metrics, written)
        storage.execute(create_temp_table("added_events", events))
        bounds = storage.one(bind("SELECT min(__bucket), max(__bucket) FROM added_events"))
        if bounds is None or bounds[0] is None:
            return
        in_span = {"first": bounds[0], "last": bounds[1]}
        storage.execute(create_temp_table("met_cells", bind(_MET_CELLS, **in_span)))
        if storage.one(bind("SELECT count(*) FROM met_cells")) == (0,):
            # No stored cell in those units (a load of past events), so no distinct value
            # either: the cells are the added rows' own, as a rebuild would write them.
            self._insert_cells(metrics, "added_events", terms)
            return
        storage.execute(
            create_temp_table(
                "added_cells",
                union_all([_cells(m, "added_events", terms[m.metric.id]) for m in metrics]),
            )
        )
        storage.execute(bind(_DELETE_MET_CELLS, **in_span))
        storage.execute(insert_rows(USAGE_CELLS, bind(_FOLDED_CELLS), _CELL_COLUMNS))
        distinct = [m for m in metrics if m.parsed.aggregate is Aggregate.COUNT_DISTINCT]
        if distinct:
            values = union_all(
                [_distinct_values(m, "added_events", terms[m.metric.id]) for m in distinct]
            )
            storage.execute(
                insert_rows(
                    USAGE_DISTINCT,
                    bind(_NEW_DISTINCT_VALUES, **in_span, ctes={"added_distinct": values}),
                    _DISTINCT_COLUMNS,
                )
            )

    def refresh_changed(
        self,
        *,
        version: int | None = None,
        written: exp.Expr | None = None,
        superseding: bool = True,
        backfill_id: str | None = None,
        close_version: int | None = None,
        timeframe: tuple[datetime, datetime] | None = None,
        promoted: str | None = None,
        replacement: Replacement | None = None,
        capture_before: bool = False,
    ) -> None:
        """Re-aggregate the units a commit touched: rows written at ``version``, or the rows
        backfill ``backfill_id`` wrote when it closed at ``close_version`` and those it
        deprecates (within ``timeframe``).

        For a version, ``written`` may select the rows the commit wrote (``customer_id``,
        ``external_customer_id``, ``timestamp``) from where the writer still has them, and
        ``superseding=False`` says none of them superseded a stored row: each spares a scan of
        a lake table (10-20 ms of DuckLake catalog work even when it finds nothing).

        A close names the temp table holding the rows it promoted, as stored, in ``promoted``
        (reading them back from the store costs a scan of the lake table), and says in
        ``replacement`` that it replaces all of its timeframe and scope (see
        :class:`Replacement`), and with ``superseding=False`` that none of its keys was stored
        before. A revert gives neither.

        ``capture_before`` keeps the cells of the touched (customer, day)s as they were, in
        the temp tables ``before_cells`` and ``before_distinct``, for :meth:`preview_diff`.
        """
        metrics = self._registered_for_write()
        if not metrics:
            return
        storage = self._context.storage
        replaced: _Promoted | None = None
        if (
            replacement is not None
            and not superseding
            and not capture_before
            and timeframe is not None
            and all(moment == _floor_hour(moment) for moment in timeframe)
        ):
            assert promoted is not None
            self._replace_in_timeframe(metrics, promoted, timeframe, replacement.customer_keys)
            return
        if backfill_id is not None:
            assert timeframe is not None and close_version is not None
            promoted_rows = (
                exp.select("*").from_(promoted)
                if promoted is not None
                else bind(_PROMOTED_BY_CLOSE, close_version=close_version, backfill_id=backfill_id)
            )
            touched = bind(
                _TOUCHED_BY_BACKFILL,
                backfill_id=backfill_id,
                start=timeframe[0],
                end=timeframe[1],
                ctes={"promoted": promoted_rows},
            )
            if replacement is not None:
                assert promoted is not None
                replaced = _Promoted(promoted, *timeframe, replacement.customer_keys)
        else:
            assert version is not None
            rows: exp.Expr
            if isinstance(written, exp.Query):
                columns = ("customer_id", "external_customer_id", "timestamp")
                rows = exp.select(*(exp.column(c, quoted=True) for c in columns)).from_(
                    written.subquery("w")
                )
            else:
                rows = bind(_WRITTEN_AT_VERSION, version=version)
            parts: list[exp.Expr] = [rows]
            if superseding:
                parts.append(bind(_SUPERSEDED_AT_VERSION, version=version))
            touched = union_all(parts)
        units = bind(
            _AFFECTED_UNITS,
            customer_key=customer_key(table="s"),
            bucket=hour_bucket(table="s"),
            ctes={"touched": touched},
        )
        storage.execute(create_temp_table("affected_units", units))
        if capture_before:
            for name, table in (("before_cells", USAGE_CELLS), ("before_distinct", USAGE_DISTINCT)):
                storage.execute(create_temp_table(name, _in_affected_days(table_ref(table))))
        self._refresh_units(metrics, replaced)

    def _replace_in_timeframe(
        self,
        metrics: list[_Registered],
        promoted: str,
        timeframe: tuple[datetime, datetime],
        customer_keys: tuple[str, ...] | None,
    ) -> None:
        """The cells of a closing :class:`Replacement` of whole hours whose keys are all new:
        each unit in its timeframe and scope holds its promoted rows alone, and no unit
        outside changes (its rows lie inside, and supersede nothing). So the cells there are
        deleted by range and aggregated from the promoted rows, without finding the units the
        deprecated rows lay in (a pass over every deprecated row: 0.05-0.1 s of a 1-day close
        of 100k events over 330k at 10M events)."""
        storage = self._context.storage
        bucket = exp.column("bucket")
        conditions: list[exp.Expr] = [
            bucket >= exp.convert(timeframe[0]),
            bucket < exp.convert(timeframe[1]),
        ]
        if customer_keys is not None:
            conditions.append(
                exp.column("customer_key").isin(*(exp.convert(key) for key in customer_keys))
            )
        for table in (USAGE_CELLS, USAGE_DISTINCT):
            storage.execute(exp.delete(table_ref(table), where=exp.and_(*conditions)))
        self._insert_cells(metrics, promoted)

    def _refresh_units(self, metrics: list[_Registered], replaced: _Promoted | None = None) -> None:
        storage = self._context.storage
        bounds = storage.one(bind("SELECT min(bucket), max(bucket) FROM affected_units"))
        if bounds is None or bounds[0] is None:
            return
        start, end = bounds[0], bounds[1] + timedelta(hours=1)
        for table in (USAGE_CELLS, USAGE_DISTINCT):
            bucket = exp.column("bucket", table="t")
            # joined with USING, not tested per row with a correlated EXISTS
            delete = exp.delete(
                table_ref(table, alias="t"),
                where=exp.and_(
                    bucket >= exp.convert(start),
                    bucket < exp.convert(end),
                    exp.column("customer_key", table="u").eq(exp.column("customer_key", table="t")),
                    exp.column("bucket", table="u").eq(bucket),
                ),
            )
            delete.set("using", [exp.to_table("affected_units").as_("u")])
            storage.execute(delete)
        units = "affected_units"
        parts: list[exp.Select] = []
        if replaced is not None:
            whole = replaced.holds_only_its_rows()
            for name, condition in (("replaced_units", whole), ("other_units", whole.not_())):
                storage.execute(
                    create_temp_table(name, exp.select("*").from_(units).where(condition))
                )
            parts.append(replaced.rows(units="replaced_units"))
            units = "other_units"
        customers = storage.rows(
            exp.select("customer_key").distinct().from_(units).limit(_FEW_CUSTOMERS + 1)
        )
        if replaced is not None and not customers:
            # Every touched unit holds the promoted rows alone, and every promoted row lies in
            # a touched unit: the cells come from the promoted rows as they are, uncopied.
            self._insert_cells(metrics, replaced.rows_table)
            return
        if customers:
            # read once here: the refresh query would otherwise read backfills per reference
            reflected = [
                row[0] for row in storage.small_table_rows(BACKFILLS, reflected_backfills())
            ]
            parts.append(
                effective_events(
                    timeframe_start=start,
                    timeframe_end=end,
                    units=units,
                    unit_customers=(
                        [key for (key,) in customers] if len(customers) <= _FEW_CUSTOMERS else None
                    ),
                    reflected_ids=reflected if len(reflected) <= _FEW_REFLECTED else None,
                )
            )
        rows = (
            parts[0]
            if len(parts) == 1
            # as subqueries: the effective-events query starts with WITH
            else exp.union(
                *(exp.select("*").from_(part.subquery(f"p{i}")) for i, part in enumerate(parts)),
                distinct=False,
            )
        )
        narrowed, terms = _with_property_terms(metrics, rows)
        storage.execute(create_temp_table("unit_events", narrowed))
        self._insert_cells(metrics, "unit_events", terms)

    def _insert_cells(
        self,
        metrics: list[_Registered],
        source: _Source,
        terms: Mapping[str, _Terms] | None = None,
    ) -> None:
        """Insert the cells of ``metrics`` aggregated from ``source``, read through ``terms``
        (by metric id) when given."""
        storage = self._context.storage
        terms = terms or {}
        # One INSERT for all metrics: each INSERT writes a file per day partition it touches,
        # and a commit's cost grows with the files it adds. The partial delete files that
        # larger files led DuckLake to write are read safely since Storage.consistent_read
        # (RELIABILITY.md, "DuckLake partial deletes").
        storage.execute(
            insert_rows(
                USAGE_CELLS,
                union_all([_cells(m, source, terms.get(m.metric.id)) for m in metrics]),
                _CELL_COLUMNS,
            )
        )
        distinct = [m for m in metrics if m.parsed.aggregate is Aggregate.COUNT_DISTINCT]
        if distinct:
            storage.execute(
                insert_rows(
                    USAGE_DISTINCT,
                    union_all(
                        [_distinct_values(m, source, terms.get(m.metric.id)) for m in distinct]
                    ),
                    _DISTINCT_COLUMNS,
                )
            )

    def rebuild(
        self, metric_ids: list[str] | None = None, *, progress: Progress | None = None
    ) -> None:
        """Recompute the cells of some metrics (all by default) from every effective event,
        a slice of whole days at a time (see :func:`_day_slices`), in one commit."""
        metrics = self._registered(metric_ids)
        storage = self._context.storage
        with storage.write():
            ids = [exp.convert(m.metric.id) for m in metrics]
            if not ids:
                return
            for table in (USAGE_CELLS, USAGE_DISTINCT):
                storage.execute(
                    exp.delete(table_ref(table), where=exp.column("metric_id").isin(*ids))
                )
            slices = self._history_slices()
            if progress:
                progress(0, len(slices))
            # One statement reads the slice when one metric without distinct values is built
            # (a metric's creation): it aggregates the rows as they are scanned, instead of
            # copying them to a table first.
            streamed = (
                len(metrics) == 1 and metrics[0].parsed.aggregate is not Aggregate.COUNT_DISTINCT
            )
            for done, (start, end) in enumerate(slices, start=1):
                events, terms = _with_property_terms(
                    metrics, effective_events(timeframe_start=start, timeframe_end=end)
                )
                if streamed:
                    self._insert_cells(metrics, events, terms)
                else:
                    storage.execute(create_temp_table("slice_events", events))
                    self._insert_cells(metrics, "slice_events", terms)
                if progress:
                    progress(done, len(slices))
            storage.execute(drop_temp_table("slice_events"))

    # -- queries ------------------------------------------------------------------------------

    def usage(
        self,
        metric_id: str,
        *,
        timeframe_start: datetime | str,
        timeframe_end: datetime | str,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        granularity: Granularity = "day",
        group_by: str | None = None,
        as_of: datetime | str | int | None = None,
    ) -> pl.DataFrame:
        """Usage of a metric per customer and time bucket (see ``Store.usage``)."""
        self._refresh_cache()
        metric = self._cached_metrics.get(metric_id)
        if metric is None:
            raise ResourceNotFound(f"metric {metric_id!r} does not exist", metric_id=metric_id)
        start = as_utc(timeframe_start, field="timeframe_start")
        end = as_utc(timeframe_end, field="timeframe_end")
        if start >= end:
            raise ConstraintViolation("timeframe_start must be before timeframe_end")
        if granularity not in (*_GRANULARITIES, None):
            raise ConstraintViolation("granularity must be 'hour', 'day', 'month' or None")
        if group_by is not None and group_by != metric.parsed.group_by:
            raise ConstraintViolation(
                f"metric {metric_id!r} is grouped by {metric.parsed.group_by!r}, not {group_by!r}"
                if metric.parsed.group_by
                else f"metric {metric_id!r} has no GROUP BY; group_by must be None"
            )
        storage = self._context.storage
        aligned = start == _floor_hour(start) and end == _floor_hour(end)
        if aligned and as_of is None:
            if external_customer_id is not None:
                cells = self._customer_cells_in_memory(
                    metric, "external_customer_id", external_customer_id, start, end
                )
                if customer_id is not None:
                    cells = cells.filter(pl.col("customer_id") == customer_id)
            elif customer_id is not None:
                cells = self._customer_cells_in_memory(
                    metric, "customer_id", customer_id, start, end
                )
            else:
                bucket = pl.col("bucket")
                cells = self._cells_in_memory(metric).filter((bucket >= start) & (bucket < end))
            return _named_group(metric, _usage_in_memory(metric, cells, start, end, granularity))

        def read() -> pa.Table:
            version = self._as_of_version(as_of) if as_of is not None else None
            cells, distinct = self._cells_from_events(
                metric, start, end, customer_id, external_customer_id, version
            )
            source = distinct if metric.parsed.aggregate is Aggregate.COUNT_DISTINCT else cells
            shape = (
                metric.parsed.aggregate,
                granularity,
                customer_id is not None,
                external_customer_id is not None,
                source.sql(),
            )
            prepared = self._prepared.get(shape)
            if prepared is None:
                prepared = storage.prepare(
                    _usage_query(
                        metric,
                        source,
                        granularity,
                        by_customer_id=customer_id is not None,
                        by_external_customer_id=external_customer_id is not None,
                        customers=exp.to_table("cached_customers"),
                    )
                )
                self._prepared[shape] = prepared
            return storage.arrow(
                prepared,
                _usage_parameters(metric, start, end, customer_id, external_customer_id),
            )

        table = storage.consistent_read(read)
        frame = _frame(table).with_columns(
            pl.col("timeframe_start").dt.replace_time_zone("UTC"),
            pl.col("timeframe_end").dt.replace_time_zone("UTC"),
        )
        return _named_group(metric, frame)

    def preview_diff(self) -> pl.DataFrame:
        """After ``refresh_changed(capture_before=True)``: per metric, customer and day of the
        touched units, the value before and after, where they differ."""
        storage = self._context.storage
        metrics = self._registered()
        # without metrics refresh_changed made no affected_units: nothing can change
        bounds = (
            storage.one(
                bind(
                    "SELECT min(date_trunc('day', bucket)), max(date_trunc('day', bucket)) "
                    "FROM affected_units"
                )
            )
            if metrics
            else None
        )
        frames = []
        if bounds is not None and bounds[0] is not None:
            start, end = bounds[0], bounds[1] + timedelta(days=1)
            for metric in metrics:
                distinct = metric.parsed.aggregate is Aggregate.COUNT_DISTINCT
                before = exp.to_table("before_distinct" if distinct else "before_cells")
                after = _in_affected_days(table_ref(USAGE_DISTINCT if distinct else USAGE_CELLS))
                sides = {
                    name: _usage_query(metric, source, "day", grouped=False)
                    for name, source in (
                        ("before_usage", before),
                        ("after_usage", after.subquery("a")),
                    )
                }
                diff = pl.from_arrow(
                    storage.arrow(
                        bind(_PREVIEW, ctes=sides, metric=exp.Placeholder(this="metric_id")),
                        _usage_parameters(metric, start, end),
                    )
                )
                assert isinstance(diff, pl.DataFrame)
                frames.append(diff)
        empty = pl.DataFrame(
            schema=pl.Schema(
                {
                    "metric_id": pl.String(),
                    "customer_id": pl.String(),
                    "external_customer_id": pl.String(),
                    "timeframe_start": pl.Datetime("us"),
                    "before": pl.Float64(),
                    "after": pl.Float64(),
                    "delta": pl.Float64(),
                }
            )
        )
        frame = pl.concat([empty, *frames], how="vertical_relaxed")
        return frame.with_columns(pl.col("timeframe_start").dt.replace_time_zone("UTC"))

    def _cells_from_events(
        self,
        metric: _Registered,
        start: datetime,
        end: datetime,
        customer_id: str | None,
        external_customer_id: str | None,
        as_of_version: int | None,
    ) -> tuple[exp.Expr, exp.Expr]:
        """Cells computed straight from effective events (timeframe not on hour boundaries, or
        usage as of an earlier version). Events outside ``[start, end)`` are left out, so a
        partial hour counts only its part."""
        storage = self._context.storage
        customer_id, external_customer_id = both_ids(
            self._context, customer_id, external_customer_id
        )
        storage.execute(
            create_temp_table(
                "window_events",
                effective_events(
                    timeframe_start=start,
                    timeframe_end=end,
                    customer_id=customer_id,
                    external_customer_id=external_customer_id,
                    as_of_version=as_of_version,
                ),
            )
        )
        storage.execute(create_temp_table("window_cells", _cells(metric, "window_events")))
        storage.execute(
            create_temp_table("window_distinct", _distinct_values(metric, "window_events"))
        )
        return exp.to_table("window_cells"), exp.to_table("window_distinct")

    def _as_of_version(self, as_of: datetime | str | int) -> int:
        if isinstance(as_of, bool) or not isinstance(as_of, (int, datetime, str)):
            raise ConstraintViolation("as_of must be a version number or an aware datetime")
        if isinstance(as_of, int):
            if as_of < 0:
                raise ConstraintViolation("as_of version must be >= 0")
            return as_of
        moment = as_utc(as_of, field="as_of")
        row = self._context.storage.one(
            bind(
                "SELECT coalesce(max(version), 0) FROM lake.main.commits WHERE committed_at <= :t",
                t=moment,
            )
        )
        return int(row[0]) if row else 0

    def verify(self) -> list[dict[str, Any]]:
        """Every cell where the materialized usage differs from a from-scratch computation,
        per metric in time order, computed a slice of days at a time (as :meth:`rebuild`)."""
        metrics = self._registered()
        storage = self._context.storage

        def read() -> list[dict[str, Any]]:
            found: dict[str, list[dict[str, Any]]] = {m.metric.id: [] for m in metrics}
            for start, end in self._history_slices():
                # the metrics' plain terms, not _with_property_terms: the check takes the other
                # path from the rebuild, so a fault in either shows as a mismatch
                events = effective_events(timeframe_start=start, timeframe_end=end)
                storage.execute(create_temp_table("verify_events", events))
                for metric in metrics:
                    found[metric.metric.id] += self._mismatches(metric, start, end)
            for table in ("verify_events", "expected_cells", "expected_distinct"):
                storage.execute(drop_temp_table(table))
            return [{"metric_id": id_, **row} for id_, rows in found.items() for row in rows]

        return storage.consistent_read(read)

    def _history_slices(self) -> list[tuple[datetime | None, datetime | None]]:
        """All history as slices of whole days of at most ``_SLICE_ROWS`` stored rows."""
        days = self._context.storage.rows(template(_STORED_ROWS_PER_DAY))
        return _day_slices([(day, int(rows)) for day, rows in days], _SLICE_ROWS)

    def _mismatches(
        self, metric: _Registered, start: datetime | None, end: datetime | None
    ) -> list[dict[str, Any]]:
        """The cells of ``metric`` in buckets from ``start`` to ``end`` whose materialized value
        differs from the one computed from the effective events in ``verify_events``."""
        storage = self._context.storage
        bucket = exp.column("bucket")
        in_slice: list[exp.Expr] = [exp.column("metric_id").eq(exp.convert(metric.metric.id))]
        if start is not None:
            in_slice.append(bucket >= exp.convert(start))
        if end is not None:
            in_slice.append(bucket < exp.convert(end))
        storage.execute(create_temp_table("expected_cells", _cells(metric, "verify_events")))
        actual = exp.select("*").from_(table_ref(USAGE_CELLS)).where(*in_slice)
        rows: list[dict[str, Any]] = storage.arrow(
            bind(_VERIFY_CELLS, ctes={"actual": actual})
        ).to_pylist()
        if metric.parsed.aggregate is Aggregate.COUNT_DISTINCT:
            storage.execute(
                create_temp_table("expected_distinct", _distinct_values(metric, "verify_events"))
            )
            actual = exp.select("*").from_(table_ref(USAGE_DISTINCT)).where(*in_slice)
            rows += storage.arrow(bind(_VERIFY_DISTINCT, ctes={"actual": actual})).to_pylist()
        return rows

    def volume(
        self, *, timeframe_start: datetime | str, timeframe_end: datetime | str | None
    ) -> pl.DataFrame:
        """Hourly counts of effective events by event time (Orb's event volume)."""
        start = _floor_hour(as_utc(timeframe_start, field="timeframe_start"))
        end = (
            as_utc(timeframe_end, field="timeframe_end")
            if timeframe_end is not None
            else self._context.now()
        )
        if start >= end:
            raise ConstraintViolation("timeframe_start must be before timeframe_end")
        query = bind(
            "SELECT date_trunc('hour', \"timestamp\") AS timeframe_start, "
            "date_trunc('hour', \"timestamp\") + INTERVAL 1 HOUR AS timeframe_end, "
            "count(*) AS count FROM effective GROUP BY 1, 2 ORDER BY 1",
            ctes={"effective": effective_events(timeframe_start=start, timeframe_end=end)},
        )
        frame = pl.from_arrow(self._context.storage.arrow(query))
        assert isinstance(frame, pl.DataFrame)
        return frame.with_columns(
            pl.col("timeframe_start").dt.replace_time_zone("UTC"),
            pl.col("timeframe_end").dt.replace_time_zone("UTC"),
        )


#: Stored rows that a rebuild or a verify aggregates at once, in whole days: a slice's effective
#: events are a temporary table, which DuckDB spills to the store's ``tmp/`` beyond its memory
#: limit. All 100M events at once left 23 GB of spill files there (capped at 3.9 GiB), which
#: DuckDB keeps until the store is closed; by slices, none, and the rebuild took 89 s, not 134.
_SLICE_ROWS = 4_000_000

_STORED_ROWS_PER_DAY = """
SELECT CAST("timestamp" AS DATE) AS day, count(*) AS stored_rows
FROM lake.main.stored_events GROUP BY 1 ORDER BY 1
"""


def _day_slices(
    days: list[tuple[date, int]], most_rows: int
) -> list[tuple[datetime | None, datetime | None]]:
    """Consecutive runs of the (sorted) days, each holding at most ``most_rows`` stored rows
    unless one day alone holds more, as ``[start, end)`` timeframes; the first is open at the
    start and the last at the end, so together they cover all time. One open slice when there
    are no days."""
    bounds: list[datetime] = []  # the first day of every slice after the first
    held = 0
    for day, rows in days:
        if held and held + rows > most_rows:
            bounds.append(datetime(day.year, day.month, day.day))
            held = 0
        held += rows
    starts: list[datetime | None] = [None, *bounds]
    ends: list[datetime | None] = [*bounds, None]
    return list(zip(starts, ends, strict=True))


_VERIFY_CELLS = """
SELECT coalesce(a.customer_key, e.customer_key) AS customer_key,
       coalesce(a.bucket, e.bucket) AS bucket,
       coalesce(a.group_value, e.group_value) AS group_value,
       struct_pack(events := a.events, total := a.total, minimum := a.minimum,
                   maximum := a.maximum)::VARCHAR AS materialized,
       struct_pack(events := e.events, total := e.total, minimum := e.minimum,
                   maximum := e.maximum)::VARCHAR AS expected
FROM actual AS a
FULL OUTER JOIN expected_cells AS e
  ON a.customer_key = e.customer_key AND a.bucket = e.bucket
 AND a.group_value IS NOT DISTINCT FROM e.group_value
WHERE a.customer_key IS NULL OR e.customer_key IS NULL
   OR a.events <> e.events
   OR abs(coalesce(a.total, 0) - coalesce(e.total, 0))
      > 1e-9 * greatest(1, abs(coalesce(e.total, 0)))
   OR a.minimum IS DISTINCT FROM e.minimum OR a.maximum IS DISTINCT FROM e.maximum
ORDER BY 1, 2, 3
"""

_VERIFY_DISTINCT = """
SELECT coalesce(a.customer_key, e.customer_key) AS customer_key,
       coalesce(a.bucket, e.bucket) AS bucket,
       coalesce(a.group_value, e.group_value) AS group_value,
       a.value AS materialized, e.value AS expected
FROM actual AS a
FULL OUTER JOIN expected_distinct AS e
  ON a.customer_key = e.customer_key AND a.bucket = e.bucket
 AND a.group_value IS NOT DISTINCT FROM e.group_value AND a.value = e.value
WHERE a.customer_key IS NULL OR e.customer_key IS NULL
ORDER BY 1, 2, 3
"""


_PREVIEW = """
SELECT CAST(:metric AS VARCHAR) AS metric_id,
       coalesce(a.customer_id, b.customer_id) AS customer_id,
       coalesce(a.external_customer_id, b.external_customer_id) AS external_customer_id,
       coalesce(a.timeframe_start, b.timeframe_start) AS timeframe_start,
       b.value AS before, a.value AS after,
       coalesce(a.value, 0) - coalesce(b.value, 0) AS delta
FROM before_usage AS b
FULL OUTER JOIN after_usage AS a
  ON a.customer_id IS NOT DISTINCT FROM b.customer_id
 AND a.external_customer_id IS NOT DISTINCT FROM b.external_customer_id
 AND a.timeframe_start = b.timeframe_start
WHERE a.value IS DISTINCT FROM b.value
ORDER BY 2 NULLS LAST, 3 NULLS LAST, 4
"""


def _registry(metric_ids: list[str] | None) -> exp.Select:
    """The metrics (some, or all), oldest first."""
    query = exp.select(*METRICS.column_names).from_(table_ref(METRICS)).order_by("created_at")
    if metric_ids is not None:
        query = query.where(exp.column("id").isin(*(exp.convert(m) for m in metric_ids)))
    return query


def _in_affected_days(source: exp.Table) -> exp.Select:
    """Rows of a cells table in the (customer, day)s of ``affected_units``."""
    day = exp.func("date_trunc", exp.Literal.string("day"), exp.column("bucket"))
    return (
        exp.select("*")
        .from_(source)
        .where(
            exp.Exists(
                this=exp.select(exp.Literal.number(1))
                .from_(exp.to_table("affected_units").as_("u"))
                .where(
                    exp.column("customer_key", table="u").eq(exp.column("customer_key"))
                    & exp.func(
                        "date_trunc", exp.Literal.string("day"), exp.column("bucket", table="u")
                    ).eq(day)
                )
            )
        )
    )


def _frame(table: Any) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _named_group(metric: _Registered, frame: pl.DataFrame) -> pl.DataFrame:
    """Usage columns as the API names them: the group column named after the metric's
    GROUP BY (prefixed ``group_`` when that name is taken, as in ``GROUP BY customer_id``)."""
    group = metric.parsed.group_by
    if group is None:
        return frame.drop("group_value")
    name = f"group_{group}" if group in frame.columns else group
    return frame.rename({"group_value": name})


def _resolved_cells(source: exp.Table, *, distinct: bool) -> exp.Select:
    """A cells table (or distinct-values table) with the customer named both ways (an event
    names it one way; the customers table knows both), for the in-memory usage path."""
    measures = ("value",) if distinct else ("events", "total", "minimum", "maximum")
    return (
        exp.select(
            exp.alias_(
                exp.func(
                    "coalesce",
                    exp.column("customer_id", table="c"),
                    exp.column("id", table="by_external"),
                ),
                "customer_id",
            ),
            exp.alias_(
                exp.func(
                    "coalesce",
                    exp.column("external_customer_id", table="c"),
                    exp.column("external_customer_id", table="by_id"),
                ),
                "external_customer_id",
            ),
            exp.column("bucket", table="c"),
            exp.column("group_value", table="c"),
            *(exp.column(name, table="c") for name in measures),
        )
        .from_(source.as_("c"))
        .join(
            exp.to_table("cached_customers").as_("by_id"),
            on=exp.column("id", table="by_id").eq(exp.column("customer_id", table="c")),
            join_type="left",
        )
        .join(
            exp.to_table("cached_customers").as_("by_external"),
            on=exp.column("external_customer_id", table="by_external").eq(
                exp.column("external_customer_id", table="c")
            ),
            join_type="left",
        )
    )


_POLARS_INTERVALS = {"hour": "1h", "day": "1d", "month": "1mo"}

_USAGE_SCHEMA = pl.Schema(
    {
        "customer_id": pl.String(),
        "external_customer_id": pl.String(),
        "timeframe_start": pl.Datetime("us", "UTC"),
        "timeframe_end": pl.Datetime("us", "UTC"),
        "group_value": pl.String(),
        "value": pl.Float64(),
    }
)


def _usage_in_memory(
    metric: _Registered,
    cells: pl.DataFrame,
    start: datetime,
    end: datetime,
    granularity: Granularity,
) -> pl.DataFrame:
    """:data:`_USAGE` computed by Polars over in-memory cells of one metric already restricted
    to the timeframe (hour-aligned) and customer: a DuckDB statement costs milliseconds to
    plan, this a fraction. Eager, as the frames are small: a lazy plan's optimization cost
    more than running it (0.8 against 0.4 ms for one customer's month)."""
    bucket = pl.col("bucket")
    if granularity is None:
        windows = [pl.lit(start).alias("window_start"), pl.lit(end).alias("window_end")]
    else:
        interval = _POLARS_INTERVALS[granularity]
        window = bucket.dt.truncate(interval)
        windows = [
            window.alias("window_start"),
            window.dt.offset_by(interval).alias("window_end"),
        ]
    aggregate = metric.parsed.aggregate
    value = {
        Aggregate.COUNT: pl.col("events").sum(),
        Aggregate.SUM: pl.col("total").sum(),
        Aggregate.MIN: pl.col("minimum").min(),
        Aggregate.MAX: pl.col("maximum").max(),
        Aggregate.AVG: pl.col("total").sum() / pl.col("events").sum(),
        Aggregate.COUNT_DISTINCT: pl.col("value").n_unique(),
    }[aggregate]
    keys = ["customer_id", "external_customer_id", "window_start", "window_end", "group_value"]
    return (
        cells.with_columns(windows)
        .group_by(keys)
        .agg(value.cast(pl.Float64).alias("value"))
        .select(
            "customer_id",
            "external_customer_id",
            pl.max_horizontal("window_start", pl.lit(start))
            .dt.replace_time_zone("UTC")
            .alias("timeframe_start"),
            pl.min_horizontal("window_end", pl.lit(end))
            .dt.replace_time_zone("UTC")
            .alias("timeframe_end"),
            "group_value",
            "value",
        )
        .sort(
            ["customer_id", "external_customer_id", "timeframe_start", "group_value"],
            nulls_last=True,
        )
        .cast(_USAGE_SCHEMA)
    )


def _usage_query(
    metric: _Registered,
    source: exp.Expr,
    granularity: Granularity,
    *,
    by_customer_id: bool = False,
    by_external_customer_id: bool = False,
    grouped: bool = True,
    customers: exp.Table | None = None,
) -> exp.Expr:
    """The usage query over a cells table, with ``$`` placeholders for the values that
    change per call (see :func:`_usage_parameters`), so a hot path renders it once."""
    customers = customers if customers is not None else table_ref(CUSTOMERS)
    bucket = exp.column("bucket", table="c")
    if granularity is None:
        window_start: exp.Expr = exp.Placeholder(this="timeframe_start")
        window_end: exp.Expr = exp.Placeholder(this="timeframe_end")
    else:
        window_start = exp.func("date_trunc", exp.Literal.string(granularity), bucket)
        window_end = exp.Add(
            this=window_start.copy(),
            expression=exp.Interval(
                this=exp.Literal.string("1"), unit=exp.var(granularity.upper())
            ),
        )
    conditions: list[exp.Expr] = []
    if by_customer_id:
        conditions.append(
            exp.func(
                "coalesce",
                exp.column("customer_id", table="c"),
                exp.column("id", table="by_external"),
            ).eq(exp.Placeholder(this="customer_id"))
        )
    if by_external_customer_id:
        conditions.append(
            exp.func(
                "coalesce",
                exp.column("external_customer_id", table="c"),
                exp.column("external_customer_id", table="by_id"),
            ).eq(exp.Placeholder(this="external_customer_id"))
        )
    return bind(
        _USAGE,
        ctes={
            "cells": exp.select("*").from_(source),
            "known_customers": exp.select("*").from_(customers),
        },
        window_start=window_start,
        window_end=window_end,
        group_value=exp.column("group_value", table="c") if grouped else exp.null(),
        value=_merged_value(metric.parsed),
        customer_filter=exp.and_(*conditions) if conditions else exp.true(),
        **{name: exp.Placeholder(this=name) for name in _USAGE_PARAMETERS},
    )


_USAGE_PARAMETERS = ("timeframe_start", "timeframe_end", "hour_start", "metric_id")


def _usage_parameters(
    metric: _Registered,
    start: datetime,
    end: datetime,
    customer_id: str | None = None,
    external_customer_id: str | None = None,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "timeframe_start": start,
        "timeframe_end": end,
        "hour_start": _floor_hour(start),
        "metric_id": metric.metric.id,
    }
    if customer_id is not None:
        parameters["customer_id"] = customer_id
    if external_customer_id is not None:
        parameters["external_customer_id"] = external_customer_id
    return parameters


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)
