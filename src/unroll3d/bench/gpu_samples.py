"""The GPU check's synthetic inputs: its job config, CBCT (Walnut geometry) and multi-coil MRI
samples, and H as AᵀA's impulse response (its cost is a fitted H's).
"""

from __future__ import annotations

import math

from unroll3d.bench.gpu_geometry import ball_phantom, walnut_physics


def impulse_H(physics, img, lipschitz: float, device, setting: str):
    """A :class:`NormalFit` whose λ is AᵀA's impulse response (cost as a fitted H's); ``img`` is
    ``(C, D, H, W)`` or a cube's side."""
    import torch

    from unroll3d.normal import NormalFit, padded_grid
    from unroll3d.normal.fit import impulse_filter

    img = (1, img, img, img) if isinstance(img, int) else tuple(img)
    grid = padded_grid(img[1:])
    lam = impulse_filter(physics, img, grid, lipschitz, device)
    return NormalFit(
        lam,
        torch.ones(img[1:], device=device),
        img,
        grid=grid,
        scaling=lipschitz,
        meta={"setting": setting},
    )


def check_config(prof) -> dict:
    return {
        "cbct": {"K": prof["K"], "patch_size": list(prof["patch"]), "stride": None},
        "mri": {"K": prof["mri_K"], "patch_size": list(prof["mri_patch"]), "stride": None},
        "model": {"channels": list(prof["channels"]), "blocks": prof["blocks"]},
        "train": {"bf16": False},
        "evaluate": {"refine": True},
    }


SAMPLES: dict = {}


def cbct_sample(n, prof, backend, device):
    """Synthetic Walnut-geometry sample on ``device`` with x0 = FDK(y) and ‖A‖² (the last size's
    is kept, so partition, partition-H and inference share one 501³ sample)."""
    import torch

    key = (n, prof["views"], backend, str(device))
    if key in SAMPLES:
        return SAMPLES[key]
    SAMPLES.clear()

    from unroll3d.data.sample import Sample
    from unroll3d.physics import sqnorm

    physics = walnut_physics(n, prof["views"], backend, device)
    x = ball_phantom(n, device)
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.fdk(y)
    lip = sqnorm(physics, img_size=(1, n, n, n), device=device, rtol=1e-3, max_iter=30)
    meta = {"setting": f"v{prof['views']}", "op_norm_sq": lip, "volume": "synthetic"}
    SAMPLES[key] = (Sample(x, y, physics, meta), x0, lip)
    return SAMPLES[key]


def mri_sample(shape, prof, device):
    """Synthetic multi-coil MRI sample (smooth coil maps, seeded Poisson-disc mask) on
    ``device``, with x0 = Aᴴy (zero-filled) and ‖A‖²."""
    import torch

    from unroll3d.data.sample import Sample
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask, rss_normalize, sqnorm

    d, h, w = shape
    coils, R = prof["mri_coils"], prof["mri_R"]
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    maps = []
    for c in range(coils):
        a = 2 * math.pi * c / coils
        centre = (0.0, 1.2 * math.cos(a), 1.2 * math.sin(a))
        r2 = sum((g - c0) ** 2 for g, c0 in zip(grid, centre, strict=True))
        maps.append(torch.exp(-r2) * torch.exp(1j * a * torch.ones_like(r2)))
    maps = rss_normalize(torch.stack(maps)[None].to(torch.complex64))[0]
    mask = poisson_disc_mask((h, w), R, calib=max(2, h // 12), seed=0)
    physics = MultiCoilMRI3D(mask, maps, (d, h, w)).to(device)
    x = torch.cat([ball_phantom(max(shape), device)[..., :d, :h, :w]] * 2, dim=1)
    x[:, 1] *= 0.0
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.A_adjoint(y)
    lip = sqnorm(physics, img_size=(2, d, h, w), device=device, rtol=1e-3, max_iter=30)
    meta = {"setting": f"R{R}", "op_norm_sq": lip, "volume": "synthetic"}
    return Sample(x, y, physics, meta), x0, lip
