"""Entry point kept for `python benchmarks/bench_normal_transfer.py ...`: the measurement is
:mod:`unroll3d.bench.normal_transfer` (also `unroll3d bench normal_transfer ...`)."""

import sys

from unroll3d.bench.normal_transfer import main

if __name__ == "__main__":
    sys.exit(main())
