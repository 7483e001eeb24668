# `make test` builds the virtualenv from nothing (only Python, pip and make needed) and runs every check.
PYTHON ?= python3
VENV := venv
PY := $(VENV)/bin/python
PIP_VERSION := 25.3

.PHONY: test lint typecheck unit local clean

test: lint typecheck unit

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.installed
	$(PY) -m mypy

unit: $(VENV)/.installed
	$(PY) -m pytest

# The whole flow on this machine: local emulator, real handler, tasks through the task client.
local: $(VENV)/.installed
	$(PY) -m localcloud demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .localcloud
