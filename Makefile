# Two commands on a fresh machine (see README):
#   make run    install into .venv, then run the main job
#   make test   install into .venv, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run demo test clean

# torch comes first and pinned: the CPU wheel on disk, never a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m workbench demo

run: demo

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
