# Two entry points (see README): `make run` sets up and runs the embedded default; `make test` sets up and tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup run test test-all lint bench clean-outputs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to <2.14 in pyproject: on machines with the local CPU wheel this installs torch 2.13.0+cpu
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup  ## the default run: warm-start (cached) + 200 DVPO steps under flip0.2 noise on the arithmetic testbed
	$(PY) -m dvpo_lab $(ARGS)

test: setup  ## lint + the default test suite (slow tests excluded)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-all: setup  ## everything, slow tests (DDP with 2 CPU processes) included
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) benchmarks/step_time.py $(ARGS)

clean-outputs:
	rm -rf outputs/*/ .cache/warmstart
