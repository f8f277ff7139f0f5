"""The only module that talks to DuckDB and to files on disk.

A store is a folder::

    store/
      catalog.sqlite   DuckLake catalog (SQLite): snapshots, schemas, file lists
      data/            Parquet files written by DuckLake, events and usage cells
                       partitioned by day
      tmp/             DuckDB spill space for large ingests
      write.lock       held while a process writes, so writers from several processes queue
      key_index/       the saved key index (engine.keys), a cache checked before use

Every statement arrives here as a sqlglot tree and is rendered by :func:`render`, in one
place. Readers need no lock: DuckLake gives each query (or read transaction) a consistent
snapshot, so a notebook can read while a server writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import duckdb_extension_ducklake
import duckdb_extension_sqlite_scanner
import pyarrow as pa
from sqlglot import exp

from engine.errors import ConstraintViolation
from engine.schema import CATALOG, OPTIONS, TABLES, Table

__all__ = ["Prepared", "Relation", "Storage", "render"]

Relation = duckdb.DuckDBPyRelation

_DIALECT = "duckdb"


@dataclass(frozen=True)
class Prepared:
    """A statement rendered once (see :meth:`Storage.prepare`)."""

    sql: str


def render(tree: exp.Expr) -> str:
    """The one function that turns a statement tree into DuckDB SQL text.

    Text values are literals of the tree; DuckDB's parser cannot take a NUL character inside
    one, so such a value is refused here, for every statement, as the user's bad input.
    """
    for literal in tree.find_all(exp.Literal):
        if literal.is_string and "\x00" in literal.this:
            raise ConstraintViolation(
                "text values must not contain NUL characters", construct="nul"
            )
    return tree.sql(dialect=_DIALECT)


def _in_catalog(query: exp.Select) -> exp.Table:
    """A query of DuckLake's SQLite catalog, run by SQLite itself (``sqlite_query``), through
    DuckDB's own attachment of the catalog. DuckDB's scan of an attached SQLite table filters
    nothing inside SQLite: it reads every row, and DuckLake's snapshot tables gain a row per
    commit. The one place that renders SQLite's dialect."""
    call = exp.Anonymous(
        this="sqlite_query",
        expressions=[
            exp.Literal.string(f"__ducklake_metadata_{CATALOG}"),
            exp.Literal.string(query.sql(dialect="sqlite")),
        ],
    )
    return exp.Table(this=call)


# The latest snapshot (see Storage.snapshot_id), found by SQLite in its primary key: DuckDB's
# scan of the table took 1.2 ms at 1 000 snapshots and 26 ms at 200 000. Rendered once.
_LATEST_SNAPSHOT = render(
    exp.select(exp.cast(exp.column("newest"), "BIGINT")).from_(
        _in_catalog(
            exp.select(exp.alias_(exp.func("max", exp.column("snapshot_id")), "newest")).from_(
                "ducklake_snapshot"
            )
        )
    )
)

_T = TypeVar("_T")


@functools.lru_cache(maxsize=64)
def _changes_since(table_name: str, after: int) -> Prepared:
    """One row: the oldest snapshot in DuckLake's change log, the newest after ``after``, and
    the newest after ``after`` that changed table ``table_name``. Rendered once per
    ``after``: building it costs more than SQLite takes to run it.

    SQLite walks its primary key from ``after`` (:func:`_in_catalog`): DuckDB's scan read the
    whole log, 5 ms at 1 000 snapshots and 330 ms at 200 000, against 1.3 ms for both."""
    changes = exp.column("changes_made", table="c")
    table_id = exp.column("table_id", table="t")
    # entries read "<kind>:<table id>", comma-separated
    names_it = exp.or_(
        exp.Like(
            this=changes,
            expression=exp.DPipe(
                this=exp.DPipe(this=exp.Literal.string("%:"), expression=table_id),
                expression=exp.Literal.string(",%"),
            ),
        ),
        exp.Like(
            this=changes,
            expression=exp.DPipe(this=exp.Literal.string("%:"), expression=table_id),
        ),
    )
    of_table = exp.Exists(
        this=exp.select(exp.Literal.number(1))
        .from_(exp.table_("ducklake_table").as_("t"))
        .where(exp.column("table_name", table="t").eq(exp.Literal.string(table_name)))
        .where(names_it)
    )
    snapshot = exp.column("snapshot_id", table="c")
    oldest = exp.select(exp.func("min", exp.column("snapshot_id"))).from_(
        "ducklake_snapshot_changes"
    )
    inner = (
        exp.select(
            exp.alias_(oldest.subquery(), "oldest"),
            exp.alias_(exp.func("max", snapshot), "newest"),
            exp.alias_(
                exp.func("max", exp.Case(ifs=[exp.If(this=of_table, true=snapshot)])),
                "newest_of_table",
            ),
        )
        .from_(exp.table_("ducklake_snapshot_changes").as_("c"))
        .where(snapshot > exp.convert(after))
    )
    # SQLite declares no type for computed columns, so they arrive as text
    query = exp.select(
        *(
            exp.alias_(exp.cast(exp.column(name), "BIGINT"), name)
            for name in ("oldest", "newest", "newest_of_table")
        )
    ).from_(_in_catalog(inner))
    return Prepared(render(query))


def _set(setting: str, value: exp.Expr) -> str:
    """``SET setting = value``."""
    return render(
        exp.Set(expressions=[exp.SetItem(this=exp.EQ(this=exp.var(setting), expression=value))])
    )


# Instants are stored as UTC; casts from zoned text must convert to UTC too. A session
# setting, so every cursor runs it.
_UTC_SESSION = _set("TimeZone", exp.Literal.string("UTC"))

_CURRENT_THREADS = render(exp.select(exp.func("current_setting", exp.Literal.string("threads"))))

#: Longest a snapshot check may trust an unchanged catalog file (see Storage.snapshot_id).
_SNAPSHOT_TRUST_SECONDS = 1.0

#: Day partitions one statement may write without splitting their files (about 11 years).
_MAX_OPEN_PARTITIONS = 4096

#: Catalogs attached by open stores of this process, with how many stores hold each: only the
#: first may read the file outside DuckDB (closing any descriptor of a file drops every POSIX
#: lock this process holds on it, DuckDB's included).
_ATTACHED: Counter[Path] = Counter()
_ATTACHED_LOCK = threading.Lock()


def _is_write_ahead_log(catalog: Path) -> bool:
    """Whether a SQLite file is in WAL mode: bytes 18 and 19 of its header are 2."""
    try:
        with catalog.open("rb") as file:
            header = file.read(20)
    except FileNotFoundError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def _use_write_ahead_log(catalog: Path) -> None:
    """Put the SQLite catalog in WAL mode (a property of the file, kept across opens): readers
    in other processes then never block a commit, and a commit never blocks them.

    Python's ``sqlite3`` touches the file only when it is not in WAL mode yet, which is when
    the store is created: it is a second copy of SQLite in this process, and closing its
    connection would drop the POSIX locks DuckDB's copy holds on the same file (then another
    process may checkpoint under a commit in flight, and the commit is lost).
    """
    if _is_write_ahead_log(catalog):
        return
    connection = sqlite3.connect(catalog, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        pass  # another process holds the catalog right now; it made the file WAL already
    finally:
        connection.close()


def _file_token(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _extension_file(module: Any, name: str) -> Path:
    # The wheels ship the signed binary inside the package; loading it from there means no
    # download at run time (the extension must match DuckDB's version, pinned together).
    root = Path(module.__file__).parent / "extensions"
    return root / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"


def _table_ddl(table: Table) -> exp.Create:
    schema = exp.Schema(
        this=exp.table_(table.name, db="main", catalog=CATALOG),
        expressions=[
            exp.ColumnDef(
                this=exp.to_identifier(column.name),
                kind=exp.DataType.build(column.type, dialect=_DIALECT),
            )
            for column in table.columns
        ],
    )
    return exp.Create(this=schema, kind="TABLE", exists=True)


def _option_ddl(name: str, value: str) -> exp.Select:
    """``SELECT * FROM ducklake_set_option('lake', name, value)``: the table-function form of
    ``CALL lake.set_option(...)``, which sqlglot can only carry as opaque text."""
    arguments = [exp.Literal.string(text) for text in (CATALOG, name, value)]
    call = exp.Anonymous(this="ducklake_set_option", expressions=arguments)
    return exp.select(exp.Star()).from_(exp.Table(this=call))


def _partition_ddl(table: Table) -> exp.Command:
    # sqlglot has no node for DuckLake's SET PARTITIONED BY, so the statement is a Command
    # whose parts are themselves rendered trees from the schema module.
    name = render(exp.table_(table.name, db="main", catalog=CATALOG))
    keys = ", ".join(render(exp.maybe_parse(key, dialect=_DIALECT)) for key in table.partitioned_by)
    return exp.Command(this="ALTER", expression=f"TABLE {name} SET PARTITIONED BY ({keys})")


class Storage:
    """A DuckDB connection with the store's DuckLake catalog attached as ``lake``."""

    def __init__(self, path: Path, *, memory_limit: str | None = None) -> None:
        self.path = path
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": str(path / "tmp"),
            # A statement that writes to more day partitions than DuckDB keeps files open for
            # (100 by default) closes and reopens them: a full recompute over 150 days wrote up
            # to 30 files a day, and every later statement planned over all of them.
            "partitioned_write_max_open_files": _MAX_OPEN_PARTITIONS,
        }
        if memory_limit:
            config["memory_limit"] = memory_limit
        try:
            self._connection = duckdb.connect(config=config)
        except duckdb.Error as error:
            if not memory_limit:
                raise
            # before the folder exists: a bad option creates nothing
            raise ConstraintViolation(
                f"memory_limit {memory_limit!r} is not a size DuckDB accepts, such as '8GB' "
                f"({str(error).splitlines()[0]})",
                field="memory_limit",
            ) from None
        path.mkdir(parents=True, exist_ok=True)
        (path / "data").mkdir(exist_ok=True)
        (path / "tmp").mkdir(exist_ok=True)
        # One DuckDB connection is not safe to use from two threads at once.
        self._mutex = threading.RLock()
        self._lock_file = open(path / "write.lock", "a+")  # noqa: SIM115 - held for the store's life
        self._write_depth = 0
        self._reading = False
        self._catalog_path = path / "catalog.sqlite"
        self._catalog_key = self._catalog_path.resolve()
        self._attached = False
        self._seen_token: tuple[object, object] | None = None
        self._seen_at = 0.0
        self._seen_snapshot = -1
        # per table: the change log read up to this snapshot, and the table's last change
        self._changes_read: dict[str, tuple[int, int]] = {}
        # lake tables written by the open write transaction (see small_table_rows)
        self._written_in_transaction: set[str] = set()
        self._after_commit: list[Callable[[], None]] = []
        self._small_reads: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
        try:
            self._attach(path)
        except BaseException:
            self.close()
            raise

    def _attach(self, path: Path) -> None:
        with _ATTACHED_LOCK:
            if not _ATTACHED[self._catalog_key]:
                _use_write_ahead_log(self._catalog_path)
            _ATTACHED[self._catalog_key] += 1
            self._attached = True
        for module, name in (
            (duckdb_extension_ducklake, "ducklake"),
            (duckdb_extension_sqlite_scanner, "sqlite_scanner"),
        ):
            self._connection.execute(
                render(
                    exp.Command(
                        this="LOAD",
                        expression=render(exp.Literal.string(str(_extension_file(module, name)))),
                    )
                )
            )
        self._connection.execute(_UTC_SESSION)
        attach = exp.Attach(
            this=exp.alias_(
                exp.Literal.string(f"ducklake:sqlite:{path / 'catalog.sqlite'}"), CATALOG
            ),
            expressions=[
                exp.AttachOption(
                    this=exp.var("DATA_PATH"),
                    expression=exp.Literal.string(str(path / "data") + os.sep),
                ),
                # Data files are recorded relative to the data path, so a store folder that
                # was moved or copied opens where it now is.
                exp.AttachOption(this=exp.var("OVERRIDE_DATA_PATH"), expression=exp.true()),
            ],
        )
        self._connection.execute(render(attach))
        existing = self._existing_tables()
        missing = [table for table in TABLES if table.name not in existing]
        if missing:
            with self.write():
                for name, value in OPTIONS:
                    self.execute(_option_ddl(name, value))
                for table in missing:
                    self.execute(_table_ddl(table))
                    if table.partitioned_by:
                        self.execute(_partition_ddl(table))

    # -- statements ---------------------------------------------------------------------------

    def execute(self, tree: exp.Expr, parameters: Sequence[Any] | None = None) -> None:
        with self._mutex:
            if self._write_depth and isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
                target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
                if isinstance(target, exp.Table) and target.catalog == CATALOG:
                    self._written_in_transaction.add(target.name)
            self._connection.execute(render(tree), parameters)

    def rows(
        self, tree: exp.Expr, parameters: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        sql = render(tree)
        return self._query(lambda: self._connection.execute(sql, parameters).fetchall())

    def one(self, tree: exp.Expr) -> tuple[Any, ...] | None:
        sql = render(tree)
        return self._query(lambda: self._connection.execute(sql).fetchone())

    def arrow(
        self, tree: exp.Expr | Prepared, parameters: Mapping[str, Any] | None = None
    ) -> pa.Table:
        """Run a query and return Arrow; ``$name`` placeholders take ``parameters``."""
        sql = tree.sql if isinstance(tree, Prepared) else render(tree)
        return self._query(lambda: self._connection.execute(sql, parameters).to_arrow_table())

    def _query(self, run: Callable[[], _T]) -> _T:
        """One query; outside a block it is a read of its own, so guard it like
        :meth:`consistent_read` does a block."""
        with self._mutex:
            if self._write_depth or self._reading:
                return run()
            token = self._catalog_token()
            result = run()
            if self._catalog_token() == token:
                return result
            with self._single_threaded():
                return run()

    @staticmethod
    def prepare(tree: exp.Expr) -> Prepared:
        """Render a statement once, for a hot path that runs it many times with parameters."""
        return Prepared(render(tree))

    def column_types(self, tree: exp.Expr) -> dict[str, str]:
        """Names and DuckDB types of the columns ``tree`` would return, without running it."""
        with self._mutex:
            relation = self._connection.sql(render(tree))
            return {
                name: str(type_)
                for name, type_ in zip(relation.columns, relation.types, strict=True)
            }

    def relation(self, sql: str) -> Relation:
        """A lazy DuckDB relation for exploration SQL that the caller has already checked.

        Inside :meth:`read` or :meth:`write` it runs on the store's connection, in that block's
        transaction (one snapshot for every query of the block), and must be fetched before the
        block ends. Otherwise it runs on a cursor of its own (a second connection to the same
        database, which sees the store's views but not its temporary tables), so whichever
        thread fetches it never shares a connection with the store's own statements: on the
        store's connection, a fetch in one thread while another wrote hung both.
        """
        with self._mutex:
            # The mutex is held for a whole block, so an open block is this thread's.
            if self._write_depth or self._reading:
                return self._connection.sql(sql)
            cursor = self._connection.cursor()
        cursor.execute(_UTC_SESSION)
        return cursor.sql(sql)

    # -- temporary inputs ---------------------------------------------------------------------

    def register(self, name: str, data: Any) -> None:
        """Expose an Arrow table (or anything DuckDB can scan) as view ``name``."""
        with self._mutex:
            self._connection.register(name, data)

    def unregister(self, name: str) -> None:
        with self._mutex:
            self._connection.unregister(name)

    @contextlib.contextmanager
    def reading_input(self, description: str) -> Iterator[None]:
        """Turn DuckDB's complaints about user input (a malformed file, a bad column type) into
        a ``ConstraintViolation`` that names the input."""
        try:
            yield
        except duckdb.Error as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConstraintViolation(
                f"cannot read {description}: {message}", input=description
            ) from None

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """One atomic commit. Writers from other processes wait on the store's lock file.

        Nested uses join the outer transaction.
        """
        with self._mutex:
            if self._write_depth:
                self._write_depth += 1
                try:
                    yield
                finally:
                    self._write_depth -= 1
                return
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._write_depth = 1
            self._written_in_transaction = set()
            self._after_commit = []
            try:
                self._connection.execute("BEGIN TRANSACTION")
                try:
                    yield
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
                self._connection.execute("COMMIT")
                for action in self._after_commit:
                    action()
            finally:
                self._write_depth = 0
                self._after_commit = []
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the current write transaction has committed (never if it rolls
        back, nor in a :meth:`trial`), still holding the store's lock."""
        if not self._write_depth:
            raise RuntimeError("after_commit needs a write transaction")
        self._after_commit.append(action)

    @contextlib.contextmanager
    def trial(self) -> Iterator[None]:
        """A write transaction that is always rolled back: compute "what if" and keep nothing."""
        with self._mutex:
            if self._write_depth:
                raise RuntimeError("a trial cannot run inside a write transaction")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._write_depth = 1
            self._written_in_transaction = set()
            self._after_commit = []
            try:
                self._connection.execute("BEGIN TRANSACTION")
                try:
                    yield
                finally:
                    self._connection.execute("ROLLBACK")
            finally:
                self._write_depth = 0
                self._after_commit = []
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Several queries against one snapshot. Temporary tables made inside are kept (the
        transaction commits, which for DuckLake writes nothing). Unguarded against a DuckLake
        bug that concurrent commits can trigger: prefer :meth:`consistent_read`."""
        with self._mutex:
            if self._write_depth:
                yield
                return
            self._connection.execute("BEGIN TRANSACTION")
            self._reading = True
            try:
                yield
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            finally:
                self._reading = False
            self._connection.execute("COMMIT")

    @contextlib.contextmanager
    def _single_threaded(self) -> Iterator[None]:
        with self._mutex:
            row = self._connection.execute(_CURRENT_THREADS).fetchone()
            assert row is not None
            self._connection.execute(_set("threads", exp.convert(1)))
            try:
                yield
            finally:
                self._connection.execute(_set("threads", exp.convert(int(row[0]))))

    def consistent_read(self, read: Callable[[], _T]) -> _T:
        """Run ``read`` (queries and temporary tables only) in one read transaction, like
        :meth:`read`, and return what it returns.

        DuckLake 1.5.5 can answer a read transaction wrongly when another process commits
        during it and that commit rewrites delete files of data files the read scans (merging
        them into "partial" delete files): on more than one DuckDB thread the scan applies the
        wrong deletes, missing its own snapshot's or taking the later commit's
        (RELIABILITY.md, "DuckLake partial deletes"). So when the catalog files changed while
        ``read`` ran, it runs again on one thread, which reads correctly. Inside
        :meth:`write` no other process can commit (they wait on the lock file), and inside
        :meth:`read` the caller's block is the read; there ``read`` runs once, as it is.
        """
        with self._mutex:
            if self._write_depth or self._reading:
                return read()
            token = self._catalog_token()
            with self.read():
                result = read()
            if self._catalog_token() == token:
                return result
            with self._single_threaded(), self.read():
                return read()

    def _catalog_token(self) -> tuple[object, object]:
        """Changes whenever a commit lands: the catalog's file and its write-ahead log."""
        return (
            _file_token(self._catalog_path),
            _file_token(self._catalog_path.with_name(self._catalog_path.name + "-wal")),
        )

    def snapshot_id(self) -> int:
        """The latest committed DuckLake snapshot.

        Caches of derived data check it on every read, so it must cost microseconds: while the
        catalog files (``catalog.sqlite`` and its WAL) are unchanged since the last check, and
        that check is under a second old, the last answer stands; otherwise it is read through
        DuckDB's own attachment of the catalog. (Never through Python's ``sqlite3``: see
        :func:`_use_write_ahead_log`.) The second bounds staleness should a commit leave both
        files' size and modification time as they were.
        """
        token = self._catalog_token()
        now = time.monotonic()
        if token == self._seen_token and now - self._seen_at < _SNAPSHOT_TRUST_SECONDS:
            return self._seen_snapshot
        with self._mutex:
            rows = self._connection.execute(_LATEST_SNAPSHOT).fetchall()
        snapshot = int(rows[0][0]) if rows and rows[0][0] is not None else -1
        # the token was taken before the read: a commit in between changes it for next time
        self._seen_token, self._seen_at, self._seen_snapshot = token, now, snapshot
        return snapshot

    def changed_at(self, table: Table) -> int:
        """The latest snapshot that changed ``table`` (its rows or its definition), from
        DuckLake's own change log. -1 when no snapshot names the table.

        Each call reads only the log entries committed since this store's last call for the
        table, and SQLite finds them by its primary key: about a millisecond, where a DuckLake
        scan of a small table costs tens. If entries this store never read were expired
        meanwhile (``maintenance.compact``), the change is unknowable and the answer is the
        newest snapshot, so a cache keyed on it reloads.
        """
        with self._mutex:
            read_upto, last_change = self._changes_read.get(table.name, (-1, -1))
            row = self.arrow(_changes_since(table.name, read_upto)).to_pylist()[0]
            oldest, newest, newest_of_table = row["oldest"], row["newest"], row["newest_of_table"]
            if newest is not None:
                if read_upto >= 0 and oldest > read_upto + 1:
                    last_change = newest
                elif newest_of_table is not None:
                    last_change = newest_of_table
                read_upto = newest
            self._changes_read[table.name] = (read_upto, last_change)
            return int(last_change)

    def small_table_rows(self, table: Table, tree: exp.Expr) -> list[tuple[Any, ...]]:
        """Rows of ``tree``, a query of lake table ``table`` alone, inside :meth:`write`: kept
        in memory while no commit has changed the table (:meth:`changed_at`) and this
        transaction has not written to it. A DuckLake scan costs 10-30 ms of catalog work
        even when it reads a few rows; a live commit read three such tables."""
        with self._mutex:
            if not self._write_depth:
                raise RuntimeError("small_table_rows serves writers: use it inside write()")
            if table.name in self._written_in_transaction:
                return self.rows(tree)
            sql = render(tree)
            changed = self.changed_at(table)
            kept = self._small_reads.get(sql)
            if kept is not None and kept[0] == changed:
                return kept[1]
            rows = self.rows(tree)
            self._small_reads[sql] = (changed, rows)
            return rows

    def close(self) -> None:
        with self._mutex:
            self._connection.close()
            self._lock_file.close()
            with _ATTACHED_LOCK:
                if self._attached:
                    self._attached = False
                    _ATTACHED[self._catalog_key] -= 1

    # -- internals ----------------------------------------------------------------------------

    def _existing_tables(self) -> set[str]:
        probe = (
            exp.select("table_name")
            .from_("duckdb_tables()")
            .where(exp.column("database_name").eq(exp.Literal.string(CATALOG)))
        )
        return {row[0] for row in self.rows(probe)}
