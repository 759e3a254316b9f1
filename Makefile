# EasyFaaS — one entry point for setting up, running and testing a pod on a Linux box (as root).
SHELL := /bin/bash
PYTHON ?= $(shell python3 -c 'import sys; print(sys.executable)')
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench bench-smoke clean distclean

install: $(STAMP) $(SYSTEM_STAMP)

# Debian packages: erofs-utils builds the read-only code images; wrk drives the benchmarks;
# mosquitto is the MQTT broker the event-source tests run (mosquitto_pub of mosquitto-clients feeds
# the bench's paced stream); prometheus (its server and promtool) checks and scrapes the daemons'
# /metrics in the tests.
$(SYSTEM_STAMP): | $(STAMP)
	@if ! command -v mkfs.erofs >/dev/null || ! command -v wrk >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v mosquitto >/dev/null || ! command -v mosquitto_pub >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "run as root (apt-get install erofs-utils wrk prometheus mosquitto mosquitto-clients)"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq erofs-utils wrk prometheus mosquitto mosquitto-clients >/dev/null; \
	fi
	@command -v node >/dev/null || { echo "Node.js is needed for the nodejs runtime (apt-get install nodejs)"; exit 1; }
	touch $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# SEPARATE=1: controller and stubs as processes of their own (default: one all-in-one process).
run: install
	$(if $(SEPARATE),EASYFAAS_SEPARATE_DAEMONS=1 )scripts/run-pod

# Tests write bytecode even where the environment says not to (PYTHONDONTWRITEBYTECODE): without
# it every daemon a test starts compiles the project afresh, and pytest rewrites every test module
# and plugin on each run.
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE

# The whole suite: unit, in-process and end-to-end tests (real pods and sandboxes), the long ones too.
test: install
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: unit and in-process tests only (markers in tests/conftest.py), under a minute on
# two cores. Two pytest-xdist workers per core: these tests spend much of their time waiting on the
# servers they start (NATS, Mosquitto, loopback daemons), so one worker per core leaves cores idle.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))
test-fast: install
	$(TEST_ENV) $(PY) -m pytest -m "not e2e and not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: install
	$(PY) -m bench

bench-smoke: install
	$(PY) -m bench --smoke

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
