"""Golden renders of the canonical statements (``sql/``); ``pytest --update-golden`` rewrites
them after an intended change, and the diff shows in review."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from engine import queries, usage
from engine.metrics import parse_metric
from engine.models import Metric
from engine.schema import OPTIONS, STORED_EVENTS, TABLES
from engine.storage import _option_ddl, _partition_ddl, _table_ddl, render

SQL = Path(__file__).resolve().parents[1] / "sql"

START = datetime(2026, 11, 1)
END = datetime(2026, 11, 2)


def _one_day(table: str | None) -> exp.Expr:
    """A key index's answer: the stored rows of the keys in question lie on one day."""
    timestamp = exp.column("timestamp", table=table, quoted=True)
    return exp.and_(timestamp >= exp.convert(START), timestamp < exp.convert(END))


def _pretty(tree: exp.Expression) -> str:
    return tree.sql(dialect="duckdb", pretty=True) + ";\n"


def _metric(sql: str, metric_id: str = "m_1") -> usage._Registered:
    metric = Metric(
        id=metric_id,
        name="m",
        sql=sql,
        description=None,
        metadata={},
        status="active",
        created_at=START,
    )
    return usage._Registered(metric, parse_metric(sql))


_PROMOTED = usage._Promoted("promoted_rows", START, END, ("ext:acme", "id:cus_1"))

TOKENS = "SELECT sum(tokens) FROM events WHERE event_name = 'completion'"
MODELS = "SELECT count(DISTINCT model) FROM events GROUP BY region"

CANONICAL: dict[str, Callable[[], exp.Expr]] = {
    "usage_cells_sum": lambda: usage._cells(_metric(TOKENS), "unit_events"),
    "usage_distinct_values_grouped": lambda: usage._distinct_values(_metric(MODELS), "unit_events"),
    "usage_slice_with_property_terms": lambda: usage._with_property_terms(
        [_metric(TOKENS), _metric(MODELS, "m_2")], exp.select("*").from_("slice_rows")
    )[0],
    "usage_cells_sum_over_property_terms": lambda: usage._cells(
        _metric(TOKENS),
        "slice_events",
        usage._with_property_terms([_metric(TOKENS)], queries.effective_events())[1]["m_1"],
    ),
    "usage_fold_met_cells": lambda: queries.bind(usage._MET_CELLS, first=START, last=END),
    "usage_fold_folded_cells": lambda: queries.bind(usage._FOLDED_CELLS),
    "usage_fold_delete_met_cells": lambda: queries.bind(
        usage._DELETE_MET_CELLS, first=START, last=END
    ),
    "usage_fold_new_distinct_values": lambda: queries.bind(
        usage._NEW_DISTINCT_VALUES, first=START, last=END
    ),
    "usage_query_day_one_customer": lambda: usage._usage_query(
        _metric(TOKENS),
        exp.to_table("cached_cells"),
        "day",
        by_external_customer_id=True,
        customers=exp.to_table("cached_customers"),
    ),
    "usage_touched_by_backfill": lambda: queries.bind(
        usage._TOUCHED_BY_BACKFILL,
        backfill_id="bf_1",
        start=START,
        end=END,
        ctes={
            "promoted": queries.bind(usage._PROMOTED_BY_CLOSE, close_version=7, backfill_id="bf_1")
        },
    ),
    "usage_units_a_scoped_replace_fills": lambda: (
        exp.select("*").from_("affected_units").where(_PROMOTED.holds_only_its_rows())
    ),
    "usage_rows_promoted_in_replaced_units": lambda: _PROMOTED.rows(units="replaced_units"),
    "effective_events_in_units_as_of": lambda: queries.effective_events(
        timeframe_start=START, timeframe_end=END, units="affected_units", as_of_version=7
    ),
    "effective_events_in_units_of_few_customers": lambda: queries.effective_events(
        timeframe_start=START,
        timeframe_end=END,
        units="affected_units",
        unit_customers=["ext:acme", "id:cus_1"],
    ),
    "effective_events_in_units_with_reflected_listed": lambda: queries.effective_events(
        timeframe_start=START,
        timeframe_end=END,
        units="affected_units",
        reflected_ids=["bf_1", "bf_2"],
    ),
    "supersessions_of_a_close": lambda: queries.supersession_rows(
        newer=exp.select("idempotency_key").from_("staged"),
        by_version=7,
        by_backfill_id="bf_1",
        stored_restriction=_one_day("s"),
    ),
    "effective_events": lambda: queries.effective_events(),
    "effective_events_one_customer_one_day": lambda: queries.effective_events(
        timeframe_start=START, timeframe_end=END, external_customer_id="acme"
    ),
    "all_events": queries.all_events,
    "close_deprecations_scoped": lambda: queries.deprecation_rows(
        backfill_id="bf_1",
        source=queries.table_ref(STORED_EVENTS),
        timeframe_start=START,
        timeframe_end=END,
        customer_id="cus_1",
        external_customer_id="acme",
        condition=sqlglot.parse_one("json_extract_string(properties, '$.model') = 'gpt-4'"),
        before_version=42,
    ),
    "close_deprecations_account_wide": lambda: queries.deprecation_rows(
        backfill_id="bf_2",
        source=queries.table_ref(STORED_EVENTS),
        timeframe_start=START,
        timeframe_end=END,
        customer_id=None,
        external_customer_id=None,
        condition=None,
        before_version=42,
    ),
    "ingest_problems_live": lambda: queries.ingest_problems(
        live=True, oldest=START, newest=END, grace="12 h", tolerance="5 min"
    ),
    "ingest_first_copies_live": lambda: queries.first_copies(
        backfill_id=None, all_keys_distinct=True, stored_restriction=_one_day(None)
    ),
    "ingest_first_copies_backfill": lambda: queries.first_copies(
        backfill_id="bf_1", all_keys_distinct=False
    ),
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_canonical_query_matches_golden(name: str, update_golden: bool) -> None:
    rendered = _pretty(CANONICAL[name]())
    path = SQL / "golden" / f"{name}.sql"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"{path} is missing; run pytest --update-golden"
    assert rendered == path.read_text(), f"{path.name} drifted; run pytest --update-golden"


def test_ddl_file_matches_schema(update_golden: bool) -> None:
    statements = [render(_option_ddl(name, value)) + ";\n" for name, value in OPTIONS]
    for table in TABLES:
        statements.append(_pretty(_table_ddl(table)))
        if table.partitioned_by:
            statements.append(render(_partition_ddl(table)) + ";\n")
    rendered = "-- Tables of a store (rendered from engine/schema.py; do not edit by hand).\n\n"
    rendered += "\n".join(statements)
    path = SQL / "ddl.sql"
    if update_golden:
        path.write_text(rendered)
    assert rendered == path.read_text(), "sql/ddl.sql drifted; run pytest --update-golden"


def test_bind_refuses_unbound_placeholders() -> None:
    with pytest.raises(KeyError, match="missing"):
        queries.bind("SELECT * FROM t WHERE a = :missing")


def test_bind_quotes_values_as_literals() -> None:
    tree = queries.bind("SELECT * FROM t WHERE k = :key", key="x' OR '1'='1")
    assert tree.sql(dialect="duckdb") == "SELECT * FROM t WHERE k = 'x'' OR ''1''=''1'"
