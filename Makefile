# Two commands do everything (see README.md):
#   make book   create .venv, install, execute the chapters (cached), render _build/html
#   make test   unit tests, strict nbval on every chapter, strict book build, browser test
# For contributors:
#   make refresh   re-execute chapters/*.ipynb in place, deterministically

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := book

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
MATHJAX_VERSION := 3.2.2
MATHJAX := $(VENV)/mathjax_static/_static/mathjax/tex-mml-svg.js
CHAPTERS := $(sort $(wildcard chapters/*.ipynb))

# TensorFlow's import banner goes to stderr, which notebooks would store;
# both variables are needed to silence it. The rest makes runs repeatable.
export TF_CPP_MIN_LOG_LEVEL := 2
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: book execute test refresh clean distclean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name dropout-book \
	    --display-name "Python 3 (dropout-book)" \
	    --env TF_CPP_MIN_LOG_LEVEL 2 --env TF_ENABLE_ONEDNN_OPTS 0 \
	    --env PYTHONHASHSEED 0 --env PYDEVD_DISABLE_FILE_VALIDATION 1 >/dev/null
	touch $@

# MathJax 3 from the npm registry, laid out so html_extra_path copies it to
# _build/html/_static/mathjax/ (kept out of a _static/ source folder, where
# Jupyter Book would add every .js file to every page). The SVG output
# carries its glyphs inside the script, so math renders from file:// with no
# web fonts to load.
$(MATHJAX): | $(VENV)/.installed
	rm -rf $(VENV)/mathjax $(VENV)/mathjax_static
	npm install --silent --no-audit --no-fund --prefix $(VENV)/mathjax mathjax@$(MATHJAX_VERSION)
	mkdir -p $(VENV)/mathjax_static/_static/mathjax
	cp $(VENV)/mathjax/node_modules/mathjax/es5/tex-mml-svg.js $(MATHJAX)

env: $(VENV)/.installed $(MATHJAX)
.PHONY: env

# Chapters whose sources changed are executed in parallel into Jupyter Book's
# jupyter-cache; the build then only renders (an unchanged rebuild runs nothing).
execute: env
	$(PY) tools/execute_notebooks.py --cache _build/.jupyter_cache $(CHAPTERS)

book: execute
	$(JB) build . --warningiserror --keep-going
	@echo "The book: file://$(CURDIR)/_build/html/index.html"

# Strict build of every page, then one pytest run on two workers: unit and
# property tests, strict nbval (each chapter re-executed, every output
# compared with the stored one) and the browser test of the built pages.
test: execute
	$(JB) build . --all -W -n --keep-going
	DROPOUT_BOOK_BROWSER=required $(PY) -m pytest -n 2 --dist loadfile \
	    tests $(CHAPTERS) --nbval --nbval-kernel-name dropout-book --nbval-cell-timeout 120 \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg

refresh: env
	$(PY) tools/execute_notebooks.py $(CHAPTERS)

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV)
