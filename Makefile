# Relayboard: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
BIND ?= 127.0.0.1:8000
WORKERS ?= 2

.PHONY: run test test-pg lint bench clean install vendor screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/relayboard db upgrade
	$(BIN)/relayboard serve --bind $(BIND) --workers $(WORKERS)

test: $(DEVSTAMP)
	$(BIN)/pytest -q

# The queue's concurrency tests against PostgreSQL (CI runs this after `make test`).
test-pg: $(DEVSTAMP)
	RELAYBOARD_TEST_PG_URL=$${RELAYBOARD_TEST_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
		$(BIN)/pytest -q -m pg

lint: $(DEVSTAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app

bench: $(DEVSTAMP)
	command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || echo "no wrk: bench/api.py uses its Python load generator")
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) instance .pytest_cache

# Re-copy the front-end files from npm (versions pinned in package.json).
vendor:
	npm install --no-save --no-package-lock
	cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js
	cp node_modules/@picocss/pico/css/pico.min.css static/vendor/pico.min.css
	cp node_modules/sortablejs/Sortable.min.js static/vendor/Sortable.min.js

# PNGs of the main pages for the README (needs Debian's chromium).
screenshots: $(DEVSTAMP)
	$(BIN)/python docs/screenshots.py
