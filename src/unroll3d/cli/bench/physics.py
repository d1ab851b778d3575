"""``unroll3d bench physics``: the options of :func:`unroll3d.bench.physics.run_physics`."""

from __future__ import annotations

import argparse

from unroll3d.bench import physics as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import add_config_json, parse_bench_args
from unroll3d.cli.common import positive_int


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="cubic sizes N")
    p.add_argument("--views", type=int, nargs="+", default=[30, 90], help="numbers of views")
    p.add_argument(
        "--backends",
        nargs="+",
        default=["auto"],
        choices=["auto", "rtk", "astra"],
        help="cone-beam backends; 'auto' = rtk, plus astra when CUDA and astra are available",
    )
    p.add_argument("--coils", type=int, default=4, help="MRI coils (0 skips MRI)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=positive_int, default=None, help="ITK threads for rtk")
    p.add_argument("--out", required=True, help="output CSV path")
    add_config_json(p, "physics")
    return p


def from_config(v: dict) -> dict:
    return {"sizes": v["benchmarks.sizes"], "views": [v["benchmarks.views"]]}


def main(argv: list[str] | None = None) -> int:
    a = parse_bench_args(build_parser(), argv, "physics", from_config)
    lib.run_physics(a.sizes, a.out, views=a.views, backends=a.backends, coils=a.coils,
                    repeats=a.repeats, threads=a.threads)  # fmt: skip
    return 0
