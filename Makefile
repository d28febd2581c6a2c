# Developer entry points. `make test` is the README's test command and what CI runs.
PY ?= python

.PHONY: setup demo test lint typecheck unit bench bench-quick

setup:
	$(PY) -m pip install -e ".[dev,demo]"

demo:
	namus-edge demo

lint:
	ruff check .

typecheck:
	mypy

unit:
	$(PY) -m pytest -q

test: lint typecheck unit

bench:
	$(PY) bench/search.py
	$(PY) bench/pipeline.py
	$(PY) bench/ingest.py

bench-quick:
	$(PY) bench/search.py --quick
	$(PY) bench/pipeline.py --quick --json
