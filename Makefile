# `make test` builds the virtualenv from nothing (only Python, pip and make needed) and runs every check.
PYTHON ?= python3
VENV := venv
PY := $(VENV)/bin/python
PIP_VERSION := 25.3
# The policy pack's own virtualenv: pulumi-policy pins a protobuf the program's packages cannot share.
POLICY_VENV := policy/venv
POLICY_PY := $(POLICY_VENV)/bin/python
# Each stack's resources as the program registers them (Pulumi mocks), for the pack's tests to check.
POLICY_DUMPS := .localcloud/policy
POLICY_STACKS := $(patsubst Pulumi.%.yaml,%,$(wildcard Pulumi.*.yaml))
PROGRAM_SOURCES := Pulumi.yaml __main__.py $(wildcard contract/*.py components/*.py handler/*.py taskclient/*.py localcloud/*.py)

.PHONY: test lint typecheck unit redis-server chromium policy deps bench local clean

test: lint typecheck unit policy

# Built whole or not at all: a venv left by a failed install (a package missing, a Python too old) is removed,
# so the next `make` starts clean instead of tripping on it.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: Python 3.11 or newer is needed; $(PYTHON) is $$($(PYTHON) --version 2>&1 || echo 'not found')." \
	    "Install one, then run: make PYTHON=python3.12 (or its path)" >&2; exit 2; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION) && \
	  $(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt; } || { rm -rf $(VENV); exit 1; }
	touch $@

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.installed
	$(PY) -m mypy

unit: $(VENV)/.installed redis-server chromium
	$(PY) -m pytest

# The idempotency tests run a real redis-server (tests/test_idempotency.py fails without one): install it from
# apt when it is missing (as root, or through sudo on a developer's machine).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The emulator console's tests drive Debian's Chromium through Playwright (tests/test_console.py fails without
# it): Playwright's own browser download needs the internet, so the browser comes from apt, as redis-server does.
chromium:
	@[ -x /usr/bin/chromium ] || { echo "installing chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(POLICY_VENV)/.installed: policy/requirements.txt
	$(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_PY) -m pip install --quiet --disable-pip-version-check pip==$(PIP_VERSION)
	$(POLICY_PY) -m pip install --quiet --disable-pip-version-check -r policy/requirements.txt
	touch $@

# Written whole or not at all, so a failed run never leaves a truncated dump behind.
$(POLICY_DUMPS)/%.json: Pulumi.%.yaml $(PROGRAM_SOURCES) $(VENV)/.installed
	mkdir -p $(POLICY_DUMPS)
	$(PY) -m localcloud resources --stack $* > $@.tmp
	mv $@.tmp $@

# The pack's tests, in the pack's virtualenv, over the dumps made in the program's.
policy: $(POLICY_VENV)/.installed $(POLICY_STACKS:%=$(POLICY_DUMPS)/%.json)
	POLICY_RESOURCE_DUMPS="$(abspath $(POLICY_STACKS:%=$(POLICY_DUMPS)/%.json))" $(POLICY_PY) -m pytest -q policy/tests

# What the deploy jobs need: the program's virtualenv and the policy pack's.
deps: $(VENV)/.installed $(POLICY_VENV)/.installed

# Every benchmark, each in its own process, then the machine they ran on (BENCH_ARGS=--quick: a fast check).
bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The whole flow on this machine: local emulator, real handler, tasks through the task client.
local: $(VENV)/.installed
	$(PY) -m localcloud demo

clean:
	rm -rf $(VENV) $(POLICY_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .localcloud
