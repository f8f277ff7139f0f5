"""The crash matrix (issue 7; DESIGN section 6: a crash at any point leaves a consistent store).

Every operation of ``procs/crash_matrix.py`` (live ingest, staging into a backfill, close,
revert of a reflected and of a pending backfill, amend, deprecate, metric creation and
compaction) first runs once to completion, recording the state after each
step and every statement it sends to DuckDB. Kill points are drawn from those statements,
deterministically from a seed: every ``COMMIT`` right before and right after it runs, then a
seeded sample of every other statement (before or after it) and of instants inside commits
(``during``, by a timer).
For each point a child process runs the operation on a fresh copy of a small template store
and dies by SIGKILL there. The store is reopened and must

* equal, row for row in every table, the state of a one-shot run after exactly the steps the
  child acknowledged, or after one more (the step in flight committed, unacknowledged): every
  acknowledged write is there and nothing is half applied;
* pass ``verify()`` (materialized usage equals a recomputation);
* take a retry of the steps not applied, and then equal the one-shot result.

Environment: ``ENGINE_CRASH_POINTS`` (default 200) kill points, ``ENGINE_CRASH_SEED`` the seed,
``ENGINE_CRASH_WORKERS`` worker processes (default: the CPU count), ``ENGINE_CRASH_REPORT`` a
path for a JSON report of every point.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import pytest
from procs.common import FakeClock, subprocess_env
from procs.crash_matrix import (
    CLOCK_NOW,
    Outcome,
    State,
    Template,
    build_template,
    canonical_state,
    operations,
    restore,
    try_point,
    worker_command,
)
from procs.killable import wrap

import engine

pytestmark = pytest.mark.slow

POINTS = int(os.environ.get("ENGINE_CRASH_POINTS", "200"))
SEED = int(os.environ.get("ENGINE_CRASH_SEED", "7"))
WORKERS = int(os.environ.get("ENGINE_CRASH_WORKERS", str(os.cpu_count() or 2)))
REPORT = os.environ.get("ENGINE_CRASH_REPORT")


@dataclass(frozen=True)
class Statement:
    kind: str
    occurrence: int
    seconds: float


@dataclass
class Matrix:
    root: Path
    template_path: Path
    template: Template
    references_path: Path
    traces: dict[str, list[Statement]]
    points: list[tuple[str, str]]


def plan(traces: dict[str, list[Statement]], total: int, seed: int) -> list[tuple[str, str]]:
    """``total`` (operation, kill point) pairs. The edges of every commit come first, since a
    commit is where a write becomes durable; then a seeded sample of every other statement's
    edges and of instants inside commits, taken from each operation in turn so that each gets
    its share."""
    rng = random.Random(seed)
    commit_edges: list[tuple[str, str]] = []
    others: dict[str, list[str]] = {}
    for operation in sorted(traces):
        others[operation] = []
        for statement in traces[operation]:
            edges = [f"{statement.kind}:{statement.occurrence}:{w}" for w in ("before", "after")]
            if statement.kind != "COMMIT":
                others[operation] += edges
                continue
            commit_edges += [(operation, edge) for edge in edges]
            # which points exist and the fraction of the commit's traced time a timer waits
            # follow from the seed alone; the delay itself scales with this machine's speed
            delay = rng.uniform(0.1, 0.9) * statement.seconds
            others[operation].append(f"COMMIT:{statement.occurrence}:during:{delay:.4f}")
        rng.shuffle(others[operation])
    if total <= len(commit_edges):
        return rng.sample(commit_edges, total)
    chosen = list(commit_edges)
    while len(chosen) < total and any(others.values()):
        for operation in sorted(others):
            if others[operation] and len(chosen) < total:
                chosen.append((operation, others[operation].pop()))
    return chosen


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    root = tmp_path_factory.mktemp("crash-matrix")
    template_path = root / "template"
    template = build_template(template_path)
    references: dict[str, list[State]] = {}
    traces: dict[str, list[Statement]] = {}
    for operation, steps in operations(template).items():
        path = restore(template_path, root / "reference")
        with engine.open(path, clock=FakeClock(CLOCK_NOW)) as store:
            # armed during the steps only: it records what a child running them would run
            # (a kill point the child never reaches fails as "not killed")
            connection = wrap(store)
            states = [canonical_state(store)]
            for step in steps:
                connection.armed = True
                step(store)
                connection.armed = False
                states.append(canonical_state(store))
                # the matrix compares states instead of calling verify() after every retry:
                # a state equal to one that verified verifies too
                assert store.verify() == [], operation
        # every step must leave a mark, or a lost step would pass for an applied one
        # (compaction changes files only, never a row)
        for before, after in itertools.pairwise(states):
            assert (before == after) == (operation == "compact"), operation
        references[operation] = states
        traces[operation] = [Statement(*statement) for statement in connection.statements]
        assert any(s.kind == "COMMIT" for s in traces[operation]), f"{operation} committed nothing"
    references_path = root / "references.json"
    references_path.write_text(json.dumps(references))
    yield Matrix(root, template_path, template, references_path, traces, plan(traces, POINTS, SEED))


def run_workers(matrix: Matrix) -> list[Outcome]:
    """Hand the points to ``WORKERS`` worker processes, each with a store folder of its own."""
    pending: Queue[tuple[str, str]] = Queue()
    for point in matrix.points:
        pending.put(point)

    def drive(number: int) -> list[Outcome]:
        command = worker_command(
            matrix.template_path,
            matrix.root / f"worker{number}" / "store",
            matrix.references_path,
            matrix.template,
        )
        outcomes = []
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env()
        ) as worker:
            assert worker.stdin is not None and worker.stdout is not None
            while True:
                try:
                    operation, point = pending.get_nowait()
                except Empty:
                    break
                worker.stdin.write(json.dumps({"operation": operation, "point": point}) + "\n")
                worker.stdin.flush()
                answer = worker.stdout.readline()
                assert answer, f"worker {number} died at {operation} {point}"
                outcomes.append(Outcome(**json.loads(answer)))
            worker.stdin.close()
            assert worker.wait(timeout=60) == 0
        return outcomes

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return [o for outcomes in pool.map(drive, range(WORKERS)) for o in outcomes]


def test_the_plan_is_a_function_of_the_seed(matrix: Matrix) -> None:
    again = plan(matrix.traces, POINTS, SEED)
    assert again == matrix.points
    assert plan(matrix.traces, POINTS, SEED + 1) != again
    # when the budget allows, every commit of every operation is killed before and after it
    commits = [
        (operation, f"COMMIT:{statement.occurrence}:{when}")
        for operation, statements in matrix.traces.items()
        for statement in statements
        if statement.kind == "COMMIT"
        for when in ("before", "after")
    ]
    if len(commits) <= POINTS:
        assert set(commits) <= set(again)
    assert len(set(again)) == len(again) == POINTS


def test_the_check_sees_a_lost_write(matrix: Matrix) -> None:
    """The matrix is only worth its zero if its check can fail: against references in which
    the last ingest batch lost one event, the same kill point must be reported."""
    references: dict[str, list[State]] = json.loads(matrix.references_path.read_text())
    lossy = [dict(state) for state in references["ingest"]]
    lossy[-1]["stored_events"] = lossy[-1]["stored_events"][1:]
    outcome = try_point(
        template_path=matrix.template_path,
        template=matrix.template,
        path=matrix.root / "lossy" / "store",
        steps=operations(matrix.template)["ingest"],
        references=lossy,
        operation="ingest",
        point="COMMIT:2:after",
    )
    assert outcome.exit_code == -9 and outcome.acknowledged == 1
    assert outcome.applied is None
    assert any("neither the state after 1 step(s) nor after 2" in p for p in outcome.problems)
    assert any("stored_events: 0 missing, 1 extra" in p for p in outcome.problems)


def test_every_kill_point_leaves_a_consistent_store(matrix: Matrix) -> None:
    started = time.perf_counter()
    outcomes = run_workers(matrix)
    elapsed = time.perf_counter() - started
    failures = [o for o in outcomes if o.problems]
    per_operation = Counter(o.operation for o in outcomes)
    in_flight_committed = sum(
        1 for o in outcomes if o.applied is not None and o.applied > o.acknowledged
    )
    summary = (
        f"crash matrix: {len(outcomes)} kill points (seed {SEED}), {len(failures)} failures, "
        f"{elapsed:.0f} s on {WORKERS} workers; points per operation "
        f"{dict(sorted(per_operation.items()))}; statements per operation "
        f"{ {op: len(t) for op, t in sorted(matrix.traces.items())} }; "
        f"{in_flight_committed} kills fell between a commit and its acknowledgement"
    )
    print(summary)
    if REPORT:
        report = {"summary": summary, "outcomes": [o.__dict__ for o in outcomes]}
        Path(REPORT).write_text(json.dumps(report, indent=1))
    assert sorted((o.operation, o.point) for o in outcomes) == sorted(matrix.points)
    assert len(outcomes) >= min(POINTS, 200)
    assert failures == [], (
        summary
        + "\n"
        + "\n".join(f"{o.operation} --kill {o.point}: {'; '.join(o.problems)}" for o in failures)
    )
