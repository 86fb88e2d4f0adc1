# FluxIoT: `make run` starts the platform (embedded mode), `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test lint format bench venv migrate clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# Embedded mode: SQLite under ./var, in-process channel layer and tasks; nothing else to install.
run: venv
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(PY) manage.py seed_demo
	DEBUG=$${DEBUG:-1} $(PY) manage.py serve --simulate

# The suite runs against the real PostgreSQL and Redis of the machine (fluxiot/settings_test.py).
test: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) bench/registry.py
	$(PY) bench/ingest.py
	$(PY) bench/commands.py
	$(PY) bench/rules.py
	$(PY) bench/plugins.py
	$(PY) bench/live.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
