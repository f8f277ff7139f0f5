"""Build a benchmarked system by name: what each worker process of the run calls."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from .base import System

ALL_SYSTEMS = ("engine", "duckdb_script", "polars", "clickhouse", "postgres")


def make_system(
    name: str, workdir: Path, now: datetime, grace: timedelta, memory_limit_gib: float | None
) -> System:
    """The system ``name`` with its files under ``workdir``. The engine's clock stands at
    ``now`` and accepts live events up to ``grace`` old. ``memory_limit_gib`` caps what the
    systems that take a cap may use (the engine and the DuckDB script: DuckDB's
    ``memory_limit``; ClickHouse: ``max_memory_usage`` per query); Polars takes none, and
    PostgreSQL keeps its own settings."""
    if name == "engine":
        from .engine_peer import EngineSystem

        return EngineSystem(
            workdir,
            clock=lambda: now,
            grace=grace,
            memory_limit=f"{memory_limit_gib}GiB" if memory_limit_gib else None,
        )
    if name == "duckdb_script":
        from .duckdb_script import DuckDBScript

        return DuckDBScript(workdir, memory_limit_gib=memory_limit_gib)
    if name == "polars":
        from .polars_peer import PolarsPeer

        return PolarsPeer(workdir)
    if name == "clickhouse":
        from .clickhouse import ClickHousePeer

        return ClickHousePeer(workdir, memory_limit_gib=memory_limit_gib)
    if name == "postgres":
        from .postgres import PostgresPeer

        return PostgresPeer(workdir)
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(ALL_SYSTEMS)}")
