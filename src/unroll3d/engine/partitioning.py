"""The partitioner of a task (patch size, stride, training patch ranges), the network tiled on
its grid, and one training pair (a random patch, or the full volume)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from unroll3d.config import train_settings
from unroll3d.engine.operators import h_kwargs
from unroll3d.partition import PartitionedReconstructor, crop_patch
from unroll3d.partition.grid import draw_corner
from unroll3d.variants import VariantSpec

__all__ = ["estimate_pair", "make_partitioner", "patch_ranges", "tiled"]


def patch_ranges(spatial: Sequence[int], patch: Sequence[int], margin: Sequence[float] | None):
    """Training patch-corner bounds from margins given as fractions of each axis.

    Corner ``c`` on an axis of size ``n`` with patch ``p`` and margin ``f`` lies in
    ``[round(f n), n − round(f n) − p]`` (docs/paper-notes.md §10, CBCT: z ∈ [80, 421 − D] and
    y, x ∈ [50, 451 − H] at 501³ ≈ margins (0.16, 0.1, 0.1)). An axis too small for its margin
    falls back to the whole axis. ``None`` = uniform over the volume.
    """
    if margin is None:
        return None
    out = []
    for n, p, f in zip(spatial, patch, margin, strict=True):
        m = int(round(float(f) * int(n)))
        lo, hi = m, int(n) - m - int(p)
        out.append((lo, hi) if hi >= lo else None)
    return out


def make_partitioner(model, task: str, config: dict, img_size: Sequence[int]):
    """``PartitionedReconstructor`` around ``model`` with the task's patch size and stride.

    The patch size is the config's as it is (normalised once, when the config was loaded); the
    partitioner's own entry resolves it against the real volume, so a patch that does not fit
    is an error there, never clamped. Training corners are drawn within the margins of
    ``train.<task>_patch_margin``."""
    tcfg = config[task]
    stride = tcfg.get("stride")
    partitioner = PartitionedReconstructor(
        base_reconstructor=model,
        img_size=tuple(img_size),
        patch_size=tcfg["patch_size"],
        stride=None if stride is None else tuple(stride),
    )
    margin = train_settings(config).get(f"{task}_patch_margin")
    partitioner.train_ranges = patch_ranges(partitioner.spatial, partitioner.patch_size, margin)
    return partitioner


@contextmanager
def tiled(model, partitioner):
    """Within the block, ``model``'s network runs patch by patch on the partitioner's grid and
    blending (no-grad inference); restored afterwards, also on an error."""
    model.set_tiling(lambda fn, v: partitioner.apply_patchwise(fn, v, progress=False))
    try:
        yield model
    finally:
        model.set_tiling(None)


def estimate_pair(
    model,
    spec: VariantSpec,
    sample,
    physics,
    x0: torch.Tensor,
    generator: torch.Generator,
    partitioner=None,
    device: torch.device | None = None,
    y_residual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, target) of one training sample: a random patch or the full volume (PnP: the
    denoiser on a noisy random patch of the ground truth). A variant with H gets it from
    ``physics`` (:func:`unroll3d.engine.operators.physics_for`).

    ``device``: the sample is parked in host memory and only partly on ``device``
    (:class:`unroll3d.engine.samples.SampleCache`): PnP's ground-truth patch and a partitioned
    variant's x0 patch are copied over here, nothing more (the same corner, drawn from the same
    generator, so the same numbers). ``y_residual``: ``sample.y`` is the parked volume's
    residual ``y − A x`` and the ground truth stays on the host too: only its patch goes over
    (``ỹ = (y − A x) + Ã S x``, the same ỹ up to rounding)."""
    if spec.kind == "pnp":
        start = draw_corner(
            partitioner.spatial, partitioner.patch_size, partitioner.train_ranges, generator
        )
        patch = crop_patch(sample.x, start, partitioner.patch_size)
        patch = patch if device is None else patch.to(device, non_blocking=True)
        return model.denoising_pair(patch, generator)
    if spec.partition:
        where = {}
        if device is not None and x0 is not None:  # x0 parked: only its patch goes over
            start = draw_corner(
                partitioner.spatial, partitioner.patch_size, partitioner.train_ranges, generator
            )
            x0, where = _patch_only(x0, start, partitioner.patch_size, device), {"start": start}
        x = sample.x
        if where and y_residual:  # the ground truth's patch alone, ỹ from the residual
            x = _patch_only(x, where["start"], partitioner.patch_size, device)
            where["y_is_residual"] = True
        return partitioner.training_pair(
            sample.y,
            physics,
            x,
            generator=generator,
            x0=x0,
            **where,
            **h_kwargs(spec, physics),
        )
    return model(sample.y, physics, x_init=x0), sample.x


def _patch_only(volume: torch.Tensor, start, patch, device) -> torch.Tensor:
    """A zero volume on ``device`` holding ``volume``'s patch at ``start`` (the patch problem
    reads x0 only there): one patch copied over instead of the volume."""
    out = torch.zeros(volume.shape, dtype=volume.dtype, device=device)
    crop_patch(out, start, patch).copy_(crop_patch(volume, start, patch), non_blocking=True)
    return out
