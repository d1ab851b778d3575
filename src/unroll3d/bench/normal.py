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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from unroll3d.utils import device_name

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

    from unroll3d.normal import DiagCirculant, impulse_filter, padded_grid
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
    lam = impulse_filter(physics, img_size, grid, 1.0, device)
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


def run_normal(
    volumes: Sequence[int],
    patches: Sequence[int],
    out: str | Path,
    *,
    views: int,
    iters: int,
    warmup: int,
    backward: bool = False,
    threads: int | None = None,
    device: str = "auto",
) -> list[dict]:
    """Every (volume, patch ≤ volume) pair, exact and H; CSV at ``out``; returns its rows."""
    import torch

    if not any(p <= n for n in volumes for p in patches):
        raise ValueError("no (volume, patch) pair with patch ≤ volume")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    rows = []
    for n in volumes:
        for p in patches:
            if p > n:
                continue
            rows += bench_one(n, p, views, iters, warmup, dev, backward)
            r = rows[-1]
            print(
                f"volume {n}³ patch {p}³ ({r['backend']}): exact {rows[-2]['it_per_s']:.2f} it/s, "
                f"H {r['it_per_s']:.2f} it/s, ratio {r['speedup_H_vs_exact']:.1f}x"
            )
    from unroll3d.utils import atomic_write_csv

    atomic_write_csv(out, rows)
    return rows
