"""Compaction: fewer, larger Parquet files, old DuckLake snapshots expired, unused files deleted.

Nothing here changes what the store answers. Effective events and ``as_of`` are computed from
the store's own version log (``close_version``/``revert_version`` of backfills, ``version`` of
rows), not from DuckLake snapshots, so expiring snapshots never breaks ``as_of``; the
``retention`` window only bounds DuckLake-level time travel for tools that use it directly.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlglot import exp

from engine.context import Context
from engine.errors import ConstraintViolation
from engine.models import CompactResult
from engine.queries import maintenance_call, scheduled_deletions, seconds_ago

__all__ = ["DEFAULT_FILE_GRACE", "DEFAULT_RETENTION", "compact"]

DEFAULT_RETENTION = timedelta(days=7)
#: Long enough for any query of another process that started before the merge to finish.
DEFAULT_FILE_GRACE = timedelta(hours=1)


def _data_files(folder: Path) -> tuple[int, int]:
    sizes = [path.stat().st_size for path in folder.rglob("*.parquet") if path.is_file()]
    return len(sizes), sum(sizes)


def _count(context: Context, function: str, **options: exp.Expr) -> int:
    row = context.storage.one(maintenance_call(function, **options))
    return int(row[0]) if row else 0


def _delete_unused_files(context: Context, file_grace: timedelta) -> int:
    """Delete the files scheduled for deletion if all of them were scheduled ``file_grace``
    ago or earlier; otherwise none (a later compaction will), since DuckLake's own age cut-off
    cannot be trusted (see ``queries.scheduled_deletions``)."""
    with context.storage.write():
        row = context.storage.one(
            scheduled_deletions(before=seconds_ago(file_grace.total_seconds()))
        )
        scheduled, old_enough = (int(row[0]), int(row[1] or 0)) if row else (0, 0)
        if scheduled == 0 or old_enough < scheduled:
            return 0
        return _count(context, "cleanup_old_files", cleanup_all=exp.true())


def compact(
    context: Context,
    *,
    retention: timedelta = DEFAULT_RETENTION,
    file_grace: timedelta = DEFAULT_FILE_GRACE,
) -> CompactResult:
    """Flush rows DuckLake inlined into its catalog to Parquet, merge small adjacent files,
    rewrite files that are mostly deleted rows, expire snapshots older than ``retention``;
    before and after, delete the files that left the store ``file_grace`` ago or earlier.

    Runs under the store's write lock (writers wait; readers never do), one commit per step.
    A crash between steps leaves a consistent store. Files replaced by this compaction are
    deleted by a later one once ``file_grace`` has passed (or by this one when it is zero).
    """
    for name, value in (("retention", retention), ("file_grace", file_grace)):
        if value < timedelta(0):
            raise ConstraintViolation(f"{name} must not be negative, got {value}", field=name)
    data = context.storage.path / "data"
    files_before, bytes_before = _data_files(data)
    # DuckLake commits a compaction only in a transaction of its own: one step per commit,
    # each leaving a consistent store.
    deleted = _delete_unused_files(context, file_grace)
    with context.storage.write():
        _count(context, "flush_inlined_data")
    with context.storage.write():
        merged = _count(context, "merge_adjacent_files")
    with context.storage.write():
        merged += _count(context, "rewrite_data_files")
    with context.storage.write():
        expired = _count(
            context, "expire_snapshots", older_than=seconds_ago(retention.total_seconds())
        )
    deleted += _delete_unused_files(context, file_grace)
    files_after, bytes_after = _data_files(data)
    return CompactResult(
        data_files_before=files_before,
        data_files_after=files_after,
        data_bytes_before=bytes_before,
        data_bytes_after=bytes_after,
        files_merged=merged,
        snapshots_expired=expired,
        files_deleted=deleted,
    )
