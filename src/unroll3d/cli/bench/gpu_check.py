"""``unroll3d bench gpu_check`` (``make gpu-check``): the options of
:func:`unroll3d.bench.gpu_check.run_gpu_check`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import gpu_check as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import require_cuda


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib, raw=True)
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (RTK)")
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmarks/gpu"))
    p.add_argument("--budget-s", type=float, default=480.0, help="skip what would not fit")
    p.add_argument("--reference", type=Path, help="RTK reference for the agreement check")
    p.add_argument("--write-reference", type=Path, help="write the RTK reference and exit")
    p.add_argument(
        "--sections",
        nargs="+",
        default=lib.ALL_SECTIONS,
        choices=lib.ALL_SECTIONS,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.write_reference:
        lib.write_agreement_reference(a.write_reference, a.tiny)
        return 0
    require_cuda(p, a.tiny)
    return lib.run_gpu_check(
        tiny=a.tiny,
        out_dir=a.out_dir,
        budget_s=a.budget_s,
        reference=a.reference,
        sections=a.sections,
    )
