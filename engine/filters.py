"""The filter grammar: parse, check and translate user conditions over event properties.

Deprecation filters and metric conditions are boolean SQL expressions over event properties
(bare names) and the reserved columns ``event_name``, ``timestamp``, ``customer_id`` and
``external_customer_id``:

>>> f = parse_filter("region IN ('eu', 'us') AND tokens > 100")
>>> sorted(properties_referenced(f.tree))
['region', 'tokens']
>>> print(translate_filter(parse_filter("tokens > 100")).sql(dialect="duckdb"))
TRY_CAST(CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT) AS DOUBLE) > 100

Grammar (DESIGN section 4). Text is parsed by sqlglot (DuckDB dialect) and every node is
checked against an explicit allowlist of node classes: property names and reserved columns;
string, number, boolean and NULL literals; ``= != <> < <= > >=``; ``AND OR NOT``;
``IN (...)`` over a list of expressions; ``[NOT] BETWEEN``; ``IS [NOT] NULL``; ``[NOT] LIKE``
(with an optional one-character ``ESCAPE``); ``+ - * / %`` and unary minus; parentheses;
simple and searched ``CASE``; ``COALESCE``; ``CAST``/``TRY_CAST``/``::`` to a numeric, string
or boolean type; and the functions ``lower upper length abs round floor ceil``. sqlglot's
spellings of the same functions are accepted too (``ceiling``, ``lcase``, ``ifnull``, ``len``).
Anything else is refused with a :class:`~engine.errors.ConstraintViolation` whose detail names
the construct and whose ``fields`` carry ``construct`` (and, when known, ``name`` and the
position as sqlglot reports it: ``line``, ``col`` (of the token's last character), ``start``
and ``end`` (0-based offsets)). Comments are refused outright: nothing legitimate needs them and
they are the classic way to hide a second statement. Texts over 10 000 characters, nesting
deeper than 64 levels (a chain of the same ``AND``/``OR`` counts as one level), ``;``, control,
bidirectional-override and invisible characters in names are refused as well, and so are
filters whose translation would build more than 20 000 nodes (comparisons between properties
render each operand once per value type, so nesting them multiplies the size).

Typing. Stored properties are JSON values (strings, numbers, booleans; never null), so a
property has no declared type: each reference takes the type its context needs, and yields
the value only when the stored value has that type, NULL otherwise:

- the other operand of a comparison, ``IN`` list or ``BETWEEN`` bound decides (``tokens > 5``
  is numeric, ``region = 'eu'`` is textual); so do ``COALESCE`` and ``CASE`` branches;
- arithmetic, ``abs round floor ceil`` need numbers; ``LIKE lower upper length`` need strings;
  ``AND OR NOT`` and a bare property used as a condition need booleans;
- ``CAST(p AS t)`` takes the value's JSON text (``'10'``, ``'1.5'``, ``'true'``, the string
  itself) and converts it with ``TRY_CAST``: a cast never fails at run time, it gives NULL;
- ``p IS NULL`` is true exactly when the event lacks the property.

So ``tokens > 5`` matches ``{"tokens": 10}`` but not ``{"tokens": "10"}``, and a missing
property makes any comparison NULL: the event does not match. A NULL result means "does not
match"; to select events that do *not* match a filter use ``(condition) IS NOT TRUE``, not
``NOT condition``.

Property against property (no operand of known type, e.g. ``a = b``, ``a IN (b, c)``,
``coalesce(a, b) < c``): the values compare natively when they all hold the same kind of JSON
value (all numbers, all strings or all booleans); otherwise the comparison is NULL and the event
does not match, whatever the operator (``a != b`` does not match ``a = 1, b = "1"`` either).
It is rendered as ``COALESCE(<as numbers>, <as strings>, <as booleans>)``: at most one of the
three is non-NULL.

Numbers are DOUBLE: properties extract as DOUBLE and arithmetic operands that are not already
DOUBLE (literals, ``length()``, casts to exact types) are cast to DOUBLE, so ``/`` is true
division, ``%`` follows ``fmod`` and no constant expression can overflow at close time.
Dividing by zero (``/`` or ``%``) gives NULL. Integers beyond 2**53 compare approximately.

Reserved columns are matched case-insensitively when unquoted, and exactly (lower case) when
quoted; they shadow properties of the same name (``"Timestamp"`` is a property). ``timestamp``
compares with string literals, which are parsed here as ISO 8601 (``'2024-05-01'``,
``'2024-05-01T10:00:00Z'``, offsets converted to UTC) and refused when malformed. Property
names are not normalized: JSON keys are exact. They are looked up with JSON Pointer paths
(``'/name'``, ``~`` and ``/`` escaped), which address any key, unlike ``$."..."`` paths, where
DuckDB treats ``"*"`` as a wildcard and cannot express an empty key.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import sys
import threading
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeAlias

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from engine.errors import ConstraintViolation

__all__ = [
    "ALLOWED_FUNCTIONS",
    "MAX_FILTER_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_TRANSLATED_SIZE",
    "RESERVED_COLUMNS",
    "Filter",
    "ValueType",
    "infer_type",
    "parse_timestamp",
    "parse_filter",
    "parse_statement",
    "properties_referenced",
    "property_path",
    "reserved_column",
    "translate",
    "translate_filter",
    "validate_expression",
]

MAX_FILTER_LENGTH = 10_000
MAX_NESTING_DEPTH = 64
#: Output nodes a translation may build (a property read counts as ``_PROPERTY_READ_SIZE``).
#: Building and rendering cost about 25 us a node, so this bounds both to about half a second. A
#: 10 000-character chain of comparisons with literals needs about 14 000; what outgrows it
#: compares properties with properties by the hundred or nests simple CASE over properties.
MAX_TRANSLATED_SIZE = 20_000
_PROPERTY_READ_SIZE = 10
DIALECT = "duckdb"


class ValueType(enum.StrEnum):
    """The type an expression of the grammar yields (``None`` where it depends on the data)."""

    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"


#: Columns of the events table a filter may name; every other name is a property.
RESERVED_COLUMNS: Mapping[str, ValueType] = {
    "event_name": ValueType.STRING,
    "timestamp": ValueType.TIMESTAMP,
    "customer_id": ValueType.STRING,
    "external_customer_id": ValueType.STRING,
}

ALLOWED_FUNCTIONS = ("abs", "ceil", "coalesce", "floor", "length", "lower", "round", "upper")

_PROPERTIES_COLUMN = "properties"


@dataclass(frozen=True)
class Filter:
    """A checked filter: the user's text and its parsed tree (before translation).

    Build it with :func:`parse_filter`; do not mutate ``tree`` (translation copies it).

    >>> parse_filter("  model = 'gpt-4' ").text
    "  model = 'gpt-4' "
    """

    text: str
    tree: exp.Expression

    @property
    def properties(self) -> frozenset[str]:
        """Names of the properties the filter reads."""
        return properties_referenced(self.tree)


# -- errors ----------------------------------------------------------------------------------


def _position(node: exp.Expression) -> dict[str, int]:
    """Where ``node`` starts in the text, from the leftmost token sqlglot recorded under it."""
    best: dict[str, Any] | None = None
    for sub in node.walk():
        meta = sub.meta
        if "start" in meta and (best is None or meta["start"] < best["start"]):
            best = meta
    if best is None:
        return {}
    return {key: int(best[key]) for key in ("line", "col", "start", "end") if key in best}


def _refuse(
    detail: str, construct: str, node: exp.Expression | None = None, **fields: Any
) -> NoReturn:
    where = _position(node) if node is not None else {}
    raise ConstraintViolation(detail, construct=construct, **fields, **where)


def _snippet(node: exp.Expression, limit: int = 60) -> str:
    try:
        text = node.sql(dialect=DIALECT)
    except SqlglotError:  # an exotic node sqlglot cannot render: name it without its text
        return node.key
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- naming refused constructs -----------------------------------------------------------------

# Readable names for nodes users are likely to try. Anything not listed is named by its sqlglot
# key; the allowlist below, not this table, decides what passes.
_NAMES: dict[type[exp.Expression], str] = {
    exp.Subquery: "subquery",
    exp.Exists: "subquery (EXISTS)",
    exp.Values: "subquery (VALUES)",
    exp.Star: "star (*)",
    exp.Placeholder: "placeholder",
    exp.Parameter: "placeholder",
    exp.Alias: "alias (text after the condition)",
    exp.Tuple: "tuple",
    exp.Array: "array",
    exp.Bracket: "subscript ([...])",
    exp.Dot: "dot access",
    exp.ILike: "ILIKE",
    exp.SimilarTo: "SIMILAR TO",
    exp.RegexpLike: "regular expression match",
    exp.Glob: "GLOB",
    exp.NullSafeEQ: "IS NOT DISTINCT FROM",
    exp.NullSafeNEQ: "IS DISTINCT FROM",
    exp.IntDiv: "integer division (//)",
    exp.Pow: "power operator",
    exp.DPipe: "string concatenation (||)",
    exp.BitwiseAnd: "bitwise operator",
    exp.BitwiseOr: "bitwise operator",
    exp.BitwiseXor: "bitwise operator",
    exp.BitwiseNot: "bitwise operator",
    exp.BitwiseLeftShift: "bitwise operator",
    exp.BitwiseRightShift: "bitwise operator",
    exp.Xor: "XOR",
    exp.Interval: "interval",
    exp.Collate: "COLLATE",
    exp.Lambda: "lambda",
    exp.Any: "ANY",
    exp.All: "ALL",
    exp.ByteString: "escape string (E'...')",
    exp.RawString: "dollar-quoted string",
    exp.HexString: "hex string",
    exp.BitString: "bit string",
    exp.National: "national string",
    exp.Var: "bare word",
    exp.JSONExtract: "JSON operator",
    exp.JSONExtractScalar: "JSON operator",
    exp.JSONBExtract: "JSON operator",
    exp.JSONBExtractScalar: "JSON operator",
    exp.Command: "statement",
}


def _describe(node: exp.Expression) -> tuple[str, str, dict[str, str]]:
    """``(construct, phrase, extra fields)`` naming a refused node for a 400."""
    name = _NAMES.get(type(node))
    if name is not None:
        return name.split(" (")[0], name, {}
    if isinstance(node, exp.Query | exp.DDL | exp.DML):
        return "subquery", "subquery", {}
    if isinstance(node, exp.Window):
        inner = node.this
        fn = _function_name(inner) if isinstance(inner, exp.Func) else "?"
        return "window function", f"window function '{fn}'", {"name": fn}
    if isinstance(node, exp.AggFunc):
        fn = _function_name(node)
        return "aggregate function", f"aggregate function '{fn}'", {"name": fn}
    if isinstance(node, exp.Func):
        fn = _function_name(node)
        return "function", f"function '{fn}'", {"name": fn}
    return node.key, f"'{node.key}' expression", {}


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _refuse_node(node: exp.Expression, context: str) -> NoReturn:
    construct, phrase, extra = _describe(node)
    detail = f"{phrase} is not allowed in a {context}"
    if construct in ("function", "window function"):
        detail += f"; allowed functions are {', '.join(ALLOWED_FUNCTIONS)}"
    elif construct == "subquery":
        detail += "; a condition cannot read other rows or tables"
    snippet = _snippet(node)
    if snippet and construct not in ("statement",):
        detail += f" (at {snippet!r})"
    _refuse(detail, construct, node, **extra)


# -- structural allowlist ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    children: tuple[str, ...] = ()  # args holding child expressions, walked and checked
    flags: tuple[str, ...] = ()  # scalar args whose value is free; any other arg must be unset


_BINARY = _Rule(children=("this", "expression"))
_UNARY = _Rule(children=("this",))

# The allowlist: exact classes (never isinstance: TryCast subclasses Cast, and sqlglot adds
# subclasses over time). Args not named in a rule must be empty, so new sqlglot options on an
# allowed node (CAST ... FORMAT, BETWEEN SYMMETRIC) are refused until someone decides.
_RULES: dict[type[exp.Expression], _Rule] = {
    exp.Column: _UNARY,
    exp.Identifier: _Rule(flags=("this", "quoted")),
    exp.Literal: _Rule(flags=("this", "is_string")),
    exp.Boolean: _Rule(flags=("this",)),
    exp.Null: _Rule(),
    exp.Paren: _UNARY,
    exp.EQ: _BINARY,
    exp.NEQ: _BINARY,
    exp.LT: _BINARY,
    exp.LTE: _BINARY,
    exp.GT: _BINARY,
    exp.GTE: _BINARY,
    exp.And: _BINARY,
    exp.Or: _BINARY,
    exp.Not: _UNARY,
    exp.In: _Rule(children=("this", "expressions")),
    exp.Between: _Rule(children=("this", "low", "high")),
    exp.Is: _Rule(children=("this", "expression"), flags=("negate",)),
    exp.Like: _Rule(children=("this", "expression"), flags=("negate",)),
    exp.Escape: _BINARY,
    exp.Add: _BINARY,
    exp.Sub: _BINARY,
    exp.Mul: _BINARY,
    exp.Div: _BINARY,
    exp.Mod: _BINARY,
    exp.Neg: _UNARY,
    exp.Case: _Rule(children=("this", "ifs", "default")),
    exp.If: _Rule(children=("this", "true")),
    exp.Coalesce: _Rule(children=("this", "expressions"), flags=("is_nvl", "is_null")),
    exp.Cast: _Rule(children=("this",)),  # `to` is checked by _check_cast, not walked
    exp.TryCast: _Rule(children=("this",), flags=("safe",)),
    exp.Lower: _UNARY,
    exp.Upper: _UNARY,
    exp.Length: _UNARY,
    exp.Abs: _UNARY,
    exp.Floor: _UNARY,
    exp.Ceil: _UNARY,
    exp.Round: _Rule(children=("this", "decimals")),
}

_CAST_TARGETS: dict[exp.DType, ValueType] = {
    **{
        t: ValueType.NUMBER
        for t in (
            exp.DType.TINYINT,
            exp.DType.SMALLINT,
            exp.DType.INT,
            exp.DType.BIGINT,
            exp.DType.INT128,
            exp.DType.UTINYINT,
            exp.DType.USMALLINT,
            exp.DType.UINT,
            exp.DType.UBIGINT,
            exp.DType.UINT128,
            exp.DType.FLOAT,
            exp.DType.DOUBLE,
            exp.DType.DECIMAL,
        )
    },
    exp.DType.TEXT: ValueType.STRING,
    exp.DType.VARCHAR: ValueType.STRING,
    exp.DType.CHAR: ValueType.STRING,
    exp.DType.BOOLEAN: ValueType.BOOLEAN,
}
_DOUBLE_TARGETS = frozenset({exp.DType.FLOAT, exp.DType.DOUBLE})

_NUMBER_TEXT = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# Trojan-source characters (they reorder what a reviewer sees) and the byte-order mark.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})"


def _check_name(node: exp.Identifier, context: str) -> None:
    name = str(node.this)
    if not name:
        _refuse(f"an empty property name is not allowed in a {context}", "name", node)
    for char in name:
        category = unicodedata.category(char)
        if node.quoted:
            # Quoted names may hold any visible character (JSON keys are free-form) but not
            # ones that make two different names look alike or hide text.
            bad = category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (
                category == "Zs" and char != " "
            )
        else:
            bad = not (category[0] in "LNM" or char == "_")
        if bad:
            hint = "" if node.quoted else "; quote unusual property names with double quotes"
            _refuse(
                f"property name {name!r} contains the character {_char_name(char)}, which is "
                f"not allowed in a {context}{hint}",
                "character",
                node,
                name=name,
            )


def _check_literal(node: exp.Literal, context: str) -> None:
    text = str(node.this)
    if node.is_string:
        for char in text:
            if char in _BIDI or (unicodedata.category(char) == "Cc" and char not in "\t\n\r"):
                _refuse(
                    f"string literal contains the character {_char_name(char)}, which is not "
                    f"allowed in a {context}",
                    "character",
                    node,
                )
        return
    # The generator prints number text verbatim, so only plain decimal numbers may pass.
    if not _NUMBER_TEXT.fullmatch(text):
        _refuse(f"number literal {text!r} is not allowed in a {context}", "number", node)
    if not math.isfinite(float(text)):
        _refuse(f"number literal {text[:40]!r} is out of range in a {context}", "number", node)


def _check_cast(node: exp.Cast, context: str) -> None:
    to = node.args.get("to")
    kind = to.this if isinstance(to, exp.DataType) else None
    if not isinstance(to, exp.DataType) or kind not in _CAST_TARGETS:
        target = _snippet(to) if isinstance(to, exp.Expression) else "?"
        _refuse(
            f"cast to {target} is not allowed in a {context}; cast to a numeric type (INTEGER, "
            f"BIGINT, DOUBLE, DECIMAL, ...), VARCHAR or BOOLEAN",
            "cast",
            node,
            name=target,
        )
    for key, value in to.args.items():
        if key in ("this", "expressions") or not value:
            continue
        if key == "nested" and value is False:
            continue
        _refuse(f"cast to {_snippet(to)} is not allowed in a {context}", "cast", node)
    params = to.expressions
    if params and kind != exp.DType.DECIMAL:
        _refuse(f"type parameters on {_snippet(to)} are not allowed in a {context}", "cast", node)
    values: list[int] = []
    for param in params:
        literal = param.this if isinstance(param, exp.DataTypeParam) else None
        if (
            not isinstance(literal, exp.Literal)
            or literal.is_string
            or not str(literal.this).isdigit()
            or param.args.get("expression") is not None
        ):
            _refuse(f"malformed type {_snippet(to)} in a {context}", "cast", node)
        values.append(int(str(literal.this)))
    if values and not (
        len(values) <= 2 and 1 <= values[0] <= 38 and (len(values) == 1 or values[1] <= values[0])
    ):
        _refuse(
            f"DECIMAL needs 1 <= precision <= 38 and 0 <= scale <= precision in a {context}",
            "cast",
            node,
        )


def _is_int_literal(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and node.is_number and str(node.this).isdigit()


def _check_node(
    node: exp.Expression, parent: exp.Expression | None, key: str | None, context: str
) -> _Rule:
    """Refuse ``node`` unless the allowlist admits it here; return its rule."""
    rule = _RULES.get(type(node))
    if rule is None:
        _refuse_node(node, context)
    if isinstance(node, exp.Identifier) and not isinstance(parent, exp.Column):
        _refuse_node(node, context)
    if isinstance(node, exp.If) and not (isinstance(parent, exp.Case) and key == "ifs"):
        _refuse_node(node, context)  # IF(c, a, b) and IIF are functions, not CASE branches
    if node.comments:
        _refuse(f"comments are not allowed in a {context}", "comment", node)

    if isinstance(node, exp.Column):
        if not isinstance(node.this, exp.Identifier):
            _refuse_node(node.this, context)
        if any(node.args.get(part) for part in ("table", "db", "catalog")):
            _refuse(
                f"qualified column reference {_snippet(node)!r} is not allowed in a {context}; "
                f"name properties bare, and quote names that contain dots: "
                f'"{node.sql(dialect=DIALECT)}"',
                "qualified column",
                node,
                name=node.sql(dialect=DIALECT),
            )
    elif isinstance(node, exp.Identifier):
        _check_name(node, context)
    elif isinstance(node, exp.Literal):
        _check_literal(node, context)
    elif isinstance(node, exp.Is) and not isinstance(node.expression, exp.Null):
        _refuse(
            f"IS {_snippet(node.expression)} is not allowed in a {context}; only IS [NOT] NULL "
            f"is (compare with = TRUE instead)",
            "IS",
            node,
        )
    elif isinstance(node, exp.In):
        for part in ("query", "unnest", "field"):
            value = node.args.get(part)
            if isinstance(value, exp.Expression):
                _refuse_node(value, context)
        if not node.expressions:
            _refuse(f"an empty IN list is not allowed in a {context}", "IN", node)
    elif isinstance(node, exp.Between) and node.args.get("symmetric"):
        _refuse(f"BETWEEN SYMMETRIC is not allowed in a {context}", "BETWEEN SYMMETRIC", node)
    elif isinstance(node, exp.Escape):
        escape = node.expression
        if not isinstance(node.this, exp.Like):
            _refuse(f"ESCAPE is only allowed after LIKE in a {context}", "ESCAPE", node)
        if not (isinstance(escape, exp.Literal) and escape.is_string and len(escape.this) == 1):
            _refuse(f"ESCAPE takes a one-character string in a {context}", "ESCAPE", node)
    elif isinstance(node, exp.Cast):  # Cast and TryCast
        _check_cast(node, context)
    elif isinstance(node, exp.Round):
        decimals = node.args.get("decimals")
        if decimals is not None and not _is_int_literal(decimals):
            _refuse(
                f"round() takes an integer literal as its second argument in a {context}",
                "round",
                node,
            )
    elif isinstance(node, exp.Case) and not node.args.get("ifs"):
        _refuse(f"CASE without WHEN is not allowed in a {context}", "CASE", node)

    for arg in rule.children:
        if node.arg_types.get(arg) and node.args.get(arg) in (None, []):
            _, phrase, _extra = _describe(node)
            _refuse(f"incomplete {phrase} in a {context}", "syntax", node)
    for arg, value in node.args.items():
        if (
            arg in rule.children
            or arg in rule.flags
            or (arg == "to" and isinstance(node, exp.Cast))
        ):
            continue
        if value is None or value is False or value == []:
            continue
        if isinstance(value, exp.Expression):
            _refuse_node(value, context)
        if isinstance(value, list) and isinstance(value[0], exp.Expression):
            _refuse_node(value[0], context)
        _, phrase, _extra = _describe(node)
        _refuse(f"{phrase} with {arg} is not allowed in a {context}", arg, node)
    return rule


def _check_structure(tree: exp.Expression, context: str) -> None:
    """The allowlist walk: every node, iteratively (an AND chain may be thousands long)."""
    stack: list[tuple[exp.Expression, exp.Expression | None, str | None, int]] = [
        (tree, None, None, 1)
    ]
    while stack:
        node, parent, key, depth = stack.pop()
        rule = _check_node(node, parent, key, context)
        if depth > MAX_NESTING_DEPTH:
            _refuse(
                f"the {context} is nested deeper than {MAX_NESTING_DEPTH} levels",
                "nesting",
                node,
            )
        for arg in reversed(rule.children):
            value = node.args.get(arg)
            children = value if isinstance(value, list) else [value]
            for child in reversed(children):
                if not isinstance(child, exp.Expression):
                    continue
                # A run of one connector is one level to a reader (and to sqlglot and DuckDB,
                # which handle those runs without recursion); identifiers are part of a column.
                same_run = isinstance(node, exp.Connector) and type(child) is type(node)
                flat = same_run or isinstance(child, exp.Identifier)
                stack.append((child, node, arg, depth if flat else depth + 1))


# -- typing ------------------------------------------------------------------------------------


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _chain(node: exp.Expression) -> list[exp.Expression]:
    """Operands of a run of one connector (``a AND b AND c``), left to right, iteratively."""
    cls = type(node)
    operands: list[exp.Expression] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if type(current) is cls:
            stack.append(current.expression)
            stack.append(current.this)
        else:
            operands.append(current)
    return operands


def reserved_column(column: exp.Column) -> str | None:
    """The reserved column ``column`` names (unquoted: any case), or None for a property.

    >>> reserved_column(exp.column("Event_Name"))
    'event_name'
    >>> print(reserved_column(exp.column("Event_Name", quoted=True)))
    None
    """
    ident = column.this
    name = str(ident.this)
    key = name if ident.quoted else name.lower()
    return key if key in RESERVED_COLUMNS else None


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 literal as a naive UTC datetime (offsets converted), or ValueError.

    >>> parse_timestamp("2024-05-01T12:00:00+02:00")
    datetime.datetime(2024, 5, 1, 10, 0)
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


_Want: TypeAlias = ValueType | Literal["raw"] | None  # "raw": a property's JSON text, for CAST

_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
_NUMERIC_FUNCTIONS = (exp.Abs, exp.Floor, exp.Ceil)


class _Typer:
    """Infers the type of every node; ``None`` means "decided by the context" (properties)."""

    def __init__(self, context: str) -> None:
        self.context = context
        self.types: dict[int, ValueType | None] = {}
        # Comparison-like nodes (=, IN, BETWEEN, simple CASE) -> the type their operands share.
        self.groups: dict[int, ValueType | None] = {}

    def infer(self, node: exp.Expression) -> ValueType | None:
        found = self._infer(node)
        self.types[id(node)] = found
        return found

    def require(self, node: exp.Expression, want: ValueType, user: exp.Expression) -> None:
        found = self.infer(node)
        if found is not None and found != want:
            _refuse(
                f"type mismatch in a {self.context}: {_snippet(node)!r} is a {found}, but "
                f"{_snippet(user)!r} needs a {want} there",
                "type mismatch",
                node,
            )

    def unify(
        self, user: exp.Expression, operands: Sequence[exp.Expression], verb: str = "compares"
    ) -> ValueType | None:
        found = [(operand, self.infer(operand)) for operand in operands]
        kinds = {kind for _, kind in found if kind is not None}
        if ValueType.TIMESTAMP in kinds:
            # Properties hold no timestamps (a JSON string is not one), so comparing one with
            # `timestamp` is refused rather than guessed at.
            for operand, kind in found:
                if kind is None and not isinstance(_unparen(operand), exp.Null):
                    _refuse(
                        f"type mismatch in a {self.context}: {_snippet(user)!r} compares timestamp "
                        f"with {_snippet(operand)!r}; compare timestamp with a literal such as "
                        f"'2024-05-01T00:00:00Z'",
                        "type mismatch",
                        user,
                    )
        if not kinds:
            return None
        if len(kinds) == 1:
            return kinds.pop()
        if kinds == {ValueType.TIMESTAMP, ValueType.STRING}:
            strings = [operand for operand, kind in found if kind == ValueType.STRING]
            if all(isinstance(_unparen(s), exp.Literal) for s in strings):
                for literal in strings:
                    self._timestamp_literal(_unparen(literal))
                return ValueType.TIMESTAMP
        typed = [(o, k) for o, k in found if k is not None]
        first, first_kind = typed[0]
        second, second_kind = next((o, k) for o, k in typed if k != first_kind)
        _refuse(
            f"type mismatch in a {self.context}: {_snippet(user)!r} {verb} "
            f"{_snippet(first)!r} (a {first_kind}) with {_snippet(second)!r} (a {second_kind})",
            "type mismatch",
            user,
        )

    def _timestamp_literal(self, literal: exp.Expression) -> None:
        try:
            parse_timestamp(str(literal.this))
        except ValueError:
            _refuse(
                f"{_snippet(literal)} is not a valid timestamp in a {self.context}; use ISO 8601, "
                f"e.g. '2024-05-01T00:00:00Z'",
                "timestamp literal",
                literal,
            )

    def _infer(self, node: exp.Expression) -> ValueType | None:
        number, string, boolean = ValueType.NUMBER, ValueType.STRING, ValueType.BOOLEAN
        if isinstance(node, exp.Column):
            reserved = reserved_column(node)
            return RESERVED_COLUMNS[reserved] if reserved else None
        if isinstance(node, exp.Literal):
            return string if node.is_string else number
        if isinstance(node, exp.Boolean):
            return boolean
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Paren):
            return self.infer(node.this)
        if isinstance(node, exp.And | exp.Or):
            for operand in _chain(node):
                self.require(operand, boolean, node)
            return boolean
        if isinstance(node, exp.Not):
            self.require(node.this, boolean, node)
            return boolean
        if isinstance(node, _COMPARISONS):
            self.groups[id(node)] = self.unify(node, [node.this, node.expression])
            return boolean
        if isinstance(node, exp.In):
            self.groups[id(node)] = self.unify(node, [node.this, *node.expressions])
            return boolean
        if isinstance(node, exp.Between):
            operands = [node.this, node.args["low"], node.args["high"]]
            self.groups[id(node)] = self.unify(node, operands)
            return boolean
        if isinstance(node, exp.Like):
            self.require(node.this, string, node)
            self.require(node.expression, string, node)
            return boolean
        if isinstance(node, exp.Escape):
            self.require(node.this, boolean, node)
            return boolean
        if isinstance(node, exp.Is):
            self.infer(node.this)
            return boolean
        if isinstance(node, exp.Neg):
            self.require(node.this, number, node)
            return number
        if isinstance(node, _ARITHMETIC):
            self.require(node.this, number, node)
            self.require(node.expression, number, node)
            return number
        if isinstance(node, (*_NUMERIC_FUNCTIONS, exp.Round)):
            self.require(node.this, number, node)
            return number
        if isinstance(node, exp.Lower | exp.Upper):
            self.require(node.this, string, node)
            return string
        if isinstance(node, exp.Length):
            self.require(node.this, string, node)
            return number
        if isinstance(node, exp.Coalesce):
            return self.unify(node, [node.this, *node.expressions], "mixes")
        if isinstance(node, exp.Case):
            branches: list[exp.Expression] = node.args["ifs"]
            if node.this is not None:
                whens = [branch.this for branch in branches]
                self.groups[id(node)] = self.unify(node, [node.this, *whens])
            else:
                for branch in branches:
                    self.require(branch.this, boolean, node)
            results = [branch.args["true"] for branch in branches]
            default = node.args.get("default")
            return self.unify(node, results + ([default] if default else []), "mixes")
        if isinstance(node, exp.Cast):
            source = self.infer(node.this)
            target = _CAST_TARGETS[node.to.this]
            if source == ValueType.TIMESTAMP and target != string:
                _refuse(
                    f"timestamp can only be cast to a string in a {self.context}",
                    "cast",
                    node,
                )
            return target
        raise AssertionError(f"unchecked node {node.key}")  # the allowlist walk runs first


def _type_check(tree: exp.Expression, context: str) -> _Typer:
    _check_structure(tree, context)
    typer = _Typer(context)
    typer.infer(tree)
    return typer


def validate_expression(tree: exp.Expression, *, context: str = "filter") -> None:
    """Refuse ``tree`` unless it is a well-typed expression of the grammar (any type).

    The allowlist and type checks shared by filters and metrics; ``context`` names the user's
    construct in messages ("filter", "metric"). Raises :class:`ConstraintViolation`.

    >>> validate_expression(sqlglot.parse_one("tokens * 2", read="duckdb"), context="metric")
    >>> validate_expression(sqlglot.parse_one("sum(tokens)", read="duckdb"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.errors.ConstraintViolation: aggregate function 'sum' is not allowed in a filter ...
    """
    _type_check(tree, context)


def infer_type(tree: exp.Expression, *, context: str = "filter") -> ValueType | None:
    """The type ``tree`` yields, or None when it depends on property values (``coalesce(a, b)``).

    >>> infer_type(sqlglot.parse_one("length(model) + 1", read="duckdb"))
    <ValueType.NUMBER: 'number'>
    """
    return _type_check(tree, context).types[id(tree)]


def properties_referenced(tree: exp.Expression) -> frozenset[str]:
    """Names of the properties ``tree`` reads (reserved columns excluded).

    >>> sorted(properties_referenced(parse_filter('"a b" = 1 AND event_name = c').tree))
    ['a b', 'c']
    """
    return frozenset(
        str(column.this.this)
        for column in tree.find_all(exp.Column)
        if isinstance(column.this, exp.Identifier) and reserved_column(column) is None
    )


# -- parsing -----------------------------------------------------------------------------------

_PARSE_LOCK = threading.Lock()
# sqlglot's recursive-descent parser spends ~25 Python frames per nesting level; 64 levels need
# ~1 700 frames, above CPython's default limit of 1 000. The token scan below bounds the depth
# first, so the raised limit is never approached by a text that reaches the parser.
_PARSE_RECURSION_LIMIT = 4_000

# Tokens after which '-', '+' or NOT start a new operand rather than continue one.
_OPERAND_ENDS = frozenset(
    {
        TokenType.NUMBER,
        TokenType.STRING,
        TokenType.VAR,
        TokenType.IDENTIFIER,
        TokenType.R_PAREN,
        TokenType.END,
        TokenType.TRUE,
        TokenType.FALSE,
        TokenType.NULL,
    }
)
_UNARY_TOKENS = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS, TokenType.TILDE})


def _token_fields(token: Token) -> dict[str, int]:
    return {"line": token.line, "col": token.col, "start": token.start, "end": token.end}


def _scan_tokens(text: str, tokens: Sequence[Token], context: str) -> None:
    """Refuse comments, ';', odd spacing and deep nesting before the recursive parser runs."""
    for commented in tokens:
        if commented.comments:
            raise ConstraintViolation(
                f"comments are not allowed in a {context}",
                construct="comment",
                **_token_fields(commented),
            )
    depth = 0
    unary_run = 0
    previous: Token | None = None
    for token in [*tokens, None]:
        if token is not None and token.token_type == TokenType.COMMAND:
            # sqlglot reads the rest of a command (CALL, EXPLAIN...) as one string token with
            # odd offsets; name the statement rather than a character of its text.
            word = token.text
            raise ConstraintViolation(
                f"{word.upper()} statements are not allowed in a {context} (a property named "
                f'{word.lower()!r} must be quoted: "{word.lower()}")',
                construct="statement",
                **_token_fields(token),
            )
        # Between tokens only ASCII spacing: sqlglot also skips no-break and other Unicode
        # spaces, which would let a filter read differently from how it looks.
        gap_start = previous.end + 1 if previous is not None else 0
        gap_end = token.start if token is not None else len(text)
        for offset in range(gap_start, gap_end):
            if text[offset] not in " \t\r\n":
                raise ConstraintViolation(
                    f"the {context} contains the character {_char_name(text[offset])} at "
                    f"offset {offset}, which is not allowed; separate words with plain spaces",
                    construct="character",
                    start=offset,
                )
        if token is None:
            break
        if token.token_type == TokenType.SEMICOLON:
            raise ConstraintViolation(
                f"multiple statements are not allowed in a {context}: ';' ends a statement and "
                f"a {context} is a single condition",
                construct="multiple statements",
                **_token_fields(token),
            )
        if token.token_type in (TokenType.L_PAREN, TokenType.CASE):
            depth += 1
        elif token.token_type in (TokenType.R_PAREN, TokenType.END):
            depth = max(depth - 1, 0)
        prefix = previous is None or previous.token_type not in _OPERAND_ENDS
        unary_run = unary_run + 1 if token.token_type in _UNARY_TOKENS and prefix else 0
        if depth + unary_run > MAX_NESTING_DEPTH:
            raise ConstraintViolation(
                f"the {context} is nested deeper than {MAX_NESTING_DEPTH} levels",
                construct="nesting",
                **_token_fields(token),
            )
        previous = token


def _check_text(text: str, context: str) -> None:
    if len(text) > MAX_FILTER_LENGTH:
        raise ConstraintViolation(
            f"the {context} is {len(text)} characters long; at most {MAX_FILTER_LENGTH} are "
            f"allowed",
            construct="length",
        )
    if not text.strip():
        raise ConstraintViolation(f"the {context} is empty", construct="empty")
    for offset, char in enumerate(text):
        category = unicodedata.category(char)
        if char in _BIDI or category == "Cs" or (category == "Cc" and char not in "\t\n\r"):
            raise ConstraintViolation(
                f"the {context} contains the character {_char_name(char)} at offset {offset}, "
                f"which is not allowed",
                construct="character",
                start=offset,
            )


def _parse(text: str, context: str) -> exp.Expression:
    dialect = sqlglot.Dialect.get_or_raise(DIALECT)
    try:
        tokens = dialect.tokenize(text)
    except TokenError as error:
        raise ConstraintViolation(
            f"the {context} could not be read (an unterminated string or quoted name?): {error}",
            construct="syntax",
        ) from None
    if not tokens:  # whitespace was refused earlier, so the text was only a comment
        raise ConstraintViolation(f"comments are not allowed in a {context}", construct="comment")
    _scan_tokens(text, tokens, context)
    with _PARSE_LOCK:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _PARSE_RECURSION_LIMIT))
        try:
            statements = dialect.parser().parse(tokens, text)
        except ParseError as error:
            first = error.errors[0] if error.errors else {}
            where = {k: first[k] for k in ("line", "col") if isinstance(first.get(k), int)}
            description = str(first.get("description") or error).split("\n")[0]
            near = first.get("highlight")
            detail = f"the {context} could not be parsed: {description}"
            if where:
                detail += f" (line {where.get('line')}, column {where.get('col')}"
                detail += f", near {near!r})" if near else ")"
            raise ConstraintViolation(detail, construct="syntax", **where) from None
        except RecursionError:
            raise ConstraintViolation(
                f"the {context} is nested too deeply", construct="nesting"
            ) from None
        finally:
            sys.setrecursionlimit(limit)
    if len(statements) != 1:
        raise ConstraintViolation(
            f"multiple statements are not allowed in a {context}", construct="multiple statements"
        )
    tree = statements[0]
    if not isinstance(tree, exp.Expression):
        raise ConstraintViolation(f"the {context} is empty", construct="empty")
    return tree


def parse_statement(text: str, context: str) -> exp.Expression:
    """Check and parse one statement of user SQL (a metric) with the filter's text rules:
    length, characters, spacing, comments, ``;`` and nesting depth are refused before the
    recursive parser runs, so parse time and stack depth are bounded whatever the text.

    >>> parse_statement("SELECT 1 -- x", "metric")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.errors.ConstraintViolation: comments are not allowed in a metric
    """
    _check_text(text, context)
    return _parse(text, context)


def parse_filter(text: str) -> Filter:
    """Parse and check a filter; refuse anything outside the grammar with a 400.

    >>> parse_filter("tokens + 1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.errors.ConstraintViolation: a filter must be a boolean condition; 'tokens + 1' is ...
    """
    if not isinstance(text, str):
        raise ConstraintViolation("a filter must be a string", construct="type")
    _check_text(text, "filter")
    tree = _parse(text, "filter")
    typer = _type_check(tree, "filter")
    kind = typer.types[id(tree)]
    if kind not in (ValueType.BOOLEAN, None):
        _refuse(
            f"a filter must be a boolean condition; {_snippet(tree)!r} is a {kind}",
            "not a condition",
            tree,
        )
    # Translate once now: a filter too large to translate is refused when the backfill is
    # created, not later when it closes or at every live ingest after that.
    _Translator(typer, None, "filter").tr(tree, ValueType.BOOLEAN)
    return Filter(text=text, tree=tree)


# -- translation -------------------------------------------------------------------------------


def property_path(name: str) -> str:
    """The JSON Pointer (RFC 6901) that addresses property ``name`` in DuckDB's JSON functions.

    >>> property_path("a/b~c.d")
    '/a~1b~0c.d'
    """
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _call(name: str, *args: exp.Expression) -> exp.Expression:
    # Anonymous keeps the call as written: sqlglot's JSONExtract would rewrite the path.
    return exp.Anonymous(this=name, expressions=list(args))


# Operators whose operands get parentheses in the output. sqlglot and DuckDB disagree on some
# precedences (DuckDB refuses `x > 0 = b`, which sqlglot prints from `(x > 0) = b`), so the
# translation never relies on them: an operator under an operator is always parenthesized.
_OPERATORS = (exp.Binary, exp.Not, exp.Neg, exp.In, exp.Between)


def _wrap(node: exp.Expression) -> exp.Expression:
    signed_literal = isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal)
    if isinstance(node, _OPERATORS) and not signed_literal:
        return exp.Paren(this=node)
    return node


def _nonzero_literal(node: exp.Expression) -> bool:
    node = _unparen(node)
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and node.is_number and float(str(node.this)) != 0


def _double(node: exp.Expression) -> exp.Expression:
    return exp.Cast(this=node, to=exp.DataType.build("DOUBLE"))


class _Translator:
    def __init__(self, typer: _Typer, table: str | None, context: str = "filter") -> None:
        self.typer = typer
        self.table = exp.to_identifier(table) if table is not None else None
        self.context = context
        self.size = 0  # nodes built so far, roughly: see MAX_TRANSLATED_SIZE

    def spend(self, nodes: int, node: exp.Expression) -> None:
        """Count ``nodes`` more output nodes; refuse once the translation outgrows its budget.

        Comparing properties with properties renders each operand three times (as numbers,
        strings and booleans), and a simple CASE over properties does so for its operand in
        every branch, so nesting them multiplies: a 150-character filter once rendered 600 KB
        of SQL in 3 s, and each further level tripled both. The budget stops that early."""
        self.size += nodes
        if self.size > MAX_TRANSLATED_SIZE:
            _refuse(
                f"the {self.context} is too complex: its translation exceeds "
                f"{MAX_TRANSLATED_SIZE} nodes (comparisons between properties, and simple CASE "
                f"over properties, are rendered once per value type, so nesting them multiplies "
                f"the size)",
                "complexity",
                node,
            )

    def column(self, name: str, *, quoted: bool = False) -> exp.Column:
        return exp.Column(
            this=exp.to_identifier(name, quoted=quoted or None),
            table=self.table.copy() if self.table is not None else None,
        )

    def property(self, name: str, want: _Want) -> exp.Expression:
        """The property as ``want``: its value when the stored JSON value has that type, else
        NULL.

        Numbers: measured on 2M events of 4-5 mixed-type properties, DuckDB 1.5.5,
        ``count(*) WHERE p > 500``, best of 15 on 2 threads (best of 11 on 1 thread of a busy
        machine in brackets): TRY_CAST(CAST(json_extract AS TEXT) AS DOUBLE) 187 ms (391);
        json_type gate + CAST(json_extract_string) 216 ms (459); json_type gate +
        CAST(json_extract) 237 ms (506), 309 ms (655) with a '$."p"' path instead of '/p';
        json_type of the extracted value 328 ms (698). The first is kept, and is correct because
        a JSON string's text starts with a quote and 'true'/'false' are not numbers, so only
        JSON numbers cast."""
        self.spend(_PROPERTY_READ_SIZE, exp.column(name, quoted=True))
        props = self.column(_PROPERTIES_COLUMN)
        path = exp.Literal.string(property_path(name))
        extracted = _call("json_extract", props, path)
        if want is None:  # presence only (IS NULL) or an untyped context
            return extracted
        if want == "raw":
            return _call("json_extract_string", props, path)
        if want == ValueType.NUMBER:
            return exp.TryCast(this=exp.cast(extracted, "VARCHAR"), to=exp.DataType.build("DOUBLE"))
        if want == ValueType.STRING:
            # json_type gate 210 ms vs a starts_with('"') gate 215 ms vs json_type of the
            # extracted value 322 ms (same setup as above).
            is_string = exp.EQ(
                this=_call("json_type", props.copy(), path.copy()),
                expression=exp.Literal.string("VARCHAR"),
            )
            return exp.Case(
                ifs=[exp.If(this=is_string, true=_call("json_extract_string", props, path))]
            )
        if want == ValueType.BOOLEAN:
            # Matching the JSON text 196 ms vs a json_type gate 222 ms.
            return exp.Case(
                this=exp.cast(extracted, "VARCHAR"),
                ifs=[
                    exp.If(this=exp.Literal.string("true"), true=exp.true()),
                    exp.If(this=exp.Literal.string("false"), true=exp.false()),
                ],
            )
        raise AssertionError(f"property {name!r} as {want}")  # typing refuses the rest

    def own(self, node: exp.Expression) -> ValueType | None:
        return self.typer.types.get(id(node))

    def is_double(self, node: exp.Expression) -> bool:
        """Whether DuckDB will type the translation of ``node`` as DOUBLE (or NULL)."""
        node = _unparen(node)
        if isinstance(node, (exp.Column, exp.Null, *_ARITHMETIC, *_NUMERIC_FUNCTIONS, exp.Round)):
            return True
        if isinstance(node, exp.Neg):
            return self.is_double(node.this)
        if isinstance(node, exp.Cast):
            return bool(node.to.this in _DOUBLE_TARGETS)
        if isinstance(node, exp.Coalesce):
            return any(self.is_double(arg) for arg in [node.this, *node.expressions])
        if isinstance(node, exp.Case):
            results = [branch.args["true"] for branch in node.args["ifs"]]
            default = node.args.get("default")
            return any(self.is_double(r) for r in results + ([default] if default else []))
        return False  # literals, length()

    def operand(self, node: exp.Expression) -> exp.Expression:
        """An arithmetic operand as DOUBLE, so that constant arithmetic cannot overflow."""
        out = self.tr(node, ValueType.NUMBER)
        return _wrap(out) if self.is_double(node) else _double(out)

    def grouped(
        self,
        group: ValueType | None,
        build: Callable[[list[exp.Expression]], exp.Expression],
        operands: Sequence[exp.Expression],
    ) -> exp.Expression:
        """A comparison-like node whose operands share the type ``group``; see the
        property-vs-property rule in the module docstring for operands that are all properties."""
        if group is not None or not any(
            isinstance(_unparen(o), exp.Column) or o.find(exp.Column) for o in operands
        ):
            return build([self.tr(o, group) for o in operands])
        kinds = (ValueType.NUMBER, ValueType.STRING, ValueType.BOOLEAN)
        alternatives = [build([self.tr(o, kind) for o in operands]) for kind in kinds]
        return exp.Coalesce(this=alternatives[0], expressions=alternatives[1:])

    def tr(self, node: exp.Expression, want: _Want) -> exp.Expression:
        self.spend(1, node)
        if isinstance(node, exp.Column):
            reserved = reserved_column(node)
            if reserved is None:
                return self.property(str(node.this.this), want)
            return self.column(reserved, quoted=reserved == "timestamp")
        if isinstance(node, exp.Literal):
            if node.is_string and want == ValueType.TIMESTAMP:
                moment = parse_timestamp(str(node.this))
                literal = exp.Literal.string(moment.isoformat(sep=" "))
                return exp.Cast(this=literal, to=exp.DataType.build("TIMESTAMP"))
            return node.copy()
        if isinstance(node, exp.Boolean | exp.Null):
            return node.copy()
        if isinstance(node, exp.Paren):
            return exp.Paren(this=self.tr(node.this, want))
        if isinstance(node, exp.And | exp.Or):
            parts = [self.tr(o, ValueType.BOOLEAN) for o in _chain(node)]
            connector = type(node)
            return functools.reduce(
                lambda left, right: connector(this=left, expression=right), parts
            )
        if isinstance(node, exp.Not):
            return exp.Not(this=_wrap(self.tr(node.this, ValueType.BOOLEAN)))
        if isinstance(node, _COMPARISONS):
            compare = type(node)
            return self.grouped(
                self.typer.groups[id(node)],
                lambda o: compare(this=_wrap(o[0]), expression=_wrap(o[1])),
                [node.this, node.expression],
            )
        if isinstance(node, exp.In):
            return self.grouped(
                self.typer.groups[id(node)],
                lambda o: exp.In(this=_wrap(o[0]), expressions=o[1:]),
                [node.this, *node.expressions],
            )
        if isinstance(node, exp.Between):
            return self.grouped(
                self.typer.groups[id(node)],
                lambda o: exp.Between(this=_wrap(o[0]), low=_wrap(o[1]), high=_wrap(o[2])),
                [node.this, node.args["low"], node.args["high"]],
            )
        if isinstance(node, exp.Like):
            return exp.Like(
                this=_wrap(self.tr(node.this, ValueType.STRING)),
                expression=_wrap(self.tr(node.expression, ValueType.STRING)),
                negate=node.args.get("negate"),
            )
        if isinstance(node, exp.Escape):
            return exp.Escape(
                this=self.tr(node.this, ValueType.BOOLEAN), expression=node.expression.copy()
            )
        if isinstance(node, exp.Is):
            return exp.Is(
                this=_wrap(self.tr(node.this, self.own(node.this))),
                expression=exp.Null(),
                negate=node.args.get("negate"),
            )
        if isinstance(node, exp.Neg):
            if isinstance(node.this, exp.Literal):
                return node.copy()  # a signed literal, not arithmetic
            return exp.Neg(this=_wrap(self.operand(node.this)))
        if isinstance(node, _ARITHMETIC):
            right = self.operand(node.expression)
            if isinstance(node, exp.Div | exp.Mod) and not _nonzero_literal(node.expression):
                # DuckDB gives inf or NaN for x / 0 (and NaN sorts above every number, so
                # `x / 0 > 1` would match); a missing divisor is NULL like a missing property.
                right = exp.Nullif(this=right, expression=exp.Literal.number(0))
            return type(node)(this=self.operand(node.this), expression=right)
        if isinstance(node, _NUMERIC_FUNCTIONS):
            return type(node)(this=self.operand(node.this))
        if isinstance(node, exp.Round):
            decimals = node.args.get("decimals")
            return exp.Round(
                this=self.operand(node.this),
                decimals=decimals.copy() if decimals is not None else None,
            )
        if isinstance(node, exp.Lower | exp.Upper | exp.Length):
            return type(node)(this=self.tr(node.this, ValueType.STRING))
        if isinstance(node, exp.Coalesce):
            kind = self.own(node) or want
            args = [self.tr(arg, kind) for arg in [node.this, *node.expressions]]
            return exp.Coalesce(this=args[0], expressions=args[1:])
        if isinstance(node, exp.Case):
            return self.case(node, self.own(node) or want)
        if isinstance(node, exp.Cast):
            source = self.own(node.this)
            value = self.tr(node.this, source if source is not None else "raw")
            # TRY_CAST always: a value that does not convert is NULL, never a failed close.
            return exp.TryCast(this=value, to=node.to.copy())
        raise AssertionError(f"untranslated node {node.key}")

    def case(self, node: exp.Case, kind: _Want) -> exp.Expression:
        branches: list[exp.If] = node.args["ifs"]
        default = node.args.get("default")
        out_default = self.tr(default, kind) if default is not None else None
        operand = node.this
        if operand is None:
            ifs = [
                exp.If(this=self.tr(b.this, ValueType.BOOLEAN), true=self.tr(b.args["true"], kind))
                for b in branches
            ]
            return exp.Case(ifs=ifs, default=out_default)
        group = self.typer.groups.get(id(node))
        if group is not None:
            return exp.Case(
                this=self.tr(operand, group),
                ifs=[
                    exp.If(this=self.tr(b.this, group), true=self.tr(b.args["true"], kind))
                    for b in branches
                ],
                default=out_default,
            )
        # All properties: CASE p WHEN q ... is CASE WHEN p = q ..., compared by the rule above.
        ifs = []
        for branch in branches:
            condition = self.grouped(
                None,
                lambda o: exp.EQ(this=_wrap(o[0]), expression=_wrap(o[1])),
                [operand, branch.this],
            )
            ifs.append(exp.If(this=condition, true=self.tr(branch.args["true"], kind)))
        return exp.Case(ifs=ifs, default=out_default)


def translate(
    tree: exp.Expression,
    *,
    table: str | None = None,
    expected: ValueType | None = None,
    context: str = "filter",
) -> exp.Expression:
    """Rewrite a grammar expression into DuckDB over the stored event columns.

    ``table`` qualifies the columns (``e.properties``, ``e."timestamp"``). ``expected`` is the
    type the caller needs (``NUMBER`` for ``sum(<expr>)``, ``BOOLEAN`` for a condition); it
    decides how bare properties read. The tree is checked again (``context`` names it in
    messages, as in :func:`validate_expression`) and never modified.

    >>> tree = parse_filter("lower(model) LIKE 'gpt%'").tree
    >>> print(translate(tree, table="e").sql(dialect="duckdb", pretty=True))
    LOWER(
      CASE
        WHEN JSON_TYPE(e.properties, '/model') = 'VARCHAR'
        THEN JSON_EXTRACT_STRING(e.properties, '/model')
      END
    ) LIKE 'gpt%'
    """
    typer = _type_check(tree, context)
    own = typer.types[id(tree)]
    if expected is not None and own is not None and own != expected:
        _refuse(f"expected a {expected}, but {_snippet(tree)!r} is a {own}", "type mismatch", tree)
    return _Translator(typer, table, context).tr(tree, expected)


def translate_filter(f: Filter, *, table: str | None = None) -> exp.Expression:
    """The filter as a DuckDB boolean expression (NULL, like FALSE, means "does not match").

    >>> print(translate_filter(parse_filter("timestamp >= '2024-05-01'")).sql(dialect="duckdb"))
    "timestamp" >= CAST('2024-05-01 00:00:00' AS TIMESTAMP)
    """
    return translate(f.tree, table=table, expected=ValueType.BOOLEAN)
