# Two entry points: `make demo` runs the main job, `make test` the test suite. Each installs what it
# needs into .venv first (torch pinned to 2.13.0, the CPU build on this kind of machine).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test install clean mutation mutation-sample

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

# Mutation testing (docs/mutation.md), outside CI. `make mutation` tests every mutant (many hours on
# a small CPU; MUTANTS narrows it, e.g. MUTANTS='ufm.pairwise*'); `make mutation-sample` a random
# SAMPLE per module. Both end with the table of verdicts per module.
SAMPLE ?= 60
SEED ?= 0

mutation: install
	$(PY) -m pip install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run $(MUTANTS)
	$(PY) tools/mutation.py report

mutation-sample: install
	$(PY) -m pip install -q mutmut==3.8.1
	# A run that matches no mutant generates them all and maps tests to functions, then stops.
	-$(VENV)/bin/mutmut run no-such-mutant
	test -f mutants/mutmut-stats.json
	$(VENV)/bin/mutmut run $$($(PY) tools/mutation.py sample --per-module $(SAMPLE) --seed $(SEED))
	$(PY) tools/mutation.py report --survivors

clean:
	rm -rf $(VENV) mutants
