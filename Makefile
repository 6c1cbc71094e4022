# imgate developer entry points. `make test` works on a fresh machine: it creates .venv, installs the
# dependencies, compiles the Cython/C extensions and runs the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

.PHONY: all build test bench-micro ratios wheel clean run

all: build

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace -j 2

test: build
	$(PY) -m pytest -q

bench-micro: build
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only -p no:cacheprovider

ratios: build
	PYTHONPATH=src $(PY) benchmarks/ratios.py --json benchmarks/results/ratios-latest.json

wheel: $(STAMP)
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w dist .

clean:
	rm -rf build dist src/*.egg-info src/imgate/_core/*.c src/imgate/_core/*.so .pytest_cache
