# The two commands of the README: `make serve` and `make test`.
# `make serve` installs only what training and serving need; `make test` adds the dev
# tools and the real client packages the tests drive (openai, lm_eval).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test test lint serve image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first (a file on these machines); the range in
	# pyproject.toml then accepts it instead of pulling the CUDA packages.
	$(BIN)/python -m pip install -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels) torch==2.13.0 || \
	    $(BIN)/python -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(SERVE_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,test]"
	touch $(TEST_STAMP) $(SERVE_STAMP)

install: $(SERVE_STAMP)

install-test: $(TEST_STAMP)

lint: $(TEST_STAMP)
	$(BIN)/ruff check model training app tests bench
	$(BIN)/ruff format --check model training app tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

serve: $(SERVE_STAMP)
	$(BIN)/python -m app.quickstart

# The CPU images with podman, on a machine with no image registry: a local Debian base
# (debootstrap, made once), then the CPU base, api, trainer, redis and nginx images
# (docs/operations.md, "Images"). Unchanged layers are reused.
image:
	docker/build-local.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
