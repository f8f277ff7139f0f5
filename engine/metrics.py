"""Orb-style SQL metrics: parse, check against the grammar, and translate to DuckDB.

A metric is ``SELECT <aggregate> FROM events [WHERE <condition>] [GROUP BY <column>]``:

>>> m = parse_metric("SELECT sum(tokens) FROM events WHERE event_name = 'completion'")
>>> m.aggregate, m.group_by
(<Aggregate.SUM: 'sum'>, None)

Aggregates: ``count(*)``, ``count(x)``, ``count(DISTINCT x)``, ``sum``, ``min``, ``max``,
``avg``; their argument and the condition use the filter grammar (:mod:`engine.filters`,
DESIGN section 4). ``sum min max avg`` need numbers; ``count(x)`` counts events where ``x`` is
not NULL; ``count(DISTINCT x)`` counts distinct values, where a number and a string never
equal each other. ``GROUP BY`` names one property or reserved column.

The text follows the filter's rules (:func:`engine.filters.parse_statement`): at most 10 000
characters, no comments, no ``;``, no control or invisible characters, at most 64 levels of
nesting. ``FROM events`` takes no alias, sample, time travel or hint, and a metric whose
translation would build more than ``MAX_TRANSLATED_SIZE`` nodes is refused when it is created.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlglot import exp

from engine.errors import ConstraintViolation
from engine.filters import (
    RESERVED_COLUMNS,
    ValueType,
    infer_type,
    parse_statement,
    property_path,
    translate,
    validate_expression,
)

__all__ = ["Aggregate", "ParsedMetric", "parse_metric"]

MAX_METRIC_LENGTH = 10_000


class Aggregate(enum.StrEnum):
    COUNT = "count"
    COUNT_DISTINCT = "count_distinct"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"


_NUMERIC: dict[type[exp.Expression], Aggregate] = {
    exp.Sum: Aggregate.SUM,
    exp.Min: Aggregate.MIN,
    exp.Max: Aggregate.MAX,
    exp.Avg: Aggregate.AVG,
}


@dataclass(frozen=True)
class ParsedMetric:
    """A checked metric. ``argument`` and ``condition`` are user-level trees of the grammar
    (``argument`` is None for ``count(*)``); ``group_by`` is a property or reserved column."""

    sql: str
    aggregate: Aggregate
    argument: exp.Expression | None
    condition: exp.Expression | None
    group_by: str | None

    def value(self, *, table: str | None = None) -> exp.Expression:
        """Per event, the DuckDB expression the aggregate reads (``1`` for ``count(*)``).

        Numbers for ``sum min max avg``; for ``count(x)`` any non-NULL value counts; for
        ``count(DISTINCT x)`` a text that keeps the JSON type (``1`` and ``"1"`` differ).
        """
        if self.argument is None:
            return exp.Literal.number(1)
        if self.aggregate in (Aggregate.COUNT, Aggregate.COUNT_DISTINCT):
            if _bare_property(self.argument):
                return exp.cast(_json_call("json_extract", self.argument.name, table), "VARCHAR")
            kind = infer_type(self.argument, context="metric")
            value = translate(self.argument, table=table, expected=kind, context="metric")
            return exp.cast(value, "VARCHAR")
        number = translate(self.argument, table=table, expected=ValueType.NUMBER, context="metric")
        return exp.cast(number, "DOUBLE")

    def where(self, *, table: str | None = None) -> exp.Expression:
        """The condition as a DuckDB boolean (TRUE when the metric has none)."""
        if self.condition is None:
            return exp.true()
        return translate(self.condition, table=table, expected=ValueType.BOOLEAN, context="metric")

    def group_value(self, *, table: str | None = None) -> exp.Expression:
        """The group of an event as text (NULL when ungrouped or the event lacks it)."""
        if self.group_by is None:
            return exp.cast(exp.null(), "VARCHAR")
        if self.group_by in RESERVED_COLUMNS:
            return exp.cast(exp.column(self.group_by, table=table, quoted=True), "VARCHAR")
        return _json_call("json_extract_string", self.group_by, table)


def _json_call(function: str, name: str, table: str | None) -> exp.Expression:
    # Anonymous keeps the JSON Pointer path as written; sqlglot would rewrite a typed
    # JSONExtract node's path into its own syntax.
    return exp.Anonymous(
        this=function,
        expressions=[
            exp.column("properties", table=table),
            exp.Literal.string(property_path(name)),
        ],
    )


def _bare_property(node: exp.Expression) -> bool:
    return (
        isinstance(node, exp.Column)
        and not node.table
        and node.name.lower() not in RESERVED_COLUMNS
    )


def _refuse(detail: str, construct: str) -> ConstraintViolation:
    return ConstraintViolation(detail, construct=construct)


def parse_metric(sql: str) -> ParsedMetric:
    """Parse and check metric SQL; anything outside the grammar is a ``ConstraintViolation``
    naming the construct."""
    if not isinstance(sql, str) or not sql.strip():
        raise _refuse("metric sql is empty", "empty")
    if len(sql) > MAX_METRIC_LENGTH:
        raise _refuse(f"metric sql is longer than {MAX_METRIC_LENGTH} characters", "length")
    # The filter's text rules (characters, spacing, comments, ';', nesting depth) apply before
    # the recursive parser runs: a comment could hide a second statement from a reviewer, and
    # deep nesting would otherwise be bounded only by the caller's remaining stack.
    select = parse_statement(sql, "metric")
    if not isinstance(select, exp.Select):
        raise _refuse(
            f"metric sql must be a SELECT, not {type(select).__name__.upper()}", "statement"
        )
    allowed_args = {"expressions", "from_", "where", "group"}
    for arg, value in select.args.items():
        if value and arg not in allowed_args:
            raise _refuse(f"{arg.rstrip('_').upper()} is not allowed in a metric", arg.rstrip("_"))
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name.lower() != "events" or table.db:
        raise _refuse("a metric reads FROM events (and nothing else)", "from")
    extras = sorted(arg for arg, value in table.args.items() if value and arg != "this")
    if extras:
        # An alias, sample, time travel or hint would be silently ignored by the translation.
        raise _refuse(f"FROM events takes no {', '.join(extras)} in a metric", "from")
    if table.args.get("joins") or select.args.get("joins"):
        raise _refuse("joins are not allowed in a metric", "join")
    if len(select.expressions) != 1:
        raise _refuse("a metric selects exactly one aggregate", "projection")
    projection = select.expressions[0]
    if isinstance(projection, exp.Alias):
        projection = projection.this
    aggregate, argument = _aggregate(projection)
    if argument is not None:
        validate_expression(argument, context="metric")
        if aggregate in _NUMERIC.values():
            kind = infer_type(argument, context="metric")
            if kind not in (None, ValueType.NUMBER):
                raise _refuse(
                    f"{aggregate.value}() needs a number, "
                    f"but {argument.sql('duckdb')!r} is a {kind}",
                    "type mismatch",
                )
    condition = select.args["where"].this if select.args.get("where") else None
    if condition is not None:
        validate_expression(condition, context="metric")
    group_by = None
    if select.args.get("group"):
        group = select.args["group"]
        keys = group.expressions
        if (
            len(keys) != 1
            or not isinstance(keys[0], exp.Column)
            or keys[0].table
            or any(value for arg, value in group.args.items() if arg != "expressions")
        ):
            raise _refuse("GROUP BY takes exactly one property or column name", "group by")
        column = keys[0]
        validate_expression(column, context="metric")  # the name rules of the grammar
        name = str(column.this.this)
        group_by = (
            name.lower() if not column.this.quoted and name.lower() in RESERVED_COLUMNS else name
        )
    metric = ParsedMetric(
        sql=sql, aggregate=aggregate, argument=argument, condition=condition, group_by=group_by
    )
    # Translate once now, so that a metric too large to translate is refused when it is
    # created rather than at every later commit that materializes it.
    metric.value()
    metric.where()
    return metric


def _aggregate(node: exp.Expression) -> tuple[Aggregate, exp.Expression | None]:
    if isinstance(node, exp.Count):
        inner = node.this
        if isinstance(inner, exp.Star):
            return Aggregate.COUNT, None
        if isinstance(inner, exp.Distinct):
            if len(inner.expressions) != 1:
                raise _refuse("count(DISTINCT ...) takes exactly one expression", "distinct")
            return Aggregate.COUNT_DISTINCT, inner.expressions[0]
        if inner is None:
            raise _refuse("count() needs * or an expression", "count")
        return Aggregate.COUNT, inner
    for node_type, aggregate in _NUMERIC.items():
        if type(node) is node_type:
            if isinstance(node.this, exp.Distinct):
                raise _refuse(f"{aggregate.value}(DISTINCT ...) is not supported", "distinct")
            return aggregate, node.this
    raise _refuse(
        f"a metric selects one of count(*), count(x), count(DISTINCT x), sum, min, max, avg; "
        f"got {node.sql('duckdb')!r}",
        "aggregate",
    )
