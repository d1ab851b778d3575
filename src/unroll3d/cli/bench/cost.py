"""``unroll3d bench cost``: the options of :func:`unroll3d.bench.cost.run_cost`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import cost as lib
from unroll3d.cli.bench import bench_parser


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--config", required=True, type=Path, help="workflow config YAML")
    p.add_argument(
        "--gpu-check",
        type=Path,
        nargs="+",
        required=True,
        dest="gpu_check",
        help="gpu_check.csv files (later ones win)",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV; the summary goes beside it (.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    for path in a.gpu_check:
        if not path.is_file():
            p.error(f"--gpu-check {path}: no such file")
    lib.run_cost(a.config, a.gpu_check, a.out)
    return 0
