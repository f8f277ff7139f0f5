from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from procs.common import NOW, FakeClock
from sqlglot import exp

import engine
from engine.queries import table_ref
from engine.schema import TABLES

# -- stores with a fake clock ---------------------------------------------------------------------
#
# Opening a store costs about half a second (DuckDB loads and verifies two signed extensions per
# connection), so most tests share one store per session and empty it first: every lake table
# is cleared in one commit, which also restarts the version log. Tests that need their own
# settings, a second connection or a reopen use ``store_path`` and ``engine.open`` themselves.


@pytest.fixture(scope="session")
def _shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[engine.Store, FakeClock]]:
    clock = FakeClock(NOW)
    with engine.open(tmp_path_factory.mktemp("shared") / "store", clock=clock) as store:
        yield store, clock


@pytest.fixture
def clock(_shared: tuple[engine.Store, FakeClock]) -> FakeClock:
    """The clock of ``store``, back at ``NOW``; a test moves it by hand."""
    shared_clock = _shared[1]
    shared_clock.now = NOW
    return shared_clock


@pytest.fixture
def store(_shared: tuple[engine.Store, FakeClock], clock: FakeClock) -> engine.Store:
    """An empty store on ``clock`` (default settings)."""
    shared_store = _shared[0]
    storage = shared_store._storage
    with storage.write():
        for table in TABLES:
            storage.execute(exp.delete(table_ref(table)))
    (row,) = shared_store.sql("SELECT count(*) FROM lake.main.stored_events").fetchall()
    assert row == (0,)
    return shared_store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A path for a store of the test's own (``engine.open(store_path, clock=clock)``)."""
    return tmp_path / "store"


# -- golden files ---------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden files from the current output instead of comparing with them",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --update-golden``: golden tests rewrite their files."""
    return bool(request.config.getoption("--update-golden"))
