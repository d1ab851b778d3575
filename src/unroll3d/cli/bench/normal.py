"""``unroll3d bench normal``: the options of :func:`unroll3d.bench.normal.run_normal`."""

from __future__ import annotations

import argparse

from unroll3d.bench import normal as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.bench.common import add_config_json, parse_bench_args, schema_default
from unroll3d.cli.common import device_arg, positive_int


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(lib)
    ap.add_argument(
        "--volumes", "--sizes", type=int, nargs="+", default=[32], help="volume sizes n (n³)"
    )
    ap.add_argument("--patches", type=int, nargs="+", default=[16], help="patch sizes p (p³)")
    ap.add_argument("--views", type=int, default=schema_default("benchmarks.views"))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="also back-propagate (training)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:1 ..."
    )
    ap.add_argument("--out", required=True, help="CSV output")
    add_config_json(ap, "normal")
    return ap


def from_config(v: dict) -> dict:
    """The workflow's case: the patch in the largest volume."""
    return {
        "volumes": [max(v["benchmarks.sizes"])],
        "patches": [v["benchmarks.patch"]],
        "views": v["benchmarks.views"],
    }


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = parse_bench_args(p, argv, "normal", from_config)
    if not any(q <= n for n in a.volumes for q in a.patches):
        p.error("no (volume, patch) pair with patch ≤ volume")
    lib.run_normal(
        a.volumes, a.patches, a.out, views=a.views, iters=a.iters, warmup=a.warmup,
        backward=a.backward, threads=a.threads, device=a.device,
    )  # fmt: skip
    return 0
