"""``unroll3d bench inr``: the options of :func:`unroll3d.bench.inr.run_inr`."""

from __future__ import annotations

import argparse
from dataclasses import fields

from unroll3d.bench import inr as lib
from unroll3d.cli.bench import bench_parser
from unroll3d.cli.common import device_arg, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="volume sizes N (N³)")
    p.add_argument("--steps", type=int, default=200, help="data-fit Adam steps")
    p.add_argument("--init-steps", type=int, default=30, help="warm-start steps on x₀")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--levels", type=int, default=8)
    p.add_argument("--features", type=int, default=2)
    p.add_argument("--log2-table-size", type=int, default=15)
    p.add_argument("--base-resolution", type=int, default=2)
    p.add_argument("--finest-resolution", type=int, default=0, help="0: N (the voxel grid)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--keep", type=float, default=0.6, help="fraction of voxels measured")
    p.add_argument("--noise", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg, default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (≥ 1; default: torch's)",
    )
    p.add_argument("--out", required=True, help="CSV path")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    fit = lib.InrSettings(**{f.name: getattr(a, f.name) for f in fields(lib.InrSettings)})
    lib.run_inr(a.sizes, a.out, fit, device=a.device, threads=a.threads)
    return 0
