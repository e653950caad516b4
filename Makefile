# Two entry points, both doing all set-up on a fresh machine:
#   make demo   the embedded default campaign on the bundled `digits` set (offline): train a VGG-16
#               teacher, compress it generation by generation, print the lineage
#   make test   lint (ruff, mypy), then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DEMO_DIR := runs/digits-demo

.PHONY: demo test lint install install-dev bench paper clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the version the committed results were made with: the package's own range
# is then already met, so pip keeps this build (CPU or CUDA, as the pip configuration finds it)
# instead of choosing another.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Running it again resumes the same run directory: finished nodes are kept, the table is printed.
demo: install
	$(BIN)/ikd compress --config configs/digits-demo.yaml --run-dir $(DEMO_DIR)

# ruff (rules and layout) and mypy (types), as configured in pyproject.toml; `make test` runs it first.
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite spread over up to 4 cores (pytest-xdist), one torch thread per worker (tests/conftest.py):
# most tests wait on short trainings and the ikd processes they start, which one thread serves as well.
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --durations=15

bench: install
	$(BIN)/python benchmarks/train_throughput.py

# The paper's table (benchmarks/paper.py): campaigns per dataset x teacher x operators, each row
# labelled with its budget. Hours on a CPU; narrow it, e.g. make paper PAPER_ARGS="--rows 'mnist-vgg16-*'":
# the rows run replace theirs in the table (records in results/paper.json), the others stay.
PAPER_ARGS ?= --rows 'mnist-vgg16-*'
paper: install
	$(BIN)/python benchmarks/paper.py $(PAPER_ARGS) --markdown benchmarks/results/paper.md

clean:
	rm -rf $(VENV) runs .pytest_cache
