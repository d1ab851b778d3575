"""Entry point kept for `python benchmarks/bench_partition.py ...`: the benchmark is
:mod:`unroll3d.bench.partition` (also `unroll3d bench partition ...`)."""

import sys

from unroll3d.bench.partition import main

if __name__ == "__main__":
    sys.exit(main())
