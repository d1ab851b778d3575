"""``unroll3d bench partition``: the options of :func:`unroll3d.bench.partition.run_partition`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import partition as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import add_config_json, parse_bench_args, schema_default
from unroll3d.cli.common import device_arg, positive_int


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(lib)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64], help="cubic volume sizes")
    ap.add_argument("--patch", type=int, default=16, help="cubic training patch size")
    ap.add_argument(
        "--modes", nargs="+", default=["partitioned", "full"], choices=["partitioned", "full"]
    )
    ap.add_argument(
        "--op",
        choices=["conebeam", "blur"],
        default=schema_default("benchmarks.partition_operator"),
    )
    ap.add_argument(
        "--views", type=int, default=schema_default("benchmarks.views"), help="cone-beam views"
    )
    ap.add_argument("--K", type=int, default=3, help="unrolled iterations")
    ap.add_argument(
        "--nc",
        "--channels",
        dest="nc",
        type=int,
        nargs=4,
        default=[8, 16, 32, 64],
        help="DRUNet widths",
    )
    ap.add_argument(
        "--nb", "--blocks", dest="nb", type=int, default=1, help="DRUNet blocks per scale"
    )
    ap.add_argument("--repeats", type=int, default=1, help="measured steps after one warm-up step")
    ap.add_argument(
        "--device", type=device_arg, default="auto", help="auto (cuda if available), cpu or cuda"
    )
    ap.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (≥ 1; default: torch's)",
    )
    ap.add_argument("--out", type=Path, default=Path("results/benchmarks/bench_partition.csv"))
    add_config_json(ap, "partition")
    return ap


def from_config(v: dict) -> dict:
    return {
        "sizes": v["benchmarks.sizes"],
        "patch": v["benchmarks.patch"],
        "views": v["benchmarks.views"],
        "op": v["benchmarks.partition_operator"],
        "nc": v["model.channels"],
        "nb": v["model.blocks"],
    }


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = parse_bench_args(p, argv, "partition", from_config)
    if a.patch < 1 or any(s < 1 for s in a.sizes):
        p.error("--sizes and --patch must be positive")
    lib.run_partition(
        a.sizes, a.out, patch=a.patch, modes=a.modes, op=a.op, views=a.views, K=a.K, nc=a.nc,
        nb=a.nb, repeats=a.repeats, device=a.device, threads=a.threads,
    )  # fmt: skip
    return 0
