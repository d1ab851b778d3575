"""Entry point kept for `python benchmarks/bench_gpu_check.py ...`: the check is
:mod:`unroll3d.bench.gpu_check` (also `unroll3d bench gpu_check ...` and `make gpu-check`)."""

import sys

from unroll3d.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
