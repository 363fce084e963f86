# The two commands of the README:
#   make lab    set up, then run the lab (PROFILE=auto: full into report/ with a GPU and CIFAR-10, else smoke into build/smoke/)
#   make test   set up, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto

.PHONY: setup lab test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

lab: setup
	$(PY) -m labkit lab --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check labkit tests notebooks

clean:
	rm -rf build .pytest_cache
