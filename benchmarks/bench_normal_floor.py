"""Entry point kept for `python benchmarks/bench_normal_floor.py ...`: the benchmark is
:mod:`unroll3d.bench.normal_floor` (also `unroll3d bench normal_floor ...`)."""

import sys

from unroll3d.bench.normal_floor import main

if __name__ == "__main__":
    sys.exit(main())
