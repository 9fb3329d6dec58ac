# The README's commands. Each one creates .venv and installs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/threadkeeper serve

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

bench: $(STAMP)
	$(PY) -m bench.storage
	$(PY) -m bench.agent
	$(PY) -m bench.summary
	$(PY) -m bench.web
	$(PY) -m bench.load
	$(PY) -m bench.retention
	$(PY) -m bench.sessions
	$(PY) -m bench.import_stock
	$(PY) -m bench.postgres
	$(PY) -m bench.crash
	$(PY) -m bench.hostile
	$(PY) -m bench.ops

clean:
	rm -rf $(VENV) .pytest_cache
