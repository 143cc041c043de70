# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first (a file on these machines); the range in
	# pyproject.toml then accepts it instead of pulling the CUDA packages.
	$(BIN)/python -m pip install -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels) torch==2.13.0 || \
	    $(BIN)/python -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check model training app tests bench
	$(BIN)/ruff format --check model training app tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

serve: $(STAMP)
	$(BIN)/python -m app.quickstart

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
