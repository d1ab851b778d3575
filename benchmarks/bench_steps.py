"""Entry point kept for `python benchmarks/bench_steps.py ...`: the benchmark is
:mod:`unroll3d.bench.steps` (also `unroll3d bench steps ...`)."""

import sys

from unroll3d.bench.steps import main

if __name__ == "__main__":
    sys.exit(main())
