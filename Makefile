# Bootstraps uv and the project venv from the machine's Python 3.11; nothing else is assumed installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: demo test lint proto clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras
	touch $@

demo: $(VENV)/.synced
	$(VENV)/bin/blindlink demo --records 10000

test: $(VENV)/.synced
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

proto: $(VENV)/.synced
	$(VENV)/bin/python scripts/generate_proto.py

clean:
	rm -rf $(TOOLS) $(VENV)
