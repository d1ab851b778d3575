r"""Diagonal-circulant approximation :math:`H` of a normal operator :math:`A^\top A`.

The paper (``docs/paper-notes.md`` §4.5–4.6) approximates the normal operator by

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

from collections.abc import Sequence

import torch
from deepinv.physics import LinearPhysics
from torch import nn

__all__ = [
    "DiagCirculant",
    "RestrictedDiagCirculant",
    "padded_grid",
    "operator_sqnorm",
    "relative_error",
    # shared by the other modules of unroll3d.normal (not re-exported by the package)
    "SPATIAL_DIMS",
    "apply_h",
    "check_img_size",
    "infer_grid",
    "physics_device",
    "to_complex",
]

SPATIAL_DIMS = (-3, -2, -1)


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


def check_img_size(img_size: Sequence[int]) -> tuple[int, ...]:
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) != 4 or img_size[0] not in (1, 2):
        raise ValueError(
            f"img_size must be (C, D, H, W) with C = 1 (real) or 2 (real/imag), got {img_size}"
        )
    return img_size


def infer_grid(filter_shape: Sequence[int], img_size: Sequence[int]) -> tuple[int, ...]:
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


def to_complex(x: torch.Tensor) -> torch.Tensor:
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
        X = torch.fft.rfftn(x, s=grid, dim=SPATIAL_DIMS)
        X = X.mul_(lam) if not (X.requires_grad or lam.requires_grad) else X * lam
        y = torch.fft.irfftn(X, s=grid, dim=SPATIAL_DIMS)
    else:
        X = torch.fft.fftn(x, s=grid, dim=SPATIAL_DIMS)
        X = X.mul_(lam) if not (X.requires_grad or lam.requires_grad) else X * lam
        y = torch.fft.ifftn(X, s=grid, dim=SPATIAL_DIMS)
    return y[..., : out[0], : out[1], : out[2]]


def apply_h(
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
        z = to_complex(x)
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
    """λ_k on the k-grid, k_d = min(2p_d, N_d), for exact S H Sᵀ (docs/paper-notes.md §4.6).

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
        lam_k = torch.fft.fftn(h, dim=SPATIAL_DIMS)
    else:
        lam_k = torch.fft.rfftn(h, dim=SPATIAL_DIMS)
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
        self.img_size = check_img_size(img_size)
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
            grid = infer_grid(fourier_filter.shape, self.img_size)
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
            return 0.5 * (apply_h(x, *args) + apply_h(x, *args, adjoint=True))
        return apply_h(x, *args)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """H* x (H_sym is self-adjoint)."""
        if self.symmetrize:
            return self.forward(x)
        self._check_x(x, self.img_size[1:])
        lam = _cast_filter(self.fourier_filter, x)
        m = self.spatial_mask.to(x.device)
        return apply_h(x, lam, m, self.grid, self.complex_images, self.two_sided, adjoint=True)

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
    ) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.complex_images = channels == 2
        self.channels = channels
        self.two_sided = two_sided
        self.symmetrize = symmetrize
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
            return 0.5 * (apply_h(x, *args) + apply_h(x, *args, adjoint=True))
        return apply_h(x, *args)


# ----------------------------------------------------------------------------------------------
# device, norm, errors (the operator hash: identity.py)


def physics_device(physics: nn.Module) -> torch.device:
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
