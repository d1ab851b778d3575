"""``unroll3d toy cbct|mri --out DIR ...``: toy Walnut/Calgary raw files in the real formats,
at tiny sizes (:mod:`unroll3d.data.toy`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unroll3d.data.toy import write_cbct_toy, write_mri_toy


def main(argv: list[str] | None = None) -> int:
    """``unroll3d toy cbct|mri --out DIR ...``."""
    p = argparse.ArgumentParser(
        prog="unroll3d toy", description="Toy data in the real raw formats (``unroll3d toy``)."
    )
    sub = p.add_subparsers(dest="task", required=True)
    c = sub.add_parser("cbct", help="toy Walnut zips")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--walnuts", type=int, nargs="+", required=True, help="walnut numbers")
    c.add_argument("--size", type=int, default=24)
    c.add_argument("--det-shape", type=int, nargs=2, default=(30, 24), metavar=("ROWS", "COLS"))
    c.add_argument("--n-full", type=int, default=120, help="views of the full orbit")
    c.add_argument("--orbit", type=int, default=2)
    c.add_argument("--voxel-mm", type=float, default=2.0)
    c.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("mri", help="toy Calgary-Campinas zip")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--train", nargs="+", required=True, help="volume ids placed in Train/")
    m.add_argument("--val", nargs="*", default=[], help="volume ids placed in Val/")
    m.add_argument("--shape", type=int, nargs=3, default=(16, 20, 18), metavar=("X", "KY", "KZ"))
    m.add_argument("--coils", type=int, default=4)
    m.add_argument("--partial-fourier", type=float, default=0.85)
    m.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.task == "cbct":
        reg = write_cbct_toy(
            a.out, a.walnuts, a.size, tuple(a.det_shape), a.n_full, a.orbit, a.voxel_mm, a.seed
        )
    else:
        reg = write_mri_toy(
            a.out, a.train, a.val, tuple(a.shape), a.coils, a.seed, a.partial_fourier
        )
    print(f"wrote toy {a.task} data and {reg}")
    return 0
