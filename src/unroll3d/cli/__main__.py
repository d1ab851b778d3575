"""``python -m unroll3d.cli``: the same as the ``unroll3d`` command."""

import sys

from unroll3d.cli import main

sys.exit(main())
