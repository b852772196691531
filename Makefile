# Two entry points: `make demo` runs the main job, `make test` the test suite. Each installs what it
# needs into .venv first (torch pinned to 2.13.0, the CPU build on this kind of machine).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test install clean mutation

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/collapse demo

test: install
	$(PY) -m pytest

# Mutation testing (docs/mutation.md), outside CI: hours on a small CPU. MUTANTS narrows it, e.g.
# make mutation MUTANTS='ufm.pairwise*'
mutation: install
	$(PY) -m pip install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run $(MUTANTS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) mutants
