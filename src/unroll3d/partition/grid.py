"""Patch grid, blending windows and the crop/embed pair ``S``/``Sᵀ`` of domain partitioning.

Conventions: tensors are ``(B, C, *spatial)`` with 2 or 3 spatial axes; ``img_size`` is
``(C, *spatial)`` or ``spatial``; ``patch_size`` and ``stride`` are spatial only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from unroll3d.config import resolve_patch_size

__all__ = [
    "Start",
    "is_corner",
    "spatial_sizes",
    "default_stride",
    "patch_grid",
    "grid_corners",
    "blend_window",
    "blend_normaliser",
    "crop_patch",
    "embed_patch",
    "sample_patch_start",
    "draw_corner",
]

Start = tuple[int, ...]


def is_corner(start) -> bool:
    """True for one corner ``(i, j, k)``, False for a list of corners."""
    return len(start) > 0 and not isinstance(start[0], Sequence)


def spatial_sizes(img_size: Sequence[int], patch_size: int | Sequence[int]) -> tuple[tuple, tuple]:
    """Return ``(spatial_img_size, patch_size)`` as tuples of equal length: the library's entry
    for a patch size (the public classes and functions of this package call it once, on their
    own arguments; what they pass on is already normalised).

    ``patch_size`` is normalised by :func:`unroll3d.config.resolve_patch_size`, the one
    normaliser of a patch size: an int is a cube on the last 3 axes of ``img_size`` (the last 2
    if ``img_size`` has only 2 entries; a 2D problem with a channel axis needs a tuple), ``-1`` or
    ``None`` is the whole axis, and a patch that does not fit is a one-line error.
    """
    img_size = tuple(int(s) for s in img_size)
    if isinstance(patch_size, Iterable) and not isinstance(patch_size, str):
        patch_size = tuple(patch_size)
    # one entry per spatial axis; else an int, a cube (anything else: the normaliser refuses it)
    ndim = len(patch_size) if isinstance(patch_size, tuple) else 2 if len(img_size) == 2 else 3
    if ndim not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 spatial entries, got {patch_size}")
    if len(img_size) not in (ndim, ndim + 1):
        raise ValueError(
            f"img_size {img_size} does not match patch_size {patch_size}: expected "
            f"{ndim} spatial sizes, optionally preceded by the channel count"
        )
    spatial = img_size[-ndim:]
    return spatial, resolve_patch_size(patch_size, spatial)


def default_stride(patch_size: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, p // 2) for p in patch_size)


def patch_grid(
    img_size: Sequence[int],
    patch_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
) -> list[Start]:
    """Patch corner positions that cover every voxel of the volume.

    Along each axis the corners are ``0, s, 2s, ...``; when the last patch stops short of the
    border, one more patch is snapped to the border (corner ``n − p``), so sizes need not divide.

    :param img_size: ``(C, *spatial)`` or ``spatial`` (2 or 3 spatial axes).
    :param patch_size: spatial patch size (int: same on every axis).
    :param stride: spatial stride, default half overlap ``max(1, p // 2)``; ``1 <= s <= p``.
    :return: list of corner tuples (one entry per spatial axis), in C order.

    :Example:

    >>> patch_grid((1, 10, 10), (4, 4))[:4]
    [(0, 0), (0, 2), (0, 4), (0, 6)]
    >>> len(patch_grid((9, 9, 9), 4))  # corners 0, 2, 4, 5 per axis
    64
    """
    return grid_corners(*spatial_sizes(img_size, patch_size), stride)


def grid_corners(
    spatial: Sequence[int], patch: Sequence[int], stride: int | Sequence[int] | None = None
) -> list[Start]:
    """:func:`patch_grid` of a volume ``spatial`` and a patch already normalised by
    :func:`spatial_sizes` (not checked again)."""
    if stride is None:
        stride = default_stride(patch)
    elif isinstance(stride, int):
        stride = (stride,) * len(patch)
    stride = tuple(int(s) for s in stride)
    if len(stride) != len(patch):
        raise ValueError(f"stride {stride} must have one entry per patch axis {patch}")
    axes = []
    for n, p, s in zip(spatial, patch, stride, strict=True):
        if not 1 <= s <= p:
            raise ValueError(f"stride {stride} must satisfy 1 <= stride <= patch_size {patch}")
        starts = list(range(0, n - p + 1, s))
        if starts[-1] + p < n:
            starts.append(n - p)
        axes.append(starts)
    return [tuple(c) for c in itertools.product(*axes)]


def blend_window(
    patch_size: Sequence[int],
    mode: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unnormalised blending weight of one patch, shape ``patch_size``, strictly positive.

    ``"uniform"``: ones (overlaps are averaged with a per-voxel count map). ``"triangular"``:
    separable tent ``min(i + 1, p − i)`` per axis, so patch borders weigh least.
    """
    patch_size = tuple(int(p) for p in patch_size)
    if mode == "uniform":
        return torch.ones(patch_size, dtype=dtype, device=device)
    if mode == "triangular":
        w = torch.ones((), dtype=dtype, device=device)
        for ax, p in enumerate(patch_size):
            i = torch.arange(p, dtype=dtype, device=device)
            tent = torch.minimum(i + 1, p - i)
            shape = [1] * len(patch_size)
            shape[ax] = p
            w = w * tent.reshape(shape)
        return w
    raise ValueError(f"unknown blending mode {mode!r}; use 'uniform' or 'triangular'")


def _slices(start: Start, patch_size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))


def blend_normaliser(
    img_size: Sequence[int],
    patch_size: Sequence[int],
    starts: Sequence[Start],
    mode: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sum over patches of the embedded windows, ``Σ_p S_pᵀ w`` (spatial shape).

    The weight of patch ``p`` at a voxel is ``w / (S_p normaliser)``; these sum to one wherever
    the patches cover the volume.
    """
    spatial, patch = spatial_sizes(img_size, patch_size)
    w = blend_window(patch, mode, dtype, device)
    den = torch.zeros(spatial, dtype=dtype, device=device)
    for st in starts:
        den[_slices(st, patch)] += w
    return den


def crop_patch(x: Tensor, start: Start, patch_size: Sequence[int]) -> Tensor:
    """``S x``: crop the last ``len(start)`` axes of ``x`` to the patch (a view)."""
    nd = len(start)
    return x[(Ellipsis, *_slices(start, patch_size))] if nd else x


def embed_patch(x_patch: Tensor, start: Start, img_spatial: Sequence[int]) -> Tensor:
    """``Sᵀ x_patch``: zero-pad the patch into a volume of spatial size ``img_spatial``."""
    nd = len(start)
    patch = x_patch.shape[-nd:]
    out = x_patch.new_zeros((*x_patch.shape[:-nd], *img_spatial))
    out[(Ellipsis, *_slices(start, patch))] = x_patch
    return out


def sample_patch_start(
    img_size: Sequence[int],
    patch_size: int | Sequence[int],
    ranges: Sequence[tuple[int, int] | None] | None = None,
    generator: torch.Generator | None = None,
) -> Start:
    """Draw a patch corner uniformly at random.

    :param ranges: per spatial axis, inclusive bounds ``(lo, hi)`` on the corner, or ``None`` for
        the whole axis ``[0, n − p]`` (paper §10: CBCT corners z ∈ [80, n − 80 − D]). Bounds are
        clipped to the valid range.
    """
    return draw_corner(*spatial_sizes(img_size, patch_size), ranges, generator)


def draw_corner(
    spatial: Sequence[int],
    patch: Sequence[int],
    ranges: Sequence[tuple[int, int] | None] | None = None,
    generator: torch.Generator | None = None,
) -> Start:
    """:func:`sample_patch_start` for a patch already normalised by :func:`spatial_sizes` (not
    checked again)."""
    if ranges is None:
        ranges = [None] * len(patch)
    if len(ranges) != len(patch):
        raise ValueError(f"ranges {ranges} must have one entry per spatial axis {spatial}")
    start = []
    for n, p, r in zip(spatial, patch, ranges, strict=True):
        lo, hi = (0, n - p) if r is None else (max(0, int(r[0])), min(n - p, int(r[1])))
        if hi < lo:
            raise ValueError(f"empty patch-corner range {r} for axis size {n}, patch {p}")
        g_dev = generator.device if generator is not None else "cpu"
        start.append(int(torch.randint(lo, hi + 1, (1,), generator=generator, device=g_dev)))
    return tuple(start)
