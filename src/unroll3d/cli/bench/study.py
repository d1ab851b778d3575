"""``unroll3d bench study``: the options of :func:`unroll3d.bench.study.run_study`."""

from __future__ import annotations

import argparse

from unroll3d.bench import study as lib
from unroll3d.cli.bench import bench_parser


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--study", default="config/study.yaml", help="study file")
    p.add_argument("--only", nargs="*", default=None, help="points to run (default: all)")
    p.add_argument("--steps", nargs="*", type=int, default=None, help="lengths to run (default: all)")
    p.add_argument("--out", default=None, help="study folder (default: the study file's out)")
    p.add_argument("--cores", type=int, default=None, help="snakemake --cores (default: the study's)")
    p.add_argument("--collect-only", action="store_true", help="only gather what has run")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    lib.run_study(a.study, only=a.only, steps=a.steps, out=a.out, cores=a.cores,
                  collect_only=a.collect_only)  # fmt: skip
    return 0
