# edgeloop — every target that needs the environment depends on `setup`, so each is one command on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := data/machines.csv
MODEL  ?= machine-failure
BUNDLE := bundles/$(MODEL)
export EDGELOOP_HOME ?= $(CURDIR)/.edgeloop
export MLFLOW_ALLOW_FILE_STORE ?= false

.PHONY: setup train convert demo test lint format bench check-edge test-faults clean help

help:
	@echo "make demo   - set up, train, convert and score a few rows (the main job)"
	@echo "make test   - set up, lint, type-check and run the test suite"
	@echo "make setup | train | convert | lint | bench | check-edge | test-faults | clean"

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[cloud,spark,dev]'
	touch $(STAMP)

setup: $(STAMP)

$(DATA): | setup
	$(BIN)/edgeloop sample-data --out $(DATA)

train: setup $(DATA)
	$(BIN)/edgeloop train --data $(DATA) --target failure_24h --name $(MODEL) --model rf --ignore reading_id

convert: setup
	$(BIN)/edgeloop convert $(MODEL)@champion --out $(BUNDLE)

demo: setup $(DATA)
	@$(BIN)/edgeloop train --data $(DATA) --target failure_24h --name $(MODEL) --model rf --ignore reading_id
	@$(BIN)/edgeloop convert $(MODEL)@latest --out $(BUNDLE)
	@$(BIN)/edgeloop predict --bundle $(BUNDLE) --data $(DATA) --rows 8 --public-key $(EDGELOOP_HOME)/keys/edgeloop-signing.pub

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts trainer converter edge_agent cloud_sync edgeloop

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup lint
	$(BIN)/pytest -q

test-faults: setup
	$(BIN)/pytest -q -m faults

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .edgeloop data bundles .pytest_cache .mypy_cache .ruff_cache

# The device install (Dockerfile.edge's steps) in a fresh venv: base package only, serve a bundle, curl it.
check-edge: setup $(DATA)
	@test -f $(BUNDLE)/manifest.json || $(MAKE) --no-print-directory train convert
	deploy/check_edge.sh $(BUNDLE) $(EDGELOOP_HOME)/keys/edgeloop-signing.pub $(PYTHON)
