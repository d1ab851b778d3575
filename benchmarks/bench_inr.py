"""Entry point kept for `python benchmarks/bench_inr.py ...`: the measurement is
:mod:`unroll3d.bench.inr` (also `unroll3d bench inr ...`)."""

import sys

from unroll3d.bench.inr import main

if __name__ == "__main__":
    sys.exit(main())
