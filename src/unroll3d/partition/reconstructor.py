"""Patch-wise training and overlapping-window inference around any reconstructor (paper §4.4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor
from tqdm.auto import tqdm

from unroll3d.normal.wrapper import DiagCirculantWrapper
from unroll3d.partition.grid import (
    Start,
    blend_window,
    crop_patch,
    default_stride,
    draw_corner,
    grid_corners,
    is_corner,
    spatial_sizes,
)
from unroll3d.partition.physics import PartitionedPhysics, PatchNormal
from unroll3d.physics.initial import initial_reconstruction

__all__ = ["PartitionedReconstructor"]


class PartitionedReconstructor(Reconstructor):
    """Wrap any reconstructor ``base(y, physics) -> x`` for patch-wise training and inference.

    The base reconstructor only sees :class:`PartitionedPhysics` and uses
    :func:`unroll3d.physics.initial_reconstruction` for its initial iterate, ``physics.A_adjoint(y)`` and ``physics.A_adjoint_A(x)``.

    :param base_reconstructor: the patch reconstructor (e.g. an unrolled network).
    :param img_size: ``(C, *spatial)`` or ``spatial`` of the global volume.
    :param patch_size: spatial patch size: one entry per spatial axis (``-1`` or ``None``: the
        whole axis) or an int (a cube); normalised here, once (:func:`spatial_sizes`).
    :param stride: inference stride, default half overlap ``max(1, p // 2)``.
    :param blend: ``"uniform"`` (count-map average, default) or ``"triangular"``.
    :param patch_batch: number of patch positions reconstructed together at inference.
    :param first_pass: when no ``x_init`` is given, run one patch-wise pass with the initial
        reconstruction (FDK, zero-filled) as context before refinement (else that initial
        reconstruction itself is the first estimate).
    :param n_refine: refinement passes run when ``refine=True``.
    :param train_ranges: per spatial axis, inclusive bounds ``(lo, hi)`` on the training patch
        corner, or ``None`` (whole axis) — see :func:`sample_patch_start`.
    :param progress: show a tqdm bar (``None``: only on a terminal, for passes of more than 64
        patch batches).

    :Example:

    >>> import torch, deepinv as dinv
    >>> base = lambda y, physics, **kw: physics.A_adjoint(y)  # returns Ãᵀỹ
    >>> rec = PartitionedReconstructor(base, (1, 9, 9, 9), 4, progress=False)
    >>> y = torch.randn(1, 1, 9, 9, 9)
    >>> torch.allclose(rec(y, dinv.physics.Denoising()), y, atol=1e-6)  # identity physics
    True
    """

    def __init__(
        self,
        base_reconstructor: Callable,
        img_size: Sequence[int],
        patch_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        blend: str = "uniform",
        patch_batch: int = 1,
        first_pass: bool = True,
        n_refine: int = 1,
        train_ranges: Sequence[tuple[int, int] | None] | None = None,
        progress: bool | None = None,
    ):
        super().__init__()
        self.base = base_reconstructor
        self.img_size = tuple(int(s) for s in img_size)
        self.spatial, self.patch_size = spatial_sizes(self.img_size, patch_size)
        self.stride = default_stride(self.patch_size) if stride is None else stride
        self.starts = grid_corners(self.spatial, self.patch_size, self.stride)
        blend_window(self.patch_size, blend)  # validates the mode
        self.blend = blend
        if patch_batch < 1:
            raise ValueError(f"patch_batch must be >= 1, got {patch_batch}")
        self.patch_batch = int(patch_batch)
        self.first_pass = first_pass
        self.n_refine = int(n_refine)
        self.train_ranges = train_ranges
        self.progress = progress

    # -- normal operator ----------------------------------------------------------------------
    def _normal_factory(self, physics, fourier_filter, spatial_mask, normal):
        """Return ``(start -> the patch data step's normal operator) | None`` and its scaling.

        H comes in one way: as the physics, a :class:`~unroll3d.normal.DiagCirculantWrapper`
        (its H restricted to the patch, times its ``scaling``; ``fourier_filter`` and
        ``spatial_mask``, when given, are installed in it first, as on the project page).
        ``normal=False`` forces the exact ``S AᵀA Sᵀ``; a :class:`PatchNormal` replaces the
        patch normal operator, applied as it is (no scaling).
        """
        if (fourier_filter is None) != (spatial_mask is None):
            raise ValueError("give both fourier_filter and spatial_mask, or neither")
        given = fourier_filter is not None
        if given and not isinstance(physics, DiagCirculantWrapper):
            raise ValueError(
                "fourier_filter and spatial_mask are the parameters of H: pass them with a "
                f"DiagCirculantWrapper physics (unroll3d.normal), not {type(physics).__name__}"
            )
        if normal is False:
            return None, 1.0
        if normal is not None:
            if not isinstance(normal, PatchNormal):
                raise TypeError(
                    "normal must be None, False or a PatchNormal (with restrict(start, "
                    f"patch_size)), got {type(normal).__name__}"
                )
            if given:
                raise ValueError("give normal= or fourier_filter/spatial_mask, not both")
            return (lambda st: normal.restrict(st, self.patch_size)), 1.0
        if not isinstance(physics, DiagCirculantWrapper):
            return None, 1.0
        H = physics.operator(fourier_filter, spatial_mask)
        return (lambda st: H.restrict(st, self.patch_size)), physics.scaling

    def _patch_physics(
        self, physics, starts, y, context, x0, factory, scaling, anchored=False, **kwargs
    ):
        """The patch problem at ``starts`` (a corner, or a list of corners), its normal operator
        restricted from ``factory``; ``kwargs`` go to :class:`PartitionedPhysics`."""
        if is_corner(starts):
            normal_op = None if factory is None else factory(starts)
        else:
            starts = list(starts)
            normal_op = None if factory is None else [factory(st) for st in starts]
        return PartitionedPhysics(
            physics,
            self.img_size,
            starts,
            self.patch_size,
            y,
            context,
            x_init=x0,
            normal_op=normal_op,
            normal_scaling=scaling,
            normal_anchor=anchored and normal_op is not None,
            **kwargs,
        )

    def _patch_measurements(self, pphys: PartitionedPhysics) -> Tensor | None:
        """What the base gets as ``y``: ``None`` (standing for ỹ) when it declares
        ``reads_y_via_adjoint`` (it reads ``y`` only as ``physics.A_adjoint(y)`` and
        ``initial_reconstruction(physics, y)``), so a 3D MRI patch never forms ỹ; else ỹ."""
        return None if getattr(self.base, "reads_y_via_adjoint", False) else pphys.y_tilde

    # -- tiling ----------------------------------------------------------------------------------
    def _batches(self) -> list[list[Start]]:
        b = self.patch_batch
        return [self.starts[i : i + b] for i in range(0, len(self.starts), b)]

    def _bar(self, n: int, progress: bool | None, desc: str):
        show = self.progress if progress is None else progress
        # default: a bar for long passes, and only on a terminal (tqdm's disable=None), so logs
        # never fill with carriage-return updates
        disable = (None if n > 64 else True) if show is None else not show
        return tqdm(total=n, desc=desc, disable=disable, leave=False)

    def _blend(self, patch_fn: Callable, like: Tensor, progress: bool | None, desc: str) -> Tensor:
        """Run ``patch_fn(list_of_starts) -> patch-major patches`` over the grid and blend."""
        B = like.shape[0]
        w = blend_window(self.patch_size, self.blend, like.dtype, like.device)
        num = None
        den = torch.zeros(self.spatial, dtype=like.dtype, device=like.device)
        batches = self._batches()
        with self._bar(len(batches), progress, desc) as bar:
            for starts in batches:
                out = patch_fn(starts)
                if num is None:
                    num = out.new_zeros((B, out.shape[1], *self.spatial))
                for st, chunk in zip(starts, out.split(B), strict=True):
                    crop_patch(num, st, self.patch_size).add_(chunk * w)
                    crop_patch(den, st, self.patch_size).add_(w)
                bar.update(1)
        return num / den

    def apply_patchwise(
        self, fn: Callable[[Tensor], Tensor], x: Tensor, progress: bool | None = None
    ) -> Tensor:
        """Apply an image-to-image map ``fn`` patch by patch and blend (e.g. a denoiser step).

        Building block for Algorithm 1's first pass, where the prior step of an unrolled network
        runs patch-wise while its data steps run on the whole volume. Runs in the caller's grad
        mode (wrap in ``torch.no_grad()`` for inference).
        """

        def run(starts):
            patches = torch.cat([crop_patch(x, st, self.patch_size) for st in starts], dim=0)
            return fn(patches)

        return self._blend(run, x, progress, "patchwise")

    # -- inference ---------------------------------------------------------------------------
    def reconstruct_pass(
        self,
        y: Tensor,
        physics: LinearPhysics,
        context: Tensor,
        x0: Tensor | None = None,
        fourier_filter: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        normal=None,
        progress: bool | None = None,
        anchored: bool = False,
        **kwargs,
    ) -> Tensor:
        """One pass: reconstruct every patch with ``context`` outside it, then blend
        (``anchored``: H's data step anchored at each patch's initial iterate, see
        :class:`PartitionedPhysics`)."""
        factory, scaling = self._normal_factory(physics, fourier_filter, spatial_mask, normal)
        with torch.no_grad():

            def run(starts):
                pphys = self._patch_physics(
                    physics, starts, y, context, x0, factory, scaling, anchored
                )
                return self.base(self._patch_measurements(pphys), pphys, **kwargs)

            return self._blend(run, context, progress, "patches")

    def forward(
        self,
        y: Tensor,
        physics: LinearPhysics,
        fourier_filter: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        x_init: Tensor | None = None,
        refine: bool = True,
        n_refine: int | None = None,
        x0: Tensor | None = None,
        normal=None,
        progress: bool | None = None,
        anchored: bool = False,
        **kwargs,
    ) -> Tensor:
        """Reconstruct the full volume from global ``y`` and ``physics`` (runs without grad).

        1. ``x0 = initial_reconstruction(physics, y)`` (FDK, zero-filled; unless given): its crops are the patch networks' initial
           iterates (paper §10 default).
        2. First estimate: ``x_init`` when given; else a patch-wise pass with ``x0`` as context
           (``first_pass=True``), or ``x0`` itself.
        3. When ``refine``: ``n_refine`` passes, each reconstructing every patch with the current
           estimate as context (Algorithm 1, step 2), blended.

        With a :class:`~unroll3d.normal.DiagCirculantWrapper` physics (λ and m held, or given as
        ``fourier_filter``/``spatial_mask``), the patch data step uses ``scaling · S H Sᵀ``
        instead of ``S AᵀA Sᵀ`` (``normal=False``: the exact one; a :class:`PatchNormal`: that
        one); with ``anchored``, H anchored at each patch's initial iterate (one exact
        application per patch).
        Extra keyword arguments go to the base reconstructor.
        """
        n_refine = self.n_refine if n_refine is None else int(n_refine)
        opts = dict(
            fourier_filter=fourier_filter,
            spatial_mask=spatial_mask,
            normal=normal,
            progress=progress,
            anchored=anchored,
        )
        with torch.no_grad():
            if x0 is None:
                x0 = initial_reconstruction(physics, y)
            self._check_volume(x0, "initial_reconstruction(physics, y)")
            if x_init is not None:
                self._check_volume(x_init, "x_init")
                est = x_init
            elif self.first_pass:
                est = self.reconstruct_pass(y, physics, x0, x0, **opts, **kwargs)
            else:
                est = x0
            if refine:
                for _ in range(n_refine):
                    est = self.reconstruct_pass(y, physics, est, x0, **opts, **kwargs)
        return est

    def _check_volume(self, x: Tensor, name: str) -> None:
        nd = len(self.spatial)
        if x.ndim != nd + 2 or tuple(x.shape[2:]) != self.spatial:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected (B, C, "
                f"{', '.join(map(str, self.spatial))}) for img_size {self.img_size}"
            )

    # -- training ------------------------------------------------------------------------------
    def training_pair(
        self,
        y: Tensor,
        physics: LinearPhysics,
        x_true: Tensor,
        generator: torch.Generator | None = None,
        start: Start | None = None,
        x0: Tensor | None = None,
        fourier_filter: Tensor | None = None,
        spatial_mask: Tensor | None = None,
        normal=None,
        ranges: Sequence[tuple[int, int] | None] | None = None,
        anchored: bool = False,
        y_is_residual: bool = False,
        **kwargs,
    ) -> tuple[Tensor, Tensor]:
        """One partitioned training sample (paper Eq. L_PART).

        Draws a patch corner (or uses ``start``), builds ``ỹ = y − A S⊥ᵀ S⊥ x*`` from the
        ground-truth context, runs the base reconstructor on the patch problem and returns
        ``(R̃(ỹ, Ã), S x*)``; the loss ``‖estimate − target‖²`` backpropagates only through the
        patch. ``x0`` (default ``initial_reconstruction(physics, y)``, no grad) gives the initial iterate
        ``S x0``. The corner used is stored in ``self.last_start``. ``y_is_residual``: ``y`` is
        the residual ``y − A x_true`` (:class:`PartitionedPhysics`), and ``x_true`` and ``x0``
        need to be right inside the patch only.
        """
        self._check_volume(x_true, "x_true")
        if start is None:
            ranges = self.train_ranges if ranges is None else ranges
            start = draw_corner(self.spatial, self.patch_size, ranges, generator)
        start = tuple(int(s) for s in start)
        self.last_start = start
        factory, scaling = self._normal_factory(physics, fourier_filter, spatial_mask, normal)
        if x0 is None:
            with torch.no_grad():
                x0 = initial_reconstruction(physics, y)
        pphys = self._patch_physics(
            physics, start, y, x_true, x0, factory, scaling, anchored, y_is_residual=y_is_residual
        )
        estimate = self.base(self._patch_measurements(pphys), pphys, **kwargs)
        target = crop_patch(x_true, start, self.patch_size)
        return estimate, target

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"img_size={self.img_size}, patch_size={self.patch_size}, stride={self.stride}, "
            f"n_patches={len(self.starts)}, blend={self.blend!r}"
        )
