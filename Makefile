# streetgate: `make demo` and `make test` set up everything they need on Debian / Raspberry Pi OS.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck soak bench install flash-rig clean deps mosquitto postgres help

help:
	@echo "make demo    - simulated devices -> gateway -> private broker -> verifier"
	@echo "make test    - lint, type checks and the whole test suite"
	@echo "make bench   - streetgate bench, figures for docs/BENCHMARKS.md"
	@echo "make soak    - long soak and fuzz runs (not part of make test)"
	@echo "make install - install as a systemd service (root)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "streetgate needs Python >= 3.11 (Debian 12: apt-get install python3 python3-venv)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { echo "cannot create a virtualenv: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,firmware]'
	@touch $(STAMP)

deps: $(STAMP) mosquitto postgres

mosquitto:
	@bash .ci/ensure-mosquitto

# The tests start private PostgreSQL clusters (tests/helpers/postgres.py).
postgres:
	@bash .ci/ensure-postgres

demo: deps
	$(VENV)/bin/streetgate demo

test: deps lint typecheck
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway drivers buffer provisioning ingest hil_tests tests/hil
	$(PY) hil_tests/firmware/typecheck.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

soak: deps
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: deps
	$(VENV)/bin/streetgate bench

install: $(STAMP)
	bash systemd/install.sh

flash-rig: $(STAMP)
	bash hil_tests/firmware/flash.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
