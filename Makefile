# EdgeBot: the two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE_DIR ?= .edgebot
PYTEST_ARGS ?=
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint gen gen-check certs peers bench bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/edgebot up --state-dir $(STATE_DIR)

peers:
	bash scripts/ensure_peers.sh

test: $(STAMP) peers
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-peers:
	bash scripts/ensure_bench_peers.sh

# The whole benchmark (limit, end to end, edge agent, rsyslog, scale-out); BENCH_ARGS
# sizes it, e.g. make bench BENCH_ARGS='--events 20000 --seconds 5'.
bench: $(BENCH_STAMP) bench-peers
	$(BIN)/python -m bench $(BENCH_ARGS)

gen: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

gen-check: $(STAMP)
	$(BIN)/python scripts/gen_check.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	bash scripts/buf_breaking.sh

certs: $(STAMP)
	$(BIN)/edgebot certs --out $(STATE_DIR)/certs

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache .mypy_cache .ruff_cache
