"""A crash at any point of a close or a revert leaves a consistent store (DESIGN section 6).

A subprocess (``tests/procs/operate.py``) runs the operation on a large backfill and dies by
SIGKILL: either by its own hand at an exact statement (``--kill KIND:N:before|after``, counted
on the DuckDB connection: ``COMMIT:1:before`` is the instant before the commit), or from this
process after a delay measured from its ``starting`` line. Reopening the store must then show
one of the two states of the operation, exactly, and the store must still take writes.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from procs.common import (
    BIG_LATER,
    HOUR,
    FakeClock,
    build_big_store,
    event,
    proc_command,
    read_until,
    subprocess_env,
)
from sqlglot import exp

import engine
from engine.models import BackfillStatus
from engine.queries import effective_events
from engine.storage import Storage

pytestmark = pytest.mark.slow

COUNT = 50_000
#: What counts before the backfill closes, and after: {key: tokens}.
LIVE = {f"live-{i}": 1 for i in range(COUNT)}
FIXED = {f"fix-{i}": 2 for i in range(COUNT)}


@dataclass(frozen=True)
class Templates:
    """Pristine copies of one store path in two states; ``restore`` puts one back at ``path``
    (the DuckLake catalog records its data path, so every run uses the same path)."""

    path: Path
    pending: Path
    reflected: Path
    backfill_id: str
    close_seconds: float
    revert_seconds: float

    def restore(self, state: str) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.copytree(self.pending if state == "pending" else self.reflected, self.path)
        return self.path


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    root = tmp_path_factory.mktemp("crash")
    path = root / "store"
    backfill_id = build_big_store(path, COUNT)
    shutil.copytree(path, root / "pending")
    with engine.open(path, clock=FakeClock(BIG_LATER)) as store:
        started = time.perf_counter()
        store.backfills.close(backfill_id)
        close_seconds = time.perf_counter() - started
    shutil.copytree(path, root / "reflected")
    # time a revert too, on a scratch copy, to aim the timed kills
    with engine.open(path, clock=FakeClock(BIG_LATER)) as store:
        started = time.perf_counter()
        store.backfills.revert(backfill_id)
        revert_seconds = time.perf_counter() - started
    yield Templates(
        path, root / "pending", root / "reflected", backfill_id, close_seconds, revert_seconds
    )


def run_and_kill(path: Path, operation: str, backfill_id: str, kill: str) -> str:
    """Run ``operation`` in a subprocess and make sure it dies by SIGKILL: ``kill`` is a
    ``--kill`` point, or ``after:<seconds>`` from its ``starting`` line. Returns what the child
    said last (``done ...`` if it finished before a timed kill)."""
    args = [str(path), operation, backfill_id]
    timed = kill.startswith("after:")
    if not timed:
        args += ["--kill", kill]
    with subprocess.Popen(
        proc_command("operate.py", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        read_until(child.stdout.readline, "starting")
        if timed:
            time.sleep(float(kill.removeprefix("after:")))  # the delay is the point of the test
            child.kill()
        rest = child.stdout.read().splitlines()
        code = child.wait(timeout=120)
        errors = child.stderr.read()
    if not timed:
        assert code == -9, f"the child should have killed itself at {kill}: {code} {errors}"
        assert rest == [], rest
    else:
        assert code in (-9, 0), errors
    return rest[-1] if rest else "starting"


def raw_state(path: Path, backfill_id: str) -> tuple[str, int]:
    """The backfill's status and how many effective events came from a backfill, as left on
    disk: read without opening a Store, whose recovery would finish a pending revert."""
    storage = Storage(path)
    try:
        (status,) = storage.rows(
            exp.select("status")
            .from_("lake.main.backfills")
            .where(exp.column("id").eq(exp.Literal.string(backfill_id)))
        )
        (count,) = storage.rows(
            exp.select(exp.func("count", exp.column("backfill_id"))).from_(
                effective_events().subquery("e")
            )
        )
    finally:
        storage.close()
    return status[0], int(count[0])


def effective_tokens(store: engine.Store) -> dict[str, int]:
    rows = store.sql("SELECT idempotency_key, properties->>'tokens' FROM events").fetchall()
    return {key: int(tokens) for key, tokens in rows}


def staged(store: engine.Store, backfill_id: str) -> int:
    (row,) = store.sql(
        f"SELECT count(*) FROM lake.main.staged_events WHERE backfill_id = '{backfill_id}'"
    ).fetchall()
    return int(row[0])


def check_still_writable(store: engine.Store, clock: FakeClock) -> None:
    count = "SELECT count(*) FROM events"
    (before,) = store.sql(count).fetchone()
    assert store.ingest([event("after-crash", clock.now, ext="cust0")]).ingested == ["after-crash"]
    assert store.sql(count).fetchone() == (before + 1,)


# -- close ----------------------------------------------------------------------------------------

CLOSE_KILLS = {
    # kill point: the status it must leave
    "DELETE:1:after": "pending",  # rows promoted, deprecations and deletions not committed
    "COMMIT:1:before": "pending",
    "COMMIT:1:after": "reflected",
}


@pytest.mark.parametrize("kill", [*CLOSE_KILLS, "after:0.5"], ids=lambda k: k.replace(":", "-"))
def test_a_crash_during_close(templates: Templates, kill: str) -> None:
    path = templates.restore("pending")
    backfill_id = templates.backfill_id
    if kill.startswith("after:"):
        kill = f"after:{float(kill[6:]) * templates.close_seconds:.3f}"
    last = run_and_kill(path, "close", backfill_id, kill)
    clock = FakeClock(BIG_LATER + 2 * HOUR)
    with engine.open(path, clock=clock) as store:
        backfill = store.backfills.get(backfill_id)
        assert backfill.status in (BackfillStatus.PENDING, BackfillStatus.REFLECTED)
        if kill in CLOSE_KILLS:
            assert backfill.status == CLOSE_KILLS[kill]
        if last.startswith("done"):
            assert backfill.status == BackfillStatus.REFLECTED
        if backfill.status == BackfillStatus.PENDING:
            # nothing visible, the staged events intact, and the close can be run again
            assert effective_tokens(store) == LIVE
            assert staged(store, backfill_id) == COUNT == backfill.events_ingested
            assert store.backfills.close(backfill_id).status == BackfillStatus.REFLECTED
        else:
            assert staged(store, backfill_id) == 0
        assert effective_tokens(store) == FIXED
        check_still_writable(store, clock)


# -- revert ---------------------------------------------------------------------------------------

REVERT_KILLS = {
    # point: (status left on disk, status after opening the store)
    "COMMIT:1:before": ("reflected", "reflected"),
    "COMMIT:1:after": ("pending_revert", "reverted"),
    "COMMIT:2:before": ("pending_revert", "reverted"),
}


@pytest.mark.parametrize("kill", [*REVERT_KILLS, "after:0.5"], ids=lambda k: k.replace(":", "-"))
def test_a_crash_during_revert(templates: Templates, kill: str) -> None:
    path = templates.restore("reflected")
    backfill_id = templates.backfill_id
    if kill.startswith("after:"):
        kill = f"after:{float(kill[6:]) * templates.revert_seconds:.3f}"
    last = run_and_kill(path, "revert", backfill_id, kill)
    on_disk, from_backfill = raw_state(path, backfill_id)
    assert on_disk in ("reflected", "pending_revert", "reverted")
    # the first commit of a revert already removes its effect
    assert from_backfill == (COUNT if on_disk == "reflected" else 0)
    if kill in REVERT_KILLS:
        assert on_disk == REVERT_KILLS[kill][0]
    clock = FakeClock(BIG_LATER + 2 * HOUR)
    with engine.open(path, clock=clock) as store:  # recovery runs here
        backfill = store.backfills.get(backfill_id)
        expected = {"reflected": "reflected", "pending_revert": "reverted", "reverted": "reverted"}
        assert backfill.status == expected[on_disk]
        if kill in REVERT_KILLS:
            assert backfill.status == REVERT_KILLS[kill][1]
        if last.startswith("done"):
            assert backfill.status == BackfillStatus.REVERTED
        if backfill.status == BackfillStatus.REFLECTED:
            assert effective_tokens(store) == FIXED
            assert store.backfills.revert(backfill_id).status == BackfillStatus.REVERTED
        assert backfill.status != BackfillStatus.REVERTED or backfill.reverted_at is not None
        assert effective_tokens(store) == LIVE
        check_still_writable(store, clock)
