"""``unroll3d bench precision_ab``: the options of
:func:`unroll3d.bench.precision_ab.run_precision_ab`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import precision_ab as lib
from unroll3d.cli.bench import bench_parser


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--run-dir", type=Path, required=True, help="a run with config.yaml, results/")
    p.add_argument("--task", choices=["cbct", "mri"], required=True)
    p.add_argument("--variants", nargs="+", default=["partition-H"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--out-dir", type=Path, default=Path("results/benchmarks/precision_ab"))
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if not (a.run_dir / "config.yaml").is_file():
        p.error(f"--run-dir {a.run_dir}: no config.yaml there")
    if a.steps < 1 or a.val_every < 1:
        p.error("--steps and --val-every must be ≥ 1")
    lib.run_precision_ab(a.run_dir, a.task, variants=a.variants, steps=a.steps,
                         val_every=a.val_every, out_dir=a.out_dir)  # fmt: skip
    return 0
