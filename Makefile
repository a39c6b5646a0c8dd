# riskmon: two commands for a fresh machine.
#   make demo   services up, models trained, the real data replayed through the live pipeline, credit lines printed
#   make test   mypy --strict on the packages, then the whole test suite (unit + integration + end-to-end, against real Kafka and Redis)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
STAMP := $(VENV)/.riskmon-installed

.PHONY: install demo test unit typecheck services-up services-down browser bench report clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

services-up:
	scripts/services up

services-down:
	scripts/services down

browser:
	scripts/browser

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH scripts/demo

unit: install
	$(PY) -m pytest -m "not services and not slow" -q

typecheck: install
	$(PY) -m mypy streams models allocator

test: install typecheck services-up browser
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q

bench: install services-up
	PATH=$(abspath $(VENV))/bin:$$PATH scripts/bench

clean: services-down
	rm -rf var artifacts .pytest_cache
