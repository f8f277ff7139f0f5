"""The operations of the crash matrix, the child that runs one and dies, and the worker that
checks what the child left.

``python tests/procs/crash_matrix.py run STORE OPERATION --reflected A --pending B
[--kill POINT] [--trace]`` is the child: it opens ``STORE`` on the fixed clock
:data:`CLOCK_NOW`, says ``starting``, runs the operation's steps (each one public API call,
e.g. one ingest batch) and says ``ack <i>`` as soon as step ``i`` returned: that is what
"acknowledged" means, the caller was told the write happened. Then ``done``. ``--kill`` and
``--trace`` work as in ``killable.py``, counting statements from ``starting``.

``python tests/procs/crash_matrix.py worker TEMPLATE STORE REFERENCES --reflected A --pending
B`` tries kill points read from stdin (:func:`try_point`): copy the template to ``STORE``, run
a child killed at the point, reopen the store, compare it with the states of a one-shot run
(``REFERENCES``, JSON), ``verify()``, retry the steps not applied, compare again.

The test (``tests/reliability/test_crash_matrix.py``) builds the template with
:func:`build_template` and the one-shot states with :func:`operations` and
:func:`canonical_state`, in-process. Everything runs on one fixed clock, so a retried
operation writes exactly what a one-shot run writes (times, versions and all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from signal import SIGKILL
from typing import Any

import engine
from procs.common import HOUR, NOW, FakeClock, event, say, subprocess_env
from procs.killable import wrap

#: The one instant every process of the matrix sees (template, child, reopen, retry).
CLOCK_NOW = NOW
#: Backfill A: reflected, replaces model 'a' events in [NOW - 11 h, NOW - 6 h) (all customers).
A_START, A_END = NOW - 11 * HOUR, NOW - 6 * HOUR
#: Backfill B: pending, replaces cust1's model 'b' events in [NOW - 8 h, NOW - 3 h).
B_START, B_END = NOW - 8 * HOUR, NOW - 3 * HOUR
#: Backfill H: an add-only load of older history, reflected (usage over several days).
H_START, H_END = NOW - 72 * HOUR, NOW - 48 * HOUR

CUSTOMERS = ("cust0", "cust1", "cust2", "cust3")
METRICS = {
    "tokens": "SELECT sum(tokens) FROM events WHERE event_name = 'completion'",
    "calls_by_model": "SELECT count(*) FROM events GROUP BY model",
    "models": "SELECT count(DISTINCT model) FROM events",
}
#: Created by the ``metric`` operation.
NEW_METRICS = {"tokens_by_customer": "SELECT sum(tokens) FROM events GROUP BY external_customer_id"}


def events_between(
    prefix: str,
    count: int,
    start: datetime,
    end: datetime,
    *,
    customers: tuple[str, ...] = CUSTOMERS,
    tokens: int = 0,
) -> list[dict[str, Any]]:
    """``count`` events ``<prefix><i>`` spread over ``[start, end)``: every customer with every
    model and both event names, and token counts that differ per event (so that a lost or a
    doubled event shows in sums)."""
    span = end - start
    return [
        event(
            f"{prefix}{i}",
            start + span * i / count,
            ext=customers[i % len(customers)],
            name="completion" if i % 2 else "api_call",
            tokens=tokens + 1 + i % 17,
            model=("a", "b", "c")[i % 3],
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Template:
    """What the operations need to know about the template store."""

    reflected_backfill: str  # A
    pending_backfill: str  # B


def build_template(path: Path) -> Template:
    """A small store with history, three metrics, a reflected and a pending backfill."""
    with engine.open(path, clock=FakeClock(CLOCK_NOW)) as store:
        for external in CUSTOMERS[:2]:
            store.customers.create(external_customer_id=external, name=external.title())
        history = store.backfills.create(
            timeframe_start=H_START, timeframe_end=H_END, replace_existing_events=False
        )
        store.ingest(events_between("hist-", 200, H_START, H_END), backfill_id=history.id)
        store.backfills.close(history.id)
        live = events_between("live-", 300, NOW - 11 * HOUR, NOW - HOUR)
        for batch in range(3):
            store.ingest(live[batch * 100 : (batch + 1) * 100])
        for name, sql in METRICS.items():
            store.metrics.create(name=name, sql=sql)
        reflected = store.backfills.create(
            timeframe_start=A_START, timeframe_end=A_END, deprecation_filter="model = 'a'"
        )
        store.ingest(
            events_between("fixa-", 60, A_START, A_END, tokens=100), backfill_id=reflected.id
        )
        store.backfills.close(reflected.id)
        pending = store.backfills.create(
            timeframe_start=B_START,
            timeframe_end=B_END,
            external_customer_id="cust1",
            deprecation_filter="model = 'b'",
        )
        store.ingest(
            events_between("fixb-", 40, B_START, B_END, customers=("cust1",), tokens=200),
            backfill_id=pending.id,
        )
        return Template(reflected_backfill=reflected.id, pending_backfill=pending.id)


Step = Callable[[engine.Store], object]


def operations(template: Template) -> dict[str, list[Step]]:
    """Every operation of the matrix as its steps, in order."""
    a, b = template.reflected_backfill, template.pending_backfill
    late = events_between("late-", 24, NOW - 10 * HOUR, NOW)
    # the live version of a key that backfill A wrote (same body but the tokens)
    fixa_5 = {**events_between("fixa-", 60, A_START, A_END)[5], "properties": {"tokens": 7}}
    staged = events_between("stage-", 40, B_START, B_END, customers=("cust1",), tokens=300)

    def ingest(batch: list[dict[str, Any]]) -> Step:
        return lambda store: store.ingest(batch)

    def stage(batch: list[dict[str, Any]]) -> Step:
        return lambda store: store.ingest(batch, backfill_id=b)

    def amend(key: str, tokens: int) -> Step:
        def run(store: engine.Store) -> object:
            (current,) = store.events.search([key], timeframe_start=NOW - 96 * HOUR)
            return store.events.amend(
                key,
                event_name=current.event_name,
                timestamp=current.timestamp,
                external_customer_id=current.external_customer_id,
                properties={**current.properties, "tokens": tokens},
            )

        return run

    def deprecate(key: str) -> Step:
        return lambda store: store.events.deprecate(key)

    def create_metric(name: str) -> Step:
        return lambda store: store.metrics.create(name=name, sql=NEW_METRICS[name])

    return {
        # new keys, some of model 'a' inside A's timeframe (A's filter deprecates them as they
        # arrive); then new keys with repeats of the first batch and a key that backfill A
        # wrote (the live row becomes its newest version)
        "ingest": [
            ingest([*late[:12], *events_between("lateA-", 8, A_START, A_END, tokens=50)]),
            ingest([*late[12:24], *late[:3], fixa_5]),
        ],
        "stage": [stage(staged[:20]), stage([*staged[20:], *staged[:4]])],
        "close": [lambda store: store.backfills.close(b)],
        "revert": [lambda store: store.backfills.revert(a)],
        "revert_pending": [lambda store: store.backfills.revert(b)],
        "amend": [amend("live-200", 1000), amend("hist-11", 3000)],
        "deprecate": [deprecate("fixa-4"), deprecate("hist-12")],
        "metric": [create_metric("tokens_by_customer")],
        # no retention and no grace: expire every old snapshot and delete every file that left
        # the store at once, the steps a crash could hurt most
        "compact": [lambda store: store.compact(retention=timedelta(0), file_grace=timedelta(0))],
    }


#: Operations whose steps are idempotent, so a retry resends every unacknowledged step even
#: if the store shows it applied: that must not count anything twice.
RESENT_WHEN_UNACKNOWLEDGED = frozenset({"ingest", "stage"})


# -- the state an operation leaves ----------------------------------------------------------------

#: Every table of a store, read in one query (a DuckLake query pays for catalog reads, so one
#: is much cheaper than ten) as (table, row as text). The metric tables are keyed by metric name:
#: a retried creation draws a new random id.
_PLAIN_TABLES = (
    "stored_events",
    "staged_events",
    "deprecations",
    "supersessions",
    "backfills",
    "customers",
    "commits",
)
_STATE_QUERY = " UNION ALL ".join(
    [
        *(
            f"SELECT '{t}' AS t, CAST(r AS VARCHAR) AS v FROM lake.main.{t} AS r"
            for t in _PLAIN_TABLES
        ),
        "SELECT 'metrics', CAST(r AS VARCHAR) "
        "FROM (SELECT * EXCLUDE (id) FROM lake.main.metrics) AS r",
        *(
            f"SELECT '{t}', CAST(r AS VARCHAR) FROM (SELECT m.name, u.* EXCLUDE (metric_id) "
            f"FROM lake.main.{t} AS u JOIN lake.main.metrics AS m ON m.id = u.metric_id) AS r"
            for t in ("usage_cells", "usage_distinct")
        ),
    ]
)

State = dict[str, list[str]]


def canonical_state(store: engine.Store) -> State:
    """Every row of every table as sorted text: two stores that hold the same data have equal
    states whatever their files or DuckLake snapshot ids are. ``verify()`` is a function of
    these rows, so a state equal to one that verified verifies too."""
    state: State = {
        name: [] for name in (*_PLAIN_TABLES, "metrics", "usage_cells", "usage_distinct")
    }
    for table, row in store.sql(_STATE_QUERY).fetchall():
        state[table].append(row)
    return {table: sorted(rows) for table, rows in state.items()}


def state_difference(expected: State, actual: State) -> str:
    """A short account of how ``actual`` differs from ``expected`` (for failure messages)."""
    parts = []
    for table in sorted(set(expected) | set(actual)):
        missing = sorted(set(expected.get(table, [])) - set(actual.get(table, [])))
        extra = sorted(set(actual.get(table, [])) - set(expected.get(table, [])))
        if missing or extra:
            example = ["missing", *missing[:1]] if missing else ["extra", *extra[:1]]
            parts.append(
                f"{table}: {len(missing)} missing, {len(extra)} extra ({' '.join(example)})"
            )
    return "; ".join(parts) or "equal"


# -- one kill point -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one kill point did and what was wrong afterwards (``problems`` empty: passed)."""

    operation: str
    point: str
    exit_code: int | None = None
    #: Steps the child acknowledged before it died.
    acknowledged: int = 0
    #: Steps the reopened store shows applied (None: it matches no state of a one-shot run).
    applied: int | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def victim_command(path: Path, operation: str, template: Template, *options: str) -> list[str]:
    """The command of a child that runs ``operation`` on the store at ``path``."""
    return [
        sys.executable,
        __file__,
        "run",
        str(path),
        operation,
        "--reflected",
        template.reflected_backfill,
        "--pending",
        template.pending_backfill,
        *options,
    ]


def worker_command(
    template_path: Path, path: Path, references: Path, template: Template
) -> list[str]:
    """The command of a worker that tries kill points on copies of the template at ``path``."""
    ids = ["--reflected", template.reflected_backfill, "--pending", template.pending_backfill]
    return [sys.executable, __file__, "worker", *map(str, (template_path, path, references)), *ids]


def restore(template_path: Path, path: Path) -> Path:
    """A fresh copy of the template at ``path`` (store folders are movable: the catalog keeps
    data file paths relative to the folder)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(template_path, path)
    return path


def try_point(
    *,
    template_path: Path,
    template: Template,
    path: Path,
    steps: list[Step],
    references: list[State],
    operation: str,
    point: str,
) -> Outcome:
    """Run ``operation`` in a child killed at ``point``, then reopen, check and retry."""
    started = time.perf_counter()
    outcome = Outcome(operation, point)
    restore(template_path, path)
    result = subprocess.run(
        victim_command(path, operation, template, "--kill", point),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
        check=False,
    )
    outcome.exit_code = result.returncode
    said = result.stdout.splitlines()
    outcome.acknowledged = sum(1 for line in said if line.startswith("ack "))
    # a timer may fire after the last statement, or never (the process ended first)
    if result.returncode != -SIGKILL and not (":during:" in point and result.returncode == 0):
        tail = result.stderr.strip().splitlines()[-3:]
        outcome.problems.append(f"the child exited {result.returncode}, not killed: {tail}")
    if result.returncode not in (0, -SIGKILL):
        return _timed(outcome, started)
    allowed = [len(steps)] if "done" in said else [outcome.acknowledged, outcome.acknowledged + 1]
    try:
        _check_and_retry(path, steps, references, allowed, outcome)
    except Exception as error:  # recorded with the point; the run goes on with the next one
        outcome.problems.append(f"reopen, check or retry raised {type(error).__name__}: {error}")
    return _timed(outcome, started)


def _timed(outcome: Outcome, started: float) -> Outcome:
    outcome.seconds = round(time.perf_counter() - started, 3)
    return outcome


def _check_and_retry(
    path: Path, steps: list[Step], references: list[State], allowed: list[int], outcome: Outcome
) -> None:
    with engine.open(path, clock=FakeClock(CLOCK_NOW)) as store:
        # the checks are not what is crash-tested: one DuckDB thread makes them cost a third
        # less CPU, and two workers share two cores with their children
        store._storage._connection.execute("SET threads = 1")
        state = canonical_state(store)
        matches = [k for k in allowed if k < len(references) and references[k] == state]
        if matches:
            # a step that changes nothing would match twice: the later one is as good
            outcome.applied = matches[-1]
        else:
            outcome.problems.append(
                f"after {outcome.acknowledged} acknowledged step(s) the store is neither the "
                f"state after {allowed[0]} step(s) nor after {allowed[-1]}; against the "
                f"first: {state_difference(references[allowed[0]], state)}"
            )
        mismatches = store.verify()
        if mismatches:
            outcome.problems.append(f"verify() after reopening: {mismatches[:3]}")
        # a client resends what was not acknowledged when that is safe (ingest: keys seen
        # before are duplicates); otherwise it looks first and redoes what is not applied
        retry_from = (
            outcome.acknowledged
            if outcome.operation in RESENT_WHEN_UNACKNOWLEDGED or outcome.applied is None
            else outcome.applied
        )
        if retry_from < len(steps) or outcome.applied is None:
            for step in steps[retry_from:]:
                step(store)
            final = canonical_state(store)
            if final != references[-1]:
                outcome.problems.append(
                    "after the retry the store differs from a one-shot run: "
                    f"{state_difference(references[-1], final)}"
                )


# -- entry points ---------------------------------------------------------------------------------


def _template(args: argparse.Namespace) -> Template:
    return Template(reflected_backfill=args.reflected, pending_backfill=args.pending)


def run(args: argparse.Namespace) -> int:
    """The victim: run the steps, acknowledge each, die where ``--kill`` says."""
    steps = operations(_template(args))[args.operation]
    with engine.open(args.store, clock=FakeClock(CLOCK_NOW)) as store:
        connection = wrap(store, kill=args.kill, trace=args.trace)
        say("starting")
        connection.armed = True
        for number, step in enumerate(steps):
            step(store)
            say(f"ack {number}")
        connection.armed = False
        say("done")
    return 0


def worker(args: argparse.Namespace) -> int:
    """Try kill points one by one: each stdin line is ``{"operation": ..., "point": ...}``,
    each answer one JSON line (an :class:`Outcome`) on stdout. A worker process imports the
    engine once for many points, and the checks of two workers run in parallel."""
    template = _template(args)
    steps = operations(template)
    references: dict[str, list[State]] = json.loads(Path(args.references).read_text())
    for line in sys.stdin:
        request = json.loads(line)
        outcome = try_point(
            template_path=args.template,
            template=template,
            path=args.store,
            steps=steps[request["operation"]],
            references=references[request["operation"]],
            operation=request["operation"],
            point=request["point"],
        )
        say(json.dumps(asdict(outcome)))
    return 0


def main(argv: list[str]) -> int:
    ids = argparse.ArgumentParser(add_help=False)
    ids.add_argument("--reflected", required=True, help="backfill A's id")
    ids.add_argument("--pending", required=True, help="backfill B's id")
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    victim = modes.add_parser("run", parents=[ids])
    victim.add_argument("store", type=Path)
    victim.add_argument("operation")
    victim.add_argument("--kill")
    victim.add_argument("--trace", action="store_true")
    checker = modes.add_parser("worker", parents=[ids])
    checker.add_argument("template", type=Path)
    checker.add_argument("store", type=Path)
    checker.add_argument("references", type=Path)
    args = parser.parse_args(argv)
    return run(args) if args.mode == "run" else worker(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
