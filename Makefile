# unroll3d: the two newcomer commands are `make smoke` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Rules call `unroll3d` and `python`: the venv comes first on PATH for every recipe.
export PATH := $(abspath $(BIN)):$(PATH)
CORES ?= 2
# `make paper` re-renders the tables/figures of this configuration (e.g. PAPER_CONFIG=config/config.yaml)
PAPER_CONFIG ?= config/smoke.yaml
IMPORT_CHECK := import torch, torchvision, deepinv, itk, snakemake, pytest, unroll3d; from itk import RTK

.PHONY: setup smoke mini study test lint paper report dryrun clean gpu-check gpu-accuracy

# (Re)build the venv when it is missing, broken, or older than pyproject.toml.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@if [ -d $(VENV) ] && ! $(BIN)/python -c "import sys" >/dev/null 2>&1; then \
		echo "broken virtual environment (no working python): rebuilding $(VENV)"; rm -rf $(VENV); fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	rm -f $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@if ! $(BIN)/python -c "$(IMPORT_CHECK)"; then \
		echo "packages in $(VENV) do not import (interrupted install?): rebuilding it from scratch"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet -e '.[dev]' \
		&& $(BIN)/python -c "$(IMPORT_CHECK)"; fi
	touch $(STAMP)

# The smoke's wall time is written next to a fixed reference workload timed on this machine in
# the same run (import torch, a one-thread conv3d loop; ~25 s): results/benchmarks/smoke_time.json.
smoke: setup
	$(BIN)/python benchmarks/bench_smoke.py --label "make smoke, $(CORES) cores" -- \
		$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml --rerun-incomplete
	$(BIN)/snakemake --cores 1 --configfile config/smoke.yaml --report results/report.html
	@echo "smoke run done: tables in results/tables/, figures in results/figures/, report results/report.html"

# CPU mini-reproduction: the whole DAG at 32³ CBCT / 24×32×28 MRI (4 coils) with 300 training
# steps, in its own folder runs/mini/ (results/, resources/, logs); about an hour on 2 cores.
mini: setup
	$(BIN)/snakemake --cores $(CORES) --directory runs/mini --configfile config/mini.yaml --rerun-incomplete
	$(BIN)/snakemake --cores 1 --directory runs/mini --configfile config/mini.yaml --report results/report.html
	@echo "mini run done: runs/mini/results/tables/ (claims.md), runs/mini/results/figures/, runs/mini/results/report.html"

# Accuracy convergence study: the ablation's gaps against training length and volume size,
# config/study.yaml, in runs/study/ (a few CPU hours on 2 cores; reruns only what is missing).
study: setup
	$(BIN)/unroll3d bench study --study config/study.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	for c in smoke mini config reviewer; do $(BIN)/snakemake --lint --configfile config/$$c.yaml || exit 1; done

# Re-render tables and figures from existing results only (seconds; no retraining).
paper: setup
	$(BIN)/snakemake --cores 1 --configfile $(PAPER_CONFIG) --allowed-rules tables_figures manifest --forcerun tables_figures --rerun-triggers mtime

# One CUDA card, at most ~8 min: results/benchmarks/gpu/{gpu_check.csv,summary.md} (installs the
# [gpu] extra, astra-toolbox). `make gpu-check TINY=1` runs the same sections at toy sizes on the CPU.
gpu-check: setup
	$(if $(TINY),,$(BIN)/python -m pip install --quiet -e '.[dev,gpu]')
	$(BIN)/unroll3d bench gpu_check --out-dir results/benchmarks/gpu$(if $(TINY),-tiny --tiny,)

# One CUDA card, at most ~8 min: does H keep its accuracy at the paper's sizes?
# results/benchmarks/gpu-accuracy/{gpu_accuracy.csv,summary.md}. `make gpu-accuracy TINY=1`: toy
# sizes on the CPU (< 1 min).
gpu-accuracy: setup
	$(if $(TINY),,$(BIN)/python -m pip install --quiet -e '.[dev,gpu]')
	$(BIN)/unroll3d bench gpu_accuracy --out-dir results/benchmarks/gpu-accuracy$(if $(TINY),-tiny --tiny,)

dryrun: setup
	$(BIN)/snakemake -n --configfile config/config.yaml

clean:
	rm -rf results/* resources .snakemake .pytest_cache .ruff_cache
	git checkout -- results/README.md
