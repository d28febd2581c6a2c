# Developer entry points. `make test` is the README's test command and what CI runs.
PY ?= python

.PHONY: setup demo test lint typecheck unit bench bench-quick

setup:
	$(PY) -m pip install -e ".[dev,demo]"

demo:
	namus-edge demo

lint:
	ruff check .
	lint-imports --no-cache

typecheck:
	mypy

unit:
	$(PY) -m pytest -q

test: lint typecheck unit

# Benchmarks measure, never fail; run them as modules (bench/ is not installed). Results: docs/benchmarks.md.
bench:
	$(PY) -m bench.search --sizes 10k,100k
	$(PY) -m bench.search --sizes 1M --indexes flat,flat16,pqfs
	$(PY) -m bench.search --stream --sizes 10M --queries 300
	$(PY) -m bench.search --real --sizes 100k,1M --indexes flat,flat16,pqfs
	$(PY) -m bench.pipeline
	$(PY) -m bench.ingest
	$(PY) -m bench.latency
	$(PY) -m bench.identification

bench-quick:
	$(PY) -m bench.search --quick
	$(PY) -m bench.pipeline --quick --json
	$(PY) -m bench.ingest --quick
