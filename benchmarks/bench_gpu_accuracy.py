"""Entry point kept for `python benchmarks/bench_gpu_accuracy.py ...`: the measurement is
:mod:`unroll3d.bench.gpu_accuracy` (also `unroll3d bench gpu_accuracy ...`)."""

import sys

from unroll3d.bench.gpu_accuracy import main

if __name__ == "__main__":
    sys.exit(main())
