# The two commands of the README: `make book` and `make test`. Both create .venv if it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb))
# Notebooks nbval runs at once (pytest-xdist, one notebook per worker, in a kernel of its own).
# The book's small models are bound by per-step dispatch (one Python thread at 100 %, TensorFlow's
# compute threads near 25 %), so two notebooks on two cores take about half the wall time of one
# after the other, each about as long as alone. NBVAL_JOBS=1: one after the other.
NBVAL_JOBS ?= 2
nbval_jobs = $(if $(filter-out 1,$(NBVAL_JOBS)),-n $(NBVAL_JOBS) --dist loadfile)

.PHONY: book test lint unit nbval site execute robustness clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

$(LINT_STAMP): requirements-lint.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-lint.txt
	@touch $(LINT_STAMP)

# TEST_REPORTS=dir: each pytest run of `make test` also writes a JUnit XML report there.
junit = $(if $(TEST_REPORTS),--junitxml=$(TEST_REPORTS)/$(1).xml)

## book: build the website into _build/html from the notebooks' stored outputs
## (--all: every page, so a changed _toc.yml reaches every page's navigation)
book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

## test: workflow lint, unit tests, nbval on every chapter (with durations), then the site test in headless Chromium
test: $(STAMP) $(LINT_STAMP)
	@status=0; \
	echo "== 1/4 lint: GitHub workflows and CITATION.cff"; \
	$(MAKE) --no-print-directory lint || status=1; \
	echo "== 2/4 unit tests of src/bnbook"; \
	$(BIN)/python -m pytest tests --ignore=tests/site -q $(call junit,unit) || status=1; \
	echo "== 3/4 nbval (strict) on every chapter"; \
	$(BIN)/python -m pytest --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg \
	  --nbval-current-env --nbval-cell-timeout=900 -p tests.nbval_plugin -q $(nbval_jobs) $(call junit,nbval) || status=1; \
	echo "== 4/4 site: build, then every page in headless Chromium"; \
	{ $(BIN)/jupyter-book build . --all -W -n --keep-going && \
	  $(BIN)/python -m pytest tests/site -v -p no:cacheprovider $(call junit,site); } || status=1; \
	exit $$status

## lint: the GitHub workflows (zizmor offline; JSON schema; every job has a timeout) and CITATION.cff (CFF schema)
lint: $(LINT_STAMP)
	$(BIN)/zizmor --offline --no-progress .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema custom.github-workflows-require-timeout .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.citation-file-format CITATION.cff

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/site -q

## execute: re-execute every notebook in place (authors; then `make test`)
execute: $(STAMP)
	$(BIN)/python -m tools.notebooks $(NOTEBOOKS)

## robustness: execute every chapter under 4 configurations (default, ONEDNN_MAX_CPU_ISA=AVX2,
## TF_ENABLE_ONEDNN_OPTS=0, BNBOOK_SEED_OFFSET=100); every cell must run. ROBUSTNESS_JOBS=n runs n at a time;
## ROBUSTNESS_CONFIGS=all adds the seed offsets 200 and 300 (or name them: seed+200,seed+300).
ROBUSTNESS_JOBS ?= 1
ROBUSTNESS_CONFIGS ?= default,avx2,onednn-off,seed+100
robustness: $(STAMP)
	$(BIN)/python tools/robustness.py $(NOTEBOOKS) --jobs $(ROBUSTNESS_JOBS) --configs $(ROBUSTNESS_CONFIGS) --report _build/robustness.md

clean:
	rm -rf _build .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
