#!/usr/bin/env bash
# How the files of this folder were made (2026-12-05). BEFORE is a checkout of commit d2494fe
# (git worktree add /tmp/before d2494fe); the rest runs the code of this commit.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
BEFORE=${BEFORE:-/tmp/before}
OUT=benchmarks/measured/cpu-datasteps-2026-12-05
export OMP_NUM_THREADS=1
PY=.venv/bin/python
{ lscpu | grep "Model name"; uptime; } > $OUT/cpu.txt
PYTHONPATH=src $PY benchmarks/poisson_mask_draw.py --reference --seeds 2 > $OUT/poisson_mask_draw.txt
PYTHONPATH=src $PY benchmarks/mri_slab_step.py --size 64 128 128 --coils 8 --patch 8 64 64 \
    --repeat 3 --ops normal setup step --paths full slab > $OUT/mri_slab_step_64x128x128.txt
PYTHONPATH=$BEFORE/src $PY benchmarks/cbct_patch_step.py --repeat 9 > $OUT/cbct_patch_step_baseline.txt
PYTHONPATH=src $PY benchmarks/cbct_patch_step.py --repeat 9 > $OUT/cbct_patch_step_main.txt
uptime >> $OUT/cpu.txt
# The smoke comparison: make smoke in BEFORE and here, then
# PYTHONPATH=src $PY benchmarks/compare_results.py $BEFORE/results results > $OUT/smoke_compare.txt
