r"""H of a Cartesian MRI operator built from its own sampling mask (no fit).

For :class:`unroll3d.physics.MultiCoilMRI3D`, :math:`A^H A = \sum_c S_c^H F^{-1} M F S_c` with a
0/1 mask M on the k-space grid and deepinv's centred orthonormal FFT. Circulant matrices commute
with the (i)fftshift, so :math:`F^{-1} M F = C` is exactly the circulant of the N grid whose
eigenvalues are ``ifftshift(M)``, i.e. circular convolution with :math:`h = \mathrm{ifftn}
(\mathrm{ifftshift}(M))`. On the zero-padded grid :math:`G \ge 2N - 1` of :func:`padded_grid` the
same operator is the linear convolution with :math:`k[\delta] = h[\delta \bmod N]` for
:math:`|\delta| \le N - 1`, laid at slot :math:`\delta \bmod G`; on the circular grid
:math:`G = N`, :math:`\lambda` is ``ifftshift(M)`` itself.

Hence :math:`H = \mathrm{diag}(m)^H C\, \mathrm{diag}(m)` (the two-sided MRI form) is

* exact for one coil with :math:`m = s` (its complex sensitivity map);
* for several RSS-normalised coils the approximation :math:`\sum_c \bar S_c(x) S_c(y) \approx
  m(x) m(y)` with :math:`m = \sqrt{\sum_c |S_c|^2}`, the only error (smooth maps make it small
  at the short offsets that carry the kernel's mass: the calibration centre).

λ is AᵀA's own kernel, not divided by ‖A‖², so the fit's ``scaling`` is 1 (``H · 1 ≈ AᵀA``).
Building it costs two FFTs of the padded grid, cheap enough for every training draw
(``normal.mri_h: mask``, :func:`unroll3d.engine.operators.own_normal`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unroll3d.normal.io import NormalFit
from unroll3d.normal.operator import SPATIAL_DIMS, check_img_size, padded_grid

__all__ = ["MASK_KERNELS", "MASK_M", "mask_filter", "mask_normal", "mask_weights", "probe_error"]

#: how m of the mask-built H is chosen (``m`` of :func:`mask_normal`): ``coils`` = the one coil's
#: complex map, or the root-sum-of-squares of several (measured best, see :func:`mask_normal`);
#: ``ones`` = m = 1
MASK_M = ("coils", "ones")
#: the kernel of the mask-built H (``kernel`` of :func:`mask_normal`)
MASK_KERNELS = ("coherence", "mask")


def _slot_sources(n: int, g: int) -> torch.Tensor:
    """For each slot s of a length-g axis, the index of h (length n) it holds, n for zero:
    offsets δ ∈ [0, n−1] at s = δ, δ ∈ [−(n−1), −1] at s = g + δ, holding h[δ mod n]."""
    if g == n:
        return torch.arange(n)
    if g < 2 * n - 1:
        raise ValueError(
            f"grid length {g} is neither the image length {n} (circular) nor ≥ 2·{n} − 1 "
            "(linear): the periodic kernel's offsets would overlap"
        )
    src = torch.full((g,), n, dtype=torch.long)
    src[:n] = torch.arange(n)
    src[g - n + 1 :] = torch.arange(-(n - 1), 0) % n
    return src


def _lay(h: torch.Tensor, spatial: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """The periodic kernel ``h`` of the N grid laid on ``grid``: k[δ] = h[δ mod N], |δ| ≤ N − 1."""
    h = torch.nn.functional.pad(h, (0, 1, 0, 1, 0, 1))  # index n of each axis holds 0
    src = [_slot_sources(n, g).to(h.device) for n, g in zip(spatial, grid, strict=True)]
    return h[src[0][:, None, None], src[1][None, :, None], src[2][None, None, :]]


def _autocorr(t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """a(δ) = Σ_x conj(t(x)) t(x − δ) on ``grid`` (summed over leading axes; linear offsets on a
    grid ≥ 2N − 1, circular on the N grid)."""
    t = t.reshape(-1, *t.shape[-3:])
    power = None
    for one in t:  # coil by coil: one padded spectrum at a time (≈ 0.6 GB each at 256×218×170)
        p = torch.fft.fftn(one.to(torch.complex64), s=tuple(grid), dim=SPATIAL_DIMS).abs().square()
        power = p if power is None else power.add_(p)
    return torch.fft.ifftn(power.to(torch.complex64), dim=SPATIAL_DIMS).conj()


def mask_filter(
    mask: torch.Tensor,
    grid: Sequence[int],
    coil_maps: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ (full complex FFT layout on ``grid``) of the circulant F⁻¹ diag(M) F of a centred
    k-space mask ``M`` of shape (D, H, W) (deepinv's centred FFT).

    With ``coil_maps`` (N, D, H, W) and ``m``, the kernel is weighted per offset by the coils'
    coherence, k[δ] = h[δ] · Σ_x m(x) m̄(x−δ) Σ_c S̄_c(x) S_c(x−δ) / Σ_x |m(x)|² |m(x−δ)|²:
    the least-squares (Frobenius, i.e. white-probe) optimal λ of the two-sided H with that m.
    For one coil and m = its map the weight is 1 and H = AᵀA exactly.
    """
    mask = torch.as_tensor(mask)
    spatial = tuple(int(n) for n in mask.shape[-3:])
    grid = tuple(int(g) for g in grid)
    mask = mask.reshape(spatial).to(torch.float32)
    eig = torch.fft.ifftshift(mask, dim=SPATIAL_DIMS)
    if grid == spatial and coil_maps is None:
        return eig.to(torch.complex64)
    k = _lay(torch.fft.ifftn(eig.to(torch.complex64), dim=SPATIAL_DIMS), spatial, grid)
    if coil_maps is not None:
        m = torch.ones(spatial, device=mask.device) if m is None else torch.as_tensor(m)
        m = m.to(coil_maps.device)
        num = _autocorr(coil_maps * m.conj(), grid)
        den = _autocorr(m.abs().square(), grid).real
        ok = den > 1e-6 * den.abs().max()
        k = k * torch.where(ok, num / torch.where(ok, den, 1.0), 0.0)
    return torch.fft.fftn(k, dim=SPATIAL_DIMS).to(torch.complex64)


def mask_weights(coil_maps: torch.Tensor, m: str = "coils") -> torch.Tensor:
    """m of the mask-built H from complex coil maps (N, D, H, W) (a leading batch of 1 allowed):
    ``coils`` = the map itself for one coil (exact), else √Σ|S_c|²; ``ones`` = 1."""
    maps = torch.as_tensor(coil_maps)
    if maps.dim() == 5:
        if maps.shape[0] != 1:
            raise ValueError(f"one operator at a time: coil maps of shape {tuple(maps.shape)}")
        maps = maps[0]
    if m == "ones":
        return torch.ones(maps.shape[-3:], device=maps.device)
    if m != "coils":
        raise ValueError(f"unknown m {m!r}; choose one of {list(MASK_M)}")
    if maps.shape[0] == 1:
        return maps[0].to(torch.complex64)
    return maps.abs().square().sum(0).sqrt().to(torch.float32)


def mask_normal(
    physics,
    img_size: Sequence[int],
    m: str | torch.Tensor = "coils",
    grid: Sequence[int] | None = None,
    kernel: str = "coherence",
    meta: dict | None = None,
) -> NormalFit:
    """The two-sided H of a Cartesian multi-coil MRI operator built from its own mask.

    :param physics: a :class:`~unroll3d.physics.MultiCoilMRI3D` (``mask`` and ``coil_maps``).
    :param img_size: ``(2, D, H, W)``.
    :param m: ``coils`` (default: exact for one coil; the measured best for several),
        ``ones``, or a tensor (D, H, W) (e.g. the m of a data-free fit).
    :param grid: FFT grid (default :func:`padded_grid`, a linear convolution as the fits use).
    :param kernel: ``coherence`` (default: the mask's kernel weighted by the coils' coherence,
        least-squares optimal for this m) or ``mask`` (the mask's kernel alone).
    :return: a :class:`NormalFit` with ``scaling`` 1 and ``meta["h"] = "mask"``.
    """
    img_size = check_img_size(img_size)
    if img_size[0] != 2:
        raise ValueError(f"the mask-built H is for complex (MRI) images; got img_size {img_size}")
    spatial = img_size[1:]
    grid = padded_grid(spatial) if grid is None else tuple(int(g) for g in grid)
    mask = physics.mask  # deepinv's (B, 2, D, H, W): the same mask on real and imaginary parts
    while mask.dim() > 3:
        mask = mask[0]
    mask = mask.expand(spatial)  # a (ky, kz) mask broadcast along the readout
    maps = physics.coil_maps
    maps = maps[0] if maps.dim() == 5 else maps
    weights = mask_weights(maps, m) if isinstance(m, str) else torch.as_tensor(m).to(maps.device)
    if kernel not in MASK_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {list(MASK_KERNELS)}")
    lam = mask_filter(mask, grid, maps if kernel == "coherence" else None, weights)
    return NormalFit(
        fourier_filter=lam,
        spatial_mask=weights.to(lam.device),
        img_size=img_size,
        grid=grid,
        two_sided=True,
        scaling=1.0,
        meta={
            "h": "mask",
            "m": m if isinstance(m, str) else "given",
            "kernel": kernel,
            **(meta or {}),
        },
    )


def probe_error(physics, H, scaling: float = 1.0, probes: int = 4, seed: int = 0) -> float:
    """‖AᵀAx − scaling·Hx‖ / ‖AᵀAx‖ over ``probes`` seeded Gaussian probes x (H a module on the
    operator's image size)."""
    img = tuple(H.img_size)
    g = torch.Generator().manual_seed(int(seed))
    device = physics.mask.device if hasattr(physics, "mask") else "cpu"
    num = den = 0.0
    with torch.no_grad():
        for _ in range(int(probes)):
            x = torch.randn((1, *img), generator=g).to(device)
            t = physics.A_adjoint_A(x)
            r = t - scaling * H(x)
            num += float((r * r).sum())
            den += float((t * t).sum())
    return (num / max(den, 1e-30)) ** 0.5
