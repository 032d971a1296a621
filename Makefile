# Set-up on a fresh machine is part of `make run` and `make test`.
# torch goes in first: the pinned CPU build here (a file on local disk), or whatever
# torch the venv already has (e.g. a CUDA build the user installed), which is kept.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/local.yaml
BIN := $(VENV)/bin

.PHONY: run test install clean-data

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: install
	$(BIN)/babelray run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

clean-data:
	rm -rf data runs
