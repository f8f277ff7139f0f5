"""Peer: PostgreSQL (Lago's default store), a server started for the run on loopback.

A plain PostgreSQL design: ``events`` with the properties as ``jsonb``, a primary key on the
idempotency key and indexes on (customer, time) and time, bulk-loaded with ``COPY`` and indexed
afterwards; an hourly ``rollup`` table kept current by an upsert in the same statement as each
live insert (``INSERT ... ON CONFLICT DO NOTHING RETURNING`` feeding ``ON CONFLICT DO UPDATE``).
A replace backfill is one transaction: ``DELETE ... RETURNING`` into ``archive``, insert the
staged rows, delete and re-aggregate the rollup of the scope. Server settings are the defaults
plus the memory a user would give a dedicated bulk-loading box (see ``SETTINGS``).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .base import (
    DEPRECATED_MODEL,
    Scope,
    UsageRow,
    as_usage_rows,
    rollup_usage_sql,
    timestamp_literal,
)

SETTINGS = {
    "shared_buffers": "1GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "4GB",
}

_EVENT_COLUMNS = (
    'idempotency_key, event_name, "timestamp", customer_id, external_customer_id, properties, '
    "backfill_id"
)
_INPUT_COLUMNS = (
    'idempotency_key, event_name, "timestamp", customer_id, external_customer_id, properties'
)

_SCHEMA = """
CREATE TABLE events (
    idempotency_key text NOT NULL, event_name text NOT NULL, "timestamp" timestamptz NOT NULL,
    customer_id text, external_customer_id text, properties jsonb NOT NULL, backfill_id text);
CREATE TABLE staging (LIKE events);
CREATE INDEX ON staging (backfill_id);
CREATE TABLE archive (archived_by text NOT NULL, LIKE events);
CREATE INDEX ON archive (archived_by);
CREATE TABLE rollup (
    external_customer_id text, hour timestamptz, region text, model text,
    events bigint NOT NULL, completion_events bigint NOT NULL,
    completion_tokens float8, completion_max float8,
    UNIQUE NULLS NOT DISTINCT (external_customer_id, hour, region, model));
"""

# The bulk-load idiom: indexes after COPY.
_INDEXES = """
ALTER TABLE events ADD PRIMARY KEY (idempotency_key);
CREATE INDEX events_customer_time ON events (external_customer_id, "timestamp");
CREATE INDEX events_time ON events ("timestamp");
CREATE INDEX events_backfill ON events (backfill_id) WHERE backfill_id IS NOT NULL;
ANALYZE events;
"""

_ROLLUP_SELECT = """
SELECT external_customer_id, date_trunc('hour', "timestamp") AS hour,
       properties->>'region' AS region, properties->>'model' AS model,
       count(*) AS events,
       count(*) FILTER (WHERE event_name = 'completion') AS completion_events,
       sum((properties->>'tokens')::float8) FILTER (WHERE event_name = 'completion'),
       max((properties->>'tokens')::float8) FILTER (WHERE event_name = 'completion')
FROM {source} WHERE {where}
GROUP BY 1, 2, 3, 4
"""

_LIVE_INSERT = f"""
WITH fresh AS (
    INSERT INTO events
    SELECT DISTINCT ON (idempotency_key) {_INPUT_COLUMNS}, NULL FROM incoming
    ORDER BY idempotency_key
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *),
rolled AS (
    INSERT INTO rollup {_ROLLUP_SELECT.format(source="fresh", where="TRUE")}
    ON CONFLICT (external_customer_id, hour, region, model) DO UPDATE SET
        events = rollup.events + excluded.events,
        completion_events = rollup.completion_events + excluded.completion_events,
        completion_tokens = CASE
            WHEN rollup.completion_tokens IS NULL THEN excluded.completion_tokens
            WHEN excluded.completion_tokens IS NULL THEN rollup.completion_tokens
            ELSE rollup.completion_tokens + excluded.completion_tokens END,
        completion_max = greatest(rollup.completion_max, excluded.completion_max)
    RETURNING 1)
SELECT count(*) FROM fresh
"""


def _bin_dir() -> Path:
    """Debian's PostgreSQL binaries (the newest installed major), else ``pg_ctl`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError("PostgreSQL is not installed (apt-get install -y postgresql)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresPeer:
    name = "postgres"

    def __init__(self, workdir: Path) -> None:
        # initdb refuses to run as root: then the server runs as the `postgres` user, in a
        # folder of its own under /tmp (the workdir may not be reachable by that user).
        self.as_root = os.geteuid() == 0
        self.bin = _bin_dir()
        self.folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        if self.as_root:
            shutil.chown(self.folder, user="postgres")
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
        options = " ".join(f"-c {key}={value}" for key, value in SETTINGS.items())
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
            "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 {options}",
            "start",
        )  # fmt: skip
        self.con = psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )
        self.con.execute("SET TimeZone = 'UTC'")
        # The catalog of an empty database (about 7 MB) is not per-event storage.
        self.empty_bytes = self.disk_bytes()
        self.con.execute(_SCHEMA)
        self.scopes: dict[str, Scope] = {}

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def version(self) -> str:
        row = self.con.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'} (psycopg {psycopg.__version__})"

    def _copy(self, table: str, batch: pa.Table, columns: str = _INPUT_COLUMNS) -> None:
        buffer = io.BytesIO()
        pa_csv.write_csv(batch, buffer, pa_csv.WriteOptions(include_header=False))
        with self.con.cursor().copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())

    # -- System -------------------------------------------------------------------------------

    def bulk_load(self, parquet: Path) -> int:
        with self.con.transaction():
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=500_000):
                self._copy("events", pa.Table.from_batches([batch]))
        self.con.execute(_INDEXES)
        row = self.con.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def materialize(self) -> None:
        with self.con.transaction():
            self.con.execute(
                f"INSERT INTO rollup {_ROLLUP_SELECT.format(source='events', where='TRUE')}"
            )
        self.con.execute("ANALYZE rollup")

    def ingest_live(self, batch: pa.Table) -> int:
        with self.con.transaction():
            self.con.execute(
                "CREATE TEMP TABLE incoming (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            self._copy("incoming", batch)
            row = self.con.execute(_LIVE_INSERT).fetchone()
        return int(row[0]) if row else 0

    def stage_backfill(self, scope: Scope, events: pa.Table) -> str:
        backfill_id = uuid.uuid4().hex
        labelled = events.append_column("backfill_id", pa.array([backfill_id] * events.num_rows))
        with self.con.transaction():
            self._copy("staging", labelled, f"{_INPUT_COLUMNS}, backfill_id")
        self.scopes[backfill_id] = scope
        return backfill_id

    def _scope_where(self, scope: Scope, column: str = '"timestamp"') -> str:
        condition = [
            f"{column} >= '{timestamp_literal(scope.start)}+00'",
            f"{column} < '{timestamp_literal(scope.end)}+00'",
        ]
        if scope.customer is not None:
            condition.append(f"external_customer_id = '{scope.customer}'")
        return " AND ".join(condition)

    def _reaggregate(self, scope: Scope) -> None:
        self.con.execute(f"DELETE FROM rollup WHERE {self._scope_where(scope, 'hour')}")
        self.con.execute(
            f"INSERT INTO rollup "
            f"{_ROLLUP_SELECT.format(source='events', where=self._scope_where(scope))}"
        )

    def close_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        replaced = self._scope_where(scope)
        if scope.deprecated_only:
            replaced += f" AND properties->>'model' = '{DEPRECATED_MODEL}'"
        with self.con.transaction():
            self.con.execute(
                f"WITH moved AS (DELETE FROM events WHERE {replaced} RETURNING *) "
                f"INSERT INTO archive SELECT '{backfill_id}', {_EVENT_COLUMNS} FROM moved"
            )
            self.con.execute(
                f"INSERT INTO events SELECT {_EVENT_COLUMNS} FROM staging "
                f"WHERE backfill_id = '{backfill_id}'"
            )
            self._reaggregate(scope)

    def revert_backfill(self, backfill_id: str) -> None:
        scope = self.scopes[backfill_id]
        with self.con.transaction():
            self.con.execute(f"DELETE FROM events WHERE backfill_id = '{backfill_id}'")
            self.con.execute(
                f"INSERT INTO events SELECT {_EVENT_COLUMNS} FROM archive "
                f"WHERE archived_by = '{backfill_id}'"
            )
            self._reaggregate(scope)

    def usage(
        self, metric: str, *, start: datetime, end: datetime, customer: str | None, by_day: bool
    ) -> list[UsageRow]:
        sql = rollup_usage_sql(
            metric, rollup="rollup", start=start, end=end, customer=customer, by_day=by_day
        )
        return as_usage_rows(self.con.execute(sql).fetchall())

    def recompute(self) -> None:
        with self.con.transaction():
            self.con.execute("TRUNCATE rollup")
            self.con.execute(
                f"INSERT INTO rollup {_ROLLUP_SELECT.format(source='events', where='TRUE')}"
            )

    def disk_bytes(self) -> int:
        row = self.con.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) - getattr(self, "empty_bytes", 0) if row else 0

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            shutil.rmtree(self.folder, ignore_errors=True)
