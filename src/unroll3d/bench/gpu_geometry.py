"""The Walnut scanner's cone-beam geometry at any grid size and a walnut-like ball phantom,
shared by :mod:`unroll3d.bench.gpu_check` and :mod:`unroll3d.bench.gpu_accuracy`.
"""

from __future__ import annotations

import math

#: Walnut scanner: source-axis and source-detector distances (mm), detector
#: pixel (mm, after 2×2 binning), detector (rows, cols), reconstruction grid and voxel (mm).
WALNUT = dict(sod=66.0014, sdd=199.0062, pixel=0.1496, det=(972, 768), n=501, voxel=0.1)


def walnut_vectors(n_views: int, n: int, tilt_deg: float = 0.5):
    """``(n_views, 12)`` cone_vec rows (mm) of the Walnut scanner for an ``n``³ volume.

    At ``n = 501`` these are the real distances, pixel and 972 × 768 detector over a 50.1 mm field
    of view; a smaller ``n`` keeps the field of view and the distances and coarsens voxels and
    detector pixels by ``501 / n``. Returns ``(vectors, voxel_mm, det_shape)``.
    """
    import numpy as np

    scale = WALNUT["n"] / n
    voxel = WALNUT["voxel"] * scale
    rows, cols = (max(4, round(d / scale)) for d in WALNUT["det"])
    pix = WALNUT["pixel"] * WALNUT["det"][1] / cols
    sod, sdd = WALNUT["sod"], WALNUT["sdd"]
    t = math.radians(tilt_deg)
    tilt = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    vec = np.zeros((n_views, 12))
    for i in range(n_views):
        th = 2 * math.pi * i / n_views
        s = np.array([math.sin(th) * sod, -math.cos(th) * sod, 0.0])
        u = np.array([math.cos(th), math.sin(th), 0.0]) * pix
        v = np.array([0.0, 0.0, -1.0]) * pix
        d = np.array([-math.sin(th), math.cos(th), 0.0]) * (sdd - sod)
        vec[i] = np.concatenate([tilt @ s, tilt @ d, tilt @ u, tilt @ v])
    return vec, voxel, (rows, cols)


def walnut_physics(n: int, n_views: int, backend: str, device):
    """The cone-beam operator of :func:`walnut_vectors` on ``device``."""
    from unroll3d.physics import ConeBeam

    vec, voxel, det = walnut_vectors(n_views, n)
    return ConeBeam(vec, (1, n, n, n), voxel, det, backend=backend).to(device)


def ball_phantom(n: int, device):
    """``(1, 1, n, n, n)`` smooth nested balls in [0, 1] (a walnut-like shell and core)."""
    import torch

    r = torch.linspace(-1, 1, n, device=device)
    rr = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2).sqrt()
    shell = torch.sigmoid((0.8 - rr) * 40) - 0.6 * torch.sigmoid((0.65 - rr) * 40)
    core = 0.5 * torch.sigmoid((0.3 - rr) * 40)
    return (shell + core)[None, None].float()
