"""DuckLake alone, no engine: a read transaction that another connection's commit overlapped
applies the wrong deletes when that commit rewrote delete files into partial ones
(RELIABILITY.md, "DuckLake partial deletes"; the engine guards with Storage.consistent_read).

    python tests/procs/ducklake_partial_deletes.py /tmp/partial-deletes [--threads N]

Prints what the open transaction counted, and what a fresh connection counts at the same
snapshot; exits 1 when they differ. Two DuckDB instances in one process, a SQLite catalog, data
inlining off (with inlining on, deletes of up to 10 rows stay in the catalog and the same steps
need larger deletes). With ``--threads 1`` on the reader it reads correctly.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import duckdb
import duckdb_extension_ducklake
import duckdb_extension_sqlite_scanner


def _extension(module: ModuleType, name: str) -> Path:
    assert module.__file__ is not None
    return next(Path(module.__file__).parent.rglob(f"{name}*.duckdb_extension"))


def _connect(folder: Path) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(config={"allow_unsigned_extensions": True})
    for module, name in (
        (duckdb_extension_ducklake, "ducklake"),
        (duckdb_extension_sqlite_scanner, "sqlite_scanner"),
    ):
        connection.execute(f"LOAD '{_extension(module, name)}'")
    connection.execute(
        f"ATTACH 'ducklake:sqlite:{folder / 'catalog.sqlite'}' AS lake "
        f"(DATA_PATH '{folder / 'data'}/', DATA_INLINING_ROW_LIMIT 0)"
    )
    return connection


def _replace(writer: duckdb.DuckDBPyConnection, deleted: list[int], first_new: int) -> None:
    """One commit: delete rows ``deleted``, insert as many new ones (the sum stays 50)."""
    writer.execute("BEGIN TRANSACTION")
    writer.execute(f"DELETE FROM lake.cells WHERE k IN ({', '.join(map(str, deleted))})")
    writer.execute(
        f"INSERT INTO lake.cells SELECT {first_new} + i, 1 FROM range({len(deleted)}) AS t(i)"
    )
    writer.execute("COMMIT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="the reader's DuckDB threads")
    arguments = parser.parse_args()
    folder, threads = arguments.folder, arguments.threads
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    catalog = sqlite3.connect(folder / "catalog.sqlite")
    catalog.execute("PRAGMA journal_mode=WAL")
    catalog.close()

    writer = _connect(folder)
    writer.execute("CREATE TABLE lake.cells (k INTEGER, v BIGINT)")
    writer.execute("INSERT INTO lake.cells SELECT i, 1 FROM range(50) AS t(i)")  # one file
    _replace(writer, [0, 1, 2], 100)  # the first file gets a delete file
    _replace(writer, [3, 4, 100], 200)  # ... rewritten as a partial delete file

    reader = _connect(folder)
    if threads is not None:
        reader.execute(f"SET threads = {threads}")
    reader.execute("BEGIN TRANSACTION")
    (snapshot,) = reader.execute("SELECT * FROM ducklake_current_snapshot('lake')").fetchone() or (
        0,
    )
    before = reader.execute("SELECT sum(v) FROM lake.cells").fetchone()
    _replace(writer, [5, 6, 101, 200], 300)  # lands inside the read; rewrites both delete files
    during = reader.execute("SELECT sum(v) FROM lake.cells").fetchone()
    reader.execute("COMMIT")
    fresh = _connect(folder).execute(f"SELECT sum(v) FROM lake.cells AT (VERSION => {snapshot})")
    at_snapshot = fresh.fetchone()
    print(f"snapshot {snapshot}: open transaction {before} then {during}; fresh {at_snapshot}")
    return 0 if before == during == at_snapshot else 1


if __name__ == "__main__":
    sys.exit(main())
