"""The reader of the soak test: reads usage and effective events again and again while the
server and the backfiller write, and checks what must hold at every committed version.

Usage: ``python tests/procs/soak_reader.py STORE --region-start ISO --seconds S --out PATH``

Says ``ready`` once the store is open, waits for a line on stdin, reads for ``S`` seconds, and
says ``summary <json>`` (counters and the first failures). Each read is appended to ``--out``
(JSON lines) for the test to compare with its model of the region.

Per iteration:

1. **One snapshot** (one read transaction): the latest version, the effective events of the
   region and of the whole store, the materialized usage cells. Materialized usage must equal
   the aggregate of the effective events, cell by cell in the region and in total for the
   whole store; versions and the count of live events never go back. Recorded with its
   version: the test checks the region against its model at exactly that version.
2. **The public API**, as a client would call it: ``store.usage(...)`` of every metric and
   ``store.events.effective(...)`` over the region, between two reads of the version. When no
   commit happened in between (the catalog's snapshot id did not move), usage must equal the
   effective events. Recorded with the version range: the test checks that the result is the
   model's state at some version in the range: before or after each close and revert, never
   in between.
3. Every few iterations, ``store.usage(..., as_of=v)`` for the version ``v`` of step 1 must
   equal what step 1 saw, though later commits happened meanwhile (time travel).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import engine
from procs.common import say
from procs.soak_common import (
    METRICS,
    Cells,
    add_to_cell,
    cell_key,
    parse_time,
    region_end_for,
)

AS_OF_EVERY = 5
#: Failures kept verbatim in the summary (all are counted).
KEEP_FAILURES = 20

_TOKENS = "CAST(properties->>'tokens' AS BIGINT)"
_TOKENS_A = f"CASE WHEN properties->>'model' = 'a' THEN {_TOKENS} ELSE 0 END"


def _naive(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class Reader:
    def __init__(self, store: engine.Store, region_start: datetime, out: IO[str]) -> None:
        self.store = store
        self.region_start = region_start
        self.region_end = region_end_for(region_start)
        self.out = out
        self.metric_ids = {m.name: m.id for m in store.metrics.list()}
        missing = set(METRICS) - set(self.metric_ids)
        if missing:
            raise SystemExit(f"metrics missing from the store: {sorted(missing)}")
        self.counters: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        self.last_version = -1
        self.last_live = -1

    def fail(self, check: str, **details: Any) -> None:
        self.counters[f"failed_{check}"] += 1
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append({"check": check, **details})

    def passed(self, check: str, ok: bool, **details: Any) -> None:
        if ok:
            self.counters[f"passed_{check}"] += 1
        else:
            self.fail(check, **details)

    def record(self, **observation: Any) -> None:
        self.out.write(json.dumps(observation) + "\n")

    def version(self) -> int:
        row = self.store.sql("SELECT coalesce(max(version), 0) FROM lake.main.commits").fetchone()
        assert row is not None
        return int(row[0])

    # -- 1. one snapshot ---------------------------------------------------------------------

    def snapshot_checks(self) -> tuple[int, Cells]:
        store = self.store
        in_region = (
            f"timestamp >= TIMESTAMP '{_naive(self.region_start)}' "
            f"AND timestamp < TIMESTAMP '{_naive(self.region_end)}' "
            "AND external_customer_id LIKE 'bf-%'"
        )
        bucket_in_region = in_region.replace("timestamp", "bucket")
        metric_names = {metric_id: name for name, metric_id in self.metric_ids.items()}

        # one snapshot for every query (see Storage.consistent_read for why not read())
        def read() -> tuple[Any, ...]:
            version = self.version()
            effective_rows = store.sql(
                f"SELECT external_customer_id, date_trunc('hour', timestamp), count(*), "
                f"sum({_TOKENS}), sum({_TOKENS_A}) FROM events WHERE {in_region} GROUP BY ALL"
            ).fetchall()
            cell_rows = store.sql(
                "SELECT external_customer_id, bucket, metric_id, sum(events), sum(total) "
                f"FROM lake.main.usage_cells WHERE {bucket_in_region} GROUP BY ALL"
            ).fetchall()
            effective_total = store.sql(
                f"SELECT count(*), coalesce(sum({_TOKENS}), 0), coalesce(sum({_TOKENS_A}), 0) "
                "FROM events"
            ).fetchone()
            cell_totals = store.sql(
                "SELECT metric_id, sum(events), sum(total) FROM lake.main.usage_cells GROUP BY 1"
            ).fetchall()
            live_row = store.sql(
                "SELECT count(*) FROM events WHERE external_customer_id LIKE 'live-%'"
            ).fetchone()
            return version, effective_rows, cell_rows, effective_total, cell_totals, live_row

        version, effective_rows, cell_rows, effective_total, cell_totals, live_row = (
            store._storage.consistent_read(read)
        )
        assert effective_total is not None and live_row is not None
        effective: Cells = {
            cell_key(customer, hour.replace(tzinfo=UTC)): [int(n), int(tokens), int(tokens_a)]
            for customer, hour, n, tokens, tokens_a in effective_rows
        }
        materialized: Cells = {}
        for customer, bucket, metric_id, events, total in cell_rows:
            cell = materialized.setdefault(cell_key(customer, bucket.replace(tzinfo=UTC)), [0] * 3)
            name = metric_names.get(metric_id)
            if name == "events":
                cell[0] = int(events)
            elif name == "tokens":
                cell[1] = round(total)
            elif name == "tokens_of_model_a":
                cell[2] = round(total)
        self.passed(
            "snapshot_region_materialized_equals_effective",
            materialized == effective,
            version=version,
            effective=effective,
            materialized=materialized,
        )
        totals = {metric_names.get(m): (events, total) for m, events, total in cell_totals}
        materialized_total = [
            int(totals.get("events", (0, 0))[0] or 0),
            round(totals.get("tokens", (0, 0))[1] or 0),
            round(totals.get("tokens_of_model_a", (0, 0))[1] or 0),
        ]
        effective_totals = [int(value) for value in effective_total]
        self.passed(
            "snapshot_total_materialized_equals_effective",
            materialized_total == effective_totals,
            version=version,
            effective=effective_totals,
            materialized=materialized_total,
        )
        live = int(live_row[0])
        self.passed(
            "versions_never_go_back",
            version >= self.last_version,
            version=version,
            previous=self.last_version,
        )
        self.passed("live_events_never_go_back", live >= self.last_live, live=live)
        self.last_version, self.last_live = version, live
        self.record(kind="snapshot", version=version, region=effective, live=live)
        return version, effective

    # -- 2. the public API -------------------------------------------------------------------

    def usage_cells(self, as_of: int | None = None) -> Cells:
        cells: Cells = {}
        for position, name in enumerate(METRICS):
            frame = self.store.usage(
                self.metric_ids[name],
                timeframe_start=self.region_start,
                timeframe_end=self.region_end,
                granularity="hour",
                as_of=as_of,
            )
            for customer, start, value in frame.select(
                "external_customer_id", "timeframe_start", "value"
            ).rows():
                if customer is None or not customer.startswith("bf-") or not value:
                    continue
                cells.setdefault(cell_key(customer, start), [0] * 3)[position] = round(value)
        return cells

    def api_checks(self) -> None:
        storage = self.store._storage
        low = self.version()
        before = storage.snapshot_id()
        usage = self.usage_cells()
        frame = self.store.events.effective(
            timeframe_start=self.region_start, timeframe_end=self.region_end
        )
        after = storage.snapshot_id()
        high = self.version()
        effective: Cells = {}
        for customer, timestamp, properties in frame.select(
            "external_customer_id", "timestamp", "properties"
        ).rows():
            if customer and customer.startswith("bf-"):
                add_to_cell(
                    effective, customer, timestamp, properties["tokens"], properties["model"]
                )
        self.counters["reads"] += 1 + len(METRICS)
        if before == after:
            self.passed(
                "api_usage_equals_effective_events",
                usage == effective,
                versions=[low, high],
                usage=usage,
                effective=effective,
            )
        else:
            self.counters["api_compare_skipped_commit_between"] += 1
        snapshots = [before, after]
        self.record(kind="api_usage", low=low, high=high, snapshots=snapshots, region=usage)
        self.record(kind="api_effective", low=low, high=high, snapshots=snapshots, region=effective)

    # -- 3. time travel ----------------------------------------------------------------------

    def as_of_check(self, version: int, seen: Cells) -> None:
        cells = self.usage_cells(as_of=version)
        self.counters["reads"] += len(METRICS)
        self.passed("as_of_equals_snapshot", cells == seen, version=version, as_of=cells, seen=seen)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        iteration = 0
        while time.monotonic() < deadline:
            iteration += 1
            try:
                version, seen = self.snapshot_checks()
                self.counters["reads"] += 1
                self.api_checks()
                if iteration % AS_OF_EVERY == 0:
                    self.as_of_check(version, seen)
            except Exception as error:  # counted and reported: a read must never fail
                self.fail("read_raised", error=f"{type(error).__name__}: {error}")
            self.counters["iterations"] += 1
            self.out.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--region-start", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with engine.open(args.store) as store, args.out.open("a") as out:
        reader = Reader(store, parse_time(args.region_start), out)
        say("ready")
        sys.stdin.readline()
        reader.run(args.seconds)
        summary = {"counters": dict(reader.counters), "failures": reader.failures}
        say("summary " + json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
