"""Group commit: concurrent live ingest requests share commits, and each still gets the answer
it would have got alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from http_support import API_KEY, Env, assert_problem
from procs.common import HOUR, NOW, event

from engine.errors import RequestValidationError
from engine.http.batching import GroupCommit
from engine.models import IngestResult


class FakeStore:
    """Live ingest with the engine's duplicate rules; ``hold`` keeps the first call waiting."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.calls: list[int] = []
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, events: list[dict[str, Any]]) -> IngestResult:
        self.calls.append(len(events))
        self.hold.wait()
        bodies: dict[str, dict[str, Any]] = {}
        for e in events:
            if e.get("bad") or bodies.setdefault(e["idempotency_key"], e) != e:
                raise RequestValidationError("refused", validation_errors=[])
        keys = list(dict.fromkeys(e["idempotency_key"] for e in events))
        ingested = [k for k in keys if k not in self.seen]
        self.seen.update(ingested)
        return IngestResult(ingested=ingested, duplicates=[k for k in keys if k not in ingested])


def run_concurrently(
    batcher: GroupCommit, fake: FakeStore, batches: list[list[dict[str, Any]]]
) -> list[IngestResult | BaseException]:
    """The first batch starts and is held in its commit; the others queue behind it."""
    results: list[IngestResult | BaseException | None] = [None] * len(batches)

    def send(index: int) -> None:
        try:
            results[index] = batcher.ingest(batches[index])
        except Exception as error:
            results[index] = error

    fake.hold.clear()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    threads[0].start()
    while not fake.calls:
        time.sleep(0.001)
    for thread in threads[1:]:
        thread.start()
    while len(batcher._queue) < len(batches) - 1:
        time.sleep(0.001)
    fake.hold.set()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def keys(*names: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"idempotency_key": name, "v": 1, **fields} for name in names]


def test_requests_queued_behind_a_commit_share_the_next_one() -> None:
    fake = FakeStore()
    batcher = GroupCommit(fake)
    results = run_concurrently(batcher, fake, [keys("a"), keys("b1", "b2"), keys("c"), keys("d")])
    assert fake.calls == [1, 4]
    assert results == [
        IngestResult(ingested=["a"], duplicates=[]),
        IngestResult(ingested=["b1", "b2"], duplicates=[]),
        IngestResult(ingested=["c"], duplicates=[]),
        IngestResult(ingested=["d"], duplicates=[]),
    ]


def test_shared_keys_go_to_the_first_request_as_if_sequential() -> None:
    fake = FakeStore()
    fake.seen.add("old")
    batcher = GroupCommit(fake)
    results = run_concurrently(
        batcher, fake, [keys("x"), keys("k", "old", "k"), keys("k", "m"), keys("m", "x")]
    )
    assert fake.calls == [1, 7]
    assert results[1:] == [
        IngestResult(ingested=["k"], duplicates=["old"]),
        IngestResult(ingested=["m"], duplicates=["k"]),
        IngestResult(ingested=[], duplicates=["m", "x"]),
    ]


def test_a_refused_request_does_not_sink_the_others() -> None:
    fake = FakeStore()
    batcher = GroupCommit(fake)
    results = run_concurrently(
        batcher, fake, [keys("a"), keys("b"), keys("bad", bad=True), keys("c")]
    )
    # One combined attempt is refused, then each request runs on its own.
    assert fake.calls == [1, 3, 1, 1, 1]
    assert results[1] == IngestResult(ingested=["b"], duplicates=[])
    assert isinstance(results[2], RequestValidationError)
    assert results[3] == IngestResult(ingested=["c"], duplicates=[])


def test_one_key_with_two_bodies_across_requests_behaves_as_sequential() -> None:
    fake = FakeStore()
    batcher = GroupCommit(fake)
    results = run_concurrently(batcher, fake, [keys("a"), keys("k"), keys("k", v=2)])
    assert results[1:] == [
        IngestResult(ingested=["k"], duplicates=[]),
        IngestResult(ingested=[], duplicates=["k"]),
    ]


def test_commits_are_bounded_in_size() -> None:
    fake = FakeStore()
    batcher = GroupCommit(fake, max_events=3)
    run_concurrently(batcher, fake, [keys("a"), keys("b", "c"), keys("d"), keys("e", "f")])
    assert fake.calls == [1, 3, 2]


def test_group_commit_through_the_server(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest = env.store.ingest
    calls: list[int] = []
    first = threading.Event()

    def slow_ingest(events: Any, **kwargs: Any) -> Any:
        calls.append(len(events))
        if len(calls) == 1:
            first.set()
            time.sleep(1.0)  # the other requests arrive meanwhile
        return ingest(events, **kwargs)

    monkeypatch.setattr(env.store, "ingest", slow_ingest)
    at = (NOW - HOUR).isoformat()
    bodies = [
        [event("first", at)],
        [event("g1", at), event("shared", at)],
        [event("shared", at), event("g2", at)],
        [event("too-old", (NOW - 2 * 24 * HOUR).isoformat())],
    ]
    responses: dict[int, httpx.Response] = {}

    def send(index: int) -> Callable[[], None]:
        def go() -> None:
            responses[index] = httpx.post(
                f"{env.base_url}/v1/ingest",
                params={"debug": "true"},
                json={"events": bodies[index]},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=60,
            )

        return go

    threads = [threading.Thread(target=send(i)) for i in range(4)]
    threads[0].start()
    assert first.wait(30)
    for thread in threads[1:]:
        thread.start()
        time.sleep(0.05)  # arrival order
    for thread in threads:
        thread.join()
    assert calls[:2] == [1, 5]  # then each alone: the combined batch held an invalid event
    assert [responses[i].json()["debug"] for i in (1, 2)] == [
        {"duplicate": [], "ingested": ["g1", "shared"]},
        {"duplicate": ["shared"], "ingested": ["g2"]},
    ]
    assert_problem(responses[3].json(), 400, "400-request-validation-errors")
    assert [e["idempotency_key"] for e in responses[3].json()["validation_errors"]] == ["too-old"]
    found = env.store.events.search(["first", "g1", "g2", "shared", "too-old"])
    assert sorted(e.id for e in found) == ["first", "g1", "g2", "shared"]
