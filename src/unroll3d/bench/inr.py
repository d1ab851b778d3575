"""INR[3D] (Table 1 baseline): time, memory and PSNR of one per-volume hash-grid INR fit.

For each cubic size N³: a seeded phantom of Gaussian blobs under a masked 3×3×3 blur (a fraction
``--keep`` of the voxels measured, plus noise), warm-started from x₀ = Aᵀy / ‖A‖², then
:func:`unroll3d.models.inr.fit_inr`. Records per size the steps, seconds per step (the whole fit, warm
start included, over all its steps), total seconds, peak memory (``torch.cuda.max_memory_allocated``
on a GPU, peak RSS growth on the CPU) and the PSNR of x₀ and of the fit. One CSV row per size.

    unroll3d bench inr --sizes 16 32 --steps 200 --out results/benchmarks/bench_inr.csv
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: CSV columns, one row per size; memory in GB (10⁹ B)
FIELDS = [
    "n", "steps", "init_steps", "time_per_step_s", "total_s", "peak_memory_gb", "mem_method",
    "psnr_init_db", "psnr_db", "final_loss", "levels", "log2_table_size", "base_resolution",
    "finest_resolution", "features", "table_params", "lr", "threads", "device", "status",
]  # fmt: skip


def blobs(n: int, count: int = 4, seed: int = 0):
    """A smooth phantom on n³: a sum of ``count`` seeded Gaussian blobs, (1, 1, n, n, n)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    grid = torch.meshgrid(*[torch.linspace(0, 1, n)] * 3, indexing="ij")
    x = torch.zeros(n, n, n)
    for _ in range(count):
        c = torch.rand(3, generator=g) * 0.6 + 0.2
        s = 0.08 + 0.1 * torch.rand(1, generator=g)
        a = 0.5 + 0.5 * torch.rand(1, generator=g)
        x = x + a * torch.exp(
            -sum((gi - ci) ** 2 for gi, ci in zip(grid, c, strict=True)) / (2 * s**2)
        )
    return x[None, None]


def masked_blur(n: int, keep: float, seed: int = 0, device="cpu"):
    """A = M ⊙ (k * x): a seeded positive 3×3×3 blur then a random mask keeping ``keep``."""
    import torch
    import torch.nn.functional as F
    from deepinv.physics import LinearPhysics

    g = torch.Generator().manual_seed(seed)
    k = torch.rand((1, 1, 3, 3, 3), generator=g) + 0.5
    k = (k / k.sum()).to(device)
    mask = (torch.rand((1, 1, n, n, n), generator=g) < keep).float().to(device)
    return LinearPhysics(
        A=lambda x: mask * F.conv3d(x, k, padding=1),
        A_adjoint=lambda y: F.conv_transpose3d(mask * y, k, padding=1),
    )


@dataclass(frozen=True)
class InrSettings:
    """One fit's settings (``unroll3d bench inr``'s options of the same names): Adam ``steps``
    after ``init_steps`` warm-start steps on x₀, the hash grid (``finest_resolution`` 0: n), the
    MLP, the fraction ``keep`` of voxels measured, the noise and the seed."""

    steps: int
    init_steps: int
    lr: float
    levels: int
    features: int
    log2_table_size: int
    base_resolution: int
    finest_resolution: int
    hidden: int
    layers: int
    keep: float
    noise: float
    seed: int


def measure(n: int, fit: InrSettings, device: str) -> dict:
    """One fit on n³; the row of the CSV (without n, device, status)."""
    import gc

    import torch

    from unroll3d.bench.memory import gb, peak_rss_gb, reset_peak_rss, rss_gb
    from unroll3d.metrics import psnr
    from unroll3d.models.inr import HashGridEncoding, fit_inr
    from unroll3d.physics import sqnorm

    dev = torch.device(device)
    x = blobs(n, seed=fit.seed).to(dev)
    physics = masked_blur(n, fit.keep, seed=fit.seed, device=dev)
    g = torch.Generator().manual_seed(fit.seed + 1)
    y = physics.A(x) + fit.noise * torch.randn(x.shape, generator=g).to(dev)
    # seeded power method (deepinv's compute_sqnorm starts from the global RNG, random per process)
    sq = sqnorm(
        physics, img_size=tuple(x.shape[1:]), max_iter=300, rtol=1e-6, seed=fit.seed, device=dev
    )
    x0 = physics.A_adjoint(y) / sq
    enc = dict(
        levels=fit.levels,
        features=fit.features,
        log2_table_size=fit.log2_table_size,
        base_resolution=min(fit.base_resolution, n),
        finest_resolution=fit.finest_resolution or n,
    )
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_gb() or 0.0
    start = time.perf_counter()
    vol, hist = fit_inr(
        y, physics, (n, n, n), 1, fit.steps, lr=fit.lr, seed=fit.seed, x_init=x0,
        init_steps=fit.init_steps, hidden=fit.hidden, layers=fit.layers, **enc,
    )  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    if dev.type == "cuda":
        peak, method = gb(torch.cuda.max_memory_allocated() - base), "cuda.max_memory_allocated"
    else:
        peak, method = max((peak_rss_gb() or 0.0) - base, 0.0), "peak RSS growth"
    data_range = float(x.max())
    table = HashGridEncoding(**enc).table.numel()
    return {
        "steps": fit.steps,
        "init_steps": fit.init_steps,
        "time_per_step_s": total / max(fit.steps + fit.init_steps, 1),
        "total_s": total,
        "peak_memory_gb": peak,
        "mem_method": method,
        "psnr_init_db": psnr(x0, x, data_range),
        "psnr_db": psnr(vol, x, data_range),
        "final_loss": hist[-1] if hist else "",
        **enc,
        "table_params": table,
        "lr": fit.lr,
        "threads": torch.get_num_threads(),
    }


def run_inr(
    sizes: Sequence[int],
    out: str | Path,
    fit: InrSettings,
    *,
    device: str = "auto",
    threads: int | None = None,
) -> list[dict]:
    """One :func:`measure` per size, ascending; CSV at ``out``; returns its rows."""
    import torch

    from unroll3d.utils import atomic_write_csv, device_name

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for n in sorted(sizes):  # ascending: the RSS high-water mark grows with N
        row = {"n": n, "device": device_name(device)}
        try:
            row.update(measure(n, fit, device), status="ok")
        except torch.OutOfMemoryError:
            row["status"] = "oom"
        rows.append(row)
        if row["status"] == "ok":
            print(
                f"N={n}: {row['total_s']:.1f} s ({row['time_per_step_s'] * 1e3:.1f} ms/step), "
                f"{row['peak_memory_gb']:.3f} GB, PSNR {row['psnr_init_db']:.1f} -> "
                f"{row['psnr_db']:.1f} dB",
                file=sys.stderr,
            )
        else:
            print(f"N={n}: {row['status']}", file=sys.stderr)
    atomic_write_csv(out, rows, FIELDS)
    return rows
