"""Domain partitioning (paper §4.3-4.4): exact patch sub-problems of a global linear inverse problem.

Split a volume as ``x = Sᵀ x_patch + S⊥ᵀ x_context``. By linearity the global problem ``y = A x``
becomes an exact problem on the patch alone,

    ỹ = Ã x_patch,   Ã = A Sᵀ,   ỹ = y − A S⊥ᵀ S⊥ x_context = y − A(x_context with the patch zeroed).

:class:`PartitionedPhysics` is that patch problem as a deepinv ``LinearPhysics``, so any deepinv
reconstructor runs on it unchanged. :class:`PartitionedReconstructor` wraps any reconstructor
``base(y, physics) -> x`` for patch-wise training (:meth:`PartitionedReconstructor.training_pair`)
and inference with overlapping patches (:meth:`PartitionedReconstructor.forward`).

Memory: the global operators run without an autograd graph. ``Ã``, ``Ãᵀ`` and ``ÃᵀÃ`` are wrapped
in an autograd function whose backward is the adjoint operator (again without a graph), so only
patch-sized tensors are saved for backpropagation, however large the volume.

Conventions: tensors are ``(B, C, *spatial)`` with 2 or 3 spatial axes; ``img_size`` is
``(C, *spatial)`` or ``spatial``; ``patch_size`` and ``stride`` are spatial only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor
from tqdm.auto import tqdm

from unroll3d.physics.initial import initial_reconstruction

__all__ = [
    "patch_grid",
    "blend_window",
    "blend_normaliser",
    "crop_patch",
    "embed_patch",
    "sample_patch_start",
    "PartitionedPhysics",
    "PartitionedReconstructor",
]

Start = tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Grid, windows, crop/embed
# --------------------------------------------------------------------------------------------


def _spatial_sizes(img_size: Sequence[int], patch_size: int | Sequence[int]) -> tuple[tuple, tuple]:
    """Return ``(spatial_img_size, patch_size)`` as tuples of equal length.

    An int ``patch_size`` applies to the last 3 axes of ``img_size`` (the last 2 if ``img_size``
    has only 2 entries); a 2D problem with a channel axis needs a tuple ``patch_size``.
    """
    img_size = tuple(int(s) for s in img_size)
    if isinstance(patch_size, int):
        ndim = 2 if len(img_size) == 2 else 3
        patch_size = (patch_size,) * ndim
    patch_size = tuple(int(p) for p in patch_size)
    ndim = len(patch_size)
    if ndim not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 spatial entries, got {patch_size}")
    if len(img_size) not in (ndim, ndim + 1):
        raise ValueError(
            f"img_size {img_size} does not match patch_size {patch_size}: expected "
            f"{ndim} spatial sizes, optionally preceded by the channel count"
        )
    spatial = img_size[-ndim:]
    for n, p in zip(spatial, patch_size, strict=True):
        if p < 1 or p > n:
            raise ValueError(
                f"patch_size {patch_size} must be >= 1 and fit in the volume {spatial} on every axis"
            )
    return spatial, patch_size


def _default_stride(patch_size: Sequence[int]) -> tuple[int, ...]:
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
    spatial, patch = _spatial_sizes(img_size, patch_size)
    if stride is None:
        stride = _default_stride(patch)
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
    spatial, patch = _spatial_sizes(img_size, patch_size)
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
    spatial, patch = _spatial_sizes(img_size, patch_size)
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


# --------------------------------------------------------------------------------------------
# Graph-free linear operators with an exact adjoint backward
# --------------------------------------------------------------------------------------------


class _GraphFreeLinear(torch.autograd.Function):
    """``op(x)`` for a linear ``op`` evaluated without autograd; its derivative is ``adj``.

    Nothing is saved for backward, so a global operator applied to a patch costs no graph memory.
    The backward is this function again with ``op`` and ``adj`` swapped, so double backward
    (``create_graph=True``) and the ``torch.func`` transforms (``vjp``, ``grad``, ``jvp``,
    ``vmap``) get the exact derivatives of the linear map.
    """

    @staticmethod
    def forward(x: Tensor, op: Callable, adj: Callable) -> Tensor:  # noqa: D102
        return op(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        ctx.op, ctx.adj = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return _GraphFreeLinear.apply(grad, ctx.adj, ctx.op), None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_):  # noqa: D102
        return _GraphFreeLinear.apply(x_tangent, ctx.op, ctx.adj)

    @staticmethod
    def vmap(info, in_dims, x: Tensor, op: Callable, adj: Callable):  # noqa: D102
        # one call per slice: the batch axis of x is patch-major and must not absorb the vmap axis
        bdim = in_dims[0]
        slices = [_GraphFreeLinear.apply(s, op, adj) for s in x.unbind(bdim)]
        return torch.stack(slices), 0


def _linear(x: Tensor, op: Callable, adj: Callable) -> Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _GraphFreeLinear.apply(x, op, adj)
    with torch.no_grad():
        return op(x)


# --------------------------------------------------------------------------------------------
# Partitioned physics
# --------------------------------------------------------------------------------------------


class PartitionedPhysics(LinearPhysics):
    """The exact patch problem ``ỹ = Ã x_patch`` of a global ``LinearPhysics`` (paper §4.3).

    - ``A(x_patch) = A Sᵀ x_patch`` (patch embedded in zeros, then the global forward);
    - ``A_adjoint(y) = S Aᵀ y``;
    - ``A_adjoint_A(x_patch) = S AᵀA Sᵀ x_patch`` exactly, or ``normal_op(x_patch)`` when given
      (a restricted normal-operator approximation, e.g. ``DiagCirculant.restrict(start, patch)``);
    - ``y_tilde = y − A S⊥ᵀ S⊥ x_context``, computed once without gradient as
      ``y − A(x_context with the patch zeroed)``;
    - ``A_dagger(y)`` is deepinv's least-squares solve on the patch; ``initial_reconstruction(y)``
      (the patch network's first iterate) is the crop ``S x_init`` when ``x_init`` is given.

    Global operators never build an autograd graph; gradients w.r.t. the patch variable are
    obtained through the adjoint (``Ãᵀ`` for ``Ã``, ``Ã`` for ``Ãᵀ``, ``ÃᵀÃ`` for itself).

    Several patch positions can be processed at once: pass a list of corners as ``start``. Patch
    tensors then have batch ``len(start) * B`` ordered patch-major (patch ``i`` of sample ``b`` at
    index ``i * B + b``), and ``normal_op`` may be a list with one callable per corner.

    :param physics: global ``LinearPhysics`` (x: ``(B, C, *spatial)``).
    :param img_size: ``(C, *spatial)`` or ``spatial`` of the global volume.
    :param start: patch corner (tuple) or list of corners.
    :param patch_size: spatial patch size.
    :param y: global measurements ``(B, ...)``.
    :param x_context: global volume ``(B, C, *spatial)`` whose values outside the patch are the
        context (values inside the patch are ignored).
    :param x_init: optional global initial volume; its crop is returned by
        ``initial_reconstruction``.
    :param normal_op: optional callable (or list of callables) replacing ``S AᵀA Sᵀ``.
    :param normal_scaling: factor applied to ``normal_op`` (e.g. ``‖A‖²`` when H was fitted to
        the normalised operator).
    :param bool normal_anchor: anchor the approximation at the initial iterate ``a = S x_init``:
        ``A_adjoint_A(x) = S AᵀA Sᵀ a + s H (x − a)``, exact at ``a`` (one exact normal
        application per patch instead of one per iteration), so H's error scales with
        ``x − a`` rather than with ``x``. Needs ``normal_op`` and ``x_init``. An affine map, not
        a linear one: meant for the data step of an unrolled network.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Blur(filter=torch.ones(1, 1, 3, 3, 3) / 27, padding="circular")
    >>> x = torch.randn(1, 1, 8, 8, 8)
    >>> pp = PartitionedPhysics(physics, (1, 8, 8, 8), (2, 2, 2), (4, 4, 4), physics.A(x), x)
    >>> torch.allclose(pp.A(x[..., 2:6, 2:6, 2:6]), pp.y_tilde, atol=1e-5)  # ỹ = Ã S x
    True
    """

    def __init__(
        self,
        physics: LinearPhysics,
        img_size: Sequence[int],
        start: Start | Sequence[Start],
        patch_size: int | Sequence[int],
        y: Tensor,
        x_context: Tensor,
        x_init: Tensor | None = None,
        normal_op: Callable | Sequence[Callable] | None = None,
        normal_scaling: float = 1.0,
        normal_anchor: bool = False,
        **kwargs,
    ):
        spatial, patch = _spatial_sizes(img_size, patch_size)
        nd = len(patch)
        starts = [tuple(int(v) for v in start)] if _is_corner(start) else [tuple(s) for s in start]
        if not starts:
            raise ValueError("start must be a corner tuple or a non-empty list of corners")
        for st in starts:
            if len(st) != nd or any(
                s < 0 or s + p > n for s, p, n in zip(st, patch, spatial, strict=True)
            ):
                raise ValueError(f"patch corner {st} with size {patch} does not fit in {spatial}")
        if x_context.ndim != nd + 2 or tuple(x_context.shape[2:]) != spatial:
            raise ValueError(
                f"x_context must have shape (B, C, {', '.join(map(str, spatial))}), "
                f"got {tuple(x_context.shape)}"
            )
        if len(img_size) == nd + 1 and x_context.shape[1] != img_size[0]:
            raise ValueError(
                f"x_context has {x_context.shape[1]} channels but img_size {tuple(img_size)} "
                f"says {img_size[0]}"
            )
        if y.shape[0] != x_context.shape[0]:
            raise ValueError(
                f"batch sizes differ: y {tuple(y.shape)} vs x_context {tuple(x_context.shape)}"
            )
        channels = x_context.shape[1]
        super().__init__(img_size=(channels, *patch), **kwargs)
        self.physics = physics
        self.spatial = spatial
        self.patch_size = patch
        self.starts = starts
        self.batched = not _is_corner(start)
        self.batch = y.shape[0]
        if normal_op is not None and callable(normal_op):
            normal_op = [normal_op] * len(starts) if len(starts) > 1 else [normal_op]
        if normal_op is not None and len(normal_op) != len(starts):
            raise ValueError(f"got {len(normal_op)} normal operators for {len(starts)} patches")
        self.normal_op = normal_op
        self.normal_scaling = normal_scaling

        with torch.no_grad():
            ctx = x_context.detach().repeat(len(starts), *([1] * (x_context.ndim - 1)))
            for i, st in enumerate(starts):
                crop_patch(ctx[i * self.batch : (i + 1) * self.batch], st, patch).zero_()
            y_rep = (
                y.detach()
                if len(starts) == 1
                else y.detach().repeat(len(starts), *([1] * (y.ndim - 1)))
            )
            # a buffer: state_dict() and .to() carry it
            self.register_buffer("y_tilde", y_rep - self._global(physics.A, ctx))
            del ctx
            self.x_init_patch = None if x_init is None else self.crop(x_init.detach())
        self.normal_correction = None
        if normal_anchor:
            if normal_op is None or x_init is None:
                raise ValueError("normal_anchor needs a normal_op and an x_init (the anchor)")
            with torch.no_grad():  # S AᵀA Sᵀ a − s H a: H's error at the anchor, removed
                a = self.x_init_patch
                self.normal_correction = self._normal(a) - self.A_adjoint_A(a)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def start(self) -> Start:
        """The patch corner (first corner when batched)."""
        return self.starts[0]

    def _global(self, fn: Callable, t: Tensor) -> Tensor:
        """Apply a global operator to a patch-major batch, chunked per patch when ``B > 1``."""
        if len(self.starts) == 1 or self.batch == 1:
            return fn(t)
        return torch.cat([fn(c) for c in t.split(self.batch)], dim=0)

    def crop(self, x: Tensor) -> Tensor:
        """``S x`` for a global volume ``x`` of batch ``B`` (or ``n_patches * B``)."""
        n = len(self.starts)
        if x.shape[0] == self.batch and n > 1:
            return torch.cat([crop_patch(x, st, self.patch_size) for st in self.starts], dim=0)
        if x.shape[0] != n * self.batch:
            raise ValueError(
                f"cannot crop a batch of {x.shape[0]} for {n} patches of batch {self.batch}"
            )
        if n == 1:
            return crop_patch(x, self.starts[0], self.patch_size)
        chunks = x.split(self.batch)
        return torch.cat(
            [crop_patch(c, st, self.patch_size) for c, st in zip(chunks, self.starts, strict=True)],
            dim=0,
        )

    def embed(self, x_patch: Tensor) -> Tensor:
        """``Sᵀ x_patch``: the patch-major batch of patches embedded in zero volumes."""
        if len(self.starts) == 1:
            return embed_patch(x_patch, self.starts[0], self.spatial)
        chunks = x_patch.split(self.batch)
        if len(chunks) != len(self.starts):
            raise ValueError(
                f"patch batch {x_patch.shape[0]} is not {len(self.starts)} patches x batch {self.batch}"
            )
        return torch.cat(
            [embed_patch(c, st, self.spatial) for c, st in zip(chunks, self.starts, strict=True)],
            dim=0,
        )

    def _fwd(self, x_patch: Tensor) -> Tensor:
        return self._global(self.physics.A, self.embed(x_patch))

    def _adj(self, y: Tensor) -> Tensor:
        return self.crop(self._global(self.physics.A_adjoint, y))

    def _normal(self, x_patch: Tensor) -> Tensor:
        full = self.embed(x_patch)
        return self.crop(self._global(lambda t: self.physics.A_adjoint(self.physics.A(t)), full))

    # -- LinearPhysics interface -------------------------------------------------------------
    def A(self, x: Tensor, **kwargs) -> Tensor:
        """``Ã x = A Sᵀ x``."""
        return _linear(x, self._fwd, self._adj)

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        """``Ãᵀ y = S Aᵀ y``."""
        return _linear(y, self._adj, self._fwd)

    def A_adjoint_A(self, x: Tensor, **kwargs) -> Tensor:
        """``S AᵀA Sᵀ x`` exactly, or the restricted approximation ``normal_op`` when given
        (plus, with ``normal_anchor``, its correction at the anchor)."""
        if self.normal_op is None:
            return _linear(x, self._normal, self._normal)
        if len(self.normal_op) == 1:
            out = self.normal_op[0](x)
        else:
            out = torch.cat(
                [op(c) for op, c in zip(self.normal_op, x.split(self.batch), strict=True)], dim=0
            )
        out = out * self.normal_scaling if self.normal_scaling != 1.0 else out
        return out if self.normal_correction is None else out + self.normal_correction

    def initial_reconstruction(self, y: Tensor, **kwargs) -> Tensor:
        """The patch network's first iterate: the crop ``S x_init`` when ``x_init`` was given,
        else ``A_dagger(y)`` (deepinv's least-squares solve)."""
        if self.x_init_patch is not None:
            return self.x_init_patch
        return self.A_dagger(y, **kwargs)


def _is_corner(start) -> bool:
    """True for one corner ``(i, j, k)``, False for a list of corners."""
    return len(start) > 0 and not isinstance(start[0], Sequence)


# --------------------------------------------------------------------------------------------
# Reconstructor
# --------------------------------------------------------------------------------------------


class PartitionedReconstructor(Reconstructor):
    """Wrap any reconstructor ``base(y, physics) -> x`` for patch-wise training and inference.

    The base reconstructor only sees :class:`PartitionedPhysics` and uses
    :func:`unroll3d.physics.initial_reconstruction` for its initial iterate, ``physics.A_adjoint(y)`` and ``physics.A_adjoint_A(x)``.

    :param base_reconstructor: the patch reconstructor (e.g. an unrolled network).
    :param img_size: ``(C, *spatial)`` or ``spatial`` of the global volume.
    :param patch_size: spatial patch size (int: same on every axis).
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
        self.spatial, self.patch_size = _spatial_sizes(self.img_size, patch_size)
        self.stride = _default_stride(self.patch_size) if stride is None else stride
        self.starts = patch_grid(self.img_size, self.patch_size, self.stride)
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
        """Return ``(start -> restricted H) | None`` and the scaling for the patch data step.

        ``normal``: ``False`` forces the exact ``S AᵀA Sᵀ``; an object with ``restrict(start,
        patch_size)`` is used as H; ``None`` (auto) builds ``unroll3d.normal.DiagCirculant`` from
        ``fourier_filter``/``spatial_mask`` when given, else uses the H already held by a
        ``DiagCirculantWrapper`` physics, else the exact operator. The scaling is the
        wrapper's ``scaling`` (``‖A‖²``), 1 otherwise.
        """
        if normal is False:
            return None, 1.0
        if normal is None and (fourier_filter is not None or spatial_mask is not None):
            if fourier_filter is None or spatial_mask is None:
                raise ValueError("give both fourier_filter and spatial_mask, or neither")
            if hasattr(physics, "set_parameters") and hasattr(physics, "normal_op"):
                # a DiagCirculantWrapper: let it build H with its own options (two-sided, grid)
                op = physics.normal_op
                if (
                    op is None
                    or getattr(op, "fourier_filter", None) is not fourier_filter
                    or getattr(op, "spatial_mask", None) is not spatial_mask
                ):
                    physics.set_parameters(fourier_filter, spatial_mask)
                normal = physics.normal_op
            else:
                from unroll3d.normal import DiagCirculant  # lazy: optional module

                kw = {}
                if getattr(physics, "two_sided", None) is not None:
                    kw["two_sided"] = bool(physics.two_sided)
                normal = DiagCirculant(fourier_filter, spatial_mask, self.img_size, **kw)
        if normal is None:
            held = getattr(physics, "normal_op", None)
            if held is None or not hasattr(held, "restrict"):
                return None, 1.0
            normal = held
        scaling = getattr(physics, "scaling", 1.0)
        scaling = float(scaling) if scaling is not None else 1.0
        return (lambda st: normal.restrict(st, self.patch_size)), scaling

    def _patch_physics(self, physics, starts, y, context, x0, factory, scaling, anchored=False):
        normal_op = None if factory is None else [factory(st) for st in starts]
        return PartitionedPhysics(
            physics,
            self.img_size,
            list(starts),
            self.patch_size,
            y,
            context,
            x_init=x0,
            normal_op=normal_op,
            normal_scaling=scaling,
            normal_anchor=anchored and normal_op is not None,
        )

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
                return self.base(pphys.y_tilde, pphys, **kwargs)

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

        With ``fourier_filter``/``spatial_mask`` (or a ``normal`` object with ``restrict``), the
        patch data step uses the restricted approximation H instead of ``S AᵀA Sᵀ``; with
        ``anchored``, H anchored at each patch's initial iterate (one exact application per patch).
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
        **kwargs,
    ) -> tuple[Tensor, Tensor]:
        """One partitioned training sample (paper Eq. L_PART).

        Draws a patch corner (or uses ``start``), builds ``ỹ = y − A S⊥ᵀ S⊥ x*`` from the
        ground-truth context, runs the base reconstructor on the patch problem and returns
        ``(R̃(ỹ, Ã), S x*)``; the loss ``‖estimate − target‖²`` backpropagates only through the
        patch. ``x0`` (default ``initial_reconstruction(physics, y)``, no grad) gives the initial iterate
        ``S x0``. The corner used is stored in ``self.last_start``.
        """
        self._check_volume(x_true, "x_true")
        if start is None:
            ranges = self.train_ranges if ranges is None else ranges
            start = sample_patch_start(self.img_size, self.patch_size, ranges, generator)
        start = tuple(int(s) for s in start)
        self.last_start = start
        factory, scaling = self._normal_factory(physics, fourier_filter, spatial_mask, normal)
        if x0 is None:
            with torch.no_grad():
                x0 = initial_reconstruction(physics, y)
        normal_op = None if factory is None else factory(start)
        pphys = PartitionedPhysics(
            physics,
            self.img_size,
            start,
            self.patch_size,
            y,
            x_true,
            x_init=x0,
            normal_op=normal_op,
            normal_scaling=scaling,
            normal_anchor=anchored and normal_op is not None,
        )
        estimate = self.base(pphys.y_tilde, pphys, **kwargs)
        target = crop_patch(x_true, start, self.patch_size)
        return estimate, target

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"img_size={self.img_size}, patch_size={self.patch_size}, stride={self.stride}, "
            f"n_patches={len(self.starts)}, blend={self.blend!r}"
        )
