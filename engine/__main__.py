"""``python -m engine``: the ``usage-engine`` command line."""

from __future__ import annotations

from engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
