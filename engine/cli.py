"""The ``usage-engine`` command line (also ``python -m engine``).

Every command is a thin layer over the Python API (:mod:`engine.store`): it parses arguments,
opens the store, calls one or two API methods and prints the result, as rich tables for people
or as JSON (``--json``) for scripts. Errors print one line on stderr; the exit code says what
kind of error it was (see ``EXIT_*`` below and ``usage-engine --help``).

>>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import os
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

import engine
from engine.errors import EngineError, RequestValidationError, ResourceNotFound
from engine.maintenance import DEFAULT_FILE_GRACE, DEFAULT_RETENTION
from engine.models import Backfill, Customer, IngestResult, Metric

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "UsageError",
    "build_parser",
    "main",
]

EXIT_OK = 0
#: The engine refused the request (validation, not found, conflict) or the work failed,
#: including ``verify`` finding a mismatch.
EXIT_FAILURE = 1
#: The command line itself is wrong: unknown option, bad value, missing file, no store.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

STORE_ENV = "USAGE_ENGINE_STORE"
DEFAULT_STORE = Path("data") / "store"

#: Parquet files with more rows than this are ingested in chunks, one batch per chunk.
DEFAULT_BATCH_SIZE = 100_000
#: Piped output is not a terminal, so rich would assume 80 columns and fold ids and times in
#: tables; a wide fixed width keeps every row on one line for grep and diff.
_PIPE_WIDTH = 200
#: A failed batch lists its problems in the one error line, up to this many.
_PROBLEMS_SHOWN = 3
_INGESTIBLE = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_STORE_MARKER = "catalog.sqlite"  # the DuckLake catalog: a folder holding it is a store


class CliError(Exception):
    """An error the command line reports in one line, with its exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, detail: str, *, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.body = dict(body) if body is not None else None


class UsageError(CliError):
    """The command line is wrong (exit 2): nothing was opened or changed."""

    exit_code = EXIT_USAGE


# -- values on the command line ----------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """An aware time as ISO-8601 text ending in ``Z`` (the form every output uses).

    >>> iso(datetime(2026, 11, 25, tzinfo=UTC))
    '2026-11-25T00:00:00Z'
    """
    if moment is None:
        return None
    if moment.tzinfo is None:  # the engine returns aware times; be safe with stray naive ones
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """A time argument: ISO-8601 with a zone, or a bare date meaning 00:00 UTC that day.

    A date and time without a zone is refused, like everywhere in the engine: it does not
    say which instant it means.

    >>> iso(parse_time("2026-11-25"))
    '2026-11-25T00:00:00Z'
    >>> iso(parse_time("2026-11-25T10:00:00+01:00"))
    '2026-11-25T09:00:00Z'
    """
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2026-11-25T00:00:00Z or 2026-11-25)"
        ) from None
    if moment.tzinfo is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return moment.replace(tzinfo=UTC)
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z for UTC")
    return moment.astimezone(UTC)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """A duration like ``12h``, ``30d``, ``1d12h`` or ``90m``.

    >>> parse_duration("1d12h")
    datetime.timedelta(days=1, seconds=43200)
    """
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (a number and a unit d, h, m or s: 12h, 30d, 1d12h)"
        )
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_DURATION_UNITS[unit]: float(number)})
    return total


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _as_of(text: str) -> int | datetime:
    # A bare number is a version (what `backfills show` and the commit log print).
    return int(text) if text.isdigit() else parse_time(text)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def plain(value: Any) -> Any:
    """A value of the API (models, frames' rows, enums, times) as JSON-ready data."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.6f}".rstrip("0").rstrip(".")
    return str(value)


def _cell(value: Any) -> Text:
    # Text, not str: rich would read "[...]" in user data (filters, names) as markup.
    if isinstance(value, datetime):
        return Text(iso(value) or "")
    if isinstance(value, (int, float)) or value is None:
        return Text(_number(value))
    if isinstance(value, enum.Enum):
        return Text(str(value.value))
    if isinstance(value, Mapping):
        return Text(json.dumps(dict(value), sort_keys=True) if value else "")
    return Text(str(value))


# -- output ------------------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    """Events per second: rich's moving estimate while running, the overall rate once done."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        if not self.unit:  # work measured in steps, not events: a rate would mean nothing
            return Text("")
        speed = task.speed
        if task.finished and task.finished_time:
            speed = task.completed / task.finished_time
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else "", style="progress.data.speed")


class _CountColumn(ProgressColumn):
    """``done/total`` with thousands separators (``done`` alone while the total is unknown)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{task.completed:,.0f}")
        return Text(f"{task.completed:,.0f}/{task.total:,.0f}")


class Output:
    """Where a command prints: tables or JSON on stdout, progress and errors on stderr."""

    def __init__(self, *, json_mode: bool) -> None:
        self.json_mode = json_mode
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        self.out = Console(width=_PIPE_WIDTH if piped else None, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(plain(data), indent=2) + "\n")

    def line(self, text: str = "") -> None:
        if not self.json_mode:
            self.out.print(Text(text))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        numeric: Sequence[str] = (),
    ) -> None:
        if title:
            # Above the table rather than as its title, which rich wraps to the table's width.
            self.out.print(Text(title, style="bold"))
        if not rows:
            self.out.print(Text("(none)"))
            return
        table = Table(box=box.SIMPLE_HEAD)
        for name in columns:
            table.add_column(name, justify="right" if name in numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        self.out.print(table)

    def record(self, data: Mapping[str, Any], *, title: str | None = None) -> None:
        """One object as a two-column field / value table."""
        self.table(["field", "value"], list(data.items()), title=title)

    def frame(self, frame: pl.DataFrame, *, title: str | None = None) -> None:
        numeric = [name for name, dtype in frame.schema.items() if dtype.is_numeric()]
        self.table(frame.columns, frame.rows(), title=title, numeric=numeric)

    @contextmanager
    def progress(self, unit: str = "events") -> Iterator[Progress]:
        """A progress display on stderr; silent when stderr is not a terminal (cron, pipes)."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            _CountColumn(),
            _RateColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=not self.err.is_terminal,
        )
        with bar:
            yield bar

    def error(self, error: BaseException, *, debug: bool = False) -> int:
        """Print ``error`` as one line on stderr (JSON with ``--json``); return the exit code."""
        code, detail, body = _describe(error)
        if debug and not isinstance(error, (CliError, EngineError)):
            traceback.print_exception(error, file=sys.stderr)
        if self.json_mode:
            sys.stderr.write(json.dumps({**body, "exit_code": code}) + "\n")
        else:
            # Plain write, not rich: rich would fold a long message onto several lines.
            sys.stderr.write(f"error: {detail}\n")
        sys.stderr.flush()
        return code


def _describe(error: BaseException) -> tuple[int, str, dict[str, Any]]:
    """Exit code, one-line message and JSON body of an error."""
    if isinstance(error, CliError):
        body = error.body or {
            "type": "usage_error" if error.exit_code == EXIT_USAGE else "failure",
            "detail": error.detail,
        }
        return error.exit_code, error.detail, {**body, "detail": error.detail}
    if isinstance(error, EngineError):
        return EXIT_FAILURE, _engine_detail(error), error.to_dict()
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", {"type": "interrupted", "detail": "interrupted"}
    detail = f"unexpected {type(error).__name__}: {error} (run again with --debug for a traceback)"
    return EXIT_FAILURE, " ".join(detail.split()), {"type": "internal_error", "detail": str(error)}


def _engine_detail(error: EngineError) -> str:
    detail = error.detail
    if isinstance(error, RequestValidationError) and error.validation_errors:
        problems = [
            f"{p.get('idempotency_key')}: {'; '.join(map(str, p.get('validation_errors', [])))}"
            for p in error.validation_errors
        ]
        detail += ": " + " | ".join(problems[:_PROBLEMS_SHOWN])
        if len(problems) > _PROBLEMS_SHOWN:
            detail += f" (and {len(problems) - _PROBLEMS_SHOWN} more; --json lists them all)"
    return " ".join(detail.split())  # one line, whatever the engine's message holds


# -- the store ---------------------------------------------------------------------------------


def store_path(args: argparse.Namespace) -> Path:
    """``--store``, else ``$USAGE_ENGINE_STORE``, else ``./data/store``."""
    if args.store is not None:
        return Path(args.store)
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def is_store(path: Path) -> bool:
    return (path / _STORE_MARKER).is_file()


def _open_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.now is not None:
        now: datetime = args.now
        options["clock"] = lambda: now
    if args.grace_period is not None:
        options["grace_period"] = args.grace_period
    if args.memory_limit is not None:
        options["memory_limit"] = args.memory_limit
    return options


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[engine.Store]:
    """The existing store of ``args``; a missing one is a usage error, not a new empty store
    (a typo in ``--store`` must not silently start from nothing)."""
    path = store_path(args)
    if not is_store(path):
        raise UsageError(
            f"no store at {path}; create one with `usage-engine init` "
            f"(or pass --store PATH, or set {STORE_ENV})"
        )
    with engine.open(path, **_open_options(args)) as store:
        yield store


# -- commands ----------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Output], int]


def cmd_init(args: argparse.Namespace, ui: Output) -> int:
    path = store_path(args)
    existed = is_store(path)
    if not existed and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{path} exists and is not a store; choose an empty or new folder")
    with engine.open(path, **_open_options(args)):
        pass
    if ui.json_mode:
        ui.json({"store": str(path), "created": not existed})
    elif existed:
        ui.line(f"A store already exists at {path}; nothing to do.")
    else:
        ui.line(f"Created an empty store at {path}.")
    return EXIT_OK


# customers


def _customer_row(customer: Customer) -> list[Any]:
    return [
        customer.id,
        customer.external_customer_id,
        customer.name,
        customer.email,
        customer.created_at,
    ]


_CUSTOMER_COLUMNS = ["id", "external_customer_id", "name", "email", "created_at"]


def _read_json_list(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UsageError(f"{what} file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise CliError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise CliError(f"{path} must hold a JSON list of {what} objects")
    return data


def cmd_customers_create(args: argparse.Namespace, ui: Output) -> int:
    if args.file is not None:
        if args.external_customer_id or args.name or args.email:
            raise UsageError("give --file, or the customer's fields, not both")
        wanted = _read_json_list(args.file, "customer")
        allowed = {"external_customer_id", "name", "email"}
        for item in wanted:
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise CliError(f"{args.file}: unknown customer field(s) {', '.join(unknown)}")
    else:
        wanted = [
            {
                "external_customer_id": args.external_customer_id,
                "name": args.name,
                "email": args.email,
            }
        ]
    with open_store(args) as store:
        # Refuse the whole file before creating anything when an id is taken.
        taken = {c.external_customer_id for c in store.customers.list()}
        ids = [
            str(item["external_customer_id"]) for item in wanted if item.get("external_customer_id")
        ]
        clashes = sorted({i for i in ids if i in taken or ids.count(i) > 1})
        if clashes and args.file is not None:
            raise CliError(
                f"{args.file}: external_customer_id already used: {', '.join(clashes)}; "
                "nothing was created"
            )
        created = [store.customers.create(**item) for item in wanted]
    if ui.json_mode:
        ui.json(created[0] if args.file is None else {"data": created})
    else:
        ui.table(_CUSTOMER_COLUMNS, [_customer_row(c) for c in created], title="Created")
    return EXIT_OK


def cmd_customers_list(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        customers = store.customers.list()
    if ui.json_mode:
        ui.json({"data": customers})
    else:
        ui.table(_CUSTOMER_COLUMNS, [_customer_row(c) for c in customers])
    return EXIT_OK


# metrics

_METRIC_COLUMNS = ["id", "name", "sql", "description", "metadata", "status", "created_at"]


def _metric_row(metric: Metric) -> list[Any]:
    return [
        metric.id,
        metric.name,
        metric.sql,
        metric.description,
        metric.metadata,
        metric.status,
        metric.created_at,
    ]


def resolve_metric(store: engine.Store, ref: str) -> Metric:
    """A metric by id, or by name when exactly one metric has that name."""
    try:
        return store.metrics.get(ref)
    except ResourceNotFound:
        named = [m for m in store.metrics.list() if m.name == ref]
        if len(named) == 1:
            return named[0]
        if named:
            raise CliError(
                f"{len(named)} metrics are named {ref!r}; give the id of one: "
                + ", ".join(m.id for m in named)
            ) from None
        raise ResourceNotFound(
            f"metric {ref!r} does not exist (no metric has that id or name)", metric_id=ref
        ) from None


def cmd_metrics_create(args: argparse.Namespace, ui: Output) -> int:
    if args.file is not None:
        if args.name or args.sql or args.description or args.metadata:
            raise UsageError("give --file, or --name and --sql, not both")
        wanted = _read_json_list(args.file, "metric")
        allowed = {"name", "sql", "description", "metadata"}
        for item in wanted:
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise CliError(f"{args.file}: unknown metric field(s) {', '.join(unknown)}")
    else:
        if not args.name or not args.sql:
            raise UsageError("metrics create needs --name and --sql (or --file)")
        wanted = [
            {
                "name": args.name,
                "sql": args.sql,
                "description": args.description,
                "metadata": dict(args.metadata or []),
            }
        ]
    created: list[Metric] = []
    with open_store(args) as store, ui.progress(unit="") as bar:
        for item in wanted:
            task = bar.add_task(f"materializing {item.get('name')}", total=None)

            def report(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            try:
                created.append(store.metrics.create(**item, progress=report))
            except EngineError as error:
                if len(wanted) == 1:
                    raise
                raise CliError(
                    f"metric {item.get('name')!r}: {_engine_detail(error)} "
                    f"({len(created)} of {len(wanted)} metrics were created before it)",
                    body=error.to_dict(),
                ) from None
    if ui.json_mode:
        ui.json(created[0] if args.file is None else {"data": created})
    else:
        ui.table(_METRIC_COLUMNS, [_metric_row(m) for m in created], title="Created")
    return EXIT_OK


def cmd_metrics_list(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        metrics = store.metrics.list()
    if ui.json_mode:
        ui.json({"data": metrics})
    else:
        ui.table(_METRIC_COLUMNS, [_metric_row(m) for m in metrics])
    return EXIT_OK


# ingest


@dataclass
class FileIngest:
    """What one input file did."""

    file: str
    ingested: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        total = self.ingested + self.duplicates
        return total / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: IngestResult) -> None:
        self.ingested += len(result.ingested)
        self.duplicates += len(result.duplicates)


def check_input_files(files: Sequence[Path]) -> None:
    """Refuse missing or unsupported files before the store is touched, so that a typo in
    the third file does not leave the first two ingested."""
    for path in files:
        if not path.exists():
            raise UsageError(f"input file {str(path)!r} does not exist")
        if not path.is_file():
            raise UsageError(f"input {str(path)!r} is not a file")
        if path.suffix.lower() not in _INGESTIBLE:
            raise UsageError(
                f"cannot ingest {str(path)!r}: expected a .jsonl, .parquet or .csv file"
            )


def ingest_files(
    store: engine.Store,
    files: Sequence[Path],
    *,
    backfill_id: str | None,
    batch_size: int,
    ui: Output,
) -> list[FileIngest]:
    """Ingest each file as one batch, except Parquet files longer than ``batch_size`` rows,
    which go in chunks of record batches (one batch, and one commit, per chunk) so that
    memory stays bounded and the progress bar moves."""
    results: list[FileIngest] = []
    with ui.progress() as bar:
        for path in files:
            report = FileIngest(str(path))
            results.append(report)
            started = time.perf_counter()
            if path.suffix.lower() == ".parquet":
                _ingest_parquet(store, path, backfill_id, batch_size, bar, report)
            else:
                # JSONL and CSV stream through DuckDB as one all-or-nothing batch; the engine
                # names a malformed line by its number, which chunking here would shift.
                task = bar.add_task(path.name, total=None)
                try:
                    report.add(store.ingest(path, backfill_id=backfill_id))
                except EngineError as error:
                    raise _partial(error, path, None, results) from None
                done = report.ingested + report.duplicates
                bar.update(task, total=done, completed=done)
            report.seconds = time.perf_counter() - started
    return results


def _ingest_parquet(
    store: engine.Store,
    path: Path,
    backfill_id: str | None,
    batch_size: int,
    bar: Progress,
    report: FileIngest,
) -> None:
    import pyarrow as pa  # only this command reads Parquet itself
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise CliError(f"cannot read {path} as Parquet: {error}") from None
    rows = parquet.metadata.num_rows
    task = bar.add_task(path.name, total=rows)
    if rows <= batch_size:
        try:
            report.add(store.ingest(path, backfill_id=backfill_id))
        except EngineError as error:
            raise _partial(error, path, None, [report]) from None
        bar.update(task, completed=rows)
        return
    first = 1
    for batch in parquet.iter_batches(batch_size=batch_size):
        chunk = pa.Table.from_batches([batch])
        try:
            report.add(store.ingest(chunk, backfill_id=backfill_id))
        except EngineError as error:
            raise _partial(error, path, (first, first + chunk.num_rows - 1), [report]) from None
        first += chunk.num_rows
        bar.advance(task, chunk.num_rows)


def _partial(
    error: EngineError,
    path: Path,
    chunk: tuple[int, int] | None,
    results: Sequence[FileIngest],
) -> CliError:
    """The engine's error, saying which file (and rows) failed and what went in before it."""
    where = f"{path} (rows {chunk[0]:,}-{chunk[1]:,})" if chunk else str(path)
    detail = _engine_detail(error)
    if not detail.startswith(str(path)):
        detail = f"{where}: {detail}"
    done = sum(r.ingested for r in results)
    if done:
        detail += (
            f"; {done:,} events from earlier batches were ingested (running the command "
            "again skips them as duplicates)"
        )
    return CliError(detail, body={**error.to_dict(), "detail": detail})


def _ingest_command(
    args: argparse.Namespace, ui: Output, files: Sequence[Path], backfill_id: str | None
) -> int:
    check_input_files(files)
    with open_store(args) as store:
        if backfill_id is not None:
            store.backfills.get(backfill_id)  # an unknown id fails before any file is read
        results = ingest_files(
            store, files, backfill_id=backfill_id, batch_size=args.batch_size, ui=ui
        )
    ingested = sum(r.ingested for r in results)
    duplicates = sum(r.duplicates for r in results)
    if ui.json_mode:
        ui.json(
            {
                "backfill_id": backfill_id,
                "ingested": ingested,
                "duplicates": duplicates,
                "files": [
                    {
                        "file": r.file,
                        "ingested": r.ingested,
                        "duplicates": r.duplicates,
                        "seconds": round(r.seconds, 3),
                        "events_per_second": round(r.events_per_second),
                    }
                    for r in results
                ],
            }
        )
        return EXIT_OK
    ui.table(
        ["file", "ingested", "duplicates", "seconds", "events/s"],
        [
            [r.file, r.ingested, r.duplicates, round(r.seconds, 2), round(r.events_per_second)]
            for r in results
        ],
        numeric=["ingested", "duplicates", "seconds", "events/s"],
    )
    where = (
        f"staged in backfill {backfill_id} (visible once it closes)"
        if backfill_id
        else "ingested live"
    )
    ui.line(f"{ingested:,} events {where}; {duplicates:,} duplicates skipped.")
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace, ui: Output) -> int:
    return _ingest_command(args, ui, args.files, args.backfill)


# backfills

_BACKFILL_COLUMNS = [
    "id",
    "status",
    "timeframe_start",
    "timeframe_end",
    "customer",
    "replace",
    "deprecation_filter",
    "events_ingested",
    "close_time",
]


def _backfill_row(backfill: Backfill) -> list[Any]:
    return [
        backfill.id,
        backfill.status,
        backfill.timeframe_start,
        backfill.timeframe_end,
        backfill.external_customer_id or backfill.customer_id or "(all)",
        "yes" if backfill.replace_existing_events else "no",
        backfill.deprecation_filter,
        backfill.events_ingested,
        backfill.close_time,
    ]


def _show_backfill(ui: Output, backfill: Backfill, *, title: str | None = None) -> None:
    if ui.json_mode:
        ui.json(backfill)
    else:
        ui.record(plain(backfill), title=title)


def cmd_backfills_create(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        backfill = store.backfills.create(
            timeframe_start=args.timeframe_start,
            timeframe_end=args.timeframe_end,
            customer_id=args.customer_id,
            external_customer_id=args.external_customer_id,
            replace_existing_events=args.replace_existing_events,
            deprecation_filter=args.deprecation_filter,
            close_time=args.close_time,
        )
    _show_backfill(ui, backfill, title="Created backfill (pending: nothing is visible yet)")
    ui.line(
        f"Next: usage-engine backfills ingest {backfill.id} FILE..., then "
        f"backfills preview / close {backfill.id}"
    )
    return EXIT_OK


def cmd_backfills_list(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        page = store.backfills.list(
            customer_id=args.customer_id, status=args.status, limit=args.limit, cursor=args.cursor
        )
    if ui.json_mode:
        ui.json(
            {
                "data": page.data,
                "pagination_metadata": {"has_more": page.has_more, "next_cursor": page.next_cursor},
            }
        )
        return EXIT_OK
    ui.table(_BACKFILL_COLUMNS, [_backfill_row(b) for b in page.data], numeric=["events_ingested"])
    if page.next_cursor is not None:
        ui.line(f"More: usage-engine backfills list --cursor {page.next_cursor}")
    return EXIT_OK


def cmd_backfills_show(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        backfill = store.backfills.get(args.backfill_id)
    _show_backfill(ui, backfill)
    return EXIT_OK


def cmd_backfills_ingest(args: argparse.Namespace, ui: Output) -> int:
    return _ingest_command(args, ui, args.files, args.backfill_id)


def preview_rows(store: engine.Store, preview: pl.DataFrame) -> list[dict[str, Any]]:
    """Preview rows with each metric's name beside its id, sorted by metric name, customer
    (external id) and day."""
    names = {m.id: m.name for m in store.metrics.list()}
    rows = [{"metric_name": names.get(row["metric_id"]), **row} for row in preview.to_dicts()]
    return sorted(
        rows,
        key=lambda r: (
            r["metric_name"] or "",
            r["metric_id"],
            r["external_customer_id"] or "",
            r["customer_id"] or "",
            r["timeframe_start"],
        ),
    )


def cmd_backfills_preview(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        rows = preview_rows(store, store.backfills.preview(args.backfill_id))
    if ui.json_mode:
        ui.json({"backfill_id": args.backfill_id, "data": rows})
        return EXIT_OK
    if not rows:
        ui.line(f"Closing backfill {args.backfill_id} would change no usage.")
        return EXIT_OK
    ui.table(
        ["metric", "customer", "day", "before", "after", "delta"],
        [
            [
                r["metric_name"] or r["metric_id"],
                r["external_customer_id"] or r["customer_id"],
                f"{r['timeframe_start']:%Y-%m-%d}",
                r["before"],
                r["after"],
                r["delta"],
            ]
            for r in rows
        ],
        title=f"Closing backfill {args.backfill_id} would change (nothing is written)",
        numeric=["before", "after", "delta"],
    )
    return EXIT_OK


def cmd_backfills_close(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        backfill = store.backfills.close(args.backfill_id)
    _show_backfill(ui, backfill, title="Closed: usage reflects the backfill")
    return EXIT_OK


def cmd_backfills_revert(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        backfill = store.backfills.revert(args.backfill_id)
    _show_backfill(ui, backfill, title="Reverted: the backfill no longer counts")
    return EXIT_OK


def cmd_close_due(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        closed = store.backfills.close_due()
    if ui.json_mode:
        ui.json({"data": closed})
    elif closed:
        ui.table(_BACKFILL_COLUMNS, [_backfill_row(b) for b in closed], title="Closed")
    else:
        ui.line("No pending backfill has reached its close_time.")
    return EXIT_OK


# usage


def cmd_usage(args: argparse.Namespace, ui: Output) -> int:
    granularity = None if args.granularity == "none" else args.granularity
    with open_store(args) as store:
        metric = resolve_metric(store, args.metric)
        frame = store.usage(
            metric.id,
            timeframe_start=args.timeframe_start,
            timeframe_end=args.timeframe_end,
            customer_id=args.customer_id,
            external_customer_id=args.external_customer_id,
            granularity=granularity,
            group_by=args.group_by,
            as_of=args.as_of,
        )
    if ui.json_mode:
        ui.json({"metric_id": metric.id, "metric_name": metric.name, "data": frame.to_dicts()})
        return EXIT_OK
    title = f"{metric.name} ({metric.id})"
    if args.as_of is not None:
        title += f" as of {plain(args.as_of)}"
    if frame.is_empty():
        ui.line(f"{title}: no usage in that timeframe.")
    else:
        ui.frame(frame, title=title)
    return EXIT_OK


def cmd_recompute(args: argparse.Namespace, ui: Output) -> int:
    started = time.perf_counter()
    with open_store(args) as store:
        if args.metric is not None:
            metric_id: str | None = resolve_metric(store, args.metric).id
            count = 1
        else:
            metric_id, count = None, len(store.metrics.list())
        with ui.progress(unit="") as bar:
            task = bar.add_task("recomputing usage", total=None)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            store.recompute(metric_id, progress=report)
    seconds = time.perf_counter() - started
    if ui.json_mode:
        ui.json({"metrics": count, "metric_id": metric_id, "seconds": round(seconds, 3)})
    else:
        ui.line(f"Recomputed the usage of {count} metric(s) from all events in {seconds:.1f} s.")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        mismatches = store.verify()
        metrics = len(store.metrics.list())
    if ui.json_mode:
        ui.json({"ok": not mismatches, "metrics": metrics, "mismatches": mismatches})
    elif mismatches:
        columns = list(dict.fromkeys(k for m in mismatches for k in m))
        ui.table(
            columns,
            [[m.get(c) for c in columns] for m in mismatches],
            title=f"{len(mismatches)} usage cell(s) differ from a from-scratch computation",
        )
        ui.line("Run `usage-engine recompute` to rebuild them from the events.")
    else:
        ui.line(
            f"OK: the materialized usage of {metrics} metric(s) matches a from-scratch computation."
        )
    return EXIT_FAILURE if mismatches else EXIT_OK


def cmd_compact(args: argparse.Namespace, ui: Output) -> int:
    with open_store(args) as store:
        result = store.compact(retention=args.retention, file_grace=args.file_grace)
    if ui.json_mode:
        ui.json(result)
        return EXIT_OK
    ui.table(
        ["", "before", "after"],
        [
            ["data files", result.data_files_before, result.data_files_after],
            ["data bytes", result.data_bytes_before, result.data_bytes_after],
        ],
        title="Compacted",
        numeric=["before", "after"],
    )
    ui.line(
        f"{result.files_merged} file(s) merged or rewritten, {result.snapshots_expired} "
        f"snapshot(s) expired, {result.files_deleted} unused file(s) deleted."
    )
    return EXIT_OK


# the HTTP server


def _http() -> Any:
    """``engine.http``, imported only by the commands that need it (it pulls in the web stack)."""
    try:
        return importlib.import_module("engine.http")
    except ImportError as error:
        if error.name not in (None, "engine.http"):
            raise CliError(
                f"the HTTP server cannot start: {error} (is the package installed with its "
                "dependencies?)"
            ) from None
        raise CliError(
            "the HTTP server is not available in this installation (module engine.http is missing)"
        ) from None


def cmd_serve(args: argparse.Namespace, ui: Output) -> int:
    path = store_path(args)
    if not is_store(path):
        raise UsageError(f"no store at {path}; create one with `usage-engine init`")
    http = _http()
    ui.err.print(Text(f"Serving {path} on http://{args.host}:{args.port} (Ctrl+C stops)"))
    http.serve(path, host=args.host, port=args.port, memory_limit=args.memory_limit)
    return EXIT_OK


def cmd_api_keys_create(args: argparse.Namespace, ui: Output) -> int:
    path = store_path(args)
    if not is_store(path):
        raise UsageError(f"no store at {path}; create one with `usage-engine init`")
    key = _http().create_api_key(path)
    if ui.json_mode:
        ui.json(key if isinstance(key, Mapping) else {"api_key": key})
    else:
        ui.line(f"{key}")
        ui.err.print(
            Text("Store it now: it is shown only once. Send it as `Authorization: Bearer KEY`.")
        )
    return EXIT_OK


# sample data and the demo


def cmd_generate(args: argparse.Namespace, ui: Output) -> int:
    from engine import sample  # numpy-heavy; only this command needs it

    if args.out.suffix.lower() not in (".jsonl", ".parquet"):
        raise UsageError(f"--out {args.out}: expected a .jsonl or .parquet file name")
    if args.events < 0:
        raise UsageError("--events must be at least 0")
    start = args.end - timedelta(days=args.days)
    try:
        batches = sample.generate_events(
            events=args.events,
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            start=start,
            batch_size=DEFAULT_BATCH_SIZE,  # the output does not depend on it, only progress
        )
        with ui.progress() as bar:
            task = bar.add_task(f"writing {args.out.name}", total=args.events)

            def counted(tables: Iterator[Any]) -> Iterator[Any]:
                for table in tables:
                    yield table
                    bar.advance(task, table.num_rows)

            rows = sample.write_events(counted(batches), args.out)
    except ValueError as error:
        raise UsageError(str(error)) from None
    customers = [
        {"external_customer_id": external_id, "name": f"Sample customer {rank}"}
        for rank, external_id in enumerate(sample.sample_customers(args.customers), start=1)
    ]
    if args.customers_out is not None:
        args.customers_out.write_text(json.dumps(customers, indent=2) + "\n")
    if args.metrics_out is not None:
        args.metrics_out.write_text(json.dumps(sample.SAMPLE_METRICS, indent=2) + "\n")
    result = {
        "out": str(args.out),
        "events": rows,
        "customers": args.customers,
        "timeframe_start": start,
        "timeframe_end": args.end,
        "seed": args.seed,
    }
    if ui.json_mode:
        ui.json(result)
    else:
        ui.line(
            f"Wrote {rows:,} events of {args.customers} customers over "
            f"[{iso(start)}, {iso(args.end)}) to {args.out} (seed {args.seed})."
        )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, ui: Output) -> int:
    from engine import demo

    # The demo builds its own store: only an explicit --store is used (never the default
    # ./data/store or $USAGE_ENGINE_STORE, which may hold real data).
    return demo.run(ui, store=args.store)


# -- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2 (via ``UsageError``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _global_options(*, nested: bool) -> argparse.ArgumentParser:
    # The same options are accepted before and after the command. In the nested copies the
    # defaults are SUPPRESS, so that `usage-engine --json customers list` is not undone by
    # the subcommand's own default.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if nested else value

    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options")
    group.add_argument(
        "--store",
        type=Path,
        metavar="PATH",
        default=default(None),
        help=f"the store folder (default: ${STORE_ENV}, else ./data/store)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON on stdout instead of tables; errors become one JSON line on stderr",
    )
    group.add_argument(
        "--now",
        type=parse_time,
        metavar="TIME",
        default=default(None),
        help="pretend the current time is TIME (ISO-8601, e.g. 2026-12-04T00:00:00Z), for "
        "replays and tests; default: the system clock",
    )
    group.add_argument(
        "--grace-period",
        type=parse_duration,
        metavar="DURATION",
        default=default(None),
        help="how old live events may be (e.g. 12h, 30d; default 12h); older ones need a backfill",
    )
    group.add_argument(
        "--memory-limit",
        metavar="SIZE",
        default=default(None),
        help="cap DuckDB's memory (e.g. 8GB; default 80%% of RAM); the rest spills to the "
        "store's tmp/",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="print a traceback for unexpected errors",
    )
    return options


_SUB_EPILOG = """\
Times: ISO-8601 with a zone (2026-11-25T00:00:00Z) or a date (2026-11-25 = 00:00 UTC).
Exit codes: 0 success, 1 refused or failed, 2 bad command line (see usage-engine --help).
"""

_EPILOG = """\
Times are ISO-8601 with a zone (2026-11-25T00:00:00Z) or a date (2026-11-25 = 00:00 UTC);
intervals are half-open [start, end). Output times end in Z.

exit codes: 0 success; 1 the engine refused the request or the work failed (including
`verify` finding a mismatch); 2 bad command line (unknown option, bad value, missing file,
no store, unavailable command); 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (also used by tests to check every option is documented)."""
    nested = _global_options(nested=True)
    parser = _Parser(
        prog="usage-engine",
        description=textwrap.fill(
            "Correct past usage for usage-based billing: ingest events, define metrics, "
            "stage corrections in backfills, preview, close and revert them.",
            width=88,
        ),
        epilog=_EPILOG,
        parents=[_global_options(nested=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Handler | None, summary: str, description: str = ""
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description or summary, width=88),
            parents=[nested],
            epilog=_SUB_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub

    def family(name: str, summary: str) -> Any:
        sub = command(commands, name, None, summary)
        sub.set_defaults(family=sub)
        return sub.add_subparsers(title="commands", dest="action", metavar="ACTION")

    command(
        commands,
        "init",
        cmd_init,
        "create an empty store",
        "Create an empty store at --store (does nothing if a store is already there).",
    )

    # ingest
    ingest = command(
        commands,
        "ingest",
        cmd_ingest,
        "ingest events from JSONL, Parquet or CSV files",
        "Ingest Orb-shaped events (idempotency_key, event_name, timestamp, customer_id or "
        "external_customer_id, properties). Without --backfill they are live: each batch is "
        "all or nothing and visible at once, and events older than the grace period are "
        "refused (load history through a backfill). Keys ingested before are skipped as "
        "duplicates, so running the same command twice is safe. A JSONL or CSV file is one "
        "batch; a Parquet file longer than --batch-size rows goes in chunks of that many "
        "rows, one batch (and one commit) per chunk.",
    )
    _ingest_arguments(ingest)
    ingest.add_argument(
        "--backfill",
        metavar="ID",
        help="stage the events in this pending backfill instead (visible once it closes)",
    )

    # customers
    customers = family("customers", "create and list customers")
    create = command(
        customers,
        "create",
        cmd_customers_create,
        "create a customer (or several with --file)",
    )
    create.add_argument(
        "--external-customer-id", metavar="ID", help="your id for the customer (unique)"
    )
    create.add_argument("--name", help="display name")
    create.add_argument("--email", help="billing email")
    create.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="a JSON list of customers (external_customer_id, name, email), such as "
        "data/customers.json; nothing is created if one id is already taken",
    )
    command(customers, "list", cmd_customers_list, "list every customer, oldest first")

    # backfills
    backfills = family("backfills", "stage, preview, close and revert corrections of past usage")
    create = command(
        backfills,
        "create",
        cmd_backfills_create,
        "open a backfill over [timeframe-start, timeframe-end)",
        "Open a pending backfill. Events ingested into it stay invisible until it closes; "
        "by default closing replaces the stored events of its timeframe and scope (only "
        "those matching --deprecation-filter, if given).",
    )
    create.add_argument(
        "--timeframe-start",
        type=parse_time,
        required=True,
        metavar="TIME",
        help="start of the corrected timeframe (inclusive)",
    )
    create.add_argument(
        "--timeframe-end",
        type=parse_time,
        required=True,
        metavar="TIME",
        help="end of the corrected timeframe (exclusive)",
    )
    scope = create.add_mutually_exclusive_group()
    scope.add_argument(
        "--customer-id", metavar="ID", help="correct only this customer (the engine's id)"
    )
    scope.add_argument(
        "--external-customer-id", metavar="ID", help="correct only this customer (your id)"
    )
    create.add_argument(
        "--replace-existing-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replace the stored events in the timeframe and scope (default), or only add "
        "events (--no-replace-existing-events)",
    )
    create.add_argument(
        "--deprecation-filter",
        metavar="SQL",
        help="replace only stored events matching this condition, e.g. \"model = 'gpt-4o'\"",
    )
    create.add_argument(
        "--close-time",
        type=parse_time,
        metavar="TIME",
        help="close automatically at TIME via `close-due` (default: one day after creation)",
    )

    listing = command(backfills, "list", cmd_backfills_list, "list backfills, newest first")
    listing.add_argument(
        "--status",
        choices=[s.value for s in engine.BackfillStatus],
        help="only backfills in this status",
    )
    listing.add_argument("--customer-id", metavar="ID", help="only this customer's backfills")
    listing.add_argument(
        "--limit", type=_positive_int, default=20, help="at most this many (1-100, default 20)"
    )
    listing.add_argument(
        "--cursor", help="continue after the previous page (printed when there are more)"
    )

    for name, handler, summary in (
        ("show", cmd_backfills_show, "show one backfill"),
        (
            "preview",
            cmd_backfills_preview,
            "show what closing a pending backfill would change, "
            "per metric, customer and day, without changing anything",
        ),
        (
            "close",
            cmd_backfills_close,
            "close a pending backfill: its correction becomes visible in one commit",
        ),
        ("revert", cmd_backfills_revert, "revert a backfill: undone exactly, later ones stay"),
    ):
        sub = command(backfills, name, handler, summary)
        sub.add_argument("backfill_id", metavar="ID", help="the backfill's id")

    staged = command(
        backfills,
        "ingest",
        cmd_backfills_ingest,
        "stage events from files in a pending backfill (same as `ingest --backfill ID`)",
    )
    staged.add_argument("backfill_id", metavar="ID", help="the pending backfill's id")
    _ingest_arguments(staged)

    # metrics
    metrics = family("metrics", "define and list metrics")
    create = command(
        metrics,
        "create",
        cmd_metrics_create,
        "define a metric (or several with --file) and materialize it over all history",
    )
    create.add_argument("--name", help="the metric's name (usable instead of its id)")
    create.add_argument(
        "--sql",
        help="Orb-style SQL: SELECT <aggregate> FROM events [WHERE ...] [GROUP BY property]",
    )
    create.add_argument("--description", help="free text")
    create.add_argument(
        "--metadata",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="a metadata entry (repeatable)",
    )
    create.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="a JSON list of metrics (name, sql, description, metadata), such as data/metrics.json",
    )
    command(metrics, "list", cmd_metrics_list, "list every metric, oldest first")

    # usage
    usage = command(
        commands,
        "usage",
        cmd_usage,
        "usage of a metric per customer and time bucket",
        "Usage of a metric per customer and time bucket (buckets without events are "
        "absent); the same parameters as store.usage() in Python.",
    )
    usage.add_argument("metric", metavar="METRIC", help="the metric's id, or its name if unique")
    usage.add_argument(
        "--timeframe-start", type=parse_time, required=True, metavar="TIME", help="inclusive start"
    )
    usage.add_argument(
        "--timeframe-end", type=parse_time, required=True, metavar="TIME", help="exclusive end"
    )
    who = usage.add_mutually_exclusive_group()
    who.add_argument("--customer-id", metavar="ID", help="only this customer (the engine's id)")
    who.add_argument("--external-customer-id", metavar="ID", help="only this customer (your id)")
    usage.add_argument(
        "--granularity",
        choices=["hour", "day", "month", "none"],
        default="day",
        help="bucket size (default day; none = one row per customer for the whole timeframe)",
    )
    usage.add_argument(
        "--group-by",
        metavar="PROPERTY",
        help="the property of a grouped metric (its GROUP BY); one row per value",
    )
    usage.add_argument(
        "--as-of",
        type=_as_of,
        metavar="VERSION|TIME",
        help="usage as it was known at that version number or time",
    )

    # maintenance
    recompute = command(
        commands,
        "recompute",
        cmd_recompute,
        "rebuild materialized usage from the effective events",
    )
    recompute.add_argument(
        "--metric", metavar="METRIC", help="only this metric (id or unique name; default: all)"
    )
    command(
        commands,
        "verify",
        cmd_verify,
        "compare materialized usage with a from-scratch computation (exit 1 on a mismatch)",
    )
    command(
        commands,
        "close-due",
        cmd_close_due,
        "close every pending backfill whose close_time has passed (run it from cron)",
    )
    compact = command(
        commands,
        "compact",
        cmd_compact,
        "merge small files, expire old snapshots, delete unused files",
        "Merge small Parquet files, expire DuckLake snapshots older than --retention and "
        "delete files unused for longer than --file-grace. Usage, events and --as-of answers "
        "are unchanged (they come from the store's version log, not from snapshots). Other "
        "writers wait while it runs; readers do not.",
    )
    compact.add_argument(
        "--retention",
        type=parse_duration,
        default=DEFAULT_RETENTION,
        help="keep DuckLake snapshots younger than this (default 7d)",
    )
    compact.add_argument(
        "--file-grace",
        type=parse_duration,
        default=DEFAULT_FILE_GRACE,
        help="delete replaced files only once unused this long, so running readers of other "
        "processes keep theirs (default 1h)",
    )

    # server
    serve = command(commands, "serve", cmd_serve, "serve the Orb-compatible HTTP API")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    keys = family("api-keys", "manage API keys of the HTTP API")
    command(keys, "create", cmd_api_keys_create, "create an API key (printed once)")

    # sample data
    generate = command(
        commands,
        "generate",
        cmd_generate,
        "write deterministic sample events (JSONL or Parquet)",
        "Write realistic, deterministic usage events: the same arguments give the same bytes. "
        "The bundled data/ is --events 20000 --customers 5 --days 14 --seed 7.",
    )
    generate.add_argument(
        "--events", type=int, default=20_000, help="how many events (default 20000)"
    )
    generate.add_argument(
        "--customers", type=_positive_int, default=5, help="how many customers (default 5)"
    )
    generate.add_argument(
        "--days", type=_positive_int, default=14, help="days of history (default 14)"
    )
    generate.add_argument(
        "--seed", type=int, default=7, help="random seed, part of every key (default 7)"
    )
    generate.add_argument(
        "--end",
        type=parse_time,
        default=datetime(2026, 12, 1, tzinfo=UTC),
        metavar="TIME",
        help="exclusive end of the events' timeframe (default 2026-12-01T00:00:00Z)",
    )
    generate.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="output file: .jsonl or .parquet"
    )
    generate.add_argument(
        "--customers-out", type=Path, metavar="PATH", help="also write the customers as JSON"
    )
    generate.add_argument(
        "--metrics-out", type=Path, metavar="PATH", help="also write sample metrics as JSON"
    )

    command(
        commands,
        "demo",
        cmd_demo,
        "the main job on the bundled sample: fix double-reported usage with a backfill",
        "On the bundled sample: build a store, find a customer's usage double-reported for "
        "one model on one day, fix it with a scoped replace backfill and a deprecation "
        "filter, preview, close, revert. Uses a new temporary store unless --store is given "
        "(which must then be new or empty); exits 1 if a number is not what the story says.",
    )
    return parser


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="a .jsonl, .parquet or .csv file of events",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="ROWS",
        help=f"rows per batch for large Parquet files (default {DEFAULT_BATCH_SIZE:,})",
    )


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``usage-engine`` and ``python -m engine``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that even argument errors honour --json and --debug.
    ui = Output(json_mode="--json" in arguments)
    debug = "--debug" in arguments
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(arguments)
        except SystemExit as done:  # --help and friends
            return int(done.code or 0)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            # A bare command family (`usage-engine backfills`) prints its own help.
            family: argparse.ArgumentParser = getattr(args, "family", parser)
            family.print_help(sys.stderr)
            return EXIT_USAGE
        return handler(args, ui)
    except BrokenPipeError:
        # The reader went away (`usage-engine ... | head`): stop quietly, as Unix tools do.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except (Exception, KeyboardInterrupt) as error:
        return ui.error(error, debug=debug)
