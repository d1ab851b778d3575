"""``unroll3d bench normal_transfer``: the options of
:func:`unroll3d.bench.normal_transfer.run_normal_transfer`."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.bench import normal_transfer as lib
from unroll3d.cli.bench import bench_parser


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(lib)
    p.add_argument("--fit", required=True, type=Path, help="fitted H (results/normal/...pt)")
    p.add_argument("--setting", required=True, help="R5, v30, ...")
    p.add_argument("--data", required=True, nargs="+", help="preprocessed volumes")
    p.add_argument("--fresh", type=int, default=0, help="fresh masks per volume (MRI)")
    p.add_argument("--probes", type=int, default=4)
    p.add_argument(
        "--mask", action="store_true", help="MRI: also the H built from each draw's own mask"
    )
    p.add_argument("--out", required=True, type=Path, help="CSV")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    lib.run_normal_transfer(
        a.fit, a.setting, a.data, a.out, fresh=a.fresh, probes=a.probes, mask=a.mask
    )
    return 0
