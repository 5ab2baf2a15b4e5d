# Two commands do everything (see README.md):
#   make book   check the machine, create .venv, install, execute the chapters
#               (cached), render _build/html strictly
#   make test   lint, unit/property tests and doctests, strict nbval on every
#               chapter, the workflow audit, and the browser test of the built book
# Beside them:
#   make test-portability   strict nbval again as other machines would run it
#   make test-pytorch       the PyTorch maps checked on real torch, and the Keras API on
#                           Keras's JAX and PyTorch backends, in .venv-pytorch
#   make lab                the chapters in JupyterLab, on the project's kernel
#   make refresh            re-execute chapters/*.ipynb in place, deterministically
#   make pins               regenerate requirements.txt (hashes) from requirements.in
#   make check-pins         does requirements.txt install on every supported platform?
#   make pins-pytorch       regenerate requirements-pytorch.txt from requirements-pytorch.in

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := book

# The interpreter .venv is made from: Python 3.11, 3.12 or 3.13.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
KERNEL  := dropout-book
KERNEL_JSON := $(VENV)/share/jupyter/kernels/$(KERNEL)/kernel.json
MATHJAX := $(VENV)/mathjax_static/_static/mathjax/tex-mml-svg.js
CHAPTERS := $(sort $(wildcard chapters/*.ipynb))
CACHE   := _build/.jupyter_cache
# Written after a strict build succeeds; any source newer than it rebuilds the book.
BUILT   := _build/.book-built
BOOK_SOURCES := _config.yml _toc.yml references.bib $(wildcard *.md appendix/*.md _ext/*.py) $(CHAPTERS)

# TensorFlow's import banner goes to stderr, which notebooks would store;
# both variables are needed to silence it. The rest makes runs repeatable.
# The project's kernel carries the same variables (see $(KERNEL_JSON) below).
export TF_CPP_MIN_LOG_LEVEL := 2
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PYTHONDONTWRITEBYTECODE := 1
# Kernels in .venv come before a user's own of the same name.
export JUPYTER_PREFER_ENV_PATH := 1

# One pytest session on two workers: tests/ (unit, property, browser),
# dropout_lib's doctests, and strict nbval on every chapter (each re-executed
# on the project's kernel, every output compared with the stored one). One
# file goes to a worker at a time, in the order given (xdist would otherwise
# start the files with the most tests first, and the real-data chapter, the
# longest file by far but only 13 cells, last): the chapters, longest first,
# then the many short test files, which fill the end evenly.
PYTEST  := $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder
LONGEST := chapters/11_real_data.ipynb
ORDERED := $(LONGEST) $(filter-out $(LONGEST),$(CHAPTERS))
NBVAL   := --nbval --nbval-kernel-name $(KERNEL) --nbval-cell-timeout 120 \
           --nbval-sanitize-with tests/nbval_sanitize.cfg
DOCTEST := --doctest-modules dropout_lib

.PHONY: book test test-portability test-pytorch lab refresh env preflight-book preflight-test \
        pins pins-pytorch check-pins clean distclean

# Before anything else: a supported Python, and the system packages the two
# commands need (installed with apt when root or passwordless sudo, otherwise
# one line saying what to install).
preflight-book:
	@VENV=$(VENV) bash tools/preflight.sh "$(PYTHON)" book
preflight-test:
	@VENV=$(VENV) bash tools/preflight.sh "$(PYTHON)" test

# Every package from requirements.txt, checked against its sha256 (pip's
# hash-checking mode, wheels only), then dropout_lib itself in a second pip
# call (hash-checking mode has no editable installs).
$(VENV)/.installed: requirements.txt pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The project's own Jupyter kernel, inside .venv: named for the project, so a
# user-level "python3" kernel cannot take its place, and carrying the
# environment the chapters need. The book build, nbval, make refresh and make
# lab all run on it.
$(KERNEL_JSON): $(VENV)/.installed
	$(PY) -m ipykernel install --prefix $(VENV) --name $(KERNEL) \
	    --display-name "Python 3 ($(KERNEL))" \
	    --env TF_CPP_MIN_LOG_LEVEL 2 --env TF_ENABLE_ONEDNN_OPTS 0 \
	    --env PYTHONHASHSEED 0 --env PYDEVD_DISABLE_FILE_VALIDATION 1 >/dev/null
	touch $@

# MathJax 3 from the npm registry, installed by `npm ci` from the committed
# package-lock.json (npm checks the archive's sha512 integrity), laid out so
# html_extra_path copies it to _build/html/_static/mathjax/ (kept out of a
# _static/ source folder, where Jupyter Book would add every .js file to every
# page). The SVG output carries its glyphs inside the script, so math renders
# from file:// with no web fonts to load.
$(MATHJAX): package.json package-lock.json | $(VENV)/.installed
	rm -rf $(VENV)/mathjax $(VENV)/mathjax_static
	mkdir -p $(VENV)/mathjax $(VENV)/mathjax_static/_static/mathjax
	cp package.json package-lock.json $(VENV)/mathjax/
	npm ci --silent --no-audit --no-fund --prefix $(VENV)/mathjax
	cp $(VENV)/mathjax/node_modules/mathjax/es5/tex-mml-svg.js $(MATHJAX)

env: $(VENV)/.installed $(KERNEL_JSON) $(MATHJAX)

# The book. First, if dropout_lib or requirements.txt changed since the last
# build, the execution cache is cleared and the book marked out of date
# (jupyter-cache keys on a notebook's code cells only, so it would otherwise
# show what the old code computed). Then, if any source is newer than the last
# good build: the outdated chapters are executed in parallel into Jupyter Book's
# jupyter-cache, and every page is rendered strictly (warnings are errors,
# nitpicky references), so `make test` need not build again.
book: preflight-book env
	@$(PY) tools/book_inputs.py --stamp _build/.book-inputs.sha256 --clear $(CACHE) $(BUILT) \
	    -- dropout_lib requirements.txt
	@$(MAKE) --no-print-directory $(BUILT)
	@echo "The book: file://$(CURDIR)/_build/html/index.html"

$(BUILT): $(BOOK_SOURCES) $(VENV)/.installed $(KERNEL_JSON) $(MATHJAX)
	rm -f $@
	$(PY) tools/execute_notebooks.py --cache $(CACHE) $(CHAPTERS)
	$(JB) build . --all --warningiserror --nitpick --keep-going
	touch $@

# Everything checked, on the book `make book` built (rebuilt first if any
# source changed): lint and format of dropout_lib and tests, the workflow audit
# (offline), then the one pytest session.
test: preflight-test book
	$(VENV)/bin/ruff check dropout_lib tests tests_pytorch
	$(VENV)/bin/ruff format --check dropout_lib tests tests_pytorch
	$(VENV)/bin/zizmor --offline --quiet .github/workflows
	DROPOUT_BOOK_BROWSER=required $(PYTEST) $(ORDERED) tests $(DOCTEST) $(NBVAL)

# The same stored notebooks, strict nbval again, as other machines run them:
# OpenBLAS's Sandybridge kernels (and Haswell's where the native one is not
# Haswell), and TensorFlow and BLAS on one thread. Nothing is re-stored.
test-portability: book
	$(PY) tools/test_portability.py -- $(PYTEST) $(ORDERED) tests --ignore=tests/test_browser.py \
	    $(DOCTEST) $(NBVAL)

# The PyTorch maps (dropout_lib.pytorch) checked on real torch: torch.nn.Dropout
# and torch.optim train the inverted net against the paper's on the same masks,
# every row of the recipe's PyTorch table, both directions. torch lives in an
# environment of its own, .venv-pytorch (on Linux PyPI's torch is a
# CUDA build of a few GB; `make book` and `make test` never need it), installed
# from requirements-pytorch.txt in pip's hash-checking mode, wheels only. If
# torch cannot be installed, this target fails: nothing is skipped.
# Then dropout_lib's public Keras API (tests_pytorch/test_keras_backends.py) on
# Keras's JAX backend (float64: JAX_ENABLE_X64=1) and its PyTorch backend, each
# in its own pytest process (Keras fixes its backend at import); with
# DROPOUT_BOOK_KERAS_BACKENDS=required a missing backend fails instead of skipping.
VENV_TORCH := .venv-pytorch
PY_TORCH   := $(VENV_TORCH)/bin/python

$(VENV_TORCH)/.installed: requirements-pytorch.txt pyproject.toml
	[ -x $(PY_TORCH) ] || $(PYTHON) -m venv $(VENV_TORCH)
	$(PY_TORCH) -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary=:all: \
	    -r requirements-pytorch.txt
	$(PY_TORCH) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test-pytorch: $(VENV_TORCH)/.installed
	$(PY_TORCH) -m pytest tests_pytorch --ignore=tests_pytorch/test_keras_backends.py
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 DROPOUT_BOOK_KERAS_BACKENDS=required \
	    $(PY_TORCH) -m pytest tests_pytorch/test_keras_backends.py
	KERAS_BACKEND=torch DROPOUT_BOOK_KERAS_BACKENDS=required \
	    $(PY_TORCH) -m pytest tests_pytorch/test_keras_backends.py

# The chapters in JupyterLab (with MyST rendered in the notebooks by
# jupyterlab-myst), on the project's kernel only. Stop it with Ctrl-C.
lab: preflight-book env
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=chapters \
	    --MappingKernelManager.default_kernel_name=$(KERNEL) \
	    --KernelSpecManager.allowed_kernelspecs=$(KERNEL) \
	    $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

refresh: env
	$(PY) tools/execute_notebooks.py $(CHAPTERS)

# requirements.txt from requirements.in: one resolution for every supported
# platform and Python 3.11-3.13, every wheel's sha256. Versions already in
# requirements.txt are kept unless requirements.in asks for others; to move a
# pin, edit requirements.in (or: make pins UPGRADE="--upgrade-package numpy").
pins: $(VENV)/.installed
	$(VENV)/bin/uv pip compile requirements.in --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command "make pins" --quiet \
	    -o requirements.txt $(UPGRADE)

# requirements-pytorch.txt from requirements-pytorch.in, the same way (uv from .venv),
# constrained by requirements.txt: a package both environments need (keras, numpy,
# ml-dtypes, h5py, scipy, ...) gets the book's version;
# `.venv/bin/python tools/check_pins.py --requirements requirements-pytorch.txt` checks
# that it installs on every supported platform and Python.
pins-pytorch: $(VENV)/.installed
	$(VENV)/bin/uv pip compile requirements-pytorch.in -c requirements.txt \
	    --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command "make pins-pytorch" --quiet \
	    -o requirements-pytorch.txt $(UPGRADE)

check-pins: $(VENV)/.installed
	$(PY) tools/check_pins.py

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) $(VENV_TORCH)
