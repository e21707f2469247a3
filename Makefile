# cxr-bench: compare ImageNet CNN backbones on chest X-rays, on a laptop (kfp.local) or a Kubernetes cluster.
# `make help` lists the targets. Every target that needs Python installs the virtualenv first, by itself.

SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Tools from the venv first (ruff, pytest, cxr, gcp-storage-emulator); the local runner starts `python3`.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test lint demo synth

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with the project, TensorFlow (CPU) and the test tools

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[cpu,dev]"
	touch $@

test: install ## run the test suite (unit, TensorFlow on tiny data, KFP local runner, GCS emulator)
	$(PYTHON) -m pytest

lint: install ## ruff
	$(VENV)/bin/ruff check .

synth: install ## write a synthetic dataset to runs/synthetic (small films, for trying the CLI)
	$(VENV)/bin/cxr synth runs/synthetic --per-class 100 --min-size 256 --max-size 512
