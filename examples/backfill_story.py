"""The main job, end to end: correct double-reported usage with a backfill, then revert it.

Run it with ``make demo`` or ``python examples/backfill_story.py [--store PATH] [--json]``; it is
the same as ``usage-engine demo``. The story itself (and what each step checks) lives in
``engine/demo.py``, so that the installed command and this script tell exactly the same one.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a plain script from a checkout (`python examples/backfill_story.py`) as well.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
