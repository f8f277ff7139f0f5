"""The benchmark suite at a tiny scale, so it never rots: every scenario runs for every system
(this engine, the DuckDB script, Polars, ClickHouse via chdb, PostgreSQL), and every system
serves the same usage as the engine at every checkpoint (a correctness check of the peers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("engine", "duckdb_script", "polars", "clickhouse", "postgres")
SCENARIOS = (
    "bulk_ingest",
    "materialize",
    "disk",
    "live_ingest",
    "dedup",
    "close_1day",
    "close_1day_filter",
    "close_7day_customer",
    "revert_7day_customer",
    "usage_p50",
    "usage_p99",
    "recompute",
)
CHECKPOINTS = (
    "after bulk ingest",
    "after live ingest and dedup",
    "after the 1-day closes",
    "7-day backfill closed",
    "after the 7-day reverts",
    "usage of one customer by day",
    "after recompute",
)


@pytest.mark.slow
def test_every_system_runs_every_scenario_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--scale", "20000",
        "--repeat", "1",
        "--live-batches", "3",
        "--usage-calls", "20",
        "--out", str(out),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.exists(), finished.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["failures"] == {}, finished.stderr[-4000:]
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert result["systems"] == list(SYSTEMS)
    for key in SCENARIOS:
        values = result["scenarios"][key]["values"]
        for system in SYSTEMS:
            figures = values.get(system, [])
            assert figures, f"{key}: no figure for {system}"
            assert all(v > 0 for v in figures), f"{key}: {system} gave {figures}"
    for checkpoint in CHECKPOINTS:
        entry = result["checks"][checkpoint]
        assert entry["rows"] > 0, checkpoint
        assert entry["agree"] == dict.fromkeys(SYSTEMS, True), (checkpoint, entry)
    memory = result["scenarios"]["memory"]
    for system in SYSTEMS[:-1]:
        # each system's own process: an interpreter and its libraries hold more than 50 MiB
        assert memory["values"][system][0] > 50 / 1024, memory
    assert set(memory["not_available"]) == {"postgres"}
    assert (out.with_suffix(".md")).read_text().count("|") > 50
