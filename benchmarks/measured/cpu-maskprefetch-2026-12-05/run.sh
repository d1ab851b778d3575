#!/usr/bin/env bash
# How the files of this folder were made (2026-12-05, code of commit c6afc31, main's virtualenv).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=benchmarks/measured/cpu-maskprefetch-2026-12-05
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
{ date -u; uptime; lscpu | grep -E "Model name|^CPU\(s\)"; } > $OUT/machine.txt
PYTHONPATH=src $PY benchmarks/mask_prefetch_wait.py > $OUT/mask_prefetch_wait.txt
PYTHONPATH=src $PY benchmarks/mask_prefetch_wait.py --work sleep --step-s 1.0 --draws 8 \
    > $OUT/mask_prefetch_wait_step1s.txt
uptime >> $OUT/machine.txt
