"""Three threads fetch ``store.sql()`` relations while a fourth writes (see
``test_store_sql_relations_fetched_in_other_threads_never_wait_on_writes``).

Prints ``ok`` when readers saw whole commits only (counts of 0, 10, 20, ...), a relation made
in the main thread and fetched in the writer's thread saw all 80 events, and nothing failed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import engine
from procs.common import HOUR, NOW, FakeClock, event, say


def main(path: Path) -> None:
    store = engine.open(path, clock=FakeClock(NOW))
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []
    fetched: list[tuple[int]] = []
    made_here = store.sql("SELECT count(*) FROM all_events")

    def read() -> None:
        try:
            while not stop.is_set():
                (count,) = store.sql("SELECT count(*) FROM events").fetchone() or (-1,)
                seen.append(count)
        except BaseException as error:
            errors.append(error)

    def write() -> None:
        try:
            for batch in range(8):
                store.ingest([event(f"k{batch}-{n}", NOW - HOUR) for n in range(10)])
            fetched.extend(made_here.fetchall())
        except BaseException as error:
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    writer = threading.Thread(target=write)
    for thread in [*readers, writer]:
        thread.start()
    writer.join()
    stop.set()
    for reader in readers:
        reader.join()
    store.close()
    assert errors == [], errors
    assert seen and all(count % 10 == 0 for count in seen), sorted(set(seen))
    assert fetched == [(80,)], fetched
    say("ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
