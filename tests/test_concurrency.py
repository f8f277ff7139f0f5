"""Several processes on one store: readers see whole commits only and are never blocked by a
writer; writers queue on ``write.lock``.

The writer is ``tests/procs/operate.py`` in a subprocess; it reports on stdout and waits on
stdin where the test needs it to, so every step here is ordered by a pipe, not by a sleep.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

import duckdb
import pytest
from procs.common import (
    BIG_LATER,
    HOUR,
    NOW,
    OLD,
    TOTALS_SQL,
    FakeClock,
    after_totals,
    before_totals,
    build_big_store,
    effective,
    event,
    proc_command,
    subprocess_env,
)
from sqlglot import exp

import engine
from engine.errors import ResourceConflict
from engine.models import Backfill, BackfillStatus
from engine.queries import bind
from engine.storage import Storage

pytestmark = pytest.mark.slow

COUNT = 100_000
Totals = tuple[int, int, int]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """100k live events and a pending backfill staging 100k others over the same hours."""
    path = tmp_path_factory.mktemp("concurrency") / "store"
    return path, build_big_store(path, COUNT)


class Child:
    """A subprocess of ``tests/procs`` speaking a line protocol (see ``operate.py``)."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            proc_command(script, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self.process.stdout,))
        self._reader.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, wanted: str, timeout: float = 120) -> None:
        """Block until the child says ``wanted`` (a line, or the start of one)."""
        said = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"child ended before {wanted!r}: {said}; {self.stderr()}")
            said.append(line)
            if line.startswith(wanted):
                return

    def said(self, wanted: str) -> bool:
        """Whether the child has said ``wanted`` by now (does not wait)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return False
            if line is None:
                raise AssertionError(f"child ended before {wanted!r}: {self.stderr()}")
            if line.startswith(wanted):
                return True

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):  # it may be gone already
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()

    def finish(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        code = self.process.wait(timeout=120)
        self._reader.join()
        assert code == 0, self.stderr()
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children started by a test; killed if the test fails half way."""
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


@contextlib.contextmanager
def _kill_on_failure(child: Child) -> Iterator[None]:
    """Kill ``child`` before leaving a failed block, so that nothing waits on its lock."""
    try:
        yield
    except BaseException:
        child.kill()
        raise


def totals(store: engine.Store) -> Totals:
    (row,) = store.sql(TOTALS_SQL).fetchall()
    return (int(row[0]), int(row[1]), int(row[2]))


def _locked(error: duckdb.Error) -> bool:
    return "database is locked" in str(error)


def read_until_done(store: engine.Store, child: Child, done: str) -> tuple[list[Totals], int]:
    """Read totals again and again, each in a fresh snapshot, until the child says ``done``,
    then twice more. Returns the reads and how many failed with "database is locked": a
    read that meets a long commit in the catalog fails instead of waiting (an engine bug,
    see ``test_a_read_waits_for_a_long_commit_in_another_process``); what matters here is
    that no read that succeeds sees part of a commit."""
    seen: list[Totals] = []
    failures = 0
    extra = 2
    finished = False
    while extra:
        finished = finished or child.said(done)
        if finished:
            extra -= 1
        try:
            seen.append(totals(store))
        except duckdb.Error as error:
            if not _locked(error):
                raise
            failures += 1
    return seen, failures


def assert_whole_commits(seen: list[Totals], states: list[Totals]) -> None:
    """Every read is one of ``states`` and the states appear in order (no going back)."""
    strange = [t for t in seen if t not in states]
    assert strange == [], f"reads saw partial commits: {strange[:5]}"
    positions = [states.index(t) for t in seen]
    assert positions == sorted(positions), positions
    assert positions[-1] == len(states) - 1


def test_readers_see_a_large_close_all_at_once_and_writers_queue(
    big: tuple[Path, str], children: list[Child]
) -> None:
    path, backfill_id = big
    clock = FakeClock(BIG_LATER + HOUR)
    child = Child("operate.py", str(path), "close", backfill_id, "--hold", "COMMIT:1")
    children.append(child)
    with (
        engine.open(path, clock=clock) as reader,
        engine.open(path, clock=clock) as other_writer,
        ThreadPoolExecutor(max_workers=1) as pool,
        _kill_on_failure(child),
    ):
        before = totals(reader)
        assert before == before_totals(COUNT)
        # the child's close has written everything and holds its transaction open
        child.expect("in-transaction")
        assert [totals(reader) for _ in range(3)] == [before] * 3
        with engine.open(path, clock=clock) as late_reader:  # opening works too
            assert totals(late_reader) == before
        # a writer in this process queues behind the child's lock
        probe = event("probe", clock.now, ext="cust0")
        queued: Future[engine.IngestResult] = pool.submit(other_writer.ingest, [probe])
        with pytest.raises(TimeoutError):
            queued.result(timeout=1.0)
        child.send("commit")
        seen, _failures = read_until_done(reader, child, "done reflected")
        result = queued.result(timeout=120)
        child.finish()
        after = after_totals(COUNT)
        with_probe = (after[0] + 1, after[1] + 1, after[2])
        seen.append(totals(reader))
        assert_whole_commits(seen, [before, after, with_probe])
        assert result.ingested == ["probe"]
        operations = reader.sql(
            "SELECT operation FROM lake.main.commits ORDER BY version DESC LIMIT 2"
        ).fetchall()
        assert operations == [("ingest",), ("close",)]
        assert reader.backfills.get(backfill_id).status == BackfillStatus.REFLECTED


def test_readers_see_a_large_revert_all_at_once(
    big: tuple[Path, str], children: list[Child]
) -> None:
    path, backfill_id = big
    clock = FakeClock(BIG_LATER + HOUR)
    with engine.open(path, clock=clock) as reader:
        if reader.backfills.get(backfill_id).status == BackfillStatus.PENDING:
            reader.backfills.close(backfill_id)  # the close test did not run first
        current = totals(reader)
        # the revert swaps COUNT backfill events (2 tokens) for COUNT live ones (1 token)
        expected = (current[0], current[1] - COUNT, 0)
        child = Child("operate.py", str(path), "revert", backfill_id, "--wait-go")
        children.append(child)
        child.expect("ready")
        child.send("go")
        seen, _failures = read_until_done(reader, child, "done reverted")
        child.finish()
        assert_whole_commits(seen, [current, expected])
        reverted = reader.backfills.get(backfill_id)
        assert reverted.status == BackfillStatus.REVERTED and reverted.reverted_at is not None


def test_opening_the_store_during_a_revert_does_not_break_it(
    store_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.open(store_path, clock=clock) as store:
        backfill = store.backfills.create(timeframe_start=OLD, timeframe_end=OLD + HOUR)
        store.ingest([event("b1", OLD)], backfill_id=backfill.id)
        store.backfills.close(backfill.id)
        finish = store.backfills.finish_revert

        def another_process_opens_now(backfill_id: str) -> Backfill:
            # between the revert's two commits, someone opens the store (a notebook, a CLI)
            with engine.open(store_path, clock=clock) as other:
                assert other.backfills.get(backfill_id).status == BackfillStatus.REVERTED
            return finish(backfill_id)

        monkeypatch.setattr(store.backfills, "finish_revert", another_process_opens_now)
        try:
            reverted = store.backfills.revert(backfill.id)
        except ResourceConflict as error:
            pytest.fail(f"the revert happened, yet revert() raised: {error}")
        assert reverted.status == BackfillStatus.REVERTED
        assert effective(store) == []


def test_a_read_waits_for_a_long_commit_in_another_process(
    store_path: Path, clock: FakeClock, children: list[Child]
) -> None:
    with engine.open(store_path, clock=clock) as store:
        store.ingest([event("k1", NOW)])
        holder = Child("hold_lock.py", str(store_path), "exclusive")
        children.append(holder)
        holder.expect("locked")
        # the "commit" holds the catalog for 6 s (the delay is the point of the test)
        release = threading.Timer(6.0, holder.send, args=("release",))
        release.start()
        try:
            assert store.sql("SELECT count(*) FROM events").fetchall() == [(1,)]
        finally:
            release.join()
            holder.finish()


def test_a_long_read_elsewhere_does_not_wedge_a_writer(
    store_path: Path, clock: FakeClock, children: list[Child]
) -> None:
    with engine.open(store_path, clock=clock) as store:
        store.ingest([event("k1", NOW)])
    holder = Child("hold_lock.py", str(store_path), "read-transaction")
    children.append(holder)
    holder.expect("locked")
    safety = threading.Timer(30, holder.send, args=("release",))  # never wait forever
    safety.start()
    with engine.open(store_path, clock=clock) as writer:
        try:
            writer.ingest([event("k2", NOW)])  # may wait for the reader, or fail
        except duckdb.Error as error:
            assert _locked(error), error
        finally:
            holder.send("release")
            holder.finish()
            safety.cancel()
        # once the reader is gone, the writer works again, and so do other processes
        assert writer.sql("SELECT count(*) FROM events").fetchone() in ((1,), (2,))
        writer.ingest([event("k3", NOW)])
    with engine.open(store_path, clock=clock) as other:
        assert "k3" in [row[0] for row in effective(other)]


def test_store_sql_relations_fetched_in_other_threads_never_wait_on_writes(
    store_path: Path,
) -> None:
    """store.sql() hands out lazy relations; fetching them in other threads while the store
    writes once hung both (they shared the store's connection, and the hang held the GIL).
    ``procs/sql_threads.py`` runs three reader threads against a writer thread; it runs in a
    subprocess so that a hang fails this test after a timeout instead of stalling the suite."""
    done = subprocess.run(
        proc_command("sql_threads.py", str(store_path)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ok", done.stdout


def test_store_sql_inside_a_read_block_sees_that_block_s_snapshot(
    store_path: Path, clock: FakeClock
) -> None:
    """Readers that compare several queries (the soak's reader) run them in one read block:
    there store.sql() must run in the block's transaction, not on a cursor of its own that
    would see each commit landing meanwhile."""
    with (
        engine.open(store_path, clock=clock) as reader,
        engine.open(store_path, clock=clock) as writer,
    ):
        reader.ingest([event("k1", NOW)])
        with reader._storage.read():
            before = reader.sql("SELECT count(*) FROM events").fetchall()
            writer.ingest([event("k2", NOW)])
            during = reader.sql("SELECT count(*) FROM all_events").fetchall()
        after = reader.sql("SELECT count(*) FROM events").fetchall()
    assert (before, during, after) == ([(1,)], [(1,)], [(2,)])


def test_a_read_overlapped_by_a_commit_elsewhere_runs_again_on_one_thread(
    store_path: Path, clock: FakeClock
) -> None:
    """DuckLake 1.5.5 can miss deletes in a multi-threaded read transaction that another
    process's commit overlapped (RELIABILITY.md, "DuckLake partial deletes"), so
    ``Storage.consistent_read`` runs such a read again on one thread; a read that no commit
    overlapped runs once, on every thread."""
    threads = bind("SELECT CAST(current_setting('threads') AS BIGINT)")
    stored = bind("SELECT count(*) FROM lake.main.stored_events")
    with (
        engine.open(store_path, clock=clock) as reader,
        engine.open(store_path, clock=clock) as writer,
    ):
        reader.ingest([event("k1", NOW)])
        storage = reader._storage
        calls: list[tuple[int, int]] = []

        def overlapped() -> int:
            calls.append((_first(storage, threads), _first(storage, stored)))
            if len(calls) == 1:
                writer.ingest([event("k2", NOW)])
            return calls[-1][1]

        assert storage.consistent_read(overlapped) == 2
        every_thread = calls[0][0]
        assert calls == [(every_thread, 1), (1, 2)]

        calls.clear()
        alone = storage.consistent_read(
            lambda: calls.append((_first(storage, threads), _first(storage, stored)))
        )
        assert alone is None and calls == [(every_thread, 2)]


def _first(storage: Storage, query: exp.Expr) -> int:
    row = storage.one(query)
    assert row is not None
    return int(row[0])


_CELLS_OF = (
    "INSERT INTO lake.main.usage_cells (metric_id, customer_key, events) "
    "SELECT 'm', 'k' || i, 1 FROM range(:first, :last) AS t(i)"
)
_DROP_CELLS = (
    "DELETE FROM lake.main.usage_cells "
    "WHERE customer_key IN (SELECT 'k' || i FROM range(:first, :last) AS t(i))"
)


class _DeleteFileRewriter:
    """Commits that keep 400 rows of ``usage_cells`` while deleting from files that already
    have delete files: each deletes 15 rows of the first file and 15 of the previous commit's
    file, and adds as many rows as it deleted (writing 45, then deleting the surplus)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.steps = 0
        self.previous: int | None = None
        with storage.write():
            storage.execute(bind(_CELLS_OF, first=0, last=400))

    def commit(self) -> None:
        storage, step = self.storage, self.steps
        first = 1_000_000 + 45 * step
        with storage.write():
            storage.execute(bind(_DROP_CELLS, first=15 * step, last=15 * step + 15))
            if self.previous is not None:
                storage.execute(bind(_DROP_CELLS, first=self.previous, last=self.previous + 15))
            storage.execute(bind(_CELLS_OF, first=first, last=first + 45))
            kept = 30 if self.previous is not None else 15
            storage.execute(bind(_DROP_CELLS, first=first + kept, last=first + 45))
        self.previous, self.steps = first, step + 1


class _ReadAcrossCommit:
    """Counts ``usage_cells`` twice in one read; the first run lets a commit land between."""

    def __init__(self, storage: Storage, writer: _DeleteFileRewriter) -> None:
        self.storage, self.writer = storage, writer
        self.seen: list[int] = []

    def __call__(self) -> None:
        count = bind("SELECT count(*) FROM lake.main.usage_cells")
        self.seen.append(_first(self.storage, count))
        if len(self.seen) == 1:
            self.writer.commit()
        self.seen.append(_first(self.storage, count))


def test_reads_overlapped_by_commits_that_rewrite_delete_files_see_no_deleted_rows(
    tmp_path: Path,
) -> None:
    """The DuckLake bug itself (RELIABILITY.md, "DuckLake partial deletes"): a commit landing
    inside a read rewrites the delete files the read scans. Without the guard, the second
    count of every trial was 370: the read applied the deletes of the commit that landed
    (from the rewritten files) but not its inserts."""
    wrong = []
    for trial in range(8):
        path = tmp_path / str(trial)
        path.mkdir()
        writer, reader = Storage(path), Storage(path)
        rewriter = _DeleteFileRewriter(writer)
        for _ in range(12):
            rewriter.commit()
        read = _ReadAcrossCommit(reader, rewriter)
        reader.consistent_read(read)
        if read.seen[-2:] != [400, 400]:
            wrong.append((trial, read.seen))
        writer.close()
        reader.close()
    assert wrong == []
