# farmhand: `make run` runs the example task, `make test` runs the whole suite.
# Both set up a fresh Debian 12 host as root (packages, dockerd, local images).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test unit integration bench host test-images venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: host $(VENV)/.installed

host:
	bash scripts/setup-host.sh

test-images: host
	bash scripts/build-test-images.sh

run: test-images venv
	bash scripts/run-example.sh

test: test-images venv
	$(PY) -m pytest tests/unit tests/integration $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: test-images venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# Figures, not tests: each script prints its own table (see bench/*.py).
bench: test-images venv
	$(PY) bench/run_task.py
	$(PY) bench/upload.py
	$(PY) bench/log_capture.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis var
