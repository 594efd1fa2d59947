# Two commands matter: `make demo` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARTIFACTS ?= artifacts
DATA ?=
DATASET ?= ml-100k
ENCODER ?= sasrec
INDEX_KIND ?= flat
PORT ?= 8000
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

# Synthetic data (no DATA): the one-minute demo configuration. Real data (DATA=...): the
# full default training, whose quality docs/BENCHMARKS.md reports; CONFIG=FILE either way.
ifeq ($(DATA),)
TRAIN_DATA := --dataset synthetic
CONFIG ?= training/configs/demo.toml
else
TRAIN_DATA := --dataset $(DATASET) --data-dir $(DATA)
CONFIG ?=
endif
TRAIN_CONFIG := $(if $(CONFIG),--config $(CONFIG))

.PHONY: demo test bench lint install redis-server chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs only the runtime; tests, lint and benchmarks add the dev tools.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed-dev

# Installs Debian's redis-server and redis-cli (the tests start a Redis Cluster with
# `redis-cli --cluster create`) when either is missing (root or sudo).
redis-server:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server redis-tools; }

# Installs Debian's chromium when /usr/bin/chromium is missing (root or sudo): the dashboard's
# browser test drives it with Playwright (whose own browser download is not used).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

demo: $(VENV)/.installed
	$(BIN)/python -m training train $(TRAIN_CONFIG) $(TRAIN_DATA) --encoder $(ENCODER) \
	  --out $(ARTIFACTS) --if-changed --index $(INDEX_KIND)
	$(BIN)/python -m service examples --bundle $(ARTIFACTS)/current --url http://$(HOST):$(PORT)
	ARTIFACTS_DIR=$(ARTIFACTS)/current $(BIN)/python -m service serve --host $(HOST) --port $(PORT)

test: install redis-server chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install redis-server
	$(BIN)/python -m bench.quality
	$(BIN)/python -m bench.index
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.tower
	$(BIN)/python -m bench.demo
	$(BIN)/python -m bench.scale --timeout 3600

lint: install
	$(BIN)/ruff check service training index tests bench
	$(BIN)/ruff format --check service training index tests bench

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
