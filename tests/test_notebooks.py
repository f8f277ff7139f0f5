"""The notebooks in ``notebooks/`` run top to bottom against the bundled ``data/``, each in a
fresh store, and are committed without outputs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from engine.models import BackfillStatus, Metric
from engine.notebook import frame, notebook_store, sample_dir, write_sample

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_expected_notebooks_exist() -> None:
    assert {path.name for path in NOTEBOOKS} == {
        "exploring_usage.ipynb",
        "correcting_usage_with_a_backfill.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel is a child process: it inherits these. The notebook reads its store path from
    # USAGE_ENGINE_NOTEBOOK_STORE and imports `engine` from this checkout.
    monkeypatch.setenv("USAGE_ENGINE_NOTEBOOK_STORE", str(tmp_path / "store"))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws figures
    # jupyter_core warns (an error here) unless told to use the platform's standard dirs.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # a failing cell raises CellExecutionError, which fails the test
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    assert (tmp_path / "store" / "catalog.sqlite").is_file()
    figures = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert figures, "the notebook draws its plots"


# -- the helpers the notebooks use -----------------------------------------------------------------


def test_sample_dir_is_the_bundled_data_and_regenerates_identically(tmp_path: Path) -> None:
    assert sample_dir() == REPO / "data"
    write_sample(tmp_path)
    for name in ("events.jsonl", "customers.json", "metrics.json"):
        assert (tmp_path / name).read_bytes() == (REPO / "data" / name).read_bytes(), name


def test_notebook_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USAGE_ENGINE_NOTEBOOK_STORE", raising=False)
    fresh = notebook_store()
    assert not fresh.exists() and fresh.parent.is_dir()
    monkeypatch.setenv("USAGE_ENGINE_NOTEBOOK_STORE", str(tmp_path / "mine"))
    assert notebook_store() == tmp_path / "mine"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "catalog.sqlite").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        notebook_store()


def test_frame_shows_value_objects() -> None:
    metric = Metric(
        id="m1",
        name="tokens",
        sql="SELECT sum(tokens) FROM events",
        description=None,
        metadata={"team": "billing"},
        status="active",
        created_at=datetime(2026, 12, 4, tzinfo=UTC),
    )
    shown = frame([metric])
    assert shown.columns[:3] == ["id", "name", "sql"]
    assert shown.row(0, named=True)["metadata"] == '{"team": "billing"}'
    assert frame([]).is_empty()
    with pytest.raises(TypeError):
        frame([BackfillStatus.PENDING])
