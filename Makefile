# The two commands of the README:
#   make lab    set up, then run the lab (full into report/ with a GPU and CIFAR-10, else smoke into build/smoke/);
#               ARGS="..." passes options to `labkit lab`, e.g. make lab ARGS="--dry-run --data-dir D"
#   make test   set up, then run the test suite (about 3 minutes); make test-slow: the end-to-end tests (CI runs both)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup lab test test-slow lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

lab: setup
	$(VENV)/bin/labkit lab $(ARGS)

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check labkit benchmarks tests notebooks

clean:
	rm -rf build .pytest_cache
