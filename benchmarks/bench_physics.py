"""Entry point kept for `python benchmarks/bench_physics.py ...`: the benchmark is
:mod:`unroll3d.bench.physics` (also `unroll3d bench physics ...`)."""

import sys

from unroll3d.bench.physics import main

if __name__ == "__main__":
    sys.exit(main())
