"""Entry point kept for `python benchmarks/bench_precision_ab.py ...`: the accuracy A/B of the
network modes is :mod:`unroll3d.bench.precision_ab` (also `unroll3d bench precision_ab ...`)."""

import sys

from unroll3d.bench.precision_ab import main

if __name__ == "__main__":
    sys.exit(main())
