# The README's two commands:
#   make demo   set up .venv, draw the synthetic demo screen, run the whole workflow, print the report path
#   make test   set up .venv, run the test suite
# Set-up installs the CPU wheel of torch first, pinned through constraints.txt (otherwise pip
# resolves torch to a multi-GB CUDA build), then this package with its test extra.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
DEMO_DIR ?= demo
PYTEST_ARGS ?=

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test setup clean-demo lint

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,segment,cluster]"
	touch $(STAMP)

demo: $(STAMP)
	test -f $(DEMO_DIR)/plates.tsv || $(BIN)/cytoscreen synth --out $(DEMO_DIR) --plates 2 --wells 96 --sites 2 --seed 0
	$(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES)
	@echo ""
	@echo "cytoscreen demo finished."
	@echo "  tables:  $(CURDIR)/results/"
	@if [ -f reports/index.html ]; then echo "  report:  $(CURDIR)/reports/index.html"; fi

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cytoscreen tests benchmarks
	$(BIN)/snakemake --lint --cores 1

clean-demo:
	rm -rf $(DEMO_DIR) results reports .snakemake
