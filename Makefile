# Two entry points: `make demo` (the end-to-end flow) and `make test` (the whole suite).
# Both install what they need: a Python venv in .venv and the npm packages (Node 22 included).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE := node_modules/.bin/node

.PHONY: demo test test-loaded setup bench clean typecheck lint format

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo 'setup: installing Python packages into $(VENV)'
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

node_modules/.installed: package.json package-lock.json
	@echo 'setup: installing npm packages (Node 22, @medplum/*, @metriport/api-sdk)'
	@npm ci --no-audit --no-fund --loglevel=error
	@$(NODE) --version >/dev/null
	@touch $@

setup: $(VENV)/.installed node_modules/.installed

demo: setup
	@$(VENV)/bin/medport demo

# The Node suite runs beside pytest (it mostly waits on its fake servers): its report is printed when both are done,
# whole when it failed, its totals otherwise.
JS_LOG := .medport/js-tests.log
test: setup
	@mkdir -p .medport
	@$(NODE) --test --test-reporter=spec 'tests/js/*.test.mjs' >$(JS_LOG) 2>&1 & js=$$!; \
	  $(PY) -m pytest -q -n 2 --dist loadfile; py=$$?; \
	  wait $$js; jsrc=$$?; \
	  if [ $$jsrc -ne 0 ]; then cat $(JS_LOG); else grep -E '^ℹ (tests|pass|fail|duration_ms)' $(JS_LOG) | sed 's/^ℹ/node:/'; fi; \
	  if [ $$py -ne 0 ] || [ $$jsrc -ne 0 ]; then echo "make test: pytest exit $$py, node exit $$jsrc"; exit 1; fi

# the whole suite with 4 busy loops beside it (MEDPORT_BURNERS=N for another number): it must pass on a loaded machine
test-loaded: setup
	@bash tests/loaded.sh

# mypy on the installed package (.ci/mypy builds the medport.* tree it needs under .medport/mypy)
$(VENV)/.lint-installed: pyproject.toml $(VENV)/.installed
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

typecheck: $(VENV)/.lint-installed
	@$(PY) .ci/mypy

# ruff (rules, then the format) and mypy: what CI runs before the tests; `make format` rewrites what lint would refuse
LINTED := generator emulator medport tests bench .ci/mypy
lint: $(VENV)/.lint-installed
	@$(VENV)/bin/ruff check $(LINTED)
	@$(VENV)/bin/ruff format --check $(LINTED)
	@$(PY) .ci/mypy

format: $(VENV)/.lint-installed
	@$(VENV)/bin/ruff check --fix $(LINTED)
	@$(VENV)/bin/ruff format $(LINTED)

bench: setup
	@$(PY) bench/run.py

clean:
	rm -rf $(VENV) node_modules .medport
