"""How well one fitted H stands for other samples' AᵀA: the held-out error per sample and per mask.

The pipeline fits H once per setting, on one training volume (``normal.reference``), and uses it
for every volume; with ``train.fresh_masks`` every MRI training draw also has a new mask. This
measures the relative error ``‖AᵀA x − s H x‖ / ‖AᵀA x‖`` on seeded Gaussian probes x, with
``s = ‖A‖²`` of the sample, for each given volume under its fixed mask and under ``--fresh``
fresh masks: is one H per setting enough, or is one per sample needed?

    unroll3d bench normal_transfer --fit results/normal/mri/R5.pt --setting R5 \\
        --data results/data/mri/*.pt --fresh 3 --out normal_transfer.csv

``--mask`` (MRI) adds the H built from each draw's own mask (:func:`unroll3d.normal.mask_normal`)
on the same probes: the mask's kernel alone with m = 1 (``mask_plain``), the
coil-coherence-weighted kernel with m from the coil maps (``mask_coils``) and with the fit's m
(``mask_fit_m``, ``normal.mri_h: mask``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

FIELDS = ["volume", "mask", "mask_seed", "is_fit_volume", "rel_error", "probes", "sqnorm"]
MASK_FIELDS = ["mask_plain", "mask_coils", "mask_fit_m"]


def heldout_error(physics, H, img_size, sqnorm: float, probes: int, seed: int = 0) -> float:
    """‖AᵀA x − ‖A‖² H x‖ / ‖AᵀA x‖ summed over ``probes`` seeded Gaussian probes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    num = den = 0.0
    with torch.no_grad():
        for _ in range(probes):
            x = torch.randn((1, *img_size), generator=g)
            t = physics.A_adjoint_A(x)
            r = t - sqnorm * H(x)
            num += float((r * r).sum())
            den += float((t * t).sum())
    return math.sqrt(num / max(den, 1e-30))


def measure(fit_path, setting, data, fresh: int, probes: int, mask: bool = False) -> list[dict]:
    """One row per (volume, mask): the fixed mask, then ``fresh`` seeded fresh masks."""
    from unroll3d.data import load_sample
    from unroll3d.normal import load_normal, mask_normal
    from unroll3d.physics import sqnorm as op_sqnorm

    fit = load_normal(fit_path)
    fit_volume = Path(str(fit.meta.get("input", ""))).stem
    rows = []
    for path in data:
        seeds = [None] + [1_000 + k for k in range(fresh)]
        for seed in seeds:
            s = load_sample(path, setting, mask_seed=seed)
            img = tuple(s.x.shape[1:])
            H = fit.operator(img)
            sq = op_sqnorm(s.physics, img_size=img)
            rows.append(
                {
                    "volume": s.meta.get("volume", Path(path).stem),
                    "mask": "fixed" if seed is None else "fresh",
                    "mask_seed": s.meta.get("mask_seed", ""),
                    "is_fit_volume": Path(path).stem == fit_volume and seed is None,
                    "rel_error": heldout_error(s.physics, H, img, sq, probes),
                    "probes": probes,
                    "sqnorm": sq,
                }
            )
            if mask:  # the mask-built H is AᵀA's own scale (scaling 1)
                options = {
                    "mask_plain": {"m": "ones", "kernel": "mask"},
                    "mask_coils": {"m": "coils"},
                    "mask_fit_m": {"m": fit.spatial_mask, "grid": fit.grid},
                }
                for name, kw in options.items():
                    own = mask_normal(s.physics, img, **kw).operator(img)
                    rows[-1][name] = heldout_error(s.physics, own, img, 1.0, probes)
    return rows


def summary(rows: list[dict]) -> str:
    def mean(sel):
        vals = [r["rel_error"] for r in rows if sel(r)]
        return (statistics.mean(vals), len(vals)) if vals else (float("nan"), 0)

    own = mean(lambda r: r["is_fit_volume"])
    others = mean(lambda r: r["mask"] == "fixed" and not r["is_fit_volume"])
    fresh = mean(lambda r: r["mask"] == "fresh")
    text = (
        f"held-out error of H: fit volume {own[0]:.3f} ({own[1]}); other volumes, fixed masks "
        f"{others[0]:.3f} ({others[1]}); fresh masks {fresh[0]:.3f} ({fresh[1]})"
    )
    for name in MASK_FIELDS:
        vals = [r[name] for r in rows if name in r]
        if vals:
            text += f"\n{name} (every draw's own mask): {statistics.mean(vals):.3f} ({len(vals)})"
    return text


def run_normal_transfer(
    fit: str | Path,
    setting: str,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    fresh: int,
    probes: int,
    mask: bool = False,
) -> list[dict]:
    """:func:`measure`, the CSV at ``out`` and the :func:`summary` printed; returns the rows."""
    from unroll3d.utils import atomic_write_csv

    rows = measure(fit, setting, data, fresh, probes, mask)
    atomic_write_csv(out, rows, FIELDS + (MASK_FIELDS if mask else []))
    print(summary(rows))
    return rows
