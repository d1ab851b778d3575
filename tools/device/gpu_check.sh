#!/usr/bin/env bash
# `unroll3d bench gpu_check` on a lent GPU machine prepared by tools/device/prepare.sh: installs
# the carried wheels into /tmp/site, points astra at the CUDA 12 runtime and the cuFFT shim, and
# writes the check to $OUT (the device tool's return folder) or results/benchmarks/gpu.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-results/benchmarks/gpu}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
UNROLL3D_CUFFT=$(python3 -c "
import glob, os, sys
hits = [h for d in sys.path for h in glob.glob(os.path.join(d, 'nvidia', '**', 'libcufft.so.12*'), recursive=True)]
print(hits[0] if hits else '')")
export UNROLL3D_CUFFT
export LD_LIBRARY_PATH=$PWD/.device:/tmp/site/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import astra; print('astra', astra.__version__, 'CUDA', astra.use_cuda())" || true
python3 -m unroll3d.cli bench gpu_check --out-dir "$out" --reference .device/rtk_reference.pt \
    --budget-s "${BUDGET:-330}" "$@"
