"""Ingestion: live batches (one commit each) and backfill batches (staged until close).

Every input shape (dicts, Arrow, Polars, JSONL, Parquet) becomes one DuckDB relation, is
normalized into the temporary table ``incoming`` and validated there by one query, so the
rules and their messages are the same whatever the input, and large inputs stream through
DuckDB (which spills to the store's ``tmp/``) instead of Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from engine.context import Context
from engine.errors import ConstraintViolation, RequestValidationError
from engine.filters import parse_filter, translate_filter
from engine.keys import prefixes_repeat
from engine.models import Backfill, IngestResult, Keys
from engine.queries import (
    EVENT_COLUMNS,
    ORDINAL_COLUMN,
    REPEATED_KEYS,
    UNKNOWN_FIELDS_COLUMN,
    bind,
    create_temp_table,
    customer_scope,
    deprecation_rows,
    first_copies,
    in_storage_order,
    ingest_problems,
    insert_rows,
    normalized_input,
    supersession_rows,
    union_all,
)
from engine.schema import BACKFILLS, DEPRECATIONS, STAGED_EVENTS, STORED_EVENTS, SUPERSESSIONS
from engine.storage import Storage
from engine.usage import Usage

__all__ = ["AmendmentIngestor", "Ingestor"]


_INPUT_VIEW = "incoming_input"
_KNOWN_COLUMNS = frozenset({*EVENT_COLUMNS, ORDINAL_COLUMN, UNKNOWN_FIELDS_COLUMN})
_EVENT_FIELDS = frozenset(EVENT_COLUMNS)

# Each line read as one JSON object, so unknown fields can be named like in other inputs.
_READ_JSONL = """
SELECT json_extract_string(o.json, '$.idempotency_key') AS idempotency_key,
       json_extract_string(o.json, '$.event_name') AS event_name,
       json_extract_string(o.json, '$.timestamp') AS "timestamp",
       json_extract_string(o.json, '$.customer_id') AS customer_id,
       json_extract_string(o.json, '$.external_customer_id') AS external_customer_id,
       json_extract(o.json, '$.properties') AS properties,
       list_filter(json_keys(o.json), k -> NOT list_contains(:fields, k)) AS __unknown_fields
FROM read_ndjson_objects(:path) AS o
"""
_READ_PARQUET = "SELECT * FROM read_parquet(:path)"
_READ_CSV = "SELECT * FROM read_csv(:path, header = TRUE, all_varchar = TRUE)"


@dataclass(frozen=True)
class _Problem:
    ordinal: int
    idempotency_key: str | None
    message: str


def _duration(value: timedelta) -> str:
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{hours} h" if hours else "",
        f"{minutes} min" if minutes else "",
        f"{seconds} s" if seconds else "",
    ]
    return " ".join(p for p in parts if p) or "0 s"


def _timestamp_text(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()  # no zone: refused by validation, with this text shown
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value if value is None or isinstance(value, str) else str(value)


def _dicts_to_arrow(events: Iterable[Mapping[str, Any]]) -> tuple[pa.Table, list[_Problem]]:
    """Orb-shaped dicts as an Arrow table of text columns, plus problems only Python can see."""
    columns: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}
    problems: list[_Problem] = []
    for ordinal, event in enumerate(events, start=1):
        if not isinstance(event, Mapping):
            problems.append(_Problem(ordinal, None, f"event {ordinal} is not an object"))
            event = {}
        key = event.get("idempotency_key")
        label = key if isinstance(key, str) else None
        for unknown in sorted(set(map(str, event)) - _EVENT_FIELDS):
            problems.append(_Problem(ordinal, label, f"unknown field {unknown!r}"))
        for name in ("idempotency_key", "event_name", "customer_id", "external_customer_id"):
            value = event.get(name)
            if value is not None and not isinstance(value, str):
                problems.append(_Problem(ordinal, label, f"{name} must be a string"))
                value = None
            columns[name].append(value)
        columns["timestamp"].append(_timestamp_text(event.get("timestamp")))
        properties = event.get("properties")
        columns["properties"].append(_properties_json(properties, ordinal, label, problems))
    table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
    return table, problems


def _properties_json(
    properties: Any, ordinal: int, label: str | None, problems: list[_Problem]
) -> str | None:
    if properties is None:
        return None
    if not isinstance(properties, Mapping):
        return json.dumps(properties)  # validation names it: not an object
    clean: dict[str, Any] = {}
    for name, value in properties.items():
        if not isinstance(name, str):
            problems.append(_Problem(ordinal, label, f"property name {name!r} must be a string"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(_Problem(ordinal, label, f"property {name!r} must be a finite number"))
        elif value is None or isinstance(value, (str, int, float, bool, dict, list)):
            clean[name] = value  # nesting and null are named by the validation query
        else:
            problems.append(
                _Problem(
                    ordinal,
                    label,
                    f"property {name!r} must be a string, number or boolean, "
                    f"not {type(value).__name__}",
                )
            )
    return json.dumps(clean, separators=(",", ":"), sort_keys=True)


class Ingestor:
    """Validates and writes ingest batches; used by ``Store.ingest`` and event amendments."""

    def __init__(self, context: Context, usage: Usage) -> None:
        self._context = context
        self._usage = usage

    def ingest(self, events: Any, *, backfill: Backfill | None) -> IngestResult:
        """Validate the whole batch, then write it (live: one commit) or stage it (backfill).

        Call inside ``storage.write()`` with ``backfill`` already checked to accept events.
        """
        storage = self._context.storage
        keys = self._context.keys
        repeats, entries = self._validate(events, backfill=backfill)
        # a live batch's version, read once: the key lookups need the newest committed one
        version = self._context.next_version() if backfill is None else None
        stored_restriction = None
        if version is not None:
            stored_restriction = keys.stored_rows(entries, newest=version - 1)
            # the rows this commit stores are some of the batch's
            keys.will_store(version, entries)
        candidates = first_copies(
            backfill_id=backfill.id if backfill else None,
            all_keys_distinct=not repeats,
            stored_restriction=stored_restriction,
        )
        if repeats or stored_restriction != exp.false():
            # the lookups' answer is read up to four times below: look up once
            storage.execute(create_temp_table("first_copies", candidates))
            candidates = exp.select("*").from_("first_copies")
        # else every key is new and once in the batch, which is read as it is (copying a 1M-row
        # batch took 0.23 s)
        assert isinstance(candidates, exp.Query)
        keys = storage.arrow(
            exp.select("idempotency_key", "duplicate", "stored_before")
            .from_(candidates.subquery("c"))
            .order_by("ordinal")
        )
        duplicate = keys.column("duplicate")
        # A live event may carry the key of a backfill's event: it becomes the newest version.
        supersedes = pc.any(pc.and_(pc.invert(duplicate), keys.column("stored_before"))).as_py()
        offered = keys.column("idempotency_key")
        written = Keys(pc.filter(offered, pc.invert(duplicate)))
        duplicates = Keys(pc.filter(offered, duplicate))
        if written:
            new_events = bind(
                'SELECT idempotency_key, event_name, "timestamp", customer_id, '
                "external_customer_id, properties FROM candidates WHERE NOT duplicate",
                ctes={"candidates": candidates},
            )
            if version is not None:
                superseded_keys = (
                    bind(
                        "SELECT idempotency_key FROM candidates "
                        "WHERE NOT duplicate AND stored_before",
                        ctes={"candidates": candidates},
                    )
                    if supersedes
                    else None
                )
                self._write_live(
                    new_events,
                    version=version,
                    kind="event",
                    count=len(written),
                    superseding=superseded_keys,
                )
            else:
                assert backfill is not None
                self._stage(backfill, new_events, count=len(written))
        return IngestResult(ingested=written, duplicates=duplicates)

    def validate_only(self, events: Any, *, backfill: Backfill | None) -> int:
        """Load ``events`` into ``incoming`` and raise if any rule fails.

        Returns how many keys occur more than once in the batch (identical copies).
        """
        return self._validate(events, backfill=backfill)[0]

    def _validate(
        self, events: Any, *, backfill: Backfill | None
    ) -> tuple[int, npt.NDArray[np.uint64]]:
        """:meth:`validate_only`, also returning the key index entries of the batch's rows."""
        storage = self._context.storage
        problems = self._load(events)
        entries = self._context.keys.entries(
            bind('SELECT idempotency_key, "timestamp" FROM incoming')
        )
        repeated = bind(REPEATED_KEYS)
        # Keys can repeat only where their hashes' prefixes do. Grouping 1M keys to find none
        # took 0.11-0.18 s; the entries take 0.1 s and spare the key index its own hash query
        # and, once this commit succeeds, reading the commit's rows back (0.1 s).
        may_repeat = prefixes_repeat(entries)
        if not may_repeat:
            assert isinstance(repeated, exp.Select)
            repeated = repeated.where(exp.false())
        storage.execute(create_temp_table("repeated_keys", repeated))
        problems += self._problems(backfill)
        if problems:
            raise _rejection(problems)
        if not may_repeat:
            return 0, entries
        repeats = storage.one(bind("SELECT count(*) FROM repeated_keys"))
        return (int(repeats[0]) if repeats else 0), entries

    def write_amendment(self, kind: str) -> int:
        """Write ``incoming`` (one validated row) as a live row of ``kind``; returns its version."""
        rows = bind(
            'SELECT idempotency_key, event_name, "timestamp", customer_id, '
            "external_customer_id, CAST(properties AS JSON) AS properties FROM incoming"
        )
        version = self._context.next_version()
        self._write_live(
            rows,
            version=version,
            kind=kind,
            count=1,
            superseding=bind("SELECT idempotency_key FROM incoming"),
        )
        return version

    # -- internals --------------------------------------------------------------------------

    def _load(self, events: Any) -> list[_Problem]:
        """Load ``events`` into the temp table ``incoming``; returns problems seen on the way."""
        storage = self._context.storage
        problems: list[_Problem] = []
        source: exp.Expr
        if isinstance(events, (str, Path)):
            source = _file_scan(Path(events))
        else:
            if isinstance(events, pa.Table):
                table = events
            elif hasattr(events, "to_arrow") and hasattr(events, "schema"):  # polars DataFrame
                table = events.to_arrow()
            elif isinstance(events, Mapping):
                raise ConstraintViolation("events must be a list of event objects, not one object")
            else:
                table, problems = _dicts_to_arrow(events)
            if ORDINAL_COLUMN not in table.column_names:
                table = table.append_column(
                    ORDINAL_COLUMN, pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))
                )
            storage.register(_INPUT_VIEW, table)
            source = exp.select("*").from_(_INPUT_VIEW)
        description = f"file {str(events)!r}" if isinstance(events, (str, Path)) else "events"
        try:
            with storage.reading_input(description):
                types = storage.column_types(source)
                unknown = sorted(set(types) - _KNOWN_COLUMNS)
                if unknown:
                    raise ConstraintViolation(
                        f"unknown event field(s) {', '.join(map(repr, unknown))} in {description}; "
                        f"events have {', '.join(EVENT_COLUMNS)}",
                        fields=unknown,
                    )
                storage.execute(
                    create_temp_table(
                        "incoming",
                        normalized_input("source_rows", types).with_("source_rows", as_=source),
                    )
                )
        except ConstraintViolation as error:
            if isinstance(events, (str, Path)) and Path(events).suffix.lower() != ".parquet":
                _raise_bad_line(Path(events), error)
            raise
        finally:
            if not isinstance(events, (str, Path)):
                storage.unregister(_INPUT_VIEW)
        return problems

    def _problems(self, backfill: Backfill | None) -> list[_Problem]:
        context = self._context
        now = context.now()
        settings = context.settings
        scope = None
        timeframe: dict[str, Any] = {}
        if backfill is not None:
            if backfill.customer_id is not None or backfill.external_customer_id is not None:
                scope = customer_scope(backfill.customer_id, backfill.external_customer_id)
            start = backfill.timeframe_start.astimezone(UTC).replace(tzinfo=None)
            end = backfill.timeframe_end.astimezone(UTC).replace(tzinfo=None)
            timeframe = {
                "timeframe_start": start,
                "timeframe_end": end,
                "timeframe_text": f"{backfill.timeframe_start.isoformat()}, "
                f"{backfill.timeframe_end.isoformat()}",
            }
        query = ingest_problems(
            live=backfill is None and self._live_rules,
            oldest=now - settings.grace_period,
            newest=now + settings.future_tolerance,
            grace=_duration(settings.grace_period),
            tolerance=_duration(settings.future_tolerance),
            scope=scope,
            **timeframe,
        )
        rows = context.storage.rows(query)
        return [_Problem(int(o), k, m) for o, k, m in rows]

    #: False for amendments, which follow the event rules but not the live time window.
    _live_rules = True

    def _write_live(
        self,
        rows: exp.Expr,
        *,
        version: int,
        kind: str,
        count: int,
        superseding: exp.Expr | None,
    ) -> None:
        """Write ``rows`` as live rows of ``version`` (from ``Context.next_version``);
        ``superseding`` selects the keys among them that have older stored rows."""
        context = self._context
        storage = context.storage
        # looked up before this commit's rows are written (the index must not see them)
        stored_restriction = (
            context.keys.stored_rows(superseding, table="s", newest=version - 1)
            if superseding is not None
            else None
        )
        select = bind(
            "SELECT n.*, CAST(:version AS BIGINT) AS version, "
            "CAST(NULL AS VARCHAR) AS backfill_id, "
            "CAST(:kind AS VARCHAR) AS kind FROM new_events AS n",
            version=version,
            kind=kind,
            ctes={"new_events": rows},
        )
        assert isinstance(select, exp.Select)
        storage.execute(insert_rows(STORED_EVENTS, in_storage_order(select.copy())))
        if superseding is not None:
            storage.execute(
                insert_rows(
                    SUPERSESSIONS,
                    supersession_rows(
                        newer=superseding,
                        by_version=version,
                        by_backfill_id=None,
                        stored_restriction=stored_restriction,
                    ),
                )
            )
        deprecated_some = _late_deprecations(storage, select)
        if kind == "event" and superseding is None and not deprecated_some:
            self._usage.add_new_events(select)
        else:
            self._usage.refresh_changed(
                version=version, written=select, superseding=superseding is not None
            )
        context.record_commit(version, "ingest" if kind == "event" else kind, events=count)

    def _stage(self, backfill: Backfill, rows: exp.Expr, *, count: int) -> None:
        storage = self._context.storage
        select = bind(
            "SELECT CAST(:backfill_id AS VARCHAR) AS backfill_id, n.* FROM new_events AS n",
            backfill_id=backfill.id,
            ctes={"new_events": rows},
        )
        storage.execute(insert_rows(STAGED_EVENTS, select))
        storage.execute(
            bind(
                "UPDATE lake.main.backfills SET events_ingested = events_ingested + :count "
                "WHERE id = :id",
                count=count,
                id=backfill.id,
            )
        )


class AmendmentIngestor(Ingestor):
    """Event rules without the live time window (an amendment keeps its stored timestamp)."""

    _live_rules = False


_FILTERED_BACKFILLS = """
SELECT id, timeframe_start, timeframe_end, customer_id, external_customer_id, deprecation_filter
FROM lake.main.backfills
WHERE status = 'reflected' AND replace_existing_events AND deprecation_filter IS NOT NULL
"""


def _late_deprecations(storage: Storage, written: exp.Select) -> bool:
    """Deprecate the rows this commit writes (``written``, from where the writer holds them:
    live events, amendments) that a reflected filtered replace backfill covers: its filter
    keeps applying to events that arrive late. One statement for the backfills whose
    timeframe meets the rows' time span, none when no backfill's does (a live batch lies in
    the last hours, which a correction of the past rarely reaches). Returns whether it ran
    that statement."""
    filtered = storage.small_table_rows(BACKFILLS, bind(_FILTERED_BACKFILLS))
    if not filtered:
        return False
    timestamp = exp.column("timestamp", quoted=True)
    span = storage.one(
        exp.select(exp.func("min", timestamp), exp.func("max", timestamp)).from_(
            written.subquery("w")
        )
    )
    if span is None or span[0] is None:
        return False
    earliest, latest = span
    parts = [
        deprecation_rows(
            backfill_id=backfill_id,
            source=written.subquery("written"),
            timeframe_start=start,
            timeframe_end=end,
            customer_id=customer_id,
            external_customer_id=external_customer_id,
            condition=translate_filter(parse_filter(text)),
            before_version=None,
        )
        for backfill_id, start, end, customer_id, external_customer_id, text in filtered
        if start <= latest and earliest < end
    ]
    if not parts:
        return False
    storage.execute(insert_rows(DEPRECATIONS, union_all(parts)))
    return True


def _raise_bad_line(path: Path, error: ConstraintViolation) -> None:
    """Name the first line of a JSON-lines file that is not a JSON object, if there is one
    (DuckDB's own message counts lines differently)."""
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as problem:
                raise ConstraintViolation(
                    f"{path}: line {number} is malformed JSON ({problem})",
                    path=str(path),
                    line=number,
                ) from None
            if not isinstance(value, dict):
                raise ConstraintViolation(
                    f"{path}: line {number} is not a JSON object", path=str(path), line=number
                ) from error


def _file_scan(path: Path) -> exp.Expr:
    if not path.exists():
        raise ConstraintViolation(f"input file {str(path)!r} does not exist", path=str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return bind(
            _READ_JSONL,
            path=str(path),
            fields=exp.Array(expressions=[exp.convert(f) for f in EVENT_COLUMNS]),
        )
    if suffix == ".parquet":
        return bind(_READ_PARQUET, path=str(path))
    if suffix == ".csv":
        return bind(_READ_CSV, path=str(path))
    raise ConstraintViolation(
        f"cannot ingest {str(path)!r}: expected a .jsonl, .parquet or .csv file", path=str(path)
    )


def _rejection(problems: list[_Problem]) -> RequestValidationError:
    by_key: dict[str, list[str]] = {}
    for problem in sorted(problems, key=lambda p: p.ordinal):
        label = problem.idempotency_key or f"(event {problem.ordinal} without idempotency_key)"
        messages = by_key.setdefault(label, [])
        if problem.message not in messages:
            messages.append(problem.message)
    errors = [{"idempotency_key": k, "validation_errors": v} for k, v in by_key.items()]
    noun = "event" if len(errors) == 1 else "events"
    return RequestValidationError(
        f"{len(errors)} {noun} failed validation; nothing was ingested", validation_errors=errors
    )
