# The two commands (see README):  make run  (harness run --method ttfs)  and  make test
# Everything installs into .venv; torch is pinned by constraints.txt (CPU build here).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup run test bench mutation clean

$(STAMP): pyproject.toml constraints.txt tools/check_install.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(BIN)/python tools/check_install.py
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/harness run --method ttfs $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check harness
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	# sinabs joins the simulator benchmark as a third contender. It pins nir<=1.0.4, which cannot
	# hold SpikingJelly's NIR graphs (network.nir needs nir>=1.0.7); its simulator does not use
	# nir, so it goes in without its pins (pbr: its version string).
	$(PIP) install -q -c constraints.txt --no-deps 'sinabs>=3' pbr
	$(BIN)/python tools/check_install.py
	$(BIN)/python -m pytest benchmarks -o python_files="bench_*.py" --benchmark-only $(PYTEST_ARGS)

mutation: $(STAMP)
	# mutmut over every module of harness/ on a stratified sample (tools/mutation.py); not part of CI:
	# it runs the suite's fast tests against each sampled mutant (about an hour on 2 cores)
	$(PIP) install -q -c constraints.txt -e '.[test,mutation]'
	$(BIN)/python tools/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache mutants
