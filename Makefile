# Two set-up commands on a fresh machine: `make demo` and `make test`.
# `make docs` builds the documentation site into site/ (warnings are errors).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: demo test install dev docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) -e '.[docs]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/stem2eds demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

# The plugins' banners about MkDocs' future are not about this site; the variables silence them.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/python -m mkdocs build --strict

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py --size small --out benchmarks/results/small.json

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
