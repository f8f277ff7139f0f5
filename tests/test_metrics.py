"""Metric SQL: what parses, what is refused (naming the construct), and what it computes."""

from __future__ import annotations

import duckdb
import pytest
from sqlglot import exp

from engine.errors import ConstraintViolation
from engine.metrics import Aggregate, parse_metric
from engine.storage import render


@pytest.mark.parametrize(
    ("sql", "aggregate", "group_by"),
    [
        ("SELECT count(*) FROM events", Aggregate.COUNT, None),
        ("select COUNT(*) from EVENTS", Aggregate.COUNT, None),
        ("SELECT count(model) FROM events", Aggregate.COUNT, None),
        ("SELECT count(DISTINCT model) FROM events", Aggregate.COUNT_DISTINCT, None),
        ("SELECT sum(tokens) FROM events WHERE event_name = 'completion'", Aggregate.SUM, None),
        ("SELECT sum(tokens * 2 + 1) FROM events", Aggregate.SUM, None),
        ("SELECT min(tokens) FROM events", Aggregate.MIN, None),
        ("SELECT max(tokens) FROM events", Aggregate.MAX, None),
        ("SELECT avg(CASE WHEN cached THEN 0 ELSE tokens END) FROM events", Aggregate.AVG, None),
        ("SELECT count(*) AS n FROM events GROUP BY region", Aggregate.COUNT, "region"),
        ("SELECT count(*) FROM events GROUP BY event_name", Aggregate.COUNT, "event_name"),
    ],
)
def test_allowed_metrics_parse(sql: str, aggregate: Aggregate, group_by: str | None) -> None:
    metric = parse_metric(sql)
    assert metric.aggregate is aggregate
    assert metric.group_by == group_by


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("", "empty"),
        ("SELECT sum(tokens) FROM events; DROP TABLE events", "multiple statements"),
        ("DELETE FROM events", "statement"),
        ("SELECT sum(tokens) FROM other", "from"),
        ("SELECT sum(tokens) FROM lake.main.stored_events", "from"),
        ("SELECT tokens FROM events", "aggregate"),
        ("SELECT sum(tokens), count(*) FROM events", "projection"),
        ("SELECT sum(tokens) FROM events ORDER BY 1", "order"),
        ("SELECT sum(tokens) FROM events LIMIT 1", "limit"),
        ("SELECT sum(tokens) FROM events GROUP BY region, model", "group by"),
        ("SELECT sum(lower(model)) FROM events", "type mismatch"),
        ("SELECT sum(DISTINCT tokens) FROM events", "distinct"),
        ("SELECT sum(tokens) FROM events WHERE model IN (SELECT 1)", None),
        ("SELECT sum(read_csv('/etc/passwd')) FROM events", None),
        ("SELECT string_agg(model) FROM events", "aggregate"),
    ],
)
def test_refused_metrics_name_the_construct(sql: str, construct: str | None) -> None:
    with pytest.raises(ConstraintViolation) as refused:
        parse_metric(sql)
    assert refused.value.status == 400
    if construct is not None:
        assert refused.value.fields["construct"] == construct


def _evaluate(sql: str, rows: list[str]) -> list[object]:
    """Per row, the value the metric's aggregate reads (NULL rows are not counted)."""
    metric = parse_metric(sql)
    con = duckdb.connect()
    con.execute("CREATE TABLE events (event_name VARCHAR, properties JSON)")
    con.executemany("INSERT INTO events VALUES ('completion', ?)", [[r] for r in rows])
    query = exp.select(metric.value()).from_("events").where(metric.where())
    return [row[0] for row in con.execute(render(query)).fetchall()]


def test_a_number_and_a_string_are_distinct_values() -> None:
    values = _evaluate(
        "SELECT count(DISTINCT model) FROM events", ['{"model": 1}', '{"model": "1"}']
    )
    assert len(set(values)) == 2


def test_sum_reads_numbers_only() -> None:
    values = _evaluate(
        "SELECT sum(tokens) FROM events", ['{"tokens": 5}', '{"tokens": "5"}', '{"other": 1}']
    )
    assert values == [5.0, None, None]
