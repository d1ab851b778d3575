"""Entry point kept for `python benchmarks/bench_cost.py ...`: the estimate is
:mod:`unroll3d.bench.cost` (also `unroll3d bench cost ...`)."""

import sys

from unroll3d.bench.cost import main

if __name__ == "__main__":
    sys.exit(main())
