"""Entry point kept for `python benchmarks/bench_normal.py ...`: the benchmark is
:mod:`unroll3d.bench.normal` (also `unroll3d bench normal ...`)."""

import sys

from unroll3d.bench.normal import main

if __name__ == "__main__":
    sys.exit(main())
