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

# A Debian package in build/deb/ (debian/, README "Debian package"). It is built from a copy of
# the files git tracks or would track, so debhelper's output stays out of the work tree.
.PHONY: deb
deb:
	@bash .ci/ensure-deb-tools
	rm -rf build/deb && mkdir -p build/deb/streetgate
	git ls-files -z --cached --others --exclude-standard | \
	  tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C build/deb/streetgate
	cd build/deb/streetgate && dpkg-buildpackage --build=binary --no-sign -j2
	@ls build/deb/*.deb

# The package built, installed in a throwaway root (and booted under its own systemd), then
# purged: tests/packaging, the slow part. CI runs it after `make test` (root only).
.PHONY: test-packaging
test-packaging: $(STAMP)
	$(PY) -m pytest -q -m slow tests/packaging

flash-rig: $(STAMP)
	bash hil_tests/firmware/flash.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
