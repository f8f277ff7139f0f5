#!/bin/bash
# A 1-day replace backfill closed by a fresh process through the CLI: the first write of a
# process, as a one-shot command pays it. Stages 100k events on day DAY of a bench_usage store
# (history from 2026-10-01, 50 customers), then times `usage-engine backfills close` alone.
#
#   bench/cli_first_write.sh ENGINE_ROOT STORE DAY [NOW]
#
# ENGINE_ROOT is a checkout of this repository (another commit's worktree for an A/B); the
# Python of this checkout's .venv runs it. NOW defaults to the day after a 300-day history.
set -euo pipefail
root=$(cd "$1" && pwd); store=$2; day=$3; now=${4:-2027-07-29T00:00:00Z}
here=$(cd "$(dirname "$0")/.." && pwd)
python=$here/.venv/bin/python
start=$(date -u -d "2026-10-01 + $day days" +%Y-%m-%dT00:00:00Z)
end=$(date -u -d "2026-10-01 + $((day + 1)) days" +%Y-%m-%dT00:00:00Z)
events=$(mktemp --suffix .parquet)
trap 'rm -f "$events"' EXIT
PYTHONPATH=$here/bench:$here "$python" -c "
import sys, pyarrow.parquet as pq
from datetime import timedelta
from bench_core import START, replacement
pq.write_table(replacement(100_000, 50, 1, 900 + $day, START + timedelta(days=$day), None), sys.argv[1])
" "$events"
cd "$root"
cli() { "$python" -m engine --store "$store" --now "$now" --json "$@"; }
id=$(cli backfills create --timeframe-start "$start" --timeframe-end "$end" |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
cli ingest --backfill "$id" "$events" > /dev/null
/usr/bin/time -f "close of day $day ($root): %e s wall, %U s user, %S s sys, %M KB max RSS" \
    "$python" -m engine --store "$store" --now "$now" --json backfills close "$id" > /dev/null
