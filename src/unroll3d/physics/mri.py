"""3D multi-coil Cartesian MRI on top of :class:`deepinv.physics.MultiCoilMRI` (``three_d=True``).

deepinv gives the operator :math:`y_n = \\mathrm{diag}(p) F S_n x` with a centred orthonormal 3D
FFT (``ifftshift → fftn(norm="ortho") → fftshift`` over the last three axes), x of shape
``(B, 2, D, H, W)`` (real, imaginary), complex coil maps ``(B, N, D, H, W)`` and measurements
``(B, 2, N, D, H, W)``. This module adds what the paper's setting needs:

* the readout along ``D`` fully sampled and a 2D ``(ky, kz) = (H, W)`` undersampling mask
  broadcast along it (:func:`poisson_disc_mask`: seeded variable-density Poisson-disc sampling
  with a fully sampled calibration centre and an exact number of samples, so the acceleration is
  the requested R up to rounding);
* the partial-kz acquisition of the Calgary-Campinas data, a known zero block
  (:func:`partial_kz_mask`);
* coil sensitivities from the calibration region (:func:`estimate_coil_maps`: low-resolution coil
  images from a Hann-windowed centre of k-space, divided by their root-sum-of-squares, a
  published simple alternative to ESPIRiT that needs no extra dependency);
* the zero-filled reconstructions (:meth:`MultiCoilMRI3D.zero_filled`, the coil-combined
  :math:`A^H y`, the models' first estimate; :meth:`MultiCoilMRI3D.rss_zero_filled`, the
  root-sum-of-squares magnitude) and a k-space scale helper (:func:`kspace_scale`). ``A_dagger``
  stays deepinv's least-squares (SENSE) solve.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from deepinv.physics import MultiCoilMRI

__all__ = [
    "MultiCoilMRI3D",
    "estimate_coil_maps",
    "kspace_scale",
    "partial_kz_mask",
    "poisson_disc_mask",
    "rss_normalize",
]


# ---- sampling masks ---------------------------------------------------------------------------
def _calib_region(shape, calib) -> np.ndarray:
    """Boolean centred calibration region: an int is a circle radius in pixels (DIRECT's
    Calgary-Campinas masks use radius 18), a pair ``(cy, cz)`` a centred rectangle."""
    ny, nz = shape
    ky = np.arange(ny) - ny // 2
    kz = np.arange(nz) - nz // 2
    if np.ndim(calib) == 0:
        r = float(calib)
        return (ky[:, None] ** 2 + kz[None, :] ** 2) <= r * r
    cy, cz = (int(c) for c in calib)
    out = np.zeros(shape, dtype=bool)
    out[ny // 2 - cy // 2 : ny // 2 - cy // 2 + cy, nz // 2 - cz // 2 : nz // 2 - cz // 2 + cz] = (
        True
    )
    return out


def _conflict_edges(pos, rr):
    """Conflicts of the greedy pass: ``(earlier, later, d²)`` for every pair of visit positions
    whose squared distance d² is below ``rr`` of the later cell, one vectorised pass per integer
    offset inside the largest radius."""
    ny, nz = pos.shape
    rr_max = float(rr.max())
    w = int(math.ceil(math.sqrt(rr_max))) + 1 if rr_max > 0 else 0
    src, dst, dist2 = [], [], []
    for di in range(-w, w + 1):
        for dj in range(-w, w + 1):
            d2 = di * di + dj * dj
            if d2 == 0 or not d2 < rr_max or abs(di) >= ny or abs(dj) >= nz:
                continue
            later = (slice(max(0, -di), ny - max(0, di)), slice(max(0, -dj), nz - max(0, dj)))
            earlier = (slice(max(0, di), ny - max(0, -di)), slice(max(0, dj), nz - max(0, -dj)))
            p_later, p_earlier = pos[later], pos[earlier]
            hit = (p_earlier < p_later) & (d2 < rr[later])
            src.append(p_earlier[hit])
            dst.append(p_later[hit])
            dist2.append(np.full(len(src[-1]), d2, dtype=np.int32))
    if not src:
        return (np.zeros(0, np.int32),) * 3
    return np.concatenate(src), np.concatenate(dst), np.concatenate(dist2)


def _greedy_keep(n, src, dst):
    """The greedy pass over visit positions 0..n-1 (keep one unless a kept earlier one conflicts)
    in parallel rounds: a position with no undecided earlier conflict is kept (all those are
    dropped), and every later position it conflicts with is dropped. Returns the kept flags."""
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 dropped
    while True:
        blocked = np.zeros(n, bool)
        blocked[dst] = True
        keep = (state == 0) & ~blocked
        state[keep] = 1
        state[dst[keep[src]]] = 2
        live = (state[src] == 0) & (state[dst] == 0)
        src, dst = src[live], dst[live]
        if not (state == 0).any():
            return state == 1


class _DartThrower:
    """Greedy Poisson-disc selection at a radius scale r0: visit every cell in ``order``, keep
    one if no kept cell lies closer than its radius ``r0 · profile`` (squared distance <
    radius²); radius 0 is always kept. :meth:`kept` gives the kept flat indices in visit order,
    those of the sequential greedy, computed in vectorised rounds. The conflicts at a larger r0
    hold those at a smaller one, so a bisection filters the last ones ≥ r0 instead of
    searching the grid again."""

    def __init__(self, order, profile, fixed, shape):
        self.order, self.profile, self.fixed, self.shape = order, profile, fixed, shape
        self.pos = np.empty(len(order), dtype=np.int32)  # int32: half the memory traffic
        self.pos[order] = np.arange(len(order), dtype=np.int32)
        self.edges = {}  # r0 -> (src, dst, d²), at most two kept
        self.runs = {}

    def kept(self, r0: float) -> np.ndarray:
        if r0 in self.runs:
            return self.runs[r0]
        rad = r0 * self.profile
        rad[self.fixed] = 0.0
        rr = rad * rad
        above = [r for r in self.edges if r >= r0]
        if above:
            src, dst, d2 = self.edges[min(above)]
            hit = d2 < rr[self.order][dst]  # rr of each edge's later cell (by visit position)
            edges = (src[hit], dst[hit], d2[hit])
            self.edges = {min(above): self.edges[min(above)], r0: edges}
        else:
            edges = _conflict_edges(self.pos.reshape(self.shape), rr.reshape(self.shape))
            self.edges = {r0: edges}
        self.runs[r0] = self.order[_greedy_keep(len(self.order), edges[0], edges[1])]
        return self.runs[r0]


def poisson_disc_mask(
    shape_kykz,
    acceleration: float,
    calib=8,
    seed: int = 0,
    density_power: float = 1.0,
) -> torch.Tensor:
    """Seeded variable-density Poisson-disc mask in the (ky, kz) plane with a full centre.

    The calibration region is fully sampled; the remaining samples are placed by dart throwing
    in a random order with a minimum distance growing linearly with the normalised k-space
    radius ρ (``r(ρ) = r0 (1 + 3 ρ^density_power)``); ``r0`` is found by bisection and the last
    accepted samples are dropped, so the mask has exactly ``round(ny nz / R)`` samples.

    :param tuple shape_kykz: ``(ny, nz)``.
    :param float acceleration: R ≥ 1 over the whole (ky, kz) grid.
    :param calib: calibration region, an int radius (circle) or ``(cy, cz)`` (rectangle).
    :param int seed: random seed.
    :param float density_power: shape of the density fall-off.
    :return: float32 tensor ``(ny, nz)`` of 0/1.
    """
    ny, nz = (int(s) for s in shape_kykz)
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1; got {acceleration}")
    total = ny * nz
    target = int(round(total / float(acceleration)))
    centre = _calib_region((ny, nz), calib)
    n_calib = int(centre.sum())
    if n_calib > target:
        raise ValueError(
            f"the calibration region ({n_calib} samples) exceeds the budget of {target} samples "
            f"for R={acceleration} on a {ny}x{nz} grid; use a smaller calib"
        )
    if target == total:
        return torch.ones(ny, nz)
    rng = np.random.default_rng(seed)
    ky = (np.arange(ny) - ny // 2) / (ny / 2)
    kz = (np.arange(nz) - nz // 2) / (nz / 2)
    rho = np.sqrt(ky[:, None] ** 2 + kz[None, :] ** 2) / math.sqrt(2)
    profile = (1.0 + 3.0 * rho**density_power).reshape(-1)
    cand = np.flatnonzero(~centre.reshape(-1))
    order = cand[rng.permutation(len(cand))]
    need = target - n_calib

    # calibration samples count as already placed (radius 0: kept first, never dropped)
    grid_order = np.concatenate([np.flatnonzero(centre.reshape(-1)), order])
    thrower = _DartThrower(grid_order, profile, centre.reshape(-1), (ny, nz))

    def run(r0):
        return thrower.kept(r0)[n_calib:]

    lo, hi = 0.0, 1.0
    while len(run(hi)) >= need and hi < max(ny, nz):
        lo, hi = hi, hi * 2
    kept = run(lo)
    for _ in range(14):  # largest r0 that still gives enough samples
        mid = 0.5 * (lo + hi)
        k = run(mid)
        if len(k) >= need:
            lo, kept = mid, k
        else:
            hi = mid
    mask = centre.reshape(-1).copy()
    mask[np.asarray(kept[:need], dtype=np.int64)] = True
    return torch.from_numpy(mask.reshape(ny, nz).astype(np.float32))


def partial_kz_mask(shape_kykz, fraction: float = 0.85) -> torch.Tensor:
    """Known zero block of a partial-Fourier kz acquisition: ones for ``kz < ceil(fraction nz)``.

    Calgary-Campinas acquired about 85 % of kz; DIRECT zeroes ``kz >= ceil(0.85 nz)``. Multiply
    the sampling mask by this to exclude the never-acquired block from the operator.
    """
    ny, nz = (int(s) for s in shape_kykz)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    out = torch.ones(ny, nz)
    out[:, int(math.ceil(fraction * nz)) :] = 0
    return out


# ---- coil maps --------------------------------------------------------------------------------
def _as_complex_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """(B, 2, N, D, H, W) real or (B, N, D, H, W) complex -> complex (B, N, D, H, W)."""
    if kspace.is_complex():
        if kspace.ndim == 4:
            kspace = kspace[None]
        if kspace.ndim != 5:
            raise ValueError(f"complex k-space must be (B, N, D, H, W); got {tuple(kspace.shape)}")
        return kspace
    if kspace.ndim != 6 or kspace.shape[1] != 2:
        raise ValueError(
            f"real k-space must be (B, 2, N, D, H, W) (real/imaginary in dim 1); "
            f"got {tuple(kspace.shape)}"
        )
    return torch.view_as_complex(kspace.moveaxis(1, -1).contiguous())


def rss_normalize(coil_images: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Divide complex coil images ``(B, N, ...)`` by their root-sum-of-squares over N."""
    rss = torch.sqrt((coil_images.abs() ** 2).sum(1, keepdim=True))
    if eps == 0.0:
        eps = float(torch.finfo(rss.dtype).tiny) ** 0.5
    return coil_images / torch.clamp(rss, min=eps)


def estimate_coil_maps(
    kspace: torch.Tensor,
    calib=8,
    readout_window: int | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Coil sensitivities from the fully sampled calibration centre of k-space.

    Low-resolution coil images are the centred inverse FFT of the k-space multiplied by a Hann
    window covering the calibration region in (ky, kz) (and, optionally, ``readout_window``
    samples along the readout); the maps are these images divided by their root-sum-of-squares,
    so :math:`\\sum_n |s_n|^2 = 1` wherever the object has signal ("RSS-normalised low-resolution
    maps", the usual ESPIRiT-free estimate).

    :param torch.Tensor kspace: ``(B, 2, N, D, H, W)`` (deepinv's real layout) or complex
        ``(B, N, D, H, W)`` centred 3D k-space.
    :param calib: calibration size in (ky, kz): an int radius or ``(cy, cz)``.
    :param int readout_window: width of a Hann window along the readout D (``None``: none).
    :param float threshold: zero the maps where the low-resolution RSS is below ``threshold``
        times its maximum (0 keeps every voxel).
    :return: complex64 tensor ``(B, N, D, H, W)``.
    """
    k = _as_complex_kspace(kspace).to(torch.complex64)
    _, _, d, h, w = k.shape
    if np.ndim(calib) == 0:
        cy = cz = 2 * int(math.ceil(float(calib)))
    else:
        cy, cz = (int(c) for c in calib)

    def hann(n, width):
        win = torch.zeros(n)
        width = max(1, min(int(width), n))
        win[n // 2 - width // 2 : n // 2 - width // 2 + width] = torch.hann_window(
            width + 2, periodic=False
        )[1:-1]
        return win

    window = hann(h, cy)[:, None] * hann(w, cz)[None, :]
    window = window[None, None, None]
    if readout_window is not None:
        window = window * hann(d, readout_window)[None, None, :, None, None]
    low = MultiCoilMRI.ifft(k * window.to(k.device), dim=(-3, -2, -1))
    maps = rss_normalize(low)
    if threshold > 0:
        rss = torch.sqrt((low.abs() ** 2).sum(1, keepdim=True))
        maps = maps * (rss > threshold * rss.amax(dim=(-3, -2, -1), keepdim=True))
    return maps


def kspace_scale(
    y: torch.Tensor, physics, quantile: float = 0.99, on_device: bool = False
) -> float | torch.Tensor:
    """Scale factor such that the zero-filled reconstruction of ``y / scale`` has its
    ``quantile`` magnitude at 1 (a per-volume normalisation; store it with the data).
    ``on_device``: the 0-dim tensor where ``y`` is, unread and unchecked (no host sync)."""
    x = physics.zero_filled(y)
    mag = torch.sqrt((x**2).sum(1)).flatten()
    if mag.numel() > 2**24:
        pick = torch.randperm(mag.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]
        mag = mag[pick.to(mag.device, non_blocking=True)]
    q = torch.quantile(mag.float(), quantile)
    if on_device:
        return q
    s = float(q)
    if not s > 0:
        raise ValueError("k-space is all zeros; cannot normalise")
    return s


# ---- the operator -----------------------------------------------------------------------------
class MultiCoilMRI3D(MultiCoilMRI):
    """3D multi-coil Cartesian MRI with a (ky, kz) mask broadcast along the readout D.

    :param torch.Tensor mask: ``(H, W)`` (ky, kz) sampling mask, or a full ``(D, H, W)`` mask.
    :param torch.Tensor coil_maps: complex ``(N, D, H, W)`` or ``(B, N, D, H, W)``.
    :param tuple img_size: ``(2, D, H, W)`` or ``(D, H, W)``.
    :param device: torch device.

    x is ``(B, 2, D, H, W)``; y is ``(B, 2, N, D, H, W)``; ``A_dagger`` is deepinv's least-squares
    (SENSE) solve; :meth:`zero_filled` (:math:`A^H y`) is the models' first estimate.

    :Example:

    >>> import torch
    >>> from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask
    >>> mask = poisson_disc_mask((16, 12), acceleration=4, calib=2, seed=0)
    >>> maps = torch.ones(2, 4, 16, 12, dtype=torch.complex64) / 2**0.5
    >>> physics = MultiCoilMRI3D(mask, maps, (4, 16, 12))
    >>> physics.A(torch.ones(1, 2, 4, 16, 12)).shape
    torch.Size([1, 2, 2, 4, 16, 12])
    """

    def __init__(self, mask, coil_maps, img_size, device="cpu", **kwargs):
        img_size = tuple(int(n) for n in img_size)
        if len(img_size) == 3:
            img_size = (2, *img_size)
        if len(img_size) != 4 or img_size[0] != 2:
            raise ValueError(f"img_size must be (2, D, H, W) or (D, H, W); got {img_size}")
        _, d, h, w = img_size
        mask = torch.as_tensor(mask, dtype=torch.float32)
        kykz_mask = mask.shape == (h, w)
        if kykz_mask:
            mask = mask[None].expand(d, h, w)
        if tuple(mask.shape[-3:]) != (d, h, w):
            raise ValueError(
                f"mask must be (H, W) = {(h, w)} or (D, H, W) = {(d, h, w)}; got {tuple(mask.shape)}"
            )
        mask = mask.contiguous()
        coil_maps = torch.as_tensor(coil_maps)
        if not coil_maps.is_complex():
            raise ValueError("coil_maps must be a complex tensor (N, D, H, W) or (B, N, D, H, W)")
        if tuple(coil_maps.shape[-3:]) != (d, h, w) or coil_maps.ndim not in (4, 5):
            raise ValueError(
                f"coil_maps must be (N, D, H, W) or (B, N, D, H, W) with (D, H, W) = {(d, h, w)}; "
                f"got {tuple(coil_maps.shape)}"
            )
        super().__init__(
            mask=mask,
            coil_maps=coil_maps.to(torch.complex64),
            img_size=img_size,
            three_d=True,
            device=device,
            **kwargs,
        )
        if kykz_mask:  # the same on every readout slice by construction: no check (host sync)
            self._readout_checked, self._readout_version = self.mask, self.mask._version
            self._readout_same = True

    @staticmethod
    def to_torch_complex(x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, ...)`` real → ``(B, ...)`` complex: deepinv's values, built without
        ``view_as_complex`` so that ``torch.func.vmap`` runs through the operator."""
        return torch.complex(x[:, 0], x[:, 1])

    @staticmethod
    def from_torch_complex(x: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` complex → ``(B, 2, ...)`` real (vmap-able, as :meth:`to_torch_complex`)."""
        return torch.stack([x.real, x.imag], dim=1)

    @property
    def n_coils(self) -> int:
        return int(self.coil_maps.shape[1])

    @property
    def acceleration(self) -> float:
        """Acceleration over the (ky, kz) grid (total / sampled)."""
        m = self.mask[0, 0]
        return float(m.numel() / m.sum())

    def rss_zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        r"""Root-sum-of-squares of the zero-filled coil images, :math:`\sqrt{\sum_c
        |F^{-1} M y_c|^2}`, shape ``(B, 1, D, H, W)`` (deepinv's ``A_adjoint(y, rss=True)``
        rejects 3D data)."""
        my = self.to_torch_complex(self.mask[:, :, None] * y)  # (B, N, D, H, W)
        coil_images = self.ifft(my, dim=(-3, -2, -1))
        return coil_images.abs().square().sum(dim=1, keepdim=True).sqrt()

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Coil-combined zero-filled reconstruction :math:`A^H y`, ``(B, 2, D, H, W)`` (the exact
        inverse for R = 1 and RSS-normalised maps)."""
        return self.A_adjoint(y)

    def initial_reconstruction(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The models' first estimate: :meth:`zero_filled` (``A_dagger`` is the least-squares
        one)."""
        return self.zero_filled(y)

    # ---- readout slabs: the operator on a few readout slices ----------------------------------
    # The centred 3D FFT is the product of centred 1D FFTs along D, H and W. A (ky, kz) mask
    # commutes with the one along D, so AᵀA = Σ_c S_cᴴ F_HWᴴ M² F_HW S_c acts on each readout
    # slice alone; A and Aᵀ of a signal living on a slab need one 1D FFT along D of the full
    # k-space and 2D FFTs on the slab only.
    #: this physics has the readout-slab operators below (a domain-partitioned patch uses them)
    readout_slabs = True

    def readout_mask(self) -> torch.Tensor | None:
        """The (ky, kz) mask ``(B_m, H, W)`` when the mask is the same on every readout slice (and
        in both channels), else None. Checked once per mask tensor (one host sync)."""
        m = self.mask
        if getattr(self, "_readout_checked", None) is not m or self._readout_version != m._version:
            first = m[:, :1, :1]
            self._readout_same = bool(torch.equal(m, first.expand_as(m)))
            self._readout_checked, self._readout_version = m, m._version  # a reference: no reuse
        return m[:, 0, 0] if self._readout_same else None

    def _slab_maps(self, first: int, length: int) -> torch.Tensor:
        d = self.coil_maps.shape[-3]
        if not (0 <= first and length >= 1 and first + length <= d):
            raise ValueError(f"readout slab [{first}, {first + length}) is outside 0..{d}")
        return self.coil_maps[:, :, first : first + length]

    def normal_slab(self, x_slab: torch.Tensor, first: int) -> torch.Tensor | None:
        """``(AᵀA x)`` on readout slices ``first : first + L`` for an ``x`` that is zero outside
        them: ``x_slab`` is ``(B, 2, L, H, W)``. Exact because the mask does not depend on kx;
        None when it does (:meth:`readout_mask`)."""
        m = self.readout_mask()
        if m is None:
            return None
        maps = self._slab_maps(first, x_slab.shape[-3])
        k = self.fft(maps * self.to_torch_complex(x_slab)[:, None], dim=(-2, -1))
        k = k * (m * m)[:, None, None]  # A applies M and Aᵀ applies it again
        img = self.ifft(k, dim=(-2, -1))
        return self.from_torch_complex((maps.conj() * img).sum(1))

    def A_slab(self, x_slab: torch.Tensor, first: int) -> torch.Tensor:
        """``A x`` (full k-space ``(B, 2, N, D, H, W)``) for an ``x`` that is zero outside the
        readout slices ``first : first + L``; ``x_slab`` is ``(B, 2, L, H, W)``. Exact for any
        mask."""
        maps = self._slab_maps(first, x_slab.shape[-3])
        k2 = self.fft(maps * self.to_torch_complex(x_slab)[:, None], dim=(-2, -1))
        full = k2.new_zeros((*k2.shape[:2], self.coil_maps.shape[-3], *k2.shape[-2:]))
        full[:, :, first : first + k2.shape[-3]] = k2
        return self.mask[:, :, None] * self.from_torch_complex(self.fft(full, dim=(-3,)))

    def A_adjoint_slab(self, y: torch.Tensor, first: int, length: int) -> torch.Tensor:
        """``Aᵀ y`` on the readout slices ``first : first + length`` only, ``(B, 2, L, H, W)``.
        Exact for any mask: the centred inverse DFT along D is needed at ``L`` positions only,
        a ``(L, D)`` matrix applied to the sampled (ky, kz) columns of the k-space
        (:meth:`_sampled_columns`), then 2D inverse FFTs on the slab."""
        maps = self._slab_maps(first, length)
        d, h, w = self.coil_maps.shape[-3:]
        cols = self._sampled_columns()
        flat = y.reshape(*y.shape[:4], h * w)  # (B, 2, N, D, H W)
        mask = self.mask.reshape(*self.mask.shape[:2], 1, d, h * w)  # (B_m, 2, 1, D, H W)
        if cols is not None:  # unsampled columns are zero: leave them out
            flat, mask = flat[..., cols], mask[..., cols]
        k = torch.complex(flat[:, 0] * mask[:, 0], flat[:, 1] * mask[:, 1])  # (B, N, D, S)
        part = torch.matmul(self._readout_idft(first, length, k), k)  # (B, N, L, S)
        if cols is not None:
            hybrid = part.new_zeros((*part.shape[:3], h * w))
            hybrid[..., cols] = part
        else:
            hybrid = part
        img = self.ifft(hybrid.reshape(*part.shape[:3], h, w), dim=(-2, -1))
        return self.from_torch_complex((maps.conj() * img).sum(1))

    def _readout_idft(self, first: int, length: int, like: torch.Tensor) -> torch.Tensor:
        """Rows ``first : first + length`` of the centred orthonormal inverse DFT along D, as
        the operator applies it (its columns are the inverse FFTs of the unit vectors), in
        ``like``'s dtype and device."""
        d = self.coil_maps.shape[-3]
        unit = torch.eye(d, dtype=like.dtype, device=like.device).reshape(d, d, 1, 1)
        return self.ifft(unit, dim=(-3,))[:, first : first + length, 0, 0].T

    def _sampled_columns(self) -> torch.Tensor | None:
        """Flat (ky, kz) indices where the mask samples some readout position, or None (use
        every column): found for a mask on the CPU only (elsewhere a host sync), once per mask
        tensor."""
        m = self.mask
        if m.device.type != "cpu":
            return None
        if getattr(self, "_columns_of", None) is not m or self._columns_version != m._version:
            sampled = (m != 0).flatten(0, -3).any(dim=0).reshape(-1)
            self._columns = torch.nonzero(sampled).squeeze(1)
            self._columns_of, self._columns_version = m, m._version  # a reference: no reuse
        return self._columns
