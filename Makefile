# make run: serve on :7000 with the embedded local store; make test: lint + the whole suite.
PYENV_VERSION ?= 3.13.0
export PYENV_VERSION
PYTHON ?= python3.13
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format clean bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/hypercorn -c hypercorn.toml dd_api.asgi:app

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The benchmark (bench/README.md): about 10 minutes, not part of CI. BENCH_ARGS=--quick for a smoke run.
bench: $(VENV)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Mixed traffic at concurrency 32 for 5 minutes against the production server; not part of CI.
soak: $(VENV)/.installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var
