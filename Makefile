# All set-up happens here: `make demo` and `make test` each create/refresh .venv idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dist-unlearn-installed
export DS_ACCELERATOR ?= cpu
export DS_BUILD_OPS := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: venv demo demo-digits test test-slow bench lint clean

venv: $(STAMP)

# torch is pinned first (the CPU wheel on local disk); deepspeed is a source package built without ops,
# against that torch; then the package with its dev extras.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q setuptools wheel packaging ninja
	$(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The unlearn job on a generated model that memorised fictitious people (see dist_unlearn/demo).
demo: $(STAMP)
	$(PY) -m dist_unlearn.demo --out runs/unlearn_demo

# The experiment benchmark on digits (CNN, retrained oracle, CureNewton vs baselines).
demo-digits: $(STAMP)
	$(PY) -m dist_unlearn run --config configs/experiments/digits_demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/solver_bench.py

lint: $(STAMP)
	$(PY) -m ruff check dist_unlearn tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
