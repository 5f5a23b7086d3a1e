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

.PHONY: help deps deps-browser venv run test test-unit check lint format pacs-up pacs-down clean bench \
	viewer viewer-test conformance conformance-status

help:
	@echo "make run    gateway on http://127.0.0.1:$(PORT) in front of a local Orthanc with sample studies,"
	@echo "            and the OHIF viewer at http://127.0.0.1:$(PORT)/viewer/"
	@echo "make test   unit + integration tests (starts its own Orthanc)"
	@echo "make check  ruff + mypy --strict"
	@echo "make viewer-test  OHIF in headless Chromium against the gateway (DICOMweb, C-GET, C-MOVE sites)"

# System packages: Orthanc + its DICOMweb plugin (the PACS), dcmtk (second DIMSE peer), curl,
# node/npm (to fetch the viewer); deps-browser adds chromium for the viewer test.
deps:
	@bash scripts/install-deps.sh

deps-browser:
	@bash scripts/install-deps.sh --browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev,conformance]'
	@touch $@

venv: $(STAMP)

run: deps venv
	@mkdir -p $(STATE)
	@bash scripts/run-demo.sh $(PORT) $(LOAD)

test: deps-browser venv
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
	rm -rf $(VENV) $(STATE) .mypy_cache .ruff_cache .pytest_cache *.egg-info tests/viewer/node_modules tests/node/node_modules

# The OHIF viewer served at /viewer/: its prebuilt dist/, version pinned in scripts/ohif.sh,
# fetched once into ~/.cache/ncpeh-dicomweb. Prints its path.
viewer:
	@bash scripts/ohif.sh

# OHIF in headless Chromium (Debian's chromium, playwright-core from tests/viewer): study list,
# patient filter and the sample studies rendered, over the DICOMweb, C-GET and C-MOVE sites.
# Starts its own Orthanc (reuse one: NCPEH_TEST_ORTHANC_DIR=$$PWD/var/orthanc).
viewer-test: deps-browser venv viewer
	$(PY) -m pytest -q -s tests/integration/test_viewer.py

# Benchmarks (bench/run.py): the gateway against the PACS reached directly in the same run, as
# ratios with the targets of issue 10. Starts its own Orthanc in $(STATE)/bench-orthanc (kept, so
# the 263 MB and 526 MB studies load once; BENCH_LARGE=1: a 1.05 GB one); results, Markdown and
# JSON, in bench/results/. BENCH_ARGS: e.g. --quick, --only qido,dimse, --pacs-env FILE.
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# The conformance harness (conformance/) against the gateway in front of the local Orthanc
# (`make pacs-up`'s, started if needed): a DICOMweb site and a DIMSE site; reports in
# build/conformance/<site>/; fails when a MUST check fails or conformance/STATUS.md drifts
# from the DICOMweb site's run. `make conformance-status` rewrites STATUS.md from a fresh run.
conformance: venv
	@bash scripts/conformance.sh

conformance-status: venv
	@bash scripts/conformance.sh --write-status
