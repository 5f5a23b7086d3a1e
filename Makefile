# ncpeh-dicomweb — everything a fresh Debian machine needs, from two commands: make run, make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STATE := var
PORT ?= 8080
# sample data loaded by `make run` (core: a few patients CT/MR/CR; large: a 263 MB CT; testdata: pydicom's files)
LOAD ?= core testdata

.PHONY: help deps venv run test test-unit check lint format pacs-up pacs-down clean bench

help:
	@echo "make run    gateway on http://127.0.0.1:$(PORT) in front of a local Orthanc with sample studies"
	@echo "make test   unit + integration tests (starts its own Orthanc)"
	@echo "make check  ruff + mypy --strict"

# System packages: Orthanc + its DICOMweb plugin (the PACS), dcmtk (second DIMSE peer), curl.
deps:
	@bash scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $@

venv: $(STAMP)

run: deps venv
	@mkdir -p $(STATE)
	@bash scripts/run-demo.sh $(PORT) $(LOAD)

test: deps venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q tests/unit

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

pacs-up: deps venv
	@mkdir -p $(STATE)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/orthanc.sh start --dir $(CURDIR)/$(STATE)/orthanc $(addprefix --load ,$(LOAD))

pacs-down:
	bash scripts/orthanc.sh stop --dir $(CURDIR)/$(STATE)/orthanc --purge

clean:
	rm -rf $(VENV) $(STATE) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Benchmarks against the PACS reached directly, in one run (needs `make pacs-up LOAD="core large"`).
bench: venv
	$(PY) bench/gateway_bench.py --pacs-env $(STATE)/orthanc/env
	$(PY) bench/dimse_bench.py --pacs-env $(STATE)/orthanc/env
