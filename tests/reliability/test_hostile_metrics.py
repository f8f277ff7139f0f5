"""Hostile metric SQL (issue 7, item 3): injection attempts, statements other than one SELECT,
comments, deep nesting, huge literals and unicode against ``engine.metrics.parse_metric``.

The promises and the oracle are those of ``test_hostile_filters``: only a 4xx ``EngineError``
ever escapes; an accepted metric's per-event value, group and condition, read back by DuckDB's
own parser, contain only allowlisted functions and expression classes and run without touching
anything but ``events``; every answer is bounded in time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_filters import (
    HOSTILE,
    NESTING_BOUND,
    TIME_BOUND,
    assert_only_allowed,
    events_connection,
    nested_simple_case,
)

import engine
from engine.errors import EngineError
from engine.filters import MAX_NESTING_DEPTH, MAX_TRANSLATED_SIZE
from engine.metrics import MAX_METRIC_LENGTH, parse_metric

COUNTS: Counter[str] = Counter()
NESTING_FIGURES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def connection() -> Iterator[duckdb.DuckDBPyConnection]:
    con = events_connection()
    yield con
    assert con.execute("FROM canary").fetchall() == [(42,)]


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the figures (inputs tried, refusals, nesting limits) past output capture."""
    yield
    tried = sum(count for name, count in COUNTS.items() if ":" not in name)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nhostile metrics: {tried} inputs tried {json.dumps(dict(COUNTS))}")
        print(f"hostile metrics, nesting: {json.dumps(NESTING_FIGURES)}")


def check_metric(connection: duckdb.DuckDBPyConnection, sql: str, counter: str) -> str:
    """Parse ``sql``; return "accepted" or the refused construct. Fails the test on any other
    exception, a non-4xx error, an allowlist breach or a slow answer."""
    COUNTS[counter] += 1
    started = time.perf_counter()
    try:
        metric = parse_metric(sql)
    except EngineError as refused:
        assert time.perf_counter() - started < TIME_BOUND, sql[:200]
        assert 400 <= refused.status < 500, refused
        assert refused.detail and isinstance(refused.detail, str)
        COUNTS[counter + ":refused"] += 1
        return str(refused.fields.get("construct", "?"))
    parts = {"value": metric.value(), "group": metric.group_value(), "where": metric.where()}
    assert time.perf_counter() - started < TIME_BOUND, sql[:200]
    assert_only_allowed(connection, parts)
    COUNTS[counter + ":accepted"] += 1
    return "accepted"


# -- hand-written attacks ------------------------------------------------------------------------

ATTACKS = {
    # more than one statement, or not a SELECT
    "SELECT sum(tokens) FROM events; DROP TABLE events": "multiple statements",
    "SELECT count(*) FROM events;": "multiple statements",
    "DROP TABLE events": "statement",
    "DELETE FROM events": "statement",
    "UPDATE events SET tokens = 1": "statement",
    "INSERT INTO events VALUES (1)": "statement",
    "COPY events TO '/tmp/out.csv'": "statement",
    "COPY (SELECT * FROM events) TO '/tmp/out.csv'": "statement",
    "ATTACH '/tmp/x.db' AS x": "statement",
    "DETACH lake": "statement",
    "PRAGMA version": "statement",
    "INSTALL httpfs": "statement",
    "LOAD httpfs": "statement",
    "SET threads = 1": "statement",
    "CALL pragma_version()": "statement",
    "EXPLAIN SELECT count(*) FROM events": "statement",
    "SELECT count(*) FROM events UNION ALL SELECT 1": "statement",
    "WITH events AS (SELECT 1) SELECT count(*) FROM events": "with",
    # other sources
    "SELECT count(*) FROM read_csv('/etc/passwd')": "from",
    "SELECT count(*) FROM 'data/events.csv'": "from",
    "SELECT count(*) FROM lake.main.stored_events": "from",
    "SELECT count(*) FROM (SELECT 1) AS events": "from",
    "SELECT count(*) FROM events, read_csv('/etc/passwd')": "joins",
    "SELECT count(*) FROM events JOIN customers ON true": "joins",
    "SELECT count(*)": "from",
    # ignored modifiers would change the meaning silently: refused (fixed here)
    "SELECT count(*) FROM events AS e": "from",
    "SELECT count(*) FROM events TABLESAMPLE 10": "from",
    "SELECT count(*) FROM events AT (VERSION => 1)": "from",
    "SELECT count(*) FROM ONLY events": "from",
    "SELECT count(*) FROM events WITH (NOLOCK)": "from",
    "SELECT count(*) FROM events GROUP BY region WITH ROLLUP": "group by",
    'SELECT count(*) FROM events GROUP BY ""': "name",
    'SELECT count(*) FROM events GROUP BY "re\x01gion"': "character",
    'SELECT count(*) FROM events GROUP BY "re\u200bgion"': "character",
    # comments (fixed here: only comments inside the condition were refused before)
    "SELECT sum(tokens) FROM events /* ; DROP TABLE events */": "comment",
    "SELECT sum(tokens) FROM events -- ; DROP TABLE events": "comment",
    "/* hidden */ SELECT sum(tokens) FROM events": "comment",
    "SELECT count(*) /* c */ FROM events": "comment",
    # expressions outside the grammar
    "SELECT sum(length(read_text('/etc/passwd'))) FROM events": "function",
    "SELECT count(*) FROM events WHERE getenv('HOME') = 'x'": "function",
    "SELECT count(*) FROM events WHERE current_setting('threads') = '1'": "function",
    "SELECT count(*) FROM events WHERE tokens IN (SELECT 1)": "subquery",
    "SELECT sum((SELECT max(tokens) FROM events)) FROM events": "subquery",
    "SELECT count(*) FROM events WHERE EXISTS (SELECT 1)": "subquery",
    "SELECT string_agg(model) FROM events": "aggregate",
    "SELECT count(*) OVER () FROM events": "aggregate",
    "SELECT count(*) FILTER (WHERE tokens > 1) FROM events": "aggregate",
    "SELECT sum(tokens) FROM events WHERE tokens > $1": "placeholder",
    "SELECT sum(tokens) FROM events ORDER BY 1": "order",
    "SELECT sum(tokens) FROM events LIMIT 1": "limit",
    "SELECT sum(tokens) FROM events HAVING sum(tokens) > 1": "having",
    "SELECT sum(tokens) FROM events QUALIFY 1": "qualify",
    "SELECT sum(tokens::INTERVAL) FROM events": "cast",
    "SELECT sum(1e999) FROM events": "number",
    # characters
    "SELECT count(*) FROM events\x00": "character",
    "SELECT count(*) FROM events WHERE model = 'a\x00'": "character",
    "SELECT\u00a0count(*) FROM events": "character",
    "SELECT count(*) FROM events WHERE model = '\u202e'": "character",
    "\ufeffSELECT count(*) FROM events": "character",
    # accepted, harmless
    'SELECT count(*) AS "n; DROP TABLE events" FROM events': "accepted",
    'SELECT count(*) FROM "events"': "accepted",
    "SELECT sum(tokens) FROM events WHERE model = 'x''; DROP TABLE events; --'": "accepted",
    "FROM events SELECT count(*)": "accepted",
}


@pytest.mark.parametrize(("sql", "construct"), ATTACKS.items(), ids=list(ATTACKS))
def test_attacks_are_refused_by_name(
    connection: duckdb.DuckDBPyConnection, sql: str, construct: str
) -> None:
    assert check_metric(connection, sql, "attacks") == construct


def test_refusal_leaves_the_store_unchanged(store: engine.Store) -> None:
    """Through the Python API: a refused metric writes nothing."""
    store.metrics.create(name="ok", sql="SELECT count(*) FROM events")
    before = (store.metrics.list(), store.sql("SELECT count(*) FROM lake.main.metrics").fetchall())
    for sql in ATTACKS:
        if ATTACKS[sql] == "accepted":
            continue
        with pytest.raises(EngineError) as refused:
            store.metrics.create(name="hostile", sql=sql)
        assert refused.value.status == 400
    after = (store.metrics.list(), store.sql("SELECT count(*) FROM lake.main.metrics").fetchall())
    assert after == before


# -- size and nesting ------------------------------------------------------------------------------

SHAPES = {
    "parentheses in sum()": lambda n: (
        "SELECT sum(" + "(" * n + "tokens" + ")" * n + ") FROM events"
    ),
    "abs() in sum()": lambda n: "SELECT sum(" + "abs(" * n + "tokens" + ")" * n + ") FROM events",
    "NOT in WHERE": lambda n: "SELECT count(*) FROM events WHERE " + "NOT " * n + "flag",
    "parentheses in WHERE": lambda n: (
        "SELECT count(*) FROM events WHERE " + "(" * n + "tokens > 1" + ")" * n
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_nesting_is_bounded_and_refused_fast(
    connection: duckdb.DuckDBPyConnection, shape: str
) -> None:
    """Before the fix, metric SQL was parsed with no depth scan: it was refused only when
    Python ran out of stack (45 levels of parentheses at the default limit, fewer when called
    from deep in a server's stack), so the limit depended on the caller. Now: the filter's 64
    levels, checked on the tokens before the recursive parser runs."""
    build = SHAPES[shape]
    outcomes = [check_metric(connection, build(n), "nesting") for n in range(1, 80)]
    deepest = outcomes.count("accepted")
    assert outcomes[:deepest] == ["accepted"] * deepest, outcomes
    assert set(outcomes[deepest:]) == {"nesting"}, outcomes
    assert 40 <= deepest <= MAX_NESTING_DEPTH, deepest
    widest = max(n for n in range(1, MAX_METRIC_LENGTH) if len(build(n)) <= MAX_METRIC_LENGTH)
    started = time.perf_counter()
    assert check_metric(connection, build(widest), "nesting") == "nesting"
    refused_in = time.perf_counter() - started
    assert refused_in < NESTING_BOUND, refused_in
    NESTING_FIGURES[shape] = {"deepest_accepted": deepest, "max_levels_tried": widest,
                              "refused_in_ms": round(refused_in * 1000, 1)}  # fmt: skip


@pytest.mark.parametrize(
    "template",
    [
        "SELECT count(*) FROM events WHERE {}",
        "SELECT count(DISTINCT CASE WHEN {} THEN model END) FROM events",
        "SELECT sum(CASE WHEN {} THEN tokens ELSE 0 END) FROM events",
    ],
)
def test_exponential_translation_is_refused_at_creation(
    connection: duckdb.DuckDBPyConnection, template: str
) -> None:
    assert check_metric(connection, template.format(nested_simple_case(3)), "complexity") == (
        "accepted"
    )
    started = time.perf_counter()
    with pytest.raises(EngineError, match=f"exceeds {MAX_TRANSLATED_SIZE} nodes"):
        parse_metric(template.format(nested_simple_case(40)))
    assert time.perf_counter() - started < TIME_BOUND
    COUNTS["complexity"] += 1


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT count(*) FROM events WHERE model = '" + "x" * 9_900 + "'", "accepted"),
        ("SELECT count(*) FROM events WHERE model = '" + "x" * 10_000 + "'", "length"),
        ("SELECT count(*) FROM events WHERE model = '" + "x" * 1_000_000 + "'", "length"),
        ("SELECT sum(" + "9" * 400 + ") FROM events", "number"),
        ("SELECT sum(tokens * " + "1" * 300 + ") FROM events", "accepted"),
        ('SELECT count(*) FROM events GROUP BY "' + "g" * 9_000 + '"', "accepted"),
        (
            "SELECT count(*) FROM events WHERE model IN (" + ",".join(["'a'"] * 2000) + ")",
            "accepted",
        ),
        ("SELECT sum(tokens FROM events", "syntax"),
        ("SELECT count(*) FROM events WHERE model = 'open", "syntax"),
        ("", "empty"),
        (" \n\t", "empty"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_huge_and_malformed(
    connection: duckdb.DuckDBPyConnection, sql: str, construct: str
) -> None:
    started = time.perf_counter()
    assert check_metric(connection, sql, "size") == construct
    assert time.perf_counter() - started < TIME_BOUND


def test_non_string_sql_is_refused() -> None:
    for value in (None, 1, b"SELECT count(*) FROM events", ["SELECT 1"]):
        with pytest.raises(EngineError):
            parse_metric(value)  # type: ignore[arg-type]
        COUNTS["types"] += 1


# -- generated attacks -------------------------------------------------------------------------

AGGREGATES = [
    "count(*)", "count({})", "count(DISTINCT {})", "sum({})", "min({})", "max({})", "avg({})",
    "string_agg({})", "{}", "count(*) OVER ()", "sum({}) FILTER (WHERE {})",
]  # fmt: skip
EXPRESSIONS = ["tokens", "tokens * 2 + 1", "CASE WHEN flag THEN tokens ELSE 0 END", "lower(model)",
               "coalesce(tokens, 0)", "CAST(tokens AS INTEGER)", "abs(-tokens)", "*"]  # fmt: skip
CONDITIONS = ["", "WHERE event_name = 'api_call'", "WHERE tokens > 10 AND model LIKE 'gpt%'",
              "WHERE timestamp >= '2024-05-01'"]  # fmt: skip
GROUPS = ["", "GROUP BY model", "GROUP BY event_name", 'GROUP BY "a b"']
SOURCES = ["events", "EVENTS", '"events"']

slot = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(EXPRESSIONS))


def run_counted(counter: str, examples: int, test: Any) -> None:
    before = COUNTS[counter]
    settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])(
        test
    )()
    assert COUNTS[counter] - before >= 0.9 * examples, (counter, COUNTS[counter] - before)


def test_generated_metrics(connection: duckdb.DuckDBPyConnection) -> None:
    """A metric assembled from slots, any of which may hold a hostile fragment."""

    @given(
        aggregate=st.sampled_from(AGGREGATES),
        argument=slot,
        source=st.one_of(st.sampled_from(SOURCES), st.sampled_from(HOSTILE)),
        condition=st.one_of(st.sampled_from(CONDITIONS), slot.map(lambda s: f"WHERE {s}")),
        group=st.one_of(st.sampled_from(GROUPS), slot.map(lambda s: f"GROUP BY {s}")),
        tail=st.sampled_from(["", ";", "; DROP TABLE events", " -- x", " LIMIT 1", *HOSTILE[:12]]),
    )
    def generated(
        aggregate: str, argument: str, source: str, condition: str, group: str, tail: str
    ) -> None:
        projection = aggregate.format(argument, argument)
        check_metric(
            connection, f"SELECT {projection} FROM {source} {condition} {group}{tail}", "generated"
        )

    run_counted("generated", 600, generated)
    assert COUNTS["generated:accepted"] > 0 and COUNTS["generated:refused"] > 0


def test_generated_conditions(connection: duckdb.DuckDBPyConnection) -> None:
    """Arbitrary unicode text as the condition of a valid metric, and as a whole metric."""

    @given(text=st.text(max_size=80))
    def arbitrary(text: str) -> None:
        check_metric(connection, f"SELECT sum(tokens) FROM events WHERE {text}", "unicode text")
        check_metric(connection, text, "unicode text")

    run_counted("unicode text", 250, arbitrary)
