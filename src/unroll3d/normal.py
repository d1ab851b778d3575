r"""Diagonal-circulant approximation :math:`H` of a normal operator :math:`A^\top A`.

The paper (``paper.md`` §4.5–4.6) approximates the normal operator by

.. math::

    A^\top A \approx H = \mathrm{diag}(m)\, F^{-1} \mathrm{diag}(\lambda) F
    \qquad\text{(one-sided, CBCT)},\qquad
    H = \mathrm{diag}(m)^H F^{-1} \mathrm{diag}(\lambda) F\, \mathrm{diag}(m)
    \qquad\text{(two-sided, MRI)}.

**Linear, not circular, convolution (ours).** :math:`\lambda` lives on a zero-padded grid
:math:`N_d \ge 2 n_d - 1` (:func:`padded_grid`), the input is zero-padded to :math:`N` and the
output cropped back to :math:`n`. The operator is then a general Toeplitz (shift-invariant,
non-periodic) convolution with one kernel value per offset :math:`|\delta_d| \le n_d - 1`. A
filter given on the unpadded grid (:math:`N = n`, the paper's literal :math:`\lambda\in\mathbb{C}^n`)
is accepted too and then acts circularly.

**Layouts.** Real images (``img_size = (1, D, H, W)``, CBCT) use real FFTs: :math:`\lambda` has the
``rfftn`` shape ``(N0, N1, N2 // 2 + 1)``, complex64 (or float32 for a symmetric kernel).
Complex images (``img_size = (2, D, H, W)``: real/imaginary channels, MRI) use full complex FFTs,
:math:`\lambda` of shape ``(N0, N1, N2)``. :math:`m` is real, shape ``(D, H, W)``.

**Patches (§4.6).** For a patch of size :math:`p` the restriction
:math:`S H S^\top = \mathrm{diag}(Sm) F_k^{-1} \mathrm{diag}(\lambda_k) F_k` is exact with
:math:`k_d = \min(2 p_d, N_d)`: offsets within a patch satisfy :math:`|\delta_d| \le p_d - 1`, the
kernel is cropped to those offsets and laid on the :math:`k`-grid, where no two of them share a
slot (:meth:`DiagCirculant.restrict`).

**Memory at 501³ (float32).** :func:`padded_grid` gives N = 1008 per axis. The real-FFT filter
:math:`\lambda` is 1008·1008·505 complex64 = 4.1 GB (2.05 GB as a real symmetric kernel), m is
0.5 GB. One application of H transiently holds the padded spectrum (4.1 GB) and the padded
output (4.1 GB): about 12–13 GB peak with :math:`\lambda`. Fitting adds the gradient and two
Adam moments of :math:`\lambda` (3 × 4.1 GB) and the saved spectra for backward (≈ 8 GB), plus
the held-out targets (8 × 0.5 GB): ≈ 35 GB besides the projector itself. A patch of
8 × 384 × 384 uses a 16 × 768 × 768 grid: λ_k ≈ 38 MB. The kernel crop is computed axis by
axis (inverse FFT along one axis, crop, next axis), so it never holds more than one extra copy
of :math:`\lambda`.

:Example:

>>> import torch
>>> from unroll3d.normal import DiagCirculant, padded_grid
>>> img_size = (1, 6, 5, 4)
>>> N = padded_grid(img_size[1:])
>>> lam = torch.ones(N[0], N[1], N[2] // 2 + 1, dtype=torch.complex64)
>>> H = DiagCirculant(lam, torch.ones(6, 5, 4), img_size)
>>> x = torch.randn(2, *img_size)
>>> torch.allclose(H(x), x, atol=1e-5)  # λ = 1, m = 1: the identity
True
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from torch import nn

from unroll3d.utils import atomic_path, atomic_torch_save

__all__ = [
    "DiagCirculant",
    "DiagCirculantWrapper",
    "error_floor",
    "RestrictedDiagCirculant",
    "fit_normal_operator",
    "load_normal",
    "main",
    "operator_hash",
    "operator_sqnorm",
    "padded_grid",
    "plot_normal",
    "relative_error",
    "save_normal",
]

FORMAT_VERSION = 1
_DIMS = (-3, -2, -1)


# ----------------------------------------------------------------------------------------------
# grids, layouts and the functional core


def _fast_len(n: int) -> int:
    """Smallest integer ≥ ``n`` whose prime factors are 2, 3, 5 or 7 (fast FFT lengths)."""
    m = max(int(n), 1)
    while True:
        r = m
        for f in (2, 3, 5, 7):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 1


def padded_grid(spatial: Sequence[int]) -> tuple[int, ...]:
    """FFT grid on which H is a linear convolution: the fast length ≥ 2n−1 per axis.

    :param spatial: ``(D, H, W)``.
    """
    return tuple(_fast_len(2 * int(n) - 1) for n in spatial)


def _filter_shape(grid: Sequence[int], complex_images: bool) -> tuple[int, ...]:
    grid = tuple(grid)
    return grid if complex_images else grid[:-1] + (grid[-1] // 2 + 1,)


def _check_img_size(img_size: Sequence[int]) -> tuple[int, ...]:
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) != 4 or img_size[0] not in (1, 2):
        raise ValueError(
            f"img_size must be (C, D, H, W) with C = 1 (real) or 2 (real/imag), got {img_size}"
        )
    return img_size


def _infer_grid(filter_shape: Sequence[int], img_size: Sequence[int]) -> tuple[int, ...]:
    complex_images = img_size[0] == 2
    spatial = tuple(img_size[1:])
    for grid in (padded_grid(spatial), spatial):
        if tuple(filter_shape) == _filter_shape(grid, complex_images):
            return grid
    raise ValueError(
        f"fourier_filter has shape {tuple(filter_shape)}; for img_size {tuple(img_size)} expected "
        f"{_filter_shape(padded_grid(spatial), complex_images)} (zero-padded grid "
        f"{padded_grid(spatial)}) or {_filter_shape(spatial, complex_images)} (circular grid); "
        "pass grid= explicitly otherwise"
    )


def _to_complex(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, D, H, W) real/imag channels → (B, D, H, W) complex."""
    return torch.view_as_complex(x.movedim(1, -1).contiguous())


def _to_channels(z: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) complex → (B, 2, D, H, W) real/imag channels."""
    return torch.view_as_real(z).movedim(-1, 1).contiguous()


def _conv(
    x: torch.Tensor, lam: torch.Tensor, grid: Sequence[int], real: bool, adjoint: bool = False
) -> torch.Tensor:
    """Zero-pad the last three axes of ``x`` to ``grid``, filter by λ (or λ̄), crop back."""
    out = x.shape[-3:]
    grid = tuple(int(g) for g in grid)
    if lam.is_complex() and adjoint:
        lam = lam.conj()
    if real:
        X = torch.fft.rfftn(x, s=grid, dim=_DIMS)
        X = X.mul_(lam) if not (X.requires_grad or lam.requires_grad) else X * lam
        y = torch.fft.irfftn(X, s=grid, dim=_DIMS)
    else:
        X = torch.fft.fftn(x, s=grid, dim=_DIMS)
        X = X.mul_(lam) if not (X.requires_grad or lam.requires_grad) else X * lam
        y = torch.fft.ifftn(X, s=grid, dim=_DIMS)
    return y[..., : out[0], : out[1], : out[2]]


def _apply_h(
    x: torch.Tensor,
    lam: torch.Tensor,
    m: torch.Tensor,
    grid: Sequence[int],
    complex_images: bool,
    two_sided: bool,
    adjoint: bool = False,
) -> torch.Tensor:
    """H x (or H* x) for images (B, C, D, H, W); m is real (D, H, W) or complex."""
    if complex_images:
        if x.shape[1] != 2:
            raise ValueError(f"expected (B, 2, D, H, W) real/imag images, got {tuple(x.shape)}")
        z = _to_complex(x)
    else:
        z = x
    mc = m.conj() if m.is_complex() else m
    if not adjoint:  # H = diag(m̄)ᵗʷᵒ C diag(m)   or   diag(m) C
        if two_sided:
            y = mc * _conv(m * z, lam, grid, real=not complex_images)
        else:
            y = m * _conv(z, lam, grid, real=not complex_images)
    else:  # H* = diag(m̄) C* diag(m)   or   C* diag(m̄)
        if two_sided:
            y = mc * _conv(m * z, lam, grid, real=not complex_images, adjoint=True)
        else:
            y = _conv(mc * z, lam, grid, real=not complex_images, adjoint=True)
    return _to_channels(y) if complex_images else y


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def _cast_filter(lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    rdt = x.dtype if x.is_floating_point() else x.real.dtype
    if lam.is_complex():
        cdt = torch.complex128 if rdt == torch.float64 else torch.complex64
        return lam.to(device=x.device, dtype=cdt)
    return lam.to(device=x.device, dtype=rdt)


def _kernel_crop_filter(
    lam: torch.Tensor,
    grid: Sequence[int],
    patch_size: Sequence[int],
    complex_images: bool,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """λ_k on the k-grid, k_d = min(2p_d, N_d), for exact S H Sᵀ (paper.md §4.6).

    The kernel h = F⁻¹λ is recovered axis by axis; along each axis with 2p < N only the offsets
    δ ∈ [−(p−1), p−1] are kept and laid at δ mod k (slot p stays 0).
    """
    grid = tuple(int(g) for g in grid)
    p = tuple(int(s) for s in patch_size)
    k = tuple(min(2 * pd, nd) for pd, nd in zip(p, grid, strict=True))

    def crop_axis(h: torch.Tensor, d: int) -> torch.Tensor:
        if k[d] >= grid[d]:
            return h
        dim = h.dim() - 3 + d
        n_neg = p[d] - 1
        idx = torch.cat([torch.arange(p[d]), torch.arange(grid[d] - n_neg, grid[d])])
        slots = torch.cat([torch.arange(p[d]), torch.arange(k[d] - n_neg, k[d])])
        sel = h.index_select(dim, idx.to(h.device))
        shape = list(h.shape)
        shape[dim] = k[d]
        out = torch.zeros(shape, dtype=h.dtype, device=h.device)
        return out.index_copy(dim, slots.to(h.device), sel)

    h = lam if lam.is_complex() else lam.to(_complex_dtype(lam.dtype))
    for d in (0, 1):
        h = crop_axis(torch.fft.ifft(h, dim=d - 3), d)
    if complex_images:
        h = torch.fft.ifft(h, dim=-1)
    else:
        h = torch.fft.irfft(h, n=grid[2], dim=-1)
    h = crop_axis(h, 2)
    if complex_images:
        lam_k = torch.fft.fftn(h, dim=_DIMS)
    else:
        lam_k = torch.fft.rfftn(h, dim=_DIMS)
    return lam_k, k


# ----------------------------------------------------------------------------------------------
# the operator


class DiagCirculant(nn.Module):
    r"""The operator :math:`H = \mathrm{diag}(m) F^{-1}\mathrm{diag}(\lambda) F` on full volumes.

    :param torch.Tensor fourier_filter: λ on the FFT grid: ``rfftn`` layout
        ``(N0, N1, N2 // 2 + 1)`` for real images, full ``(N0, N1, N2)`` complex for
        real/imag images. A real-valued tensor means a symmetric (zero-phase) kernel.
    :param torch.Tensor spatial_mask: m, shape ``(D, H, W)`` (leading singleton axes allowed).
    :param img_size: ``(C, D, H, W)``, C = 1 (real) or 2 (real/imag channels).
    :param bool two_sided: :math:`H = \mathrm{diag}(m)^H F^{-1}\mathrm{diag}(\lambda) F \mathrm{diag}(m)`
        (the MRI form, Remark 4.3) instead of the one-sided form.
    :param bool symmetrize: apply :math:`H_{sym} = \tfrac12 (H + H^*)` instead of H.
    :param grid: FFT grid ``(N0, N1, N2)``; inferred from the filter's shape when omitted
        (:func:`padded_grid` or, for the paper's literal circular form, the image size).
    """

    def __init__(
        self,
        fourier_filter: torch.Tensor,
        spatial_mask: torch.Tensor,
        img_size: Sequence[int],
        two_sided: bool = False,
        symmetrize: bool = False,
        grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.img_size = _check_img_size(img_size)
        self.complex_images = self.img_size[0] == 2
        spatial = self.img_size[1:]
        fourier_filter = torch.as_tensor(fourier_filter)
        spatial_mask = torch.as_tensor(spatial_mask)
        if spatial_mask.dim() > 3 and all(s == 1 for s in spatial_mask.shape[:-3]):
            spatial_mask = spatial_mask.reshape(spatial_mask.shape[-3:])
        if spatial_mask.is_complex() and not self.complex_images:
            raise ValueError("a complex spatial_mask needs real/imag images (img_size[0] == 2)")
        if tuple(spatial_mask.shape) != spatial:
            raise ValueError(
                f"spatial_mask has shape {tuple(spatial_mask.shape)}, expected {spatial} "
                f"for img_size {self.img_size}"
            )
        if grid is None:
            grid = _infer_grid(fourier_filter.shape, self.img_size)
        self.grid = tuple(int(g) for g in grid)
        if any(g < n for g, n in zip(self.grid, spatial, strict=True)):
            raise ValueError(f"grid {self.grid} is smaller than the image {spatial}")
        expected = _filter_shape(self.grid, self.complex_images)
        if tuple(fourier_filter.shape) != expected:
            raise ValueError(
                f"fourier_filter has shape {tuple(fourier_filter.shape)}, expected {expected} "
                f"for grid {self.grid} and img_size {self.img_size}"
            )
        self.two_sided = bool(two_sided)
        self.symmetrize = bool(symmetrize)
        self.register_buffer("fourier_filter", fourier_filter)
        self.register_buffer("spatial_mask", spatial_mask)
        self._crop_cache: dict[tuple, tuple[torch.Tensor, tuple[int, ...]]] = {}

    @property
    def circular(self) -> bool:
        """True when the grid is the image grid (the paper's literal, circular form)."""
        return self.grid == tuple(self.img_size[1:])

    def _check_x(self, x: torch.Tensor, spatial: Sequence[int]) -> None:
        if x.dim() != 5 or x.shape[1] != self.img_size[0] or tuple(x.shape[-3:]) != tuple(spatial):
            raise ValueError(
                f"expected x of shape (B, {self.img_size[0]}, {', '.join(map(str, spatial))}), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """H x (or H_sym x) for x of shape (B, C, D, H, W)."""
        self._check_x(x, self.img_size[1:])
        lam = _cast_filter(self.fourier_filter, x)
        m = self.spatial_mask.to(x.device)
        args = (lam, m, self.grid, self.complex_images, self.two_sided)
        if self.symmetrize:
            return 0.5 * (_apply_h(x, *args) + _apply_h(x, *args, adjoint=True))
        return _apply_h(x, *args)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """H* x (H_sym is self-adjoint)."""
        if self.symmetrize:
            return self.forward(x)
        self._check_x(x, self.img_size[1:])
        lam = _cast_filter(self.fourier_filter, x)
        m = self.spatial_mask.to(x.device)
        return _apply_h(x, lam, m, self.grid, self.complex_images, self.two_sided, adjoint=True)

    def cropped_filter(self, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(λ_k, k) for patches of ``patch_size``; cached per patch size (independent of the
        position)."""
        key = (
            tuple(int(s) for s in patch_size),
            self.fourier_filter.device,
            self.fourier_filter.data_ptr(),
        )
        if key not in self._crop_cache:
            with torch.no_grad():
                self._crop_cache.clear()
                self._crop_cache[key] = _kernel_crop_filter(
                    self.fourier_filter, self.grid, key[0], self.complex_images
                )
        return self._crop_cache[key]

    def restrict(self, start: Sequence[int], patch_size: Sequence[int]) -> RestrictedDiagCirculant:
        r"""The exact restriction :math:`S H S^\top` to the patch at ``start`` (§4.6).

        :return: a module ``x_patch (B, C, *patch_size) -> S H Sᵀ x_patch``.
        """
        start = tuple(int(s) for s in start)
        patch_size = tuple(int(s) for s in patch_size)
        spatial = self.img_size[1:]
        if len(start) != 3 or len(patch_size) != 3:
            raise ValueError(f"start {start} and patch_size {patch_size} must have 3 entries")
        for s, p, n in zip(start, patch_size, spatial, strict=True):
            if s < 0 or p < 1 or s + p > n:
                raise ValueError(
                    f"patch start {start} size {patch_size} does not fit in the image {spatial}"
                )
        lam_k, k = self.cropped_filter(patch_size)
        sl = tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
        return RestrictedDiagCirculant(
            lam_k, self.spatial_mask[sl], k, self.img_size[0], self.two_sided, self.symmetrize
        )


class RestrictedDiagCirculant(nn.Module):
    r""":math:`S H S^\top = \mathrm{diag}(Sm) F_k^{-1}\mathrm{diag}(\lambda_k) F_k` on one patch.

    Built by :meth:`DiagCirculant.restrict`; ``forward(x_patch)`` with x_patch (B, C, *p).
    """

    def __init__(
        self,
        fourier_filter: torch.Tensor,
        spatial_mask: torch.Tensor,
        grid: Sequence[int],
        channels: int,
        two_sided: bool = False,
        symmetrize: bool = False,
        scaling: float = 1.0,
    ) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.complex_images = channels == 2
        self.channels = channels
        self.two_sided = two_sided
        self.symmetrize = symmetrize
        self.scaling = float(scaling)
        self.register_buffer("fourier_filter", fourier_filter)
        self.register_buffer("spatial_mask", spatial_mask)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.spatial_mask.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels or tuple(x.shape[-3:]) != self.patch_size:
            raise ValueError(
                f"expected a patch of shape (B, {self.channels}, {self.patch_size}), "
                f"got {tuple(x.shape)}"
            )
        lam = _cast_filter(self.fourier_filter, x)
        m = self.spatial_mask.to(x.device)
        args = (lam, m, self.grid, self.complex_images, self.two_sided)
        if self.symmetrize:
            y = 0.5 * (_apply_h(x, *args) + _apply_h(x, *args, adjoint=True))
        else:
            y = _apply_h(x, *args)
        return y * self.scaling if self.scaling != 1.0 else y


# ----------------------------------------------------------------------------------------------
# the wrapped physics


class DiagCirculantWrapper(LinearPhysics):
    r"""Any :class:`deepinv.physics.LinearPhysics` with its normal operator replaced by H.

    ``A``, ``A_adjoint`` and ``A_dagger`` are the wrapped physics' (exact); ``A_adjoint_A`` is
    ``scaling · H x``. H was fitted to :math:`A^\top A / \|A\|^2`, so pass
    ``scaling = ‖A‖²`` (the ``scaling`` stored by :func:`save_normal`) for an unnormalised A.
    The parameters can be given here or at call time
    (``A_adjoint_A(x, fourier_filter=..., spatial_mask=...)``), as on the project page.

    :param physics: the global operator.
    :param img_size: ``(C, D, H, W)``.
    :param float scaling: factor multiplying H.
    :param device: where the parameters live.
    :param fourier_filter: λ (see :class:`DiagCirculant`), optional.
    :param spatial_mask: m, optional.
    :param bool two_sided: the two-sided (MRI) form.
    :param bool symmetrize: use ½(H + H*).
    """

    def __init__(
        self,
        physics: LinearPhysics,
        img_size: Sequence[int],
        scaling: float = 1.0,
        device: torch.device | str | None = None,
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
        two_sided: bool = False,
        symmetrize: bool = False,
        grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__(img_size=tuple(img_size), device=device or "cpu")
        self.physics = physics
        self.img_size = _check_img_size(img_size)
        self.scaling = float(scaling)
        self.two_sided = bool(two_sided)
        self.symmetrize = bool(symmetrize)
        self._grid = None if grid is None else tuple(grid)
        self.normal_op: DiagCirculant | None = None
        if (fourier_filter is None) != (spatial_mask is None):
            raise ValueError("give both fourier_filter and spatial_mask, or neither")
        if fourier_filter is not None:
            self.set_parameters(fourier_filter, spatial_mask, device=device)

    @classmethod
    def from_file(
        cls,
        physics: LinearPhysics,
        path: str | Path,
        check_hash: bool = True,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> DiagCirculantWrapper:
        """Wrap ``physics`` with the fit stored at ``path`` (hash-checked against ``physics``)."""
        fit = load_normal(
            path,
            expected_operator_hash=operator_hash(physics) if check_hash else None,
        )
        return cls(
            physics,
            fit["img_size"],
            scaling=fit["scaling"],
            device=device,
            fourier_filter=fit["fourier_filter"],
            spatial_mask=fit["spatial_mask"],
            two_sided=fit["two_sided"],
            grid=fit["grid"],
            **kwargs,
        )

    def set_parameters(
        self,
        fourier_filter: torch.Tensor,
        spatial_mask: torch.Tensor,
        device: torch.device | str | None = None,
    ) -> None:
        """Install λ and m (moved to ``device`` when given)."""
        if device is not None:
            fourier_filter = fourier_filter.to(device)
            spatial_mask = spatial_mask.to(device)
        self.normal_op = DiagCirculant(
            fourier_filter,
            spatial_mask,
            self.img_size,
            two_sided=self.two_sided,
            symmetrize=self.symmetrize,
            grid=self._grid,
        )

    def _op(
        self, fourier_filter: torch.Tensor | None, spatial_mask: torch.Tensor | None
    ) -> DiagCirculant:
        if fourier_filter is not None or spatial_mask is not None:
            if fourier_filter is None or spatial_mask is None:
                raise ValueError("give both fourier_filter and spatial_mask, or neither")
            op = self.normal_op
            if (
                op is None
                or op.fourier_filter is not fourier_filter
                or op.spatial_mask is not spatial_mask
            ):
                self.set_parameters(fourier_filter, spatial_mask)
        if self.normal_op is None:
            raise RuntimeError(
                "DiagCirculantWrapper has no parameters: pass fourier_filter and spatial_mask "
                "to the constructor or to the call"
            )
        return self.normal_op

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A(x, **kwargs)

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A_adjoint(y, **kwargs)

    def A_dagger(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("fourier_filter", None)
        kwargs.pop("spatial_mask", None)
        return self.physics.A_dagger(y, **kwargs)

    def A_adjoint_A(
        self,
        x: torch.Tensor,
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """scaling · H x."""
        return self.scaling * self._op(fourier_filter, spatial_mask)(x)

    def restrict(
        self,
        start: Sequence[int],
        patch_size: Sequence[int],
        fourier_filter: torch.Tensor | None = None,
        spatial_mask: torch.Tensor | None = None,
    ) -> RestrictedDiagCirculant:
        """scaling · S H Sᵀ on the patch at ``start`` (the partitioned data step's normal op)."""
        r = self._op(fourier_filter, spatial_mask).restrict(start, patch_size)
        r.scaling = self.scaling
        return r


# ----------------------------------------------------------------------------------------------
# operator identity, norm, errors


_HASH_ATTRS = (
    "vectors",
    "geometry_vectors",
    "mask",
    "coil_maps",
    "det_shape",
    "voxel_size",
    "det_spacing",
    "img_size",
)
_HASH_SKIP = ("norm", "noise_model", "sensor")


def _hash_value(h: Any, name: str, value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_complex():
            t = torch.view_as_real(t.to(torch.complex64))
        elif t.is_floating_point():
            t = t.to(torch.float32)
        h.update(f"{name}:{tuple(value.shape)}:{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
        return True
    if isinstance(value, np.ndarray):
        return _hash_value(h, name, torch.from_numpy(np.ascontiguousarray(value)))
    if isinstance(value, (int, float, str, tuple, list)) and not isinstance(value, bool):
        h.update(f"{name}={value!r}".encode())
        return False
    return False


def operator_hash(physics: nn.Module, img_size: Sequence[int] | None = None) -> str:
    """A short hash of an operator's description: its class, its buffers (geometry vectors,
    sampling mask, coil maps, ...; cached norms and noise models excluded) and the attributes
    ``vectors``, ``mask``, ``coil_maps``, ``det_shape``, ``voxel_size``, ``img_size`` when present.

    Two operators with the same geometry hash equally whatever their backend (astra / RTK). An
    operator exposing no tensor at all is hashed by its response to a fixed seeded probe
    (needs ``img_size``).
    """
    if isinstance(physics, DiagCirculantWrapper):
        physics = physics.physics
    h = hashlib.sha256()
    h.update(type(physics).__name__.encode())
    found = False
    seen: set[str] = set()
    for name, buf in sorted(physics.named_buffers(), key=lambda kv: kv[0]):
        if any(s in name.lower() for s in _HASH_SKIP):
            continue
        seen.add(name.split(".")[-1])
        found |= _hash_value(h, name, buf)
    for attr in _HASH_ATTRS:
        if attr in seen or not hasattr(physics, attr):
            continue
        try:
            value = getattr(physics, attr)
        except Exception:  # noqa: BLE001 - a property that cannot be evaluated is skipped
            continue
        found |= _hash_value(h, attr, value)
    if not found:
        if img_size is None:
            img_size = getattr(physics, "img_size", None)
        if img_size is None:
            raise ValueError(
                f"cannot hash {type(physics).__name__}: no buffers or geometry attributes; "
                "pass img_size to hash its response to a probe"
            )
        g = torch.Generator().manual_seed(1234)
        x = torch.randn((1, *tuple(img_size)), generator=g)
        with torch.no_grad():
            y = physics.A(x.to(_physics_device(physics)))
        y = y.detach().cpu().double()
        q = torch.round(y / (y.abs().max() + 1e-30) * 1e4).to(torch.int64)
        h.update(q.numpy().tobytes())
    return h.hexdigest()[:16]


def _physics_device(physics: nn.Module) -> torch.device:
    for t in list(physics.buffers()) + list(physics.parameters()):
        return t.device
    return torch.device("cpu")


def relative_error(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """‖reference − estimate‖ / ‖reference‖ (over the whole batch)."""
    return float((reference - estimate).norm() / reference.norm().clamp_min(1e-30))


def operator_sqnorm(
    physics: LinearPhysics,
    img_size: Sequence[int],
    n_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """‖A‖² by the power method on AᵀA from a seeded Gaussian start (deterministic)."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, *tuple(img_size)), generator=g).to(device)
    x = x / x.norm()
    prev = 0.0
    value = 0.0
    with torch.no_grad():
        for _ in range(n_iter):
            y = physics.A_adjoint_A(x)
            value = float((x * y).sum())
            x = y / y.norm().clamp_min(1e-30)
            if prev and abs(value - prev) <= tol * abs(value):
                break
            prev = value
    if not value > 0:
        raise ValueError(f"power method gave ‖A‖² = {value}; is A_adjoint_A zero?")
    return value


def error_floor(
    physics: LinearPhysics,
    img_size: Sequence[int],
    n_rows: int = 1536,
    n_heldout: int = 256,
    fit_mask: bool = True,
    iterations: int = 2,
    batch: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    terms: Sequence[int] = (),
) -> dict[str, Any]:
    r"""Best one-sided H = diag(m) C for ``physics``, found from exact rows of AᵀA, not probes.

    ``E_x ‖AᵀAx − Hx‖²`` over white x is ``‖AᵀA − H‖_F²``, a sum over rows. Row i of H is
    :math:`m_i h[i - j]` (linear convolution, every offset free), so the least-squares optimum
    alternates two closed forms: :math:`h[\delta] = \sum_i m_i M_{i,i-\delta} / \sum_i m_i^2`
    over the sampled voxels i, and :math:`m_i = \langle M_i, h[i-\cdot]\rangle / \|h[i-\cdot]\|^2`.
    The rows :math:`M_i = A^\top A e_i` of ``n_rows`` seeded random voxels give h; the error is
    then measured on ``n_heldout`` other rows with their own optimal :math:`m_i`. No fitted H
    of this form can do much better than ``heldout_rel_error`` (it is an estimate of the floor of
    the relative error on held-out Gaussian probes that :func:`fit_normal_operator` reports), so it
    separates what the model cannot represent from what the optimiser has not yet found.

    Real images only (``img_size = (1, D, H, W)``). Cost: ``n_rows + n_heldout`` applications of
    AᵀA and that many volumes in float32 memory (235 MB at 32³ with the defaults).

    ``terms`` (e.g. ``(2, 8, 64)``) also bounds richer models that keep the exact patch crop, sums
    :math:`\sum_{k\le K} \mathrm{diag}(m_k) F^{-1}\mathrm{diag}(\lambda_k) F`: the one-term
    optimum plus K − 1 terms from the SVD of its residual rows (an upper bound on the best K-term
    error; memory: one more float32 array of (rows, (2D−1)(2H−1)(2W−1)), 1.8 GB at 32³).

    :return: ``heldout_rel_error``, ``train_rel_error`` (on the rows h was built from),
        ``sum_of_terms_heldout_rel_error`` ({K: bound}), ``n_rows``, ``n_heldout``, ``fit_mask``,
        ``seconds``.
    """
    img_size = _check_img_size(img_size)
    if img_size[0] != 1:
        raise ValueError(f"error_floor handles real images (1, D, H, W), got {img_size}")
    spatial = img_size[1:]
    n_vox = math.prod(spatial)
    if n_rows < 1 or n_heldout < 1 or n_rows + n_heldout > n_vox:
        raise ValueError(f"need 1 ≤ n_rows, n_heldout and n_rows + n_heldout ≤ {n_vox} voxels")
    terms = sorted({int(t) for t in terms})
    if any(not 1 <= k <= n_rows + 1 for k in terms):
        raise ValueError(f"terms must lie in [1, n_rows + 1 = {n_rows + 1}], got {terms}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n_vox, generator=g)[: n_rows + n_heldout]
    rows = []
    with torch.no_grad():
        for b in range(0, len(idx), batch):
            chunk = idx[b : b + batch]
            e = torch.zeros(len(chunk), n_vox)
            e[torch.arange(len(chunk)), chunk] = 1.0
            out = physics.A_adjoint_A(e.view(-1, *img_size).to(device))
            rows.append(out.reshape(len(chunk), n_vox).float().cpu())
    M = torch.cat(rows)
    M = M / M.norm(dim=1).mean().clamp_min(1e-30)

    offset_grid = tuple(2 * n - 1 for n in spatial)
    voxel = torch.stack(torch.unravel_index(torch.arange(n_vox), spatial), 1)
    centre = torch.tensor([n - 1 for n in spatial])
    strides = torch.tensor([offset_grid[1] * offset_grid[2], offset_grid[2], 1])
    row_voxel = torch.stack(torch.unravel_index(idx, spatial), 1)

    def offsets(r: int) -> torch.Tensor:  # linear index of i − j for every voxel j
        return ((row_voxel[r] - voxel + centre) * strides).sum(1)

    m = torch.ones(len(idx), dtype=torch.float64)
    kernel = torch.zeros(math.prod(offset_grid), dtype=torch.float64)
    errors = {}
    for _ in range(max(1, int(iterations))):
        acc = torch.zeros_like(kernel)
        weight = torch.zeros_like(kernel)
        for r in range(n_rows):
            d = offsets(r)
            acc.index_add_(0, d, m[r] * M[r].double())
            weight.index_add_(0, d, torch.full((n_vox,), float(m[r] ** 2), dtype=torch.float64))
        kernel = acc / weight.clamp_min(1e-30)
        num = {"train": 0.0, "heldout": 0.0}
        den = {"train": 0.0, "heldout": 0.0}
        for r in range(len(idx)):
            h_row = kernel[offsets(r)]
            row = M[r].double()
            if fit_mask:
                m[r] = (row @ h_row) / (h_row @ h_row).clamp_min(1e-30)
            part = "train" if r < n_rows else "heldout"
            num[part] += float(((row - m[r] * h_row) ** 2).sum())
            den[part] += float((row**2).sum())
        errors = {k: math.sqrt(num[k] / max(den[k], 1e-30)) for k in num}
    sums = {}
    if terms:
        # K-term sums Σ_k diag(m_k) C_k: this one-term H plus K − 1 terms from the SVD of its
        # residual rows, laid on the offset grid (zero where an offset leaves the volume). The
        # result is an achievable K-term H, so its held-out error bounds the best one from above.
        resid = torch.zeros(len(idx), math.prod(offset_grid), dtype=torch.float32)
        for r in range(len(idx)):
            d = offsets(r)
            resid[r, d] = (M[r].double() - m[r] * kernel[d]).float()
        train, held = resid[:n_rows], resid[n_rows:]
        eigval, eigvec = torch.linalg.eigh((train @ train.T).double())
        order = torch.argsort(eigval, descending=True)
        eigval, eigvec = eigval[order].clamp_min(1e-30), eigvec[:, order]
        held_sq = float((held * held).sum(dtype=torch.float64))
        for k in terms:
            basis = (train.T @ eigvec[:, : k - 1].float()) / eigval[: k - 1].sqrt().float()
            kept = float(((held @ basis) ** 2).sum(dtype=torch.float64))
            sums[k] = math.sqrt(max(held_sq - kept, 0.0) / max(den["heldout"], 1e-30))
    return {
        "heldout_rel_error": errors["heldout"],
        "sum_of_terms_heldout_rel_error": sums,
        "train_rel_error": errors["train"],
        "n_rows": int(n_rows),
        "n_heldout": int(n_heldout),
        "fit_mask": bool(fit_mask),
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------
# fitting


def _probe(shape: Sequence[int], seed: int, tag: int, index: int) -> torch.Tensor:
    """Gaussian probe number ``index`` of stream ``tag``: CPU-generated, so identical on any device
    and independent of how the run was split by checkpoints."""
    state = np.random.SeedSequence([int(seed), int(tag), int(index)]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randn(tuple(shape), generator=g)


def _impulse_filter(
    physics: LinearPhysics,
    img_size: tuple[int, ...],
    grid: tuple[int, ...],
    sqnorm: float,
    device: torch.device,
) -> torch.Tensor:
    """λ of the kernel AᵀA e_c / ‖A‖² around the centre voxel c, laid on the FFT grid."""
    spatial = img_size[1:]
    c = tuple(n // 2 for n in spatial)
    e = torch.zeros((1, *img_size), device=device)
    e[(0, 0, *c)] = 1.0
    with torch.no_grad():
        r = physics.A_adjoint_A(e) / sqnorm
    complex_images = img_size[0] == 2
    r = _to_complex(r)[0] if complex_images else r[0, 0]
    idx = [
        ((torch.arange(n) - cd) % g).to(device) for n, cd, g in zip(spatial, c, grid, strict=True)
    ]
    h = torch.zeros(grid, dtype=r.dtype, device=device)
    h[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]] = r
    if complex_images:
        return torch.fft.fftn(h, dim=_DIMS).to(torch.complex64)
    return torch.fft.rfftn(h, dim=_DIMS).to(torch.complex64)


def _lr_factor(step: int, n_steps: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, n_steps) / max(n_steps, 1)))
    raise ValueError(f"unknown lr schedule {schedule!r} (constant or cosine)")


def fit_normal_operator(
    physics: LinearPhysics,
    img_size: Sequence[int],
    n_steps: int = 2000,
    batch: int = 1,
    lr: float = 1e-2,
    *,
    seed: int = 0,
    heldout: int = 8,
    two_sided: bool | None = None,
    symmetric_kernel: bool = False,
    fit_mask: bool = True,
    complex_mask: bool = False,
    lr_schedule: str = "cosine",
    grid: Sequence[int] | None = None,
    sqnorm: float | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    eval_every: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    r"""Fit H(m, λ) to :math:`A^\top A / \|A\|^2` by Adam on Gaussian probes (data-free).

    Minimises :math:`\sum_b \|t_b - H x_b\|^2 / \sum_b \|t_b\|^2` with :math:`x_b \sim N(0, I)`
    and :math:`t_b = A^\top A x_b / \|A\|^2`, from m = 1 and λ = F(AᵀA e_c)/‖A‖² (the impulse
    response at the centre voxel). The result does not depend on the scale of A; use it with
    ``scaling = history["sqnorm"]``.

    Deterministic given ``seed``: probe *i* is drawn on the CPU from (seed, i), so a run
    resumed from ``checkpoint`` (written atomically every ``checkpoint_every`` steps and at the
    end) gives the same result as an uninterrupted one.

    :param physics: the operator (only ``A_adjoint_A`` is called).
    :param img_size: ``(C, D, H, W)``; C = 2 means real/imag images (complex λ, full FFT).
    :param int n_steps: Adam iterations.
    :param int batch: probes per iteration.
    :param float lr: Adam learning rate (peak of the schedule).
    :param int seed: seed of the probes.
    :param int heldout: held-out probes for the reported relative error.
    :param two_sided: two-sided form; default True for C = 2 (MRI), False otherwise.
    :param bool symmetric_kernel: real λ (zero-phase kernel, half the memory).
    :param bool fit_mask: learn m (else m = 1).
    :param bool complex_mask: complex m (real/imag images only; lets the two-sided MRI form carry
        a phase, an extension of the paper's real m).
    :param str lr_schedule: ``"cosine"`` decay to 0 (ours) or ``"constant"``.
    :param grid: FFT grid (default :func:`padded_grid`).
    :param sqnorm: ‖A‖² if known (else the power method).
    :param checkpoint: resumable state file.
    :param eval_every: steps between held-out evaluations (default n_steps // 20).
    :return: ``(fourier_filter, spatial_mask, history)``; ``history`` holds ``step`` and
        ``heldout_rel_error`` (‖AᵀAx − Hx‖/‖AᵀAx‖ on the held-out probes), ``train_rel_error``
        (running mean over the steps since the previous evaluation), ``sqnorm``, ``grid``,
        ``two_sided``, ``seconds``.
    """
    img_size = _check_img_size(img_size)
    complex_images = img_size[0] == 2
    if two_sided is None:
        two_sided = complex_images
    spatial = img_size[1:]
    grid = padded_grid(spatial) if grid is None else tuple(int(g) for g in grid)
    device = torch.device(device) if device is not None else _physics_device(physics)
    if complex_mask and not complex_images:
        raise ValueError("complex_mask needs real/imag images (img_size[0] == 2)")
    if n_steps < 0 or batch < 1 or heldout < 1 or lr <= 0:
        raise ValueError(
            f"need n_steps ≥ 0, batch ≥ 1, heldout ≥ 1, lr > 0 (got {n_steps}, {batch}, "
            f"{heldout}, {lr})"
        )
    eval_every = max(1, n_steps // 20) if eval_every is None else int(eval_every)
    config = {
        "img_size": list(img_size),
        "grid": list(grid),
        "batch": int(batch),
        "lr": float(lr),
        "seed": int(seed),
        "heldout": int(heldout),
        "two_sided": bool(two_sided),
        "symmetric_kernel": bool(symmetric_kernel),
        "fit_mask": bool(fit_mask),
        "complex_mask": bool(complex_mask),
        "lr_schedule": lr_schedule,
        "eval_every": eval_every,
        "n_steps": int(n_steps),
    }

    state = None
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        old = dict(state["config"])
        new = dict(config)
        old.pop("n_steps", None)
        new.pop("n_steps", None)
        if old != new:
            diff = {
                k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)
            }
            raise ValueError(
                f"checkpoint {checkpoint} was written with other settings {diff} (saved, asked); "
                "delete it to start afresh"
            )

    t_start = time.perf_counter()
    if state is not None:
        sqnorm = float(state["sqnorm"])
    elif sqnorm is None:
        sqnorm = operator_sqnorm(physics, img_size, seed=seed, device=device)
    sqnorm = float(sqnorm)

    if state is not None:
        lam0 = state["lam"]
        m0 = state["m"]
    else:
        lam0 = _impulse_filter(physics, img_size, grid, sqnorm, device)
        if symmetric_kernel:
            lam0 = lam0.real.clone()
        m0 = torch.ones(spatial)
    lam_p = nn.Parameter(
        (lam0 if not lam0.is_complex() else torch.view_as_real(lam0)).to(device).clone()
    )
    if complex_mask and not m0.is_complex():
        m0 = m0.to(torch.complex64)
    m_p = nn.Parameter(
        (torch.view_as_real(m0) if m0.is_complex() else m0).to(device).clone(),
        requires_grad=fit_mask,
    )
    params = [lam_p] + ([m_p] if fit_mask else [])
    opt = torch.optim.Adam(params, lr=lr)
    history: dict[str, Any] = {
        "step": [],
        "heldout_rel_error": [],
        "train_rel_error": [],
    }
    step = 0
    running: list[float] = []
    if state is not None:
        opt.load_state_dict(state["optim"])
        history = state["history"]
        step = int(state["step"])
        running = list(state.get("running", []))

    def lam_value() -> torch.Tensor:
        return torch.view_as_complex(lam_p) if lam_p.dim() == 4 else lam_p

    def m_value() -> torch.Tensor:
        return torch.view_as_complex(m_p) if m_p.dim() == 4 else m_p

    def h_apply(x: torch.Tensor) -> torch.Tensor:
        return _apply_h(x, lam_value(), m_value(), grid, complex_images, two_sided)

    # held-out targets, computed once
    held_x = [_probe((1, *img_size), seed, 1, i) for i in range(heldout)]
    with torch.no_grad():
        held_t = [physics.A_adjoint_A(x.to(device)) / sqnorm for x in held_x]

    def evaluate() -> float:
        num = 0.0
        den = 0.0
        with torch.no_grad():
            for x, t in zip(held_x, held_t, strict=True):
                r = t - h_apply(x.to(device))
                num += float((r * r).sum())
                den += float((t * t).sum())
        return math.sqrt(num / max(den, 1e-30))

    def save_state() -> None:
        if checkpoint is None:
            return
        atomic_torch_save(
            {
                "config": config,
                "step": step,
                "lam": lam_value().detach().cpu(),
                "m": m_value().detach().cpu(),
                "optim": opt.state_dict(),
                "history": history,
                "running": list(running),
                "sqnorm": sqnorm,
            },
            checkpoint,
        )

    if step == 0 and not history["step"]:
        history["step"].append(0)
        history["heldout_rel_error"].append(evaluate())
        history["train_rel_error"].append(float("nan"))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n_steps,
            initial=min(step, n_steps),
            desc="fit H",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    while step < n_steps:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, n_steps, lr_schedule)
        x = torch.cat([_probe((1, *img_size), seed, 0, step * batch + b) for b in range(batch)])
        x = x.to(device)
        with torch.no_grad():
            t = physics.A_adjoint_A(x) / sqnorm
        opt.zero_grad(set_to_none=True)
        r = t - h_apply(x)
        loss = (r * r).sum() / (t * t).sum().clamp_min(1e-30)
        loss.backward()
        opt.step()
        step += 1
        running.append(math.sqrt(float(loss.detach())))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rel=f"{running[-1]:.4f}")
        if step % eval_every == 0 or step == n_steps:
            history["step"].append(step)
            history["heldout_rel_error"].append(evaluate())
            history["train_rel_error"].append(float(np.mean(running)) if running else float("nan"))
            running = []
        if step % checkpoint_every == 0 or step == n_steps:
            save_state()
    if bar is not None:
        bar.close()
    history["sqnorm"] = sqnorm
    history["grid"] = list(grid)
    history["two_sided"] = bool(two_sided)
    history["seconds"] = history.get("seconds", 0.0) + time.perf_counter() - t_start
    history["config"] = config
    return lam_value().detach().clone(), m_value().detach().clone(), history


# ----------------------------------------------------------------------------------------------
# files


def save_normal(
    path: str | Path,
    fourier_filter: torch.Tensor,
    spatial_mask: torch.Tensor,
    img_size: Sequence[int],
    scaling: float,
    history: dict[str, Any] | None = None,
    operator_hash: str | None = None,
    two_sided: bool = False,
    grid: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write one fit to ``path`` atomically (a ``torch.save`` dict).

    :param scaling: ‖A‖², the factor H must be multiplied by (``DiagCirculantWrapper(scaling=)``).
    :param operator_hash: :func:`operator_hash` of the operator the fit is for.
    """
    img_size = _check_img_size(img_size)
    if grid is None:
        grid = _infer_grid(fourier_filter.shape, img_size)
    DiagCirculant(fourier_filter, spatial_mask, img_size, two_sided, grid=grid)  # validates shapes
    atomic_torch_save(
        {
            "format": "unroll3d.normal",
            "version": FORMAT_VERSION,
            "fourier_filter": fourier_filter.detach().cpu(),
            "spatial_mask": spatial_mask.detach().cpu(),
            "img_size": list(img_size),
            "grid": [int(g) for g in grid],
            "two_sided": bool(two_sided),
            "scaling": float(scaling),
            "history": history or {},
            "operator_hash": operator_hash,
            "meta": meta or {},
        },
        path,
    )


def load_normal(
    path: str | Path,
    expected_operator_hash: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a fit written by :func:`save_normal`.

    :param expected_operator_hash: when given, the stored hash must equal it; otherwise a
        ``ValueError`` says the parameters were fitted for another operator.
    :return: dict with ``fourier_filter``, ``spatial_mask``, ``img_size``, ``grid``,
        ``two_sided``, ``scaling``, ``history``, ``operator_hash``, ``meta``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fitted normal operator at {path}")
    fit = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(fit, dict) or fit.get("format") != "unroll3d.normal":
        raise ValueError(f"{path} is not an unroll3d normal-operator file")
    if fit.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {fit.get('version')}, expected {FORMAT_VERSION}"
        )
    if expected_operator_hash is not None and fit.get("operator_hash") != expected_operator_hash:
        raise ValueError(
            f"{path} was fitted for operator {fit.get('operator_hash')}, but the operator in use "
            f"hashes to {expected_operator_hash} (different geometry, mask or coil maps); "
            "refit H for this operator or pass expected_operator_hash=None to skip the check"
        )
    fit["img_size"] = tuple(fit["img_size"])
    fit["grid"] = tuple(fit["grid"])
    return fit


def write_history_csv(path: str | Path, history: dict[str, Any]) -> None:
    """The fitting curve as CSV: ``step, heldout_rel_error, train_rel_error``."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "heldout_rel_error", "train_rel_error"])
        for row in zip(
            history["step"], history["heldout_rel_error"], history["train_rel_error"], strict=True
        ):
            w.writerow(row)


# ----------------------------------------------------------------------------------------------
# figure


def plot_normal(
    fit: dict[str, Any] | str | Path,
    physics: LinearPhysics,
    x: torch.Tensor,
    out: str | Path,
    axis: int = 0,
    index: int | None = None,
) -> dict[str, float]:
    """The paper's illustration of H (Fig. 9/10) plus the fitting curve; writes ``out`` .png + .pdf.

    Panels: a slice of x, AᵀAx, Hx (same colour range), log|λ| (centred, the central slice of
    the frequency grid), m, (AᵀAx − Hx)², and the held-out relative error over the fit.

    :param fit: :func:`load_normal` dict or its path.
    :param physics: the exact operator.
    :param x: an image (1, C, D, H, W), e.g. the ground truth of the reference volume.
    :param out: output path; the suffix is replaced by .png and .pdf.
    :param axis: which spatial axis to slice (0 = z).
    :return: ``{"rel_error": ‖AᵀAx − scaling·Hx‖/‖AᵀAx‖}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(fit, dict):
        fit = load_normal(fit)
    H = DiagCirculant(
        fit["fourier_filter"],
        fit["spatial_mask"],
        fit["img_size"],
        fit["two_sided"],
        grid=fit["grid"],
    )
    device = _physics_device(physics)
    x = x.to(device)
    H = H.to(device)
    with torch.no_grad():
        exact = physics.A_adjoint_A(x)
        approx = fit["scaling"] * H(x)
    rel = relative_error(exact, approx)

    def mag(t: torch.Tensor) -> np.ndarray:
        t = t[0].detach().cpu()
        v = t[0] if t.shape[0] == 1 else torch.sqrt(t[0] ** 2 + t[1] ** 2)
        return v.double().numpy()

    def sl(v: np.ndarray) -> np.ndarray:
        i = v.shape[axis] // 2 if index is None else index
        return np.take(v, i, axis=axis)

    xv, ev, av = mag(x), mag(exact), mag(approx)
    lam = fit["fourier_filter"]
    if lam.shape[-1] != fit["grid"][-1]:  # rfft layout -> full spectrum for display
        lam = torch.fft.fftn(torch.fft.irfftn(lam, s=fit["grid"]))
    lam_img = np.fft.fftshift(np.log10(np.abs(lam.detach().cpu().numpy()) + 1e-8))
    m = fit["spatial_mask"].detach().cpu().abs().double().numpy()
    err = (ev - av) ** 2

    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    vmin, vmax = float(min(sl(ev).min(), sl(av).min())), float(max(sl(ev).max(), sl(av).max()))
    panels = [
        (axes[0, 0], sl(xv), "x", "gray", None),
        (axes[0, 1], sl(ev), "AᵀA x", "gray", (vmin, vmax)),
        (axes[0, 2], sl(av), "H x", "gray", (vmin, vmax)),
        (axes[1, 0], sl(lam_img), "log₁₀|λ| (centred)", "viridis", None),
        (axes[1, 1], sl(m), "m", "viridis", None),
        (axes[1, 2], sl(err), "(AᵀAx − Hx)²", "magma", None),
    ]
    for ax, img, title, cmap, lim in panels:
        kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
        im = ax.imshow(img, cmap=cmap, **kw)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    hist = fit.get("history") or {}
    ax = axes[0, 3]
    if hist.get("step"):
        ax.semilogy(hist["step"], hist["heldout_rel_error"], label="held-out probes")
        tr = np.asarray(hist["train_rel_error"], dtype=float)
        if np.isfinite(tr).any():
            ax.semilogy(hist["step"], tr, alpha=0.6, label="training probes")
        ax.legend()
    ax.set_xlabel("Adam step")
    ax.set_ylabel("‖AᵀAx − Hx‖ / ‖AᵀAx‖")
    ax.set_title("fit")
    axes[1, 3].axis("off")
    axes[1, 3].text(0.0, 0.5, f"relative error on x: {rel:.3f}", fontsize=12)
    fig.tight_layout()
    out = Path(out)
    for suffix in (".png", ".pdf"):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=120)
    plt.close(fig)
    return {"rel_error": rel}


# ----------------------------------------------------------------------------------------------
# command line: unroll3d fit-normal


def _load_physics(
    path: str | Path, setting: str, device: torch.device
) -> tuple[LinearPhysics, Any]:
    """The operator of a preprocessed volume (``unroll3d.data.load_sample``) and its sample."""
    from unroll3d.data import load_sample

    sample = load_sample(path, setting, device=device)
    return sample.physics, sample


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unroll3d fit-normal",
        description="Fit H = diag(m) F⁻¹ diag(λ) F to AᵀA/‖A‖² of one preprocessed volume "
        "(data-free, Gaussian probes); write the fit (.pt) and its history (.csv).",
    )
    p.add_argument(
        "--input", required=True, help="preprocessed volume results/data/{task}/{volume}.pt"
    )
    p.add_argument("--setting", required=True, help="v30/v50/... (CBCT views) or R5/R10 (MRI)")
    p.add_argument("--out", required=True, help="output fit, e.g. results/normal/cbct/v30.pt")
    p.add_argument("--history", help="history CSV (default: --out with .csv)")
    p.add_argument("--figure", help="optional figure path (PNG + PDF) on the volume's ground truth")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--two-sided",
        choices=["auto", "yes", "no"],
        default="auto",
        help="two-sided form (auto: yes for complex/MRI images)",
    )
    p.add_argument("--symmetric-kernel", action="store_true", help="real λ (half memory)")
    p.add_argument(
        "--complex-mask",
        action="store_true",
        help="complex m for real/imag (MRI) images (an extension of the paper's real m)",
    )
    p.add_argument("--checkpoint", help="resumable state (default: --out with .ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--device",
        default="auto",
        help="auto (the visible GPU, else CPU; use under `unroll3d device run`), lock (pick and "
        "lock a free GPU with unroll3d.devices.job_device), cpu, cuda:1, ...",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def _run(args: argparse.Namespace, device: torch.device) -> int:
    physics, sample = _load_physics(args.input, args.setting, device)
    img_size = (
        tuple(sample.x.shape[1:])
        if getattr(sample, "x", None) is not None
        else tuple(physics.img_size)
    )
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    two_sided = {"auto": None, "yes": True, "no": False}[args.two_sided]
    lam, m, history = fit_normal_operator(
        physics,
        img_size,
        n_steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        heldout=args.heldout,
        two_sided=two_sided,
        symmetric_kernel=args.symmetric_kernel,
        complex_mask=args.complex_mask,
        lr_schedule=args.lr_schedule,
        checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every,
        device=device,
        progress=not args.no_progress,
    )
    meta = {
        "input": str(args.input),
        "setting": args.setting,
        "device": str(device),
        "volume_meta": {
            k: v
            for k, v in dict(getattr(sample, "meta", None) or {}).items()
            if isinstance(v, (str, int, float, bool, list))
        },
    }
    save_normal(
        out,
        lam,
        m,
        img_size,
        history["sqnorm"],
        history=history,
        operator_hash=operator_hash(physics, img_size),
        two_sided=history["two_sided"],
        grid=history["grid"],
        meta=meta,
    )
    write_history_csv(Path(args.history) if args.history else out.with_suffix(".csv"), history)
    if args.figure and getattr(sample, "x", None) is not None:
        plot_normal(load_normal(out), physics, sample.x, args.figure)
    print(
        f"fit-normal: held-out relative error {history['heldout_rel_error'][0]:.4f} (init) -> "
        f"{history['heldout_rel_error'][-1]:.4f} after {history['step'][-1]} steps; "
        f"‖A‖² = {history['sqnorm']:.6g}; wrote {out}",
        file=sys.stderr,
    )
    if ckpt.exists():
        ckpt.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``unroll3d fit-normal``: see :func:`build_parser`."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "lock":  # pick and lock a free GPU here (not under `unroll3d device run`)
        from unroll3d.devices import job_device

        with job_device() as device:
            return _run(args, torch.device(device))
    if args.device == "auto":
        return _run(args, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return _run(args, torch.device(args.device))
