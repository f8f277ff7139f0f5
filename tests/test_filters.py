"""The filter grammar (DESIGN section 4): what parses, what is refused, and what matches.

Expected matches are computed here in Python from the documented semantics (a property reads
as the type its context needs, NULL otherwise; NULL never matches), never from the SQL.
"""

from __future__ import annotations

import doctest
import functools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ConstraintViolation
from engine.filters import (
    MAX_FILTER_LENGTH,
    Filter,
    ValueType,
    infer_type,
    parse_filter,
    properties_referenced,
    property_path,
    translate,
    translate_filter,
    validate_expression,
)

GOLDEN = Path(__file__).parent / "golden" / "filters"

# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ev:
    key: str
    event_name: str
    timestamp: datetime
    customer_id: str | None
    external_customer_id: str | None
    props: dict[str, Any]


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


EVENTS = [
    Ev("e01", "api_call", _ts("2024-01-01 00:00:00"), "c1", None,
       {"tokens": 10, "region": "eu", "model": "GPT-4", "is_cached": True, "weird name": "x",
        "latency": 1.5, "other_tokens": 10}),
    Ev("e02", "api_call", _ts("2024-01-15 12:00:00"), "c2", None,
       {"tokens": "10", "region": "us", "model": "claude-3", "is_cached": False,
        "other_tokens": "10"}),
    Ev("e03", "tokens_used", _ts("2024-02-01 00:00:00"), None, "ext-1",
       {"tokens": 3, "region": 1, "is_cached": "true", "a.b": 1}),
    Ev("e04", "api_call", _ts("2024-02-10 08:30:00"), "c1", None,
       {"tokens": 250.5, "region": "eu", "model": "gpt-3.5-turbo", 'q"uote': "y", "slash/key": 2,
        "tilde~key": 3, "*": 4}),
    Ev("e05", "api_call", _ts("2024-03-01 00:00:00"), "c3", None, {}),
    Ev("e06", "api_call", _ts("2024-03-02 00:00:00"), "c3", None,
       {"tokens": -7, "region": "EU", "model": "gpt%", "is_cached": True, "other_tokens": -7,
        "other_region": "EU"}),
    Ev("e07", "batch", _ts("2024-03-03 00:00:00"), "c2", None,
       {"tokens": 0, "region": "ap", "model": "", "is_cached": False, "flag": 1}),
    Ev("e08", "api_call", _ts("2024-03-04 23:59:59.999999"), "c1", None,
       {"tokens": True, "region": "us", "model": "Gpt-4o", "other_tokens": 5,
        "other_region": "us"}),
    Ev("e09", "api_call", _ts("2024-04-01 00:00:00"), None, "ext-2",
       {"tokens": 5, "other_tokens": 5, "region": "eu", "other_region": "eu", "é": "ü",
        "UPPER": "u"}),
    Ev("e10", "api_call", _ts("2024-04-02 00:00:00"), "c4", None,
       {"tokens": 2, "other_tokens": "2", "region": "日本", "model": "it's", "is_cached": False,
        "other_region": 1}),
    Ev("e11", "api_call", _ts("2024-04-03 00:00:00"), "c4", None,
       {"tokens": 1e3, "other_tokens": 1000, "region": "us", "model": "o'neil\\path",
        "is_cached": True}),
    Ev("e12", "tokens_used", _ts("2024-04-04 00:00:00"), "c5", None,
       {"tokens": 7, "region": "eu", "model": "a_b", "other_tokens": 3.5, "latency": -0.25}),
]  # fmt: skip

KEYS = [e.key for e in EVENTS]


@functools.cache
def events_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the events above, shared by every test of this module."""
    connection = duckdb.connect()
    connection.execute(
        'CREATE TABLE events (idempotency_key VARCHAR, event_name VARCHAR, "timestamp" TIMESTAMP,'
        " customer_id VARCHAR, external_customer_id VARCHAR, properties JSON)"
    )
    connection.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
        [
            (e.key, e.event_name, e.timestamp, e.customer_id, e.external_customer_id,
             json.dumps(e.props))
            for e in EVENTS
        ],
    )  # fmt: skip
    return connection


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    return events_connection()


def selected(con: duckdb.DuckDBPyConnection, f: Filter, *, table: str | None = None) -> list[str]:
    """Keys of the events the filter matches, run by DuckDB."""
    condition = translate_filter(f, table=table)
    query = (
        sqlglot.select(sqlglot.column("idempotency_key", table=table))
        .from_(sqlglot.table("events").as_(table) if table else "events")
        .where(condition)
        .order_by(sqlglot.column("idempotency_key", table=table))
    )
    return [row[0] for row in con.execute(query.sql(dialect="duckdb")).fetchall()]


# -- the reference semantics, in Python ---------------------------------------------------------


def num(e: Ev, name: str) -> float | None:
    value = e.props.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def text(e: Ev, name: str) -> str | None:
    value = e.props.get(name)
    return value if isinstance(value, str) else None


def flag(e: Ev, name: str) -> bool | None:
    value = e.props.get(name)
    return value if isinstance(value, bool) else None


def raw(e: Ev, name: str) -> str | None:
    """The JSON text of a value as json_extract_string gives it (for CAST)."""
    value = e.props.get(name)
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def same_kind(a: Any, b: Any) -> bool:
    def kind(v: Any) -> str | None:
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int | float):
            return "number"
        if isinstance(v, str):
            return "string"
        return None

    return kind(a) is not None and kind(a) == kind(b)


def like(value: str | None, pattern: str, escape: str | None = None) -> bool:
    if value is None:
        return False
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if escape is not None and char == escape:
            out += re.escape(pattern[i + 1])
            i += 2
            continue
        out += ".*" if char == "%" else "." if char == "_" else re.escape(char)
        i += 1
    return re.fullmatch(out, value, flags=re.DOTALL) is not None


def gt(a: float | None, b: float) -> bool:
    return a is not None and a > b


Pred = Callable[[Ev], bool]

# (filter, predicate over an event: True when it must match)
ALLOWED: list[tuple[str, Pred]] = [
    # comparisons, numeric
    ("tokens > 5", lambda e: gt(num(e, "tokens"), 5)),
    ("tokens = 10", lambda e: num(e, "tokens") == 10),
    ("tokens == 10", lambda e: num(e, "tokens") == 10),
    ("tokens != 10", lambda e: num(e, "tokens") not in (None, 10)),
    ("tokens <> 3", lambda e: num(e, "tokens") not in (None, 3)),
    ("tokens < 0", lambda e: (num(e, "tokens") or 0) < 0),
    ("tokens <= 0", lambda e: num(e, "tokens") is not None and num(e, "tokens") <= 0),  # type: ignore[operator]
    ("tokens >= 250.5", lambda e: gt(num(e, "tokens"), 250.4)),
    ("5 < tokens", lambda e: gt(num(e, "tokens"), 5)),
    ("tokens = 1e3", lambda e: num(e, "tokens") == 1000),
    ("tokens = 250.50", lambda e: num(e, "tokens") == 250.5),
    ("latency = -.25", lambda e: num(e, "latency") == -0.25),
    ("tokens > -8 AND tokens < -6", lambda e: num(e, "tokens") == -7),
    # comparisons, strings
    ("region = 'eu'", lambda e: text(e, "region") == "eu"),
    ("region != 'eu'", lambda e: text(e, "region") not in (None, "eu")),
    ("region > 'f'", lambda e: (text(e, "region") or "") > "f"),
    ("region = '日本'", lambda e: text(e, "region") == "日本"),
    ("model = 'it''s'", lambda e: text(e, "model") == "it's"),
    ("model = 'o''neil\\path'", lambda e: text(e, "model") == "o'neil\\path"),
    ("model = ''", lambda e: text(e, "model") == ""),
    # booleans
    ("is_cached", lambda e: flag(e, "is_cached") is True),
    ("NOT is_cached", lambda e: flag(e, "is_cached") is False),
    ("is_cached = true", lambda e: flag(e, "is_cached") is True),
    ("is_cached = FALSE", lambda e: flag(e, "is_cached") is False),
    ("is_cached != true", lambda e: flag(e, "is_cached") is False),
    ("true", lambda e: True),
    ("false", lambda e: False),
    ("NULL", lambda e: False),
    ("1 = 1", lambda e: True),
    # logic and parentheses
    (
        "(region = 'eu' OR region = 'us') AND tokens > 5",
        lambda e: text(e, "region") in ("eu", "us") and gt(num(e, "tokens"), 5),
    ),
    ("NOT (tokens > 5)", lambda e: num(e, "tokens") is not None and not gt(num(e, "tokens"), 5)),
    ("NOT NOT is_cached", lambda e: flag(e, "is_cached") is True),
    (
        "tokens > 5 OR is_cached",
        lambda e: gt(num(e, "tokens"), 5) or flag(e, "is_cached") is True,
    ),
    # IN, BETWEEN
    ("region IN ('eu', 'us')", lambda e: text(e, "region") in ("eu", "us")),
    ("region NOT IN ('eu', 'us')", lambda e: text(e, "region") not in (None, "eu", "us")),
    ("tokens IN (3, 5, 7)", lambda e: num(e, "tokens") in (3, 5, 7)),
    ("tokens IN (1 + 2, 10 / 2)", lambda e: num(e, "tokens") in (3, 5)),
    (
        "tokens BETWEEN 0 AND 10",
        lambda e: num(e, "tokens") is not None and 0 <= num(e, "tokens") <= 10,  # type: ignore[operator]
    ),
    (
        "tokens NOT BETWEEN 0 AND 10",
        lambda e: num(e, "tokens") is not None and not 0 <= num(e, "tokens") <= 10,  # type: ignore[operator]
    ),
    ("region BETWEEN 'a' AND 'f'", lambda e: "a" <= (text(e, "region") or "") <= "f"),
    # IS NULL: true exactly when the property is absent
    ("model IS NULL", lambda e: "model" not in e.props),
    ("model IS NOT NULL", lambda e: "model" in e.props),
    ("tokens IS NULL", lambda e: "tokens" not in e.props),
    ("(tokens + 1) IS NULL", lambda e: num(e, "tokens") is None),
    ("customer_id IS NULL", lambda e: e.customer_id is None),
    # LIKE
    ("lower(model) LIKE 'gpt%'", lambda e: like((text(e, "model") or "").lower(), "gpt%")),
    ("model LIKE 'gpt%'", lambda e: like(text(e, "model"), "gpt%")),
    (
        "model NOT LIKE '%-%'",
        lambda e: text(e, "model") is not None and "-" not in e.props["model"],
    ),
    ("model LIKE 'a_b'", lambda e: like(text(e, "model"), "a_b")),
    ("model LIKE 'a!_b' ESCAPE '!'", lambda e: text(e, "model") == "a_b"),
    ("model LIKE 'gpt!%' ESCAPE '!'", lambda e: text(e, "model") == "gpt%"),
    # arithmetic
    ("tokens + 1 > 5", lambda e: gt(num(e, "tokens"), 4)),
    ("tokens - 1 >= 9", lambda e: gt(num(e, "tokens"), 9.5)),
    ("tokens * 2 = 20", lambda e: num(e, "tokens") == 10),
    ("tokens / 2 = 5", lambda e: num(e, "tokens") == 10),
    ("tokens / 4 = 0.5", lambda e: num(e, "tokens") == 2),
    (
        "tokens % 3 = 1",
        lambda e: num(e, "tokens") is not None and math.fmod(num(e, "tokens"), 3) == 1,  # type: ignore[arg-type]
    ),
    ("-tokens > 0", lambda e: (num(e, "tokens") or 0) < 0),
    ("- -tokens = 5", lambda e: num(e, "tokens") == 5),
    ("tokens / 0 > 1", lambda e: False),  # dividing by zero is NULL, not inf or NaN
    ("tokens / (tokens - 10) IS NULL", lambda e: num(e, "tokens") in (None, 10)),
    ("tokens % 0 IS NULL", lambda e: True),
    ("2 * 3 + 1 = 7", lambda e: True),
    ("9223372036854775807 + 1 > 0", lambda e: True),  # DOUBLE arithmetic: no overflow
    ("length(model) * 9223372036854775807 > 0", lambda e: bool(text(e, "model"))),
    # COALESCE, CASE
    ("coalesce(tokens, 0) + 1 > 5", lambda e: gt(num(e, "tokens"), 4)),
    ("coalesce(model, 'none') = 'none'", lambda e: text(e, "model") is None),
    ("coalesce(region, 'zz') = 'zz'", lambda e: text(e, "region") is None),
    ("ifnull(is_cached, false) = false", lambda e: flag(e, "is_cached") is not True),
    (
        "CASE WHEN tokens > 100 THEN 'big' WHEN tokens > 5 THEN 'mid' ELSE 'small' END = 'mid'",
        lambda e: num(e, "tokens") is not None and 5 < num(e, "tokens") <= 100,  # type: ignore[operator]
    ),
    (
        "CASE WHEN tokens > 100 THEN 'big' WHEN tokens > 5 THEN 'mid' ELSE 'small' END = 'small'",
        lambda e: not gt(num(e, "tokens"), 5),
    ),
    (
        "CASE region WHEN 'eu' THEN 1 WHEN 'us' THEN 2 ELSE 0 END = 2",
        lambda e: text(e, "region") == "us",
    ),
    (
        "CASE WHEN is_cached THEN tokens END > 5",
        lambda e: bool(flag(e, "is_cached")) and gt(num(e, "tokens"), 5),
    ),
    (
        "CASE tokens WHEN other_tokens THEN 'same' ELSE 'other' END = 'same'",
        lambda e: (
            same_kind(e.props.get("tokens"), e.props.get("other_tokens"))
            and e.props["tokens"] == e.props["other_tokens"]
        ),
    ),
    # CAST reads the value's JSON text
    ("CAST(tokens AS INTEGER) = 10", lambda e: raw(e, "tokens") == "10"),
    ("tokens::varchar = '10'", lambda e: raw(e, "tokens") == "10"),
    ("CAST(tokens AS DOUBLE) > 100", lambda e: gt(num(e, "tokens"), 100)),
    ("TRY_CAST(tokens AS DECIMAL(10, 2)) = 250.5", lambda e: num(e, "tokens") == 250.5),
    ("CAST(is_cached AS BOOLEAN)", lambda e: raw(e, "is_cached") == "true"),
    ("CAST(region AS VARCHAR) = '1'", lambda e: raw(e, "region") == "1"),
    ("CAST(tokens + 1 AS VARCHAR) = '11.0'", lambda e: num(e, "tokens") == 10),
    ("CAST(timestamp AS VARCHAR) LIKE '2024-01-%'", lambda e: e.timestamp.month == 1),
    # functions
    ("length(model) = 5", lambda e: len(text(e, "model") or "123456") == 5),
    ("upper(region) = 'EU'", lambda e: (text(e, "region") or "").upper() == "EU"),
    ("abs(tokens) = 7", lambda e: num(e, "tokens") in (7, -7)),
    ("round(latency) = 2", lambda e: num(e, "latency") == 1.5),
    ("round(tokens, -1) = 250", lambda e: num(e, "tokens") == 250.5),
    ("floor(tokens) = 250", lambda e: num(e, "tokens") == 250.5),
    ("ceil(tokens) = 251", lambda e: num(e, "tokens") == 250.5),
    ("ceiling(latency) = 2", lambda e: num(e, "latency") == 1.5),
    ("lcase(region) = 'eu'", lambda e: (text(e, "region") or "").lower() == "eu"),
    # names that need quoting, and unusual ones
    ("\"weird name\" = 'x'", lambda e: text(e, "weird name") == "x"),
    ('"a.b" = 1', lambda e: num(e, "a.b") == 1),
    ('"q""uote" = \'y\'', lambda e: text(e, 'q"uote') == "y"),
    ('"slash/key" = 2', lambda e: num(e, "slash/key") == 2),
    ('"tilde~key" = 3', lambda e: num(e, "tilde~key") == 3),
    ('"*" = 4', lambda e: num(e, "*") == 4),
    ("é = 'ü'", lambda e: text(e, "é") == "ü"),
    ("UPPER = 'u'", lambda e: text(e, "UPPER") == "u"),
    ('"Timestamp" IS NULL', lambda e: True),  # quoted and not lower case: a property
    # reserved columns
    ("event_name = 'tokens_used'", lambda e: e.event_name == "tokens_used"),
    ("EVENT_NAME = 'batch'", lambda e: e.event_name == "batch"),
    ("\"event_name\" = 'batch'", lambda e: e.event_name == "batch"),
    ("customer_id = 'c1'", lambda e: e.customer_id == "c1"),
    ("external_customer_id = 'ext-1'", lambda e: e.external_customer_id == "ext-1"),
    ("event_name = model", lambda e: False),
    (
        "customer_id IN ('c1', 'c4') AND tokens > 5",
        lambda e: e.customer_id in ("c1", "c4") and gt(num(e, "tokens"), 5),
    ),
    ("timestamp >= '2024-03-01'", lambda e: e.timestamp >= _ts("2024-03-01")),
    ("timestamp < '2024-02-01T00:00:00Z'", lambda e: e.timestamp < _ts("2024-02-01")),
    (
        "timestamp BETWEEN '2024-03-01' AND '2024-03-04 23:59:59.999999'",
        lambda e: _ts("2024-03-01") <= e.timestamp <= _ts("2024-03-04 23:59:59.999999"),
    ),
    ("timestamp = '2024-01-15T13:00:00+01:00'", lambda e: e.key == "e02"),
    ("timestamp IN ('2024-01-01', '2024-03-03')", lambda e: e.key in ("e01", "e07")),
    ("TIMESTAMP > '2024-04-03 00:00:00'", lambda e: e.key == "e12"),
    # property against property: same JSON kind compares, otherwise NULL
    (
        "tokens = other_tokens",
        lambda e: (
            same_kind(e.props.get("tokens"), e.props.get("other_tokens"))
            and e.props["tokens"] == e.props["other_tokens"]
        ),
    ),
    (
        "tokens != other_tokens",
        lambda e: (
            same_kind(e.props.get("tokens"), e.props.get("other_tokens"))
            and e.props["tokens"] != e.props["other_tokens"]
        ),
    ),
    (
        "NOT (tokens = other_tokens)",
        lambda e: (
            same_kind(e.props.get("tokens"), e.props.get("other_tokens"))
            and e.props["tokens"] != e.props["other_tokens"]
        ),
    ),
    (
        "region = other_region",
        lambda e: (
            same_kind(e.props.get("region"), e.props.get("other_region"))
            and e.props["region"] == e.props["other_region"]
        ),
    ),
    (
        "tokens IN (other_tokens, 3)",
        lambda e: num(e, "tokens") is not None and num(e, "tokens") in (num(e, "other_tokens"), 3),
    ),
    (
        "coalesce(tokens, other_tokens) = 5",
        lambda e: (
            (num(e, "tokens") if num(e, "tokens") is not None else num(e, "other_tokens")) == 5
        ),
    ),
    # nesting and size within the limits
    ("(" * 60 + "tokens" + ")" * 60 + " = 10", lambda e: num(e, "tokens") == 10),
    (" OR ".join(f"tokens = {i}" for i in range(600)), lambda e: num(e, "tokens") in range(600)),
]


@pytest.mark.parametrize("table", [None, "e"])
@pytest.mark.parametrize(("text_", "pred"), ALLOWED, ids=[t[:60] for t, _ in ALLOWED])
def test_allowed_filter_selects_expected_events(
    con: duckdb.DuckDBPyConnection, text_: str, pred: Pred, table: str | None
) -> None:
    f = parse_filter(text_)
    assert f.text == text_
    expected = [e.key for e in EVENTS if pred(e)]
    assert selected(con, f, table=table) == expected


# -- the typing rules the design names -----------------------------------------------------------


def test_numbers_compare_numerically_and_strings_as_strings(con: duckdb.DuckDBPyConnection) -> None:
    # tokens is 10 in e01, "10" in e02, true in e08
    assert "e01" in selected(con, parse_filter("tokens > 5"))
    assert "e02" not in selected(con, parse_filter("tokens > 5"))
    assert "e02" not in selected(con, parse_filter("tokens = 10"))
    assert selected(con, parse_filter("tokens = '10'")) == ["e02"]
    assert "e08" not in selected(con, parse_filter("tokens = 1"))
    # region is "eu" in e01 and the number 1 in e03
    assert "e03" not in selected(con, parse_filter("region = 'eu'"))
    assert selected(con, parse_filter("region = 1")) == ["e03"]


def test_missing_properties_never_match(con: duckdb.DuckDBPyConnection) -> None:
    # e05 has no properties at all
    for text_ in [
        "nope = 1", "nope != 1", "NOT (nope = 1)", "nope IN (1, 2)", "nope NOT IN (1, 2)",
        "nope BETWEEN 1 AND 2", "nope NOT BETWEEN 1 AND 2", "nope LIKE '%'", "nope NOT LIKE 'x'",
        "nope", "NOT nope", "nope = other", "nope != other", "lower(nope) = 'a'", "nope + 1 > 0",
        "tokens > 5", "tokens <= 5", "region != 'eu'", "CAST(nope AS INTEGER) = 1",
    ]:  # fmt: skip
        assert "e05" not in selected(con, parse_filter(text_)), text_
    assert "e05" in selected(con, parse_filter("nope IS NULL"))
    assert "e05" not in selected(con, parse_filter("nope IS NOT NULL"))


def test_property_referenced_and_reserved_columns() -> None:
    f = parse_filter(
        "tokens > 1 AND \"weird name\" = 'x' AND event_name = 'a' AND TIMESTAMP > '2024-01-01' "
        'AND coalesce(x, y) = 1 AND "Customer_Id" IS NULL'
    )
    assert properties_referenced(f.tree) == frozenset(
        {"tokens", "weird name", "x", "y", "Customer_Id"}
    )
    assert f.properties == properties_referenced(f.tree)


def test_translate_qualifies_columns_with_the_table() -> None:
    sql = translate_filter(
        parse_filter("timestamp > '2024-01-01' AND event_name = 'a' AND tokens > 1"), table="e"
    ).sql(dialect="duckdb")
    assert 'e."timestamp"' in sql and "e.event_name" in sql and "e.properties" in sql
    assert " properties" not in sql.replace("e.properties", "")


def test_translate_does_not_modify_the_tree() -> None:
    f = parse_filter(
        "tokens > 5 AND region IN ('eu', 'us') AND timestamp > '2024-01-01' "
        "AND CASE tokens WHEN other_tokens THEN 1 END = 1 AND a = b AND CAST(c AS INT) = 1"
    )
    before = f.tree.copy()
    translate_filter(f)
    translate_filter(f, table="e")
    assert f.tree == before
    for node in f.tree.walk():  # sqlglot re-parents a node put into a new tree: none was
        for child in node.iter_expressions():
            assert child.parent is node


def test_scalar_translation_for_metrics(con: duckdb.DuckDBPyConnection) -> None:
    """validate_expression / translate also serve metric expressions such as sum(tokens * 2)."""
    tree = sqlglot.parse_one("tokens * 2", read="duckdb")
    validate_expression(tree, context="metric")
    assert infer_type(tree) == ValueType.NUMBER
    expr = translate(tree, expected=ValueType.NUMBER)
    query = sqlglot.select(sqlglot.exp.Sum(this=expr)).from_("events").sql(dialect="duckdb")
    expected = sum(2 * n for e in EVENTS if (n := num(e, "tokens")) is not None)
    assert con.execute(query).fetchone() == (pytest.approx(expected),)

    bare = sqlglot.parse_one("tokens", read="duckdb")
    assert infer_type(bare) is None  # decided by the caller
    query = sqlglot.select(sqlglot.exp.Sum(this=translate(bare, expected=ValueType.NUMBER)))
    assert con.execute(query.from_("events").sql(dialect="duckdb")).fetchone() == (
        pytest.approx(expected / 2),
    )
    with pytest.raises(ConstraintViolation, match="expected a number"):
        translate(sqlglot.parse_one("event_name", read="duckdb"), expected=ValueType.NUMBER)
    with pytest.raises(ConstraintViolation, match="aggregate function 'sum' is not allowed in a "
                       "metric"):  # fmt: skip
        validate_expression(sqlglot.parse_one("sum(tokens) + 1", read="duckdb"), context="metric")


def test_validate_expression_refuses_built_trees() -> None:
    """Trees that did not come from parse_filter get the same checks (comments, names)."""
    commented = sqlglot.parse_one("x = 1", read="duckdb")
    commented.expression.add_comments(["*/ DROP TABLE events; /*"])
    with pytest.raises(ConstraintViolation) as info:
        validate_expression(commented)
    assert info.value.fields["construct"] == "comment"
    named = sqlglot.exp.EQ(
        this=sqlglot.exp.column("a\u200bb", quoted=True), expression=sqlglot.exp.Literal.number(1)
    )
    with pytest.raises(ConstraintViolation, match="U\\+200B"):
        validate_expression(named)
    with pytest.raises(ConstraintViolation, match="U\\+202E"):
        validate_expression(
            sqlglot.exp.EQ(
                this=sqlglot.exp.column("x"), expression=sqlglot.exp.Literal.string("a\u202eb")
            )
        )


def test_docstring_examples() -> None:
    import engine.filters

    result = doctest.testmod(engine.filters, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_filter_is_a_frozen_value() -> None:
    f = parse_filter("tokens > 1")
    assert f == parse_filter("tokens > 1")
    with pytest.raises(AttributeError):
        f.text = "x"  # type: ignore[misc]


# -- refusals --------------------------------------------------------------------------------------

REFUSED: list[tuple[str, str, str]] = [
    # (filter, construct field, text the detail must contain)
    ("", "empty", "empty"),
    ("   \n\t", "empty", "empty"),
    ("x" * (MAX_FILTER_LENGTH + 1), "length", "at most 10000"),
    # injection attempts
    ("1=1; DROP TABLE events", "multiple statements", "multiple statements"),
    ("x = 1;", "multiple statements", "multiple statements"),
    ("1=1 -- x\n; DROP TABLE events", "comment", "comments are not allowed"),
    ("x = 1 -- trailing", "comment", "comments"),
    ("x = 1 /* c */", "comment", "comments"),
    ("/* DROP TABLE events */ x = 1", "comment", "comments"),
    ("-- only a comment", "comment", "comments"),
    ("x = 'a\\' OR 1=1 --'", "comment", "comments"),
    ("(SELECT 1) = 1", "subquery", "subquery"),
    ("x = (SELECT max(tokens) FROM events)", "subquery", "subquery"),
    ("x IN (SELECT y FROM events)", "subquery", "subquery"),
    ("EXISTS (SELECT 1)", "subquery", "EXISTS"),
    ("1 = 1 UNION SELECT 1", "subquery", "subquery"),
    ("read_csv('/etc/passwd') IS NOT NULL", "function", "function 'read_csv' is not allowed"),
    ("read_text('/etc/passwd') = 'x'", "function", "function 'read_text'"),
    ("getenv('HOME') = 'x'", "function", "function 'getenv'"),
    ("concat(x, 'a') = 'b'", "function", "allowed functions are abs, ceil, coalesce, floor"),
    ("current_date = x", "function", "current_date"),
    ("iif(x, 1, 2) = 1", "function", "function 'if'"),
    ("events.x = 1", "qualified column", "qualified column reference 'events.x'"),
    ("main.events.x = 1", "qualified column", "qualified column"),
    ("sum(x) > 1", "aggregate function", "aggregate function 'sum' is not allowed in a filter"),
    ("count(*) > 0", "aggregate function", "aggregate function 'count'"),
    ("row_number() OVER () = 1", "window function", "window function 'row_number'"),
    ("sum(x) OVER () > 1", "window function", "window function 'sum'"),
    ("* = 1", "star", "star"),
    ("$1 = 1", "placeholder", "placeholder"),
    ("?", "placeholder", "placeholder"),
    ("x = ?", "placeholder", "placeholder"),
    ("x = :name", "placeholder", "placeholder"),
    ("x = 0x10", "alias", "alias"),
    ("x = 1 DROP TABLE events", "syntax", "could not be parsed"),
    # operators outside the grammar
    ("x ILIKE 'a'", "ILIKE", "ILIKE"),
    ("x SIMILAR TO 'a'", "SIMILAR TO", "SIMILAR TO"),
    ("x ~ 'a'", "regular expression match", "regular expression"),
    ("x IS NOT DISTINCT FROM y", "IS NOT DISTINCT FROM", "IS NOT DISTINCT FROM"),
    ("x // 2 = 1", "integer division", "integer division"),
    ("x || 'a' = 'b'", "string concatenation", "concatenation"),
    ("x ** 2 = 4", "power operator", "power"),
    ("x & 1 = 1", "bitwise operator", "bitwise"),
    ("x = ANY (1)", "ANY", "ANY"),
    ("x IS TRUE", "IS", "IS TRUE"),
    ("x['a'] = 1", "subscript", "subscript"),
    ("x -> '$.a' = 1", "JSON operator", "JSON operator"),
    ("x = interval 1 day", "interval", "interval"),
    ("x = 'a' COLLATE nocase", "COLLATE", "COLLATE"),
    ("x = E'a'", "escape string", "escape string"),
    ("x = $$a$$", "dollar-quoted string", "dollar-quoted"),
    ("x = (1, 2)", "tuple", "tuple"),
    ("x = [1]", "array", "array"),
    ("x BETWEEN SYMMETRIC 1 AND 2", "BETWEEN SYMMETRIC", "SYMMETRIC"),
    ("x IN ()", "IN", "empty IN list"),
    ("round(x, y) = 1", "round", "integer literal"),
    ("x LIKE 'a' ESCAPE 'ab'", "ESCAPE", "one-character"),
    ("CAST(x AS TIMESTAMP) = '2024-01-01'", "cast", "cast to TIMESTAMP"),
    ("x::json = 1", "cast", "cast to JSON"),
    ("x::integer[] = 1", "cast", "cast to INT[]"),
    ("x::decimal(40, 2) = 1", "cast", "DECIMAL"),
    ("lower(x, y) = 'a'", "syntax", "could not be parsed"),
    ("x = 'unterminated", "syntax", "could not be read"),
    ("x =", "syntax", "could not be parsed"),
    # not a condition, or badly typed
    ("tokens + 1", "not a condition", "a filter must be a boolean condition"),
    ("'abc'", "not a condition", "boolean condition"),
    ("event_name", "not a condition", "boolean condition"),
    ("CASE WHEN x THEN 1 END", "not a condition", "boolean condition"),
    ("event_name + 1 > 2", "type mismatch", "'event_name' is a string"),
    ("x LIKE 1", "type mismatch", "type mismatch"),
    ("x IN ('a', 1)", "type mismatch", "compares"),
    ("'a' = 1", "type mismatch", "type mismatch"),
    ("NOT tokens + 1", "type mismatch", "needs a boolean"),
    ("lower(tokens) = 1", "type mismatch", "type mismatch"),
    ("timestamp > 5", "type mismatch", "timestamp"),
    ("timestamp = event_name", "type mismatch", "timestamp"),
    ("timestamp = tokens", "type mismatch", "compares timestamp with 'tokens'"),
    ("coalesce(timestamp, x) > '2024-01-01'", "type mismatch", "compares timestamp"),
    ("timestamp = 'not a date'", "timestamp literal", "not a valid timestamp"),
    ("CAST(timestamp AS INTEGER) = 1", "cast", "timestamp can only be cast to a string"),
    ("x = 1e400", "number", "out of range"),
    # unicode tricks
    ("tokens\u200b > 5", "character", "U+200B"),
    ("\u202etokens > 5", "character", "U+202E"),
    ("region = 'eu\u2066' AND true", "character", "U+2066"),
    ("tokens > 5\x00", "character", "U+0000"),
    ('"a\u00a0b" = 1', "character", "U+00A0"),
    ("tokens >\u00a05", "character", "U+00A0"),
    ("tokens > 5 \u2028 OR true", "character", "U+2028"),
    ("x \uff1d 1", "syntax", "could not be parsed"),
    ("x = 1\uff1b DROP TABLE events", "syntax", "could not be parsed"),
    ('"" = 1', "name", "empty property name"),
    # nesting
    ("(" * 65 + "x" + ")" * 65 + " = 1", "nesting", "deeper than 64"),
    ("NOT " * 70 + "x", "nesting", "deeper than 64"),
    ("- " * 70 + "x = 1", "nesting", "deeper than 64"),
    ("abs(" * 70 + "x" + ")" * 70 + " = 1", "nesting", "deeper than 64"),
    ("CASE WHEN " * 70 + "x" + " THEN true END" * 70, "nesting", "deeper than 64"),
    (" + ".join(["x"] * 70) + " = 1", "nesting", "deeper than 64"),
    ("(" * 3000 + "x" + ")" * 3000, "nesting", "deeper than 64"),
    ("NOT " * 2400 + "x", "nesting", "deeper than 64"),
]


@pytest.mark.parametrize(
    ("text_", "construct", "needle"), REFUSED, ids=[repr(t[:40]) for t, _, _ in REFUSED]
)
def test_refused_filter_names_the_construct(text_: str, construct: str, needle: str) -> None:
    with pytest.raises(ConstraintViolation) as info:
        parse_filter(text_)
    assert info.value.fields["construct"] == construct
    assert needle in info.value.detail
    assert info.value.status == 400


def test_refusal_carries_the_position() -> None:
    with pytest.raises(ConstraintViolation) as info:
        parse_filter("tokens > 1 AND\n  read_csv('x') IS NULL")
    assert info.value.fields["name"] == "read_csv"
    assert (info.value.fields["line"], info.value.fields["start"]) == (2, 17)
    with pytest.raises(ConstraintViolation) as info:
        parse_filter("tokens > 1 AND )")
    assert info.value.fields["construct"] == "syntax"
    assert info.value.fields["line"] == 1 and info.value.fields["col"] == 16
    with pytest.raises(ConstraintViolation) as info:
        parse_filter("x = 1;")
    assert info.value.fields["start"] == 5


def test_non_string_filter_is_refused() -> None:
    with pytest.raises(ConstraintViolation):
        parse_filter(None)  # type: ignore[arg-type]


def test_refusal_is_a_value_error_for_callers() -> None:
    with pytest.raises(ValueError, match="subquery"):
        parse_filter("(SELECT 1) = 1")


def test_filters_at_the_length_limit_are_accepted(con: duckdb.DuckDBPyConnection) -> None:
    body = "tokens = 10 OR "
    clauses = (MAX_FILTER_LENGTH - len("tokens = 10")) // len(body)
    text_ = body * clauses + "tokens = 10"
    assert len(text_) <= MAX_FILTER_LENGTH
    assert selected(con, parse_filter(text_)) == ["e01"]
    padded = "tokens = 10" + " " * (MAX_FILTER_LENGTH - len("tokens = 10"))
    assert selected(con, parse_filter(padded)) == ["e01"]


def test_parsing_leaves_the_recursion_limit_alone() -> None:
    limit = sys.getrecursionlimit()
    parse_filter("(" * 60 + "x" + ")" * 60 + " = 1")
    with pytest.raises(ConstraintViolation):
        parse_filter("(" * 65 + "x" + ")" * 65 + " = 1")
    assert sys.getrecursionlimit() == limit


# -- property names in JSON paths -----------------------------------------------------------------


def test_property_path_escapes_json_pointer_specials() -> None:
    assert property_path("tokens") == "/tokens"
    assert property_path("a/b") == "/a~1b"
    assert property_path("a~b") == "/a~0b"
    assert property_path("~1") == "/~01"
    assert property_path('a.b"c*$[0]') == '/a.b"c*$[0]'


RESERVED = {"event_name", "timestamp", "customer_id", "external_customer_id"}
NAME_CHARS = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
) | st.sampled_from(list(" ./~*$[]\"'\\-"))
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
VALUE_CHARS = st.characters(blacklist_categories=("Cc", "Cs")).filter(lambda c: c not in BIDI)


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda n: n not in RESERVED),
    value=st.text(VALUE_CHARS, max_size=12),
    number=st.integers(min_value=-(2**53), max_value=2**53) | st.floats(allow_nan=False,
                                                                        allow_infinity=False),
)  # fmt: skip
def test_any_name_and_value_round_trip(name: str, value: str, number: float) -> None:
    """Whatever the property name and string value, the filter reads exactly that key/value."""
    con = events_connection()
    props = [{name: value}, {name: number}, {name + "x": value}, {}]
    con.execute("CREATE OR REPLACE TEMP TABLE round_trip (k INTEGER, properties JSON)")
    con.execute(
        "INSERT INTO round_trip VALUES (0, ?), (1, ?), (2, ?), (3, ?)",
        [json.dumps(p) for p in props],
    )

    def keys(text_: str) -> list[int]:
        condition = translate_filter(parse_filter(text_)).sql(dialect="duckdb")
        rows = con.sql(f"SELECT k FROM round_trip WHERE {condition} ORDER BY k").fetchall()
        return [row[0] for row in rows]

    assert keys(f"{sql_name(name)} = {sql_string(value)}") == [0]
    literal = repr(float(number)) if isinstance(number, float) else str(number)
    if "e" not in literal.lower() and "inf" not in literal:
        assert keys(f"{sql_name(name)} = {literal}") == [1]
    assert keys(f"{sql_name(name)} IS NULL") == [2, 3]


# -- differential test: random filters against a Python evaluator ---------------------------------

NUM_PROPS = ["tokens", "other_tokens", "latency", "region"]
STR_PROPS = ["region", "other_region", "model", "tokens"]
BOOL_PROPS = ["is_cached", "tokens"]


@dataclass(frozen=True)
class Gen:
    sql: str
    ev: Callable[[Ev], Any]  # the value, None for NULL
    prop: str | None = None  # set for a bare property (its type comes from the context)


def num_exprs(depth: int) -> st.SearchStrategy[Gen]:
    leaves = st.one_of(
        st.sampled_from([-3, -1, 0, 1, 2, 5, 7, 10, 250]).map(
            lambda n: Gen(str(n), lambda e, n=n: float(n))
        ),
        st.sampled_from([0.5, 2.5, 1000.0]).map(lambda n: Gen(repr(n), lambda e, n=n: n)),
        st.sampled_from(NUM_PROPS).map(lambda p: Gen(p, lambda e, p=p: num(e, p), prop=p)),
    )
    if depth == 0:
        return leaves
    sub = num_exprs(depth - 1)

    def binary(op: str, fn: Callable[[float, float], float]) -> st.SearchStrategy[Gen]:
        return st.tuples(sub, sub).map(
            lambda ab: Gen(
                f"({ab[0].sql} {op} {ab[1].sql})",
                lambda e: (
                    None if (x := ab[0].ev(e)) is None or (y := ab[1].ev(e)) is None else fn(x, y)
                ),
            )
        )

    return st.one_of(
        leaves,
        binary("+", lambda x, y: x + y),
        binary("-", lambda x, y: x - y),
        binary("*", lambda x, y: x * y),
        sub.map(lambda a: Gen(f"-({a.sql})", lambda e: None if (x := a.ev(e)) is None else -x)),
        sub.map(lambda a: Gen(f"abs({a.sql})", lambda e: None if (x := a.ev(e)) is None
                              else abs(x))),
        st.tuples(st.sampled_from(NUM_PROPS), st.sampled_from([0, 1])).map(
            lambda pn: Gen(f"coalesce({pn[0]}, {pn[1]})",
                           lambda e, pn=pn: v if (v := num(e, pn[0])) is not None else pn[1])
        ),
    )  # fmt: skip


def str_exprs() -> st.SearchStrategy[Gen]:
    literal = st.sampled_from(["eu", "us", "EU", "", "gpt%", "it's", "日本", "10"]).map(
        lambda s: Gen(sql_string(s), lambda e, s=s: s)
    )
    prop = st.sampled_from(STR_PROPS).map(lambda p: Gen(p, lambda e, p=p: text(e, p), prop=p))
    return st.one_of(
        literal,
        prop,
        prop.map(lambda a: Gen(f"lower({a.sql})", lambda e: None if (x := a.ev(e)) is None
                               else x.lower())),
        prop.map(lambda a: Gen(f"upper({a.sql})", lambda e: None if (x := a.ev(e)) is None
                               else x.upper())),
    )  # fmt: skip


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def compare(a: Gen, op: str, b: Gen, read: Callable[[Ev, str], Any]) -> Gen:
    if a.prop is not None and b.prop is not None:
        # property against property: same JSON kind compares natively, else NULL
        pa, pb = a.prop, b.prop

        def ev(e: Ev) -> bool | None:
            x, y = e.props.get(pa), e.props.get(pb)
            return OPS[op](x, y) if same_kind(x, y) else None

        return Gen(f"{a.sql} {op} {b.sql}", ev)
    return Gen(
        f"{a.sql} {op} {b.sql}",
        lambda e: None if (x := a.ev(e)) is None or (y := b.ev(e)) is None else OPS[op](x, y),
    )


def and3(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def or3(x: bool | None, y: bool | None) -> bool | None:
    if x is True or y is True:
        return True
    return None if x is None or y is None else False


def conditions(depth: int) -> st.SearchStrategy[Gen]:
    num_cmp = st.tuples(num_exprs(2), st.sampled_from(list(OPS)), num_exprs(2)).map(
        lambda t: compare(t[0], t[1], t[2], num)
    )
    str_cmp = st.tuples(str_exprs(), st.sampled_from(list(OPS)), str_exprs()).map(
        lambda t: compare(t[0], t[1], t[2], text)
    )
    in_list = st.tuples(
        st.sampled_from(NUM_PROPS),
        st.lists(st.sampled_from([0, 2, 5, 7, 10]), min_size=1, max_size=3),
        st.booleans(),
    ).map(
        lambda t: Gen(
            f"{t[0]} {'NOT ' if t[2] else ''}IN ({', '.join(map(str, t[1]))})",
            lambda e, t=t: None if (x := num(e, t[0])) is None else (x in t[1]) != t[2],
        )
    )
    between = st.tuples(
        st.sampled_from(NUM_PROPS), st.sampled_from([-5, 0, 3]), st.sampled_from([3, 10, 300])
    ).map(
        lambda t: Gen(
            f"{t[0]} BETWEEN {t[1]} AND {t[2]}",
            lambda e, t=t: None if (x := num(e, t[0])) is None else t[1] <= x <= t[2],
        )
    )
    likes = st.tuples(
        st.sampled_from(STR_PROPS), st.sampled_from(["%", "gpt%", "_u", "%-%", ""]), st.booleans()
    ).map(
        lambda t: Gen(
            f"{t[0]} {'NOT ' if t[2] else ''}LIKE {sql_string(t[1])}",
            lambda e, t=t: None if (x := text(e, t[0])) is None else like(x, t[1]) != t[2],
        )
    )
    is_null = st.tuples(st.sampled_from([*NUM_PROPS, "model", "nope"]), st.booleans()).map(
        lambda t: Gen(
            f"{t[0]} IS {'NOT ' if t[1] else ''}NULL",
            lambda e, t=t: (t[0] in e.props) == t[1],
        )
    )
    flags = st.sampled_from(BOOL_PROPS).map(lambda p: Gen(p, lambda e, p=p: flag(e, p), prop=p))
    leaves = st.one_of(num_cmp, str_cmp, in_list, between, likes, is_null, flags)
    if depth == 0:
        return leaves
    sub = conditions(depth - 1)
    return st.one_of(
        leaves,
        sub.map(lambda a: Gen(f"NOT ({a.sql})", lambda e: None if (x := a.ev(e)) is None
                              else not x)),
        st.tuples(sub, sub).map(lambda ab: Gen(f"({ab[0].sql}) AND ({ab[1].sql})",
                                               lambda e: and3(ab[0].ev(e), ab[1].ev(e)))),
        st.tuples(sub, sub).map(lambda ab: Gen(f"({ab[0].sql}) OR ({ab[1].sql})",
                                               lambda e: or3(ab[0].ev(e), ab[1].ev(e)))),
    )  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cond=conditions(2))
def test_random_filters_match_the_reference_evaluator(cond: Gen) -> None:
    connection = events_connection()
    f = parse_filter(cond.sql)
    expected = [e.key for e in EVENTS if cond.ev(e) is True]
    assert selected(connection, f) == expected, translate_filter(f).sql(dialect="duckdb")


# -- fuzz: every accepted filter runs ------------------------------------------------------------

VOCABULARY = [
    "tokens", "region", "model", "is_cached", "event_name", "timestamp", "customer_id",
    '"weird name"', "(", ")", "(", ")", "AND", "OR", "NOT", "=", "!=", "<", ">=", "1", "2.5",
    "-", "+", "*", "/", "%", "'eu'", "'2024-01-01'", "true", "NULL", "IN", ",", "BETWEEN", "IS",
    "LIKE", "'gpt%'", "CASE", "WHEN", "THEN", "ELSE", "END", "coalesce(", "lower(", "length(",
    "abs(", "round(", "CAST(", "AS", "INTEGER", "VARCHAR", "BOOLEAN", "::", "ESCAPE", "'!'",
    "upper(", "floor(", "ceil(", "DOUBLE", "TRY_CAST(",
]  # fmt: skip


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=14))
def test_token_soup_is_refused_cleanly_or_runs(words: list[str]) -> None:
    """No filter text crashes the checker, and anything it accepts DuckDB runs."""
    text_ = " ".join(words)
    try:
        f = parse_filter(text_)
    except ConstraintViolation:
        return
    selected(events_connection(), f)
    selected(events_connection(), f, table="e")


@settings(max_examples=300, deadline=None)
@given(text_=st.text(max_size=60))
def test_arbitrary_text_is_refused_cleanly_or_runs(text_: str) -> None:
    try:
        f = parse_filter(text_)
    except ConstraintViolation:
        return
    selected(events_connection(), f)


# -- golden renders ------------------------------------------------------------------------------

CANONICAL = {
    "numeric_comparison": "tokens > 100",
    "string_equality": "region = 'eu'",
    "numeric_and_string": "my_numeric_property > 100 AND my_other_property = 'bar'",
    "in_list_and_not_boolean": "region IN ('eu', 'us') AND NOT is_cached",
    "like_lower": "lower(model) LIKE 'gpt%'",
    "coalesce_arithmetic": "coalesce(tokens, 0) + 1 > 5",
    "quoted_name": "\"weird name\" = 'x'",
    "between": "tokens BETWEEN 10 AND 20",
    "is_null": "model IS NULL OR region IS NOT NULL",
    "timestamp_range": "timestamp >= '2024-05-01T00:00:00Z' AND timestamp < '2024-06-01'",
    "reserved_columns": "event_name = 'api_call' AND customer_id IN ('c1', 'c2')",
    "case_searched": "CASE WHEN tokens > 100 THEN 'big' ELSE 'small' END = 'big'",
    "case_simple": "CASE region WHEN 'eu' THEN 1 ELSE 0 END = 1",
    "cast_text": "CAST(tokens AS INTEGER) = 10",
    "property_vs_property": "tokens = other_tokens",
    "division_and_modulo": "tokens % 3 = 1 OR tokens / cost > 4",
    "not_like_escape": "model NOT LIKE 'a!_%' ESCAPE '!'",
}


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_canonical_filter_matches_golden(
    name: str, update_golden: bool, con: duckdb.DuckDBPyConnection
) -> None:
    f = parse_filter(CANONICAL[name])
    rendered = translate_filter(f).sql(dialect="duckdb", pretty=True) + "\n"
    path = GOLDEN / f"{name}.sql"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"{path} is missing: run pytest --update-golden"
    assert path.read_text() == rendered, f"{path} drifted: review, then pytest --update-golden"
    selected(con, f)  # and the golden SQL runs


def test_no_stray_golden_files() -> None:
    if GOLDEN.exists():
        assert {p.stem for p in GOLDEN.glob("*.sql")} <= set(CANONICAL)
