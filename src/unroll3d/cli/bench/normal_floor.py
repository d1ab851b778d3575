"""``unroll3d bench normal_floor``: the options of
:func:`unroll3d.bench.normal_floor.run_normal_floor`."""

from __future__ import annotations

import argparse

from unroll3d.bench import normal_floor as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import add_config_json, parse_bench_args, schema_default
from unroll3d.cli.common import positive_int


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(lib)
    names = list(lib.GEOMETRIES)
    ap.add_argument(
        "--size",
        type=int,
        default=schema_default("benchmarks.normal_floor.size"),
        help="volume size n (n³)",
    )
    ap.add_argument("--views", type=int, nargs="+", default=[schema_default("benchmarks.views")])
    ap.add_argument(
        "--geometries",
        nargs="+",
        default=schema_default("benchmarks.normal_floor.geometries"),
        choices=names,
    )
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the probe fit")
    ap.add_argument(
        "--rows",
        type=int,
        default=schema_default("benchmarks.normal_floor.rows"),
        help="rows of AᵀA the floor is built from",
    )
    ap.add_argument("--heldout-rows", type=int, default=256, help="rows it is measured on")
    ap.add_argument(
        "--terms", type=int, nargs="*", default=[8, 64], help="K of the sum-of-terms bounds"
    )
    ap.add_argument("--seed", type=int, default=schema_default("seed"))
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    ap.add_argument("--out", required=True, help="CSV output (a .md table is written beside it)")
    add_config_json(ap, "normal_floor")
    return ap


def from_config(v: dict) -> dict:
    return {
        "size": v["benchmarks.normal_floor.size"],
        "views": [v["benchmarks.views"]],
        "steps": v["benchmarks.normal_floor.steps"],
        "rows": v["benchmarks.normal_floor.rows"],
        "geometries": v["benchmarks.normal_floor.geometries"],
        "seed": v["seed"],
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_bench_args(build_parser(), argv, "normal_floor", from_config)
    lib.run_normal_floor(
        a.out, size=a.size, views=a.views, geometries=a.geometries, steps=a.steps, rows=a.rows,
        heldout_rows=a.heldout_rows, terms=a.terms, seed=a.seed, threads=a.threads,
    )  # fmt: skip
    return 0
