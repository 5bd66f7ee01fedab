# Two commands on a fresh machine (see README):
#   make run    install into .venv, then run the main job
#   make test   install into .venv, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

NOTEBOOK_FLAGS := --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: install browser-deps run train demo test clean

# torch comes first and pinned: the CPU wheel on disk, never a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium and Playwright's Python package, for the real-browser notebook check.
browser-deps: install
	bash scripts/install_browser.sh $(VENV)

demo: install
	$(PY) -m workbench demo

# The main job: JupyterLab on the tutorial (localhost only; --allow-root where the shell is root).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
run: install
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 $(ROOT_FLAG) notebooks/01_token_level_credit.ipynb

# Train GTPO on the embedded default from the shipped warm start.
train: install
	$(PY) -m workbench train --algorithm gtpo --steps 100 --prompts-per-step 32 --lr 1e-4 \
		--output-dir runs/gtpo-default --overwrite

test: install browser-deps
	WORKBENCH_FAST=1 $(PY) -m pytest tests notebooks $(NOTEBOOK_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info
