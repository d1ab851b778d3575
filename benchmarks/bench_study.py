"""Entry point kept for `python benchmarks/bench_study.py ...`: the measurement is
:mod:`unroll3d.bench.study` (also `unroll3d bench study ...`)."""

import sys

from unroll3d.bench.study import main

if __name__ == "__main__":
    sys.exit(main())
