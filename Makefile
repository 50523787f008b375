# Everything a fresh machine needs: `make quickstart` and `make test` create .venv,
# install rmrun with its pinned ColossalAI stack, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test bench bench-recipes clean-state

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/rmrun run recipes/quickstart.toml

test: $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	bash benchmarks/run.sh

bench-recipes: $(STAMP)
	bash benchmarks/recipes.sh

clean-state:
	rm -rf state/quickstart
