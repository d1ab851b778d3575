"""PSNR and 3D SSIM, and the per-task conventions used for every reported number.

Conventions (docs/paper-notes.md §5 and §10; the paper does not state the CBCT crop or range):

- **CBCT**: both volumes clipped at 0, cropped to the central fraction ``crop`` of every axis
  (default ``[0.2, 0.8]``, i.e. slices 100–400 and in-plane 100:400 at 501³ like the prior work),
  PSNR and SSIM with one **fixed** data range for the whole test set (default 1.0 in the
  pipeline's units, where one global constant maps the training ground truth to about [0, 1]);
  the range used is recorded in every evaluation JSON.
- **MRI**: magnitude images (the 2 real/imag channels combined), whole volume, data range = the
  **per-volume** maximum of the ground-truth magnitude.
- **SSIM** is the 3D SSIM of Wang et al. with a separable Gaussian window (11 taps, σ = 1.5, shrunk
  to the smallest axis for tiny volumes), ``K1 = 0.01``, ``K2 = 0.03``, population (biased) local
  statistics, averaged over the valid region (no padding) — the 3D analogue of
  ``skimage.metrics.structural_similarity(gaussian_weights=True)``. The prior work's slice-mean
  2D SSIM is available as :func:`ssim_slices`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "psnr",
    "ssim3d",
    "ssim_slices",
    "MetricConvention",
    "convention_for",
    "prepare",
    "compute_metrics",
    "psnr_under",
]


def psnr(x: torch.Tensor, target: torch.Tensor, data_range: float) -> float:
    """:math:`10 \\log_{10}(R^2 / \\mathrm{MSE})` over all voxels (dB); ``inf`` if equal."""
    if x.shape != target.shape:
        raise ValueError(f"psnr: shapes differ {tuple(x.shape)} vs {tuple(target.shape)}")
    mse = torch.mean((x.double() - target.double()) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def _gauss(win: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(win, dtype=dtype, device=device) - (win - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filtering of (N, 1, *spatial) along each spatial axis."""
    nd = v.ndim - 2
    conv = F.conv3d if nd == 3 else F.conv2d
    for ax in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + ax] = g.numel()
        v = conv(v, g.reshape(shape))
    return v


def _ssim_nd(
    x: torch.Tensor, y: torch.Tensor, data_range: float, win: int, sigma: float
) -> tuple[float, int]:
    spatial = x.shape[2:]
    win = min(win, *spatial)
    if win % 2 == 0:
        win -= 1
    if win < 1:
        raise ValueError(f"ssim: volume too small {tuple(spatial)}")
    x = x.double()
    y = y.double()
    g = _gauss(win, sigma, x.dtype, x.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean().item(), win


def ssim3d(
    x: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    win: int = 11,
    sigma: float = 1.5,
) -> float:
    """3D SSIM of single-channel volumes (D, H, W), (C, D, H, W) or (B, C, D, H, W).

    Channels and batch are averaged. The window is shrunk (odd) to the smallest axis.
    """
    if x.shape != target.shape:
        raise ValueError(f"ssim3d: shapes differ {tuple(x.shape)} vs {tuple(target.shape)}")
    x5, t5 = (v.reshape(-1, 1, *v.shape[-3:]) for v in (x, target))
    return _ssim_nd(x5, t5, data_range, win, sigma)[0]


def ssim_slices(
    x: torch.Tensor, target: torch.Tensor, data_range: float, win: int = 11, sigma: float = 1.5
) -> float:
    """Mean 2D SSIM over axial slices (the prior work's convention)."""
    if x.shape != target.shape:
        raise ValueError(f"ssim_slices: shapes differ {tuple(x.shape)} vs {tuple(target.shape)}")
    x4, t4 = (v.reshape(-1, 1, *v.shape[-2:]) for v in (x, target))
    return _ssim_nd(x4, t4, data_range, win, sigma)[0]


#: MRI ground truths (``evaluate.mri_ground_truth``), as the tables name them.
REFERENCES = {
    "coil-combined": "the coil-combined image",
    "rss": "RSS of the fully sampled coil images (the CC challenge's reference)",
}


@dataclass(frozen=True)
class MetricConvention:
    """How a task's volumes are prepared before PSNR/SSIM.

    :param str task: ``cbct`` or ``mri``.
    :param bool magnitude: combine 2 real/imag channels into the magnitude.
    :param bool clip_zero: clip both volumes at 0.
    :param tuple crop: central fraction (lo, hi) of every spatial axis, or None.
    :param float data_range: fixed range, or None for the per-volume ground-truth maximum.
    :param str reference: MRI ground truth, ``coil-combined`` or ``rss``; None for CBCT.
    """

    task: str
    magnitude: bool
    clip_zero: bool
    crop: tuple[float, float] | None
    data_range: float | None
    reference: str | None = None

    def describe(self) -> str:
        parts = []
        if self.reference is not None:
            parts.append(f"ground truth = {REFERENCES[self.reference]}")
        if self.magnitude:
            parts.append("magnitude of the real/imag channels")
        if self.clip_zero:
            parts.append("clipped at 0")
        if self.crop is not None:
            parts.append(f"central crop [{self.crop[0]}, {self.crop[1]}) of each axis")
        else:
            parts.append("whole volume")
        if self.data_range is None:
            parts.append("data range = per-volume ground-truth maximum")
        else:
            parts.append(f"fixed data range {self.data_range}")
        return "; ".join(parts)


def convention_for(task: str, evaluate_config: dict | None = None) -> MetricConvention:
    """The metric convention of ``task`` from the ``evaluate`` config section."""
    cfg = evaluate_config or {}
    if task == "cbct":
        crop = cfg.get("cbct_crop", [0.2, 0.8])
        return MetricConvention(
            task="cbct",
            magnitude=False,
            clip_zero=True,
            crop=None if crop is None else (float(crop[0]), float(crop[1])),
            data_range=float(cfg.get("cbct_data_range", 1.0)),
        )
    if task == "mri":
        reference = cfg.get("mri_ground_truth", "coil-combined")
        if reference not in REFERENCES:
            raise ValueError(
                f"evaluate.mri_ground_truth must be one of {sorted(REFERENCES)}, got {reference!r}"
            )
        return MetricConvention(
            "mri", magnitude=True, clip_zero=False, crop=None, data_range=None, reference=reference
        )
    raise ValueError(f"unknown task {task!r}; known: ['cbct', 'mri']")


def _crop(v: torch.Tensor, frac: Sequence[float]) -> torch.Tensor:
    sl = []
    for n in v.shape[-3:]:
        lo, hi = int(math.floor(frac[0] * n)), int(math.floor(frac[1] * n))
        if hi <= lo:
            lo, hi = 0, n
        sl.append(slice(lo, hi))
    return v[(Ellipsis, *sl)]


def prepare(x: torch.Tensor, conv: MetricConvention) -> torch.Tensor:
    """Apply the convention to a (B, C, D, H, W) volume; returns (B, 1, d, h, w) float64 on CPU."""
    v = x.detach().to("cpu", torch.float64)
    if v.ndim == 3:
        v = v[None, None]
    elif v.ndim == 4:
        v = v[None]
    if conv.magnitude:
        if v.shape[1] != 2:
            raise ValueError(f"magnitude needs 2 channels (real, imag), got {tuple(v.shape)}")
        v = torch.sqrt(v[:, :1] ** 2 + v[:, 1:] ** 2)
    if conv.clip_zero:
        v = v.clamp_min(0)
    if conv.crop is not None:
        v = _crop(v, conv.crop)
    return v


def _prepared(x: torch.Tensor, target: torch.Tensor, conv: MetricConvention):
    """(x, target, data range) as the metrics see them under ``conv``."""
    if x.shape != target.shape:
        raise ValueError(
            f"reconstruction {tuple(x.shape)} and ground truth {tuple(target.shape)} differ"
        )
    xp, tp = prepare(x, conv), prepare(target, conv)
    rng = conv.data_range if conv.data_range is not None else float(tp.max())
    if not rng > 0:
        raise ValueError(f"data range must be positive, got {rng}")
    return xp, tp, rng


def psnr_under(x: torch.Tensor, target: torch.Tensor, conv: MetricConvention) -> float:
    """PSNR alone under ``conv`` (the value :func:`compute_metrics` reports, without SSIM)."""
    return psnr(*_prepared(x, target, conv))


def compute_metrics(x: torch.Tensor, target: torch.Tensor, conv: MetricConvention) -> dict:
    """PSNR, 3D SSIM and slice-mean SSIM under ``conv``, with the data range used."""
    xp, tp, rng = _prepared(x, target, conv)
    s3, win = _ssim_nd(xp, tp, rng, 11, 1.5)
    return {
        "psnr": psnr(xp, tp, rng),
        "ssim": s3,
        "ssim_slices": ssim_slices(xp, tp, rng),
        "data_range": rng,
        "ssim_window": win,
        "metric_shape": list(xp.shape[-3:]),
        "convention": conv.describe(),
    }
