# Gatehouse: two commands. `make up` starts everything on the embedded default; `make test` runs the suite.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev

.PHONY: up test lint install install-dev bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# one resolve for the runtime and dev dependencies (the runtime ones are a subset: `make up` needs nothing more)
$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

up: $(STAMP)
	$(BIN)/gatehouse up

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# two pytest processes, each taking whole test files (their module fixtures and stacks stay in one process):
# the suite waits on servers more than it computes, so two share the 2-core machine well
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(DEVSTAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .gatehouse
