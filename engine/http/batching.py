"""Group commit for live ingest requests.

A live ingest costs about one commit whatever its size (validation, the write, the usage
refresh), and the store runs one write at a time. So requests that arrive while a commit runs
wait, and are then written together in the next commit: throughput grows with concurrency
instead of latency alone.

Each request keeps its own all-or-nothing answer. If the combined batch is refused (one request
holds an invalid event, or two requests give one key different bodies), every request of the
group runs again on its own, so each gets exactly the result or error it would have got alone.
Keys that several requests of a group share are reported as ingested by the first of them and
as duplicates by the rest, as if they had run one after the other in arrival order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.models import IngestResult

__all__ = ["GroupCommit"]

Events = list[dict[str, Any]]


@dataclass(eq=False)
class _Request:
    events: Events
    finished: bool = False
    result: IngestResult | None = None
    error: BaseException | None = None


class GroupCommit:
    """Serializes ``ingest`` calls from many threads into as few commits as it can.

    ``ingest`` is the store's live ingest (``store.ingest``); ``max_events`` bounds one commit.
    """

    def __init__(
        self, ingest: Callable[[Events], IngestResult], *, max_events: int = 10_000
    ) -> None:
        self._ingest = ingest
        self._max_events = max_events
        self._condition = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False

    def ingest(self, events: Events) -> IngestResult:
        """Write ``events`` live (alone or with concurrent requests); the result names only
        this request's keys."""
        me = _Request(events)
        with self._condition:
            self._queue.append(me)
            # The first waiting request leads the next commit when none is running; the rest
            # wait for the leader to answer them, or to become the first themselves.
            while not me.finished and (self._leading or self._queue[0] is not me):
                self._condition.wait()
            if not me.finished:
                self._leading = True
                group = self._take()
        if not me.finished:
            try:
                self._run(group)
            finally:
                with self._condition:
                    self._leading = False
                    self._condition.notify_all()
        if me.error is not None:
            raise me.error
        assert me.result is not None
        return me.result

    def _take(self) -> list[_Request]:
        group = [self._queue.pop(0)]
        size = len(group[0].events)
        while self._queue and size + len(self._queue[0].events) <= self._max_events:
            size += len(self._queue[0].events)
            group.append(self._queue.pop(0))
        return group

    def _run(self, group: Sequence[_Request]) -> None:
        try:
            if len(group) > 1:
                try:
                    combined = self._ingest(
                        [event for request in group for event in request.events]
                    )
                except Exception:
                    pass  # someone's request is refused: answer each on its own, below
                else:
                    _attribute(combined, group)
                    return
            for request in group:
                try:
                    request.result = self._ingest(request.events)
                except Exception as error:
                    request.error = error
        finally:
            for request in group:
                if request.result is None and request.error is None:
                    request.error = RuntimeError("the ingest was interrupted")
                request.finished = True


def _attribute(combined: IngestResult, group: Sequence[_Request]) -> None:
    """Split one commit's result between the requests it served, in arrival order."""
    written = set(combined.ingested)
    claimed: set[str] = set()
    for request in group:
        # The batch was valid, so every event has a string key; a request that repeats a key
        # reports it once, as the engine does.
        keys = list(dict.fromkeys(str(event["idempotency_key"]) for event in request.events))
        ingested = [key for key in keys if key in written and key not in claimed]
        claimed.update(ingested)
        fresh = set(ingested)
        request.result = IngestResult(
            ingested=ingested, duplicates=[key for key in keys if key not in fresh]
        )
