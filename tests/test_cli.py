"""The ``usage-engine`` command line.

Every command runs at least once as a real subprocess (``python -m engine ...``: ``cli``), which
checks exit codes, stdout and stderr exactly as a shell sees them. Each process costs a couple
of seconds of CPU (imports, two DuckDB extensions), so further variants of a command (JSON or
table output, argument errors) call ``engine.cli.main`` in this process (``run``), with the
same checks; and the tests share one store prepared through the CLI itself (generate, init,
customers, metrics, a history backfill loaded in Parquet chunks), checked against numbers
computed independently from the generated file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from sqlglot import exp

import engine
from engine.cli import build_parser, main
from engine.queries import table_ref
from engine.schema import USAGE_CELLS

REPO = Path(__file__).resolve().parents[1]
START, END = "2026-11-17T00:00:00Z", "2026-11-20T00:00:00Z"
DAY = "2026-11-18"
CUSTOMER = "cust_0001"
FILTER = "event_name = 'completion' AND model = 'gpt-4o'"
METRICS = [
    {
        "name": "completion_tokens",
        "sql": "SELECT sum(tokens) FROM events WHERE event_name = 'completion'",
    },
    {"name": "event_count", "sql": "SELECT count(*) FROM events"},
    {"name": "events_by_region", "sql": "SELECT count(*) FROM events GROUP BY region"},
]


@dataclass(frozen=True)
class Run:
    args: Sequence[str]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("USAGE_ENGINE_STORE", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **(extra or {})}


def cli(
    *args: str | Path,
    store: Path | None = None,
    expect: int | None = 0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run ``python -m engine [--store STORE] ARGS`` and check its exit code."""
    argv = [*(["--store", str(store)] if store else []), *map(str, args)]
    done = subprocess.run(
        [sys.executable, "-m", "engine", *argv],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=cwd or REPO,
        timeout=240,
    )
    run = Run(argv, done.returncode, done.stdout, done.stderr)
    if expect is not None:
        assert run.code == expect, f"{argv} exited {run.code}:\n{run.stdout}\n{run.stderr}"
    return run


def run(*args: str | Path, store: Path | None = None, expect: int | None = 0) -> Run:
    """``usage-engine [--store STORE] ARGS`` in this process: ``engine.cli.main``."""
    argv = [*(["--store", str(store)] if store else []), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    result = Run(argv, code, out.getvalue(), err.getvalue())
    if expect is not None:
        assert code == expect, f"{argv} returned {code}:\n{result.stdout}\n{result.stderr}"
    return result


def cli_many(*calls: tuple[Sequence[str | Path], int], store: Path | None = None) -> list[Run]:
    """Independent commands, run two at a time (they only read, or fail before writing)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda call: cli(*call[0], store=store, expect=call[1]), calls))


def one_error_line(run: Run) -> str:
    """The error a failed command printed: one line on stderr, no traceback."""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


# -- the shared store -------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    store: Path
    folder: Path
    events: pl.DataFrame  # the generated events, with tokens / model / region parsed
    history_backfill: str


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    folder = tmp_path_factory.mktemp("cli")
    store = folder / "store"
    events_file = folder / "events.parquet"
    cli(
        "generate", "--events", "1500", "--customers", "3", "--days", "3", "--seed", "11",
        "--end", END, "--out", events_file, "--customers-out", folder / "customers.json",
    )  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    assert "Created an empty store" in cli("init", store=store).stdout
    cli("customers", "create", "--file", folder / "customers.json", store=store)
    cli("metrics", "create", "--file", folder / "metrics.json", store=store)
    # History goes in the way the README says: one add-only backfill, closed at once. The
    # Parquet file is fed in chunks of 500 rows (three batches).
    backfill = cli(
        "--json", "backfills", "create", "--timeframe-start", START, "--timeframe-end", END,
        "--no-replace-existing-events", store=store,
    ).json()  # fmt: skip
    assert backfill["status"] == "pending" and backfill["replace_existing_events"] is False
    staged = cli(
        "--json", "ingest", events_file, "--backfill", backfill["id"], "--batch-size", "500",
        store=store,
    ).json()  # fmt: skip
    assert staged["ingested"] == 1500 and staged["backfill_id"] == backfill["id"]
    cli("backfills", "close", backfill["id"], store=store)
    frame = pl.read_parquet(events_file).with_columns(
        tokens=pl.col("properties").str.json_path_match("$.tokens").cast(pl.Int64),
        model=pl.col("properties").str.json_path_match("$.model"),
        region=pl.col("properties").str.json_path_match("$.region"),
        day=pl.col("timestamp").dt.strftime("%Y-%m-%d"),
    )
    return Prepared(store, folder, frame, backfill["id"])


def completion_tokens(events: pl.DataFrame) -> dict[tuple[str, str], int]:
    """Completion tokens per (external customer, day), computed without the engine."""
    totals = (
        events.filter(pl.col("event_name") == "completion")
        .group_by("external_customer_id", "day")
        .agg(pl.col("tokens").sum())
    )
    return {(r["external_customer_id"], r["day"]): r["tokens"] for r in totals.to_dicts()}


def usage_by_day(run: Run) -> dict[tuple[str, str], float]:
    return {
        (row["external_customer_id"], row["timeframe_start"][:10]): row["value"]
        for row in run.json()["data"]
    }


# -- help and argument errors -----------------------------------------------------------------


def _parsers(parser: Any, path: str = "usage-engine") -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_command_and_option_says_what_it_does() -> None:
    commands = dict(_parsers(build_parser()))
    for expected in (
        "init", "ingest", "customers create", "customers list", "backfills create",
        "backfills list", "backfills show", "backfills ingest", "backfills preview",
        "backfills close", "backfills revert", "metrics create", "metrics list", "usage",
        "recompute", "verify", "close-due", "compact", "serve", "api-keys create", "generate",
        "demo",
    ):  # fmt: skip
        assert f"usage-engine {expected}" in commands
    for path, parser in commands.items():
        assert parser.description, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                # Its entries are the commands, listed with their one-line summaries.
                assert all(choice.help for choice in action._choices_actions), path
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"


def test_help_and_usage_errors() -> None:
    top, bad_time = cli_many(
        (["--help"], 0),
        (["backfills", "create", "--timeframe-start", "2026-11-18T00:00", "--timeframe-end",
          "2026-11-19"], 2),
    )  # fmt: skip
    for command in ("ingest", "backfills", "usage", "verify", "close-due", "demo", "generate"):
        assert command in top.stdout
    assert "exit codes" in top.stdout and "USAGE_ENGINE_STORE" in top.stdout
    assert "has no time zone" in one_error_line(bad_time)

    create = run("backfills", "create", "--help")
    for option in ("--timeframe-start", "--deprecation-filter", "--no-replace-existing-events"):
        assert option in create.stdout
    # Options go before or after the command.
    assert "--store PATH" in create.stdout and "--json" in create.stdout
    bare = run(expect=2)
    assert "COMMAND" in bare.stderr
    assert "ACTION" in run("backfills", expect=2).stderr
    assert "invalid choice: 'lsit'" in one_error_line(run("backfills", "lsit", expect=2))
    exclusive = run("usage", "m", "--timeframe-start", START, "--timeframe-end", END,
                    "--customer-id", "a", "--external-customer-id", "b", expect=2)  # fmt: skip
    assert "not allowed with argument" in one_error_line(exclusive)
    duration = run("--grace-period", "3x", "backfills", "list", expect=2)
    assert "not a duration" in one_error_line(duration)
    as_json = run("--json", "usage", "m", "--timeframe-start", "yesterday", expect=2)
    assert json.loads(as_json.stderr)["exit_code"] == 2


def test_commands_need_an_existing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nothing-here"
    result = run("backfills", "list", store=missing, expect=2)
    assert "no store at" in one_error_line(result) and "usage-engine init" in result.stderr
    assert not missing.exists()  # a typo in --store creates nothing
    # $USAGE_ENGINE_STORE is the default --store.
    monkeypatch.setenv("USAGE_ENGINE_STORE", str(missing))
    assert str(missing) in run("customers", "list", expect=2).stderr


def test_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    assert run("--json", "init", store=store).json() == {"store": str(store), "created": True}
    monkeypatch.setenv("USAGE_ENGINE_STORE", str(store))
    assert "already exists" in run("init").stdout
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = run("init", store=tmp_path / "other", expect=2)
    assert "is not a store" in one_error_line(refused)


# -- customers and metrics --------------------------------------------------------------------


def test_customers(prepared: Prepared) -> None:
    human = cli("customers", "list", store=prepared.store)
    assert "cust_0003" in human.stdout and "Sample customer 3" in human.stdout
    listed = run("--json", "customers", "list", store=prepared.store).json()["data"]
    assert [c["external_customer_id"] for c in listed] == ["cust_0001", "cust_0002", "cust_0003"]
    assert all(c["created_at"].endswith("Z") for c in listed)

    made = run("--json", "customers", "create", "--external-customer-id", "acme", "--name",
               "Acme [bold]", store=prepared.store).json()  # fmt: skip
    assert made["external_customer_id"] == "acme" and made["name"] == "Acme [bold]"
    again = run("customers", "create", "--external-customer-id", "acme", store=prepared.store,
                expect=1)  # fmt: skip
    assert "already exists" in one_error_line(again)


def test_metrics(prepared: Prepared) -> None:
    made = run("--json", "metrics", "create", "--name", "api_calls", "--sql",
               "SELECT count(*) FROM events WHERE event_name = 'api_call'",
               "--metadata", "team=billing", store=prepared.store).json()  # fmt: skip
    assert made["metadata"] == {"team": "billing"} and made["status"] == "active"
    bad = run("metrics", "create", "--name", "x", "--sql", "SELECT sum(tokens) FROM other",
              store=prepared.store, expect=1)  # fmt: skip
    one_error_line(bad)
    listed = cli("metrics", "list", store=prepared.store)
    for metric in [*METRICS, {"name": "api_calls", "sql": "SELECT count(*) FROM events WHERE"}]:
        assert metric["name"] in listed.stdout and metric["sql"] in listed.stdout
    names = [
        m["name"] for m in run("--json", "metrics", "list", store=prepared.store).json()["data"]
    ]
    assert names == [*(m["name"] for m in METRICS), "api_calls"]


# -- usage ------------------------------------------------------------------------------------


def test_memory_limit(prepared: Prepared) -> None:
    """A global option, passed to ``engine.open``; a bad size is one clear error."""
    bad = run("--memory-limit", "lots", "customers", "list", store=prepared.store, expect=1)
    assert "memory_limit 'lots' is not a size DuckDB accepts" in one_error_line(bad)
    capped = run("--json", "--memory-limit", "256MB", "customers", "list", store=prepared.store)
    plain = run("--json", "customers", "list", store=prepared.store)
    assert json.loads(capped.stdout) == json.loads(plain.stdout)


def test_usage_matches_the_events(prepared: Prepared) -> None:
    store = prepared.store
    window = ["--timeframe-start", START, "--timeframe-end", END]
    human = cli("usage", "completion_tokens", *window, store=store)
    expected = completion_tokens(prepared.events)
    assert f"{expected[(CUSTOMER, DAY)]:,}" in human.stdout
    assert "2026-11-18T00:00:00Z" in human.stdout

    by_day = run("--json", "usage", "completion_tokens", *window, store=store)
    assert usage_by_day(by_day) == pytest.approx(expected)
    rows = by_day.json()["data"]
    assert rows[0]["timeframe_start"].endswith("T00:00:00Z") and rows[0]["timeframe_end"][-1] == "Z"

    one_customer = run("--json", "usage", "completion_tokens", *window, "--external-customer-id",
                       CUSTOMER, "--granularity", "none", store=store)  # fmt: skip
    (whole,) = one_customer.json()["data"]
    assert whole["value"] == sum(v for (c, _), v in expected.items() if c == CUSTOMER)
    assert (whole["timeframe_start"], whole["timeframe_end"]) == (START, END)

    grouped = run("--json", "usage", "events_by_region", *window, "--group-by", "region",
                  "--granularity", "none", store=store)  # fmt: skip
    regions = prepared.events.group_by("external_customer_id", "region").len()
    assert {
        (r["external_customer_id"], r["region"]): r["value"] for r in grouped.json()["data"]
    } == {(r["external_customer_id"], r["region"]): r["len"] for r in regions.to_dicts()}

    unknown = run("usage", "no_such_metric", *window, store=store, expect=1)
    assert "no_such_metric" in one_error_line(unknown)


# -- ingest -----------------------------------------------------------------------------------


def _event(key: str, timestamp: str, tokens: int, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "event_name": "completion",
        "timestamp": timestamp,
        "external_customer_id": CUSTOMER,
        "properties": {"model": model, "tokens": tokens, "region": "us-east"},
    }


def test_live_ingest_jsonl_and_csv(prepared: Prepared, tmp_path: Path) -> None:
    # Live events must be recent: the clock is pinned with --now, an hour after them.
    now = ["--now", "2026-12-04T12:00:00Z"]
    jsonl = tmp_path / "live.jsonl"
    jsonl.write_text("\n".join(json.dumps(_event(f"live-{i}", "2026-12-04T11:00:00Z", 10))
                               for i in range(3)) + "\n")  # fmt: skip
    csv = tmp_path / "live.csv"
    csv.write_text(
        "idempotency_key,event_name,timestamp,external_customer_id,properties\n"
        'csv-1,completion,2026-12-04T11:30:00Z,cust_0002,"{""tokens"": 5, ""model"": ""x""}"\n'
    )
    first = cli(*now, "ingest", jsonl, csv, store=prepared.store)
    assert "4 events ingested live; 0 duplicates skipped" in first.stdout
    assert "live.jsonl" in first.stdout and "live.csv" in first.stdout
    again = run("--json", *now, "ingest", jsonl, store=prepared.store).json()
    assert (again["ingested"], again["duplicates"]) == (0, 3)
    assert again["files"][0]["file"] == str(jsonl)
    tokens = run("--json", "usage", "completion_tokens", "--timeframe-start", "2026-12-04",
                 "--timeframe-end", "2026-12-05", store=prepared.store).json()  # fmt: skip
    assert {r["external_customer_id"]: r["value"] for r in tokens["data"]} == {
        CUSTOMER: 30,
        "cust_0002": 5,
    }


def test_ingest_errors(prepared: Prepared, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(_event("e-1", "2026-11-18T10:00:00Z", 1)) + "\n")
    malformed = tmp_path / "malformed.jsonl"
    first = json.dumps(_event("m-1", "2026-11-18T10:00:00Z", 1))
    malformed.write_text(first + "\n\n" + '{"idempotency_key": oops}\n')
    missing, bad_line, unknown_backfill = cli_many(
        (["ingest", good, tmp_path / "absent.jsonl"], 2),
        (["ingest", malformed], 1),
        (["ingest", good, "--backfill", "no-such-backfill"], 1),
        store=prepared.store,
    )
    assert "absent.jsonl' does not exist" in one_error_line(missing)
    assert "line 3" in one_error_line(bad_line) and "malformed JSON" in bad_line.stderr
    assert "'no-such-backfill' does not exist" in one_error_line(unknown_backfill)

    too_old = run("ingest", good, store=prepared.store, expect=1)
    assert "grace period" in one_error_line(too_old) and "backfill" in too_old.stderr
    (tmp_path / "events.txt").write_text("")
    wrong_kind = run("ingest", tmp_path / "events.txt", store=prepared.store, expect=2)
    assert "expected a .jsonl, .parquet or .csv" in one_error_line(wrong_kind)
    body = json.loads(run("--json", "ingest", malformed, store=prepared.store, expect=1).stderr)
    assert body["status"] == 400 and "line 3" in body["detail"] and body["exit_code"] == 1


# -- backfills --------------------------------------------------------------------------------


def test_backfill_lifecycle(prepared: Prepared, tmp_path: Path) -> None:
    store = prepared.store
    day = prepared.events.filter(
        (pl.col("external_customer_id") == CUSTOMER)
        & (pl.col("day") == DAY)
        & (pl.col("event_name") == "completion")
    )
    replaced = int(day.filter(pl.col("model") == "gpt-4o")["tokens"].sum())
    before = int(day["tokens"].sum())
    corrected = tmp_path / "corrected.jsonl"
    corrected.write_text(
        json.dumps(_event("fix-1", f"{DAY}T09:00:00Z", 1000)) + "\n"
        + json.dumps(_event("fix-2", f"{DAY}T10:00:00Z", 234)) + "\n"
    )  # fmt: skip
    after = before - replaced + 1234
    usage = ["--json", "usage", "completion_tokens", "--timeframe-start", DAY, "--timeframe-end",
             "2026-11-19", "--external-customer-id", CUSTOMER]  # fmt: skip

    def tokens(*extra: str) -> float:
        value: float = run(*usage, *extra, store=store).json()["data"][0]["value"]
        return value

    created = cli(
        "--json", "backfills", "create", "--timeframe-start", DAY, "--timeframe-end",
        "2026-11-19", "--external-customer-id", CUSTOMER, "--deprecation-filter", FILTER,
        store=store,
    ).json()  # fmt: skip
    backfill = created["id"]
    assert created["status"] == "pending" and created["deprecation_filter"] == FILTER
    assert created["timeframe_start"] == f"{DAY}T00:00:00Z"

    staged = cli("backfills", "ingest", backfill, corrected, store=store)
    assert f"2 events staged in backfill {backfill}" in staged.stdout
    assert tokens() == before  # nothing visible yet

    preview = cli("backfills", "preview", backfill, store=store)
    assert "would change" in preview.stdout and f"{after - before:,}" in preview.stdout
    rows = {
        r["metric_name"]: r
        for r in run("--json", "backfills", "preview", backfill, store=store).json()["data"]
    }
    assert rows["completion_tokens"]["before"] == before
    assert rows["completion_tokens"]["after"] == after
    assert rows["completion_tokens"]["delta"] == after - before
    assert rows["completion_tokens"]["timeframe_start"] == f"{DAY}T00:00:00Z"

    closed = cli("backfills", "close", backfill, store=store)
    assert "reflected" in closed.stdout
    known_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assert tokens() == after

    reverted = cli("backfills", "revert", backfill, store=store)
    assert "reverted" in reverted.stdout
    assert tokens() == before  # exactly undone
    assert tokens("--as-of", known_at) == after  # as it was known between close and revert
    again = run("backfills", "close", backfill, store=store, expect=1)
    assert "reverted" in one_error_line(again)

    shown = cli("backfills", "show", backfill, store=store)
    assert backfill in shown.stdout and FILTER in shown.stdout
    listed = cli("backfills", "list", "--limit", "1", store=store)
    assert backfill in listed.stdout and "--cursor" in listed.stdout
    page = run("--json", "backfills", "list", "--limit", "1", store=store).json()
    (newest,) = page["data"]
    assert newest["id"] == backfill and newest["events_ingested"] == 2
    assert newest["status"] == "reverted" and newest["reverted_at"].endswith("Z")
    assert page["pagination_metadata"]["has_more"] is True
    cursor = page["pagination_metadata"]["next_cursor"]
    older = run("--json", "backfills", "list", "--cursor", cursor, store=store).json()["data"]
    assert prepared.history_backfill in [b["id"] for b in older]


def test_close_due(prepared: Prepared) -> None:
    store = prepared.store
    now = datetime.now(UTC).replace(microsecond=0)
    created = run(
        "--json", "backfills", "create", "--timeframe-start", "2026-11-19", "--timeframe-end",
        "2026-11-20", "--external-customer-id", "cust_0002", "--no-replace-existing-events",
        "--close-time", (now + timedelta(hours=1)).isoformat(), store=store,
    ).json()  # fmt: skip
    assert "No pending backfill" in run("close-due", store=store).stdout
    later = (now + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    closed = cli("--now", later, "close-due", store=store)
    assert created["id"] in closed.stdout and "reflected" in closed.stdout
    shown = run("--json", "backfills", "show", created["id"], store=store).json()
    assert shown["status"] == "reflected" and shown["close_time"] == later


# -- maintenance ------------------------------------------------------------------------------


def test_verify_and_recompute(prepared: Prepared) -> None:
    store = prepared.store
    # Lose the materialized usage behind the engine's back: verify must notice.
    with engine.open(store) as opened:
        storage = opened._storage
        with storage.write():
            storage.execute(exp.delete(table_ref(USAGE_CELLS)))
    broken = cli("verify", store=store, expect=1)
    assert "differ from a from-scratch computation" in broken.stdout
    assert run("--json", "verify", store=store, expect=1).json()["mismatches"]
    assert "Recomputed" in cli("recompute", store=store).stdout
    assert "OK: the materialized usage" in run("verify", store=store).stdout
    assert run("--json", "recompute", "--metric", "event_count", store=store).json()["metrics"] == 1


def test_compact_merges_files_and_changes_no_answer(prepared: Prepared, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(prepared.store, store)
    window = ["--timeframe-start", START, "--timeframe-end", END, "--granularity", "hour"]
    before = run("--json", "usage", "completion_tokens", *window, store=store).json()

    compacted = cli("--json", "compact", "--retention", "0s", "--file-grace", "0s", store=store)
    result = compacted.json()
    assert result["snapshots_expired"] > 0
    assert result["data_files_after"] == sum(1 for _ in (store / "data").rglob("*.parquet"))
    assert run("--json", "usage", "completion_tokens", *window, store=store).json() == before
    assert "OK: the materialized usage" in run("verify", store=store).stdout

    human = cli("compact", store=store)
    assert "data files" in human.stdout and "snapshot(s) expired" in human.stdout
    bad = cli("compact", "--retention", "a week", store=store, expect=2)
    assert "'a week' is not a duration" in bad.stderr


# -- the HTTP server --------------------------------------------------------------------------

_FAKE_HTTP = """
import json, sys, types
from engine.cli import main
fake = types.ModuleType("engine.http")
fake.serve = lambda path, host, port, memory_limit: print(
    json.dumps([str(path), host, port, memory_limit])
)
fake.create_api_key = lambda path: "ue_test_key"
sys.modules["engine.http"] = fake
raise SystemExit(main(sys.argv[1:]))
"""

_NO_HTTP = """
import sys
from engine.cli import main
sys.modules["engine.http"] = None  # as if the module did not exist
raise SystemExit(main(sys.argv[1:]))
"""


def _python(code: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=120,
    )


def test_serve_and_api_keys_call_engine_http(prepared: Prepared) -> None:
    store = str(prepared.store)
    listen = ("--host", "0.0.0.0", "--port", "9999")
    with ThreadPoolExecutor(max_workers=2) as pool:
        serve, key, missing = pool.map(
            lambda call: _python(*call),
            [
                (_FAKE_HTTP, "--store", store, "--memory-limit", "2GB", "serve", *listen),
                (_FAKE_HTTP, "--store", store, "--json", "api-keys", "create"),
                (_NO_HTTP, "--store", store, "serve"),
            ],
        )
    assert serve.returncode == 0, serve.stderr
    assert json.loads(serve.stdout) == [store, "0.0.0.0", 9999, "2GB"]
    assert key.returncode == 0 and json.loads(key.stdout) == {"api_key": "ue_test_key"}
    assert missing.returncode == 1
    assert "engine.http is missing" in missing.stderr and "Traceback" not in missing.stderr


def test_api_key_with_the_real_server_module(prepared: Prepared) -> None:
    pytest.importorskip("engine.http")
    key = cli("api-keys", "create", store=prepared.store).stdout.strip()
    assert len(key) > 20 and "\n" not in key


# -- sample data and the demo -----------------------------------------------------------------


def test_generate_is_deterministic(tmp_path: Path) -> None:
    options = ["--events", "50", "--customers", "2", "--days", "1", "--seed", "3"]
    made = cli("generate", *options, "--out", tmp_path / "a.jsonl")
    assert "Wrote 50 events" in made.stdout
    again = run("--json", "generate", *options, "--out", tmp_path / "b.jsonl").json()
    assert again["events"] == 50 and again["timeframe_end"] == "2026-12-01T00:00:00Z"
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 50
    bad = run("generate", "--out", tmp_path / "c.csv", expect=2)
    assert ".jsonl or .parquet" in one_error_line(bad)


def test_demo(tmp_path: Path) -> None:
    out = cli("demo", "--store", tmp_path / "demo-store").stdout
    for step in ("1. Load", "2. Billed usage", "3. Create a replace backfill", "4. Preview",
                 "5. Close", "6. Revert", "Summary"):  # fmt: skip
        assert step in out
    assert "gpt-4o shows 354 completions; the producer sent 177." in out
    assert "Store verified" in out
    assert (tmp_path / "demo-store" / "catalog.sqlite").is_file()
    # A non-empty --store is refused: the demo builds its own store.
    refused = run("demo", "--store", tmp_path / "demo-store", expect=2)
    assert "is not empty" in one_error_line(refused)


def test_example_script_is_the_demo() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "backfill_story.py"), "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0 and "usage-engine demo" in done.stdout
