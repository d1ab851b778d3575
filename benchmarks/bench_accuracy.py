"""Entry point kept for `python benchmarks/bench_accuracy.py ...`: the measurement is
:mod:`unroll3d.bench.accuracy` (also `unroll3d bench accuracy ...`)."""

import sys

from unroll3d.bench.accuracy import main

if __name__ == "__main__":
    sys.exit(main())
