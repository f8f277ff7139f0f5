# Two commands on a fresh machine (Python 3.11, pip, make):
#   make demo   set up .venv and run the main job on the bundled sample data
#   make test   set up .venv and run the checks and the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench bench-smoke clean

$(BIN)/python:
	$(shell command -v $(PYTHON) >/dev/null 2>&1 && echo $(PYTHON) || echo python3) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python examples/backfill_story.py

lint: setup
	$(BIN)/ruff check engine tests bench examples
	$(BIN)/ruff format --check engine tests bench examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The suite against the peers (BENCHMARKS.md): 10M events, 30-60 min on 2 cores.
bench: setup
	$(BIN)/python bench/run.py

bench-smoke: setup
	$(BIN)/python bench/run.py --scale 1M

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
