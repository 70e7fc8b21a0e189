# The two commands of the README: `make book` and `make test`. Both create .venv if it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard chapters/*.ipynb))

.PHONY: book test unit nbval site execute clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

## book: build the website into _build/html from the notebooks' stored outputs
## (--all: every page, so a changed _toc.yml reaches every page's navigation)
book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

## test: unit tests, nbval on every chapter (with durations), then the site test in headless Chromium
test: $(STAMP)
	@status=0; \
	echo "== 1/3 unit tests of src/bnbook"; \
	$(BIN)/python -m pytest tests --ignore=tests/site -q || status=1; \
	echo "== 2/3 nbval (strict) on every chapter"; \
	$(BIN)/python -m pytest --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg \
	  --nbval-current-env --nbval-cell-timeout=900 -p tests.nbval_plugin -q || status=1; \
	echo "== 3/3 site: build, then every page in headless Chromium"; \
	{ $(BIN)/jupyter-book build . --all -W -n --keep-going && $(BIN)/python -m pytest tests/site -v -p no:cacheprovider; } || status=1; \
	exit $$status

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/site -q

## execute: re-execute every notebook in place (authors; then `make test`)
execute: $(STAMP)
	$(BIN)/python -m bnbook.notebooks $(NOTEBOOKS)

clean:
	rm -rf _build .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
