"""``unroll3d bench gpu_accuracy`` (``make gpu-accuracy``): the options of
:func:`unroll3d.bench.gpu_accuracy.run_gpu_accuracy`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import gpu_accuracy as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import require_cuda


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib, raw=True)
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (masked blur)")
    p.add_argument(
        "--out-dir", type=Path, default=None, help="default results/benchmarks/gpu-accuracy[-tiny]"
    )
    p.add_argument("--budget-s", type=float, default=450.0, help="skip what would not fit")
    p.add_argument("--train-s", type=float, default=None, help="training seconds per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sections", nargs="+", default=list(lib.SECTION_NAMES), choices=list(lib.SECTION_NAMES)
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    require_cuda(p, a.tiny)
    return lib.run_gpu_accuracy(
        tiny=a.tiny,
        out_dir=a.out_dir,
        budget_s=a.budget_s,
        train_s=a.train_s,
        seed=a.seed,
        sections=a.sections,
    )
