"""Patch data-step speed: exact S AᵀA Sᵀ versus the restricted diagonal-circulant H.

One data step on a patch is ``x ← x − η (N x − b)`` with ``N`` either the exact
``S AᵀA Sᵀ`` (zero-pad the patch into the volume, project, back-project, crop) or the
restricted ``S H Sᵀ = diag(Sm) F_k⁻¹ diag(λ_k) F_k`` (docs/paper-notes.md §4.6). The cone-beam operator is
``unroll3d.physics.ConeBeam.circular`` (RTK on the CPU, astra on CUDA). H's values do not change
its cost, so λ is the impulse response of AᵀA and m = 1 (no fit needed).

Writes one CSV row per (volume, patch, method) with iterations/s and the H/exact speed-up.

Example::

    unroll3d bench normal --volumes 32 48 --patches 16 --views 30 --out bench.csv
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from unroll3d.utils import check_device, device_name, positive_int

if TYPE_CHECKING:
    import torch


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step, x, iters: int, warmup: int, device: torch.device, backward: bool = False
) -> float:
    """Seconds per call of ``step`` (after ``warmup`` calls); with ``backward``, each call also
    back-propagates a scalar loss to the input (a training step's data part)."""
    import torch

    def once(x):
        if not backward:
            with torch.no_grad():
                return step(x)
        xg = x.detach().requires_grad_(True)
        step(xg).square().sum().backward()
        return x

    for _ in range(warmup):
        x = once(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        x = once(x)
    _sync(device)
    return (time.perf_counter() - t0) / iters


def bench_one(
    n: int,
    p: int,
    views: int,
    iters: int,
    warmup: int,
    device: torch.device,
    backward: bool,
    physics=None,
):
    """Rows for one (volume ``n``³, patch ``p``³): exact and H, on ``physics`` (default: a
    circular cone beam with ``views`` views and a ``n × 2n`` detector)."""
    import torch

    from unroll3d.normal import DiagCirculant, _impulse_filter, padded_grid
    from unroll3d.physics import ConeBeam

    img_size = (1, n, n, n)
    if physics is None:
        physics = ConeBeam.circular(
            views,
            img_size[1:],
            source_origin=4.0 * n,
            origin_detector=2.0 * n,
            det_shape=(n, 2 * n),
            det_spacing=1.5,
        ).to(device)
    grid = padded_grid(img_size[1:])
    lam = _impulse_filter(physics, img_size, grid, 1.0, device)
    H = DiagCirculant(lam, torch.ones(img_size[1:], device=device), img_size)
    start = tuple((n - p) // 2 for _ in range(3))
    sl = (slice(None), slice(None)) + tuple(slice(s, s + p) for s in start)
    R = H.restrict(start, (p, p, p))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 1, p, p, p, generator=g).to(device)
    b = torch.randn(1, 1, p, p, p, generator=g).to(device)
    eta = 1e-3

    def exact_normal(xp):
        full = torch.zeros(1, *img_size, device=device)
        full[sl] = xp
        return physics.A_adjoint_A(full)[sl]

    rows = []
    spp = {}
    for method, normal in (("exact", exact_normal), ("H", R)):
        spp[method] = time_steps(
            lambda xp, nrm=normal: xp - eta * (nrm(xp) - b), x0, iters, warmup, device, backward
        )
    for method in ("exact", "H"):
        rows.append(
            {
                "device": device_name(device),
                "backend": physics.backend,
                "volume": n,
                "patch": p,
                "views": views,
                "kernel_grid": "x".join(str(k) for k in R.grid),
                "method": method,
                "backward": backward,
                "iters": iters,
                "s_per_step": spp[method],
                "it_per_s": 1.0 / spp[method],
                "speedup_H_vs_exact": spp["exact"] / spp["H"],
            }
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unroll3d bench normal", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--volumes", "--sizes", type=int, nargs="+", default=[32], help="volume sizes n (n³)"
    )
    ap.add_argument("--patches", type=int, nargs="+", default=[16], help="patch sizes p (p³)")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="also back-propagate (training)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--device", type=check_device, default="auto", help="auto, cpu, cuda, cuda:1 ..."
    )
    ap.add_argument("--out", required=True, help="CSV output")
    return ap


def run(args: argparse.Namespace) -> int:
    """Every (volume, patch ≤ volume) pair, exact and H; CSV at ``args.out``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    rows = []
    for n in args.volumes:
        for p in args.patches:
            if p > n:
                continue
            rows += bench_one(n, p, args.views, args.iters, args.warmup, device, args.backward)
            r = rows[-1]
            print(
                f"volume {n}³ patch {p}³ ({r['backend']}): exact {rows[-2]['it_per_s']:.2f} it/s, "
                f"H {r['it_per_s']:.2f} it/s, ratio {r['speedup_H_vs_exact']:.1f}x"
            )
    if not rows:
        build_parser().error("no (volume, patch) pair with patch ≤ volume")
    from unroll3d.utils import atomic_write_csv

    atomic_write_csv(args.out, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
