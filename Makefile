# Two entry points, both doing all set-up on a fresh machine:
#   make demo   train and evaluate a VGG teacher on the bundled `digits` set (offline)
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
DEMO_DIR := runs/demo

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build lies on this machine's disk, and installing it before the
# package keeps pip from resolving `torch` to a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/ikd train --dataset digits --arch vgg16 --epochs 15 --batch-size 64 --out $(DEMO_DIR) --force
	$(BIN)/ikd eval $(DEMO_DIR) --split test

test: install-dev
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
