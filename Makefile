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

ifeq ($(DATA),)
TRAIN_DATA := --dataset synthetic
else
TRAIN_DATA := --dataset $(DATASET) --data-dir $(DATA)
endif

.PHONY: demo test bench lint install redis-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Installs Debian's redis-server when it is missing (root or sudo).
redis-server:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

demo: install
	$(BIN)/python -m training train $(TRAIN_DATA) --encoder $(ENCODER) --out $(ARTIFACTS) \
	  --if-changed --index $(INDEX_KIND)
	$(BIN)/python -m service examples --bundle $(ARTIFACTS)/current --url http://$(HOST):$(PORT)
	ARTIFACTS_DIR=$(ARTIFACTS)/current $(BIN)/python -m service serve --host $(HOST) --port $(PORT)

test: install redis-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install redis-server
	$(BIN)/python -m bench.quality
	$(BIN)/python -m bench.index
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.tower
	$(BIN)/python -m bench.scale --timeout 3600

lint: install
	$(BIN)/ruff check service training index tests bench
	$(BIN)/ruff format --check service training index tests bench

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
