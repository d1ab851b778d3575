"""The exact patch problem ``ỹ = A Sᵀ x_patch`` as a deepinv ``LinearPhysics`` (paper §4.3).

Global operators run without an autograd graph: ``Ã``, ``Ãᵀ`` and ``ÃᵀÃ`` are wrapped in an
autograd function whose backward is the adjoint operator, so only patch-sized tensors are saved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from unroll3d.partition.grid import Start, crop_patch, embed_patch, is_corner, spatial_sizes

__all__ = ["PartitionedPhysics", "PatchNormal"]


@runtime_checkable
class PatchNormal(Protocol):
    """A normal operator that can be restricted to a patch: ``restrict(start, patch_size)``
    returns ``x_patch -> S N Sᵀ x_patch`` (e.g. :class:`unroll3d.normal.DiagCirculant`, or a
    mix of the exact operator and H). ``PartitionedReconstructor(..., normal=...)`` takes one."""

    def restrict(
        self, start: Sequence[int], patch_size: Sequence[int]
    ) -> Callable[[Tensor], Tensor]: ...


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
    - ``A_adjoint(y) = S Aᵀ y``; ``A_adjoint(None)`` is ``Ãᵀỹ``;
    - ``A_adjoint_A(x_patch) = S AᵀA Sᵀ x_patch`` exactly, or ``normal_op(x_patch)`` when given
      (a restricted normal-operator approximation, e.g. ``DiagCirculant.restrict(start, patch)``);
    - ``y_tilde = y − A S⊥ᵀ S⊥ x_context``, computed once without gradient as
      ``y − A(x_context with the patch zeroed)``, on first use (``y`` and ``x_context`` are held
      by reference: do not modify them in between), so a base that reads only the initial
      iterate ``S x_init`` (post-processing) costs no global forward;
    - ``A_dagger(y)`` is deepinv's least-squares solve on the patch; ``initial_reconstruction(y)``
      (the patch network's first iterate) is the crop ``S x_init`` when ``x_init`` is given.

    Global operators never build an autograd graph; gradients w.r.t. the patch variable are
    obtained through the adjoint (``Ãᵀ`` for ``Ã``, ``Ã`` for ``Ãᵀ``, ``ÃᵀÃ`` for itself).

    A physics with ``readout_slabs`` (3D MRI: ``A_slab``, ``A_adjoint_slab``, ``normal_slab``)
    is applied to the patch's slices along the first spatial axis only: the exact ``S AᵀA Sᵀ``
    then costs in proportion to the patch's first extent, not the volume (same numbers). With
    a (ky, kz) mask, ``Ãᵀỹ = S Aᵀy − S AᵀA S⊥ᵀS⊥x`` is computed there too, without the global
    forward that ``ỹ`` costs.

    Several patch positions can be processed at once: pass a list of corners as ``start``. Patch
    tensors then have batch ``len(start) * B`` ordered patch-major (patch ``i`` of sample ``b`` at
    index ``i * B + b``), and ``normal_op`` may be a list with one callable per corner.

    :param physics: global ``LinearPhysics`` (x: ``(B, C, *spatial)``).
    :param img_size: ``(C, *spatial)`` or ``spatial`` of the global volume.
    :param start: patch corner (tuple) or list of corners.
    :param patch_size: spatial patch size: one entry per spatial axis (``-1`` or ``None``: the
        whole axis) or an int (a cube); normalised here, once (:func:`spatial_sizes`).
    :param y: global measurements ``(B, ...)``.
    :param x_context: global volume ``(B, C, *spatial)`` whose values outside the patch are the
        context (values inside the patch are ignored).
    :param x_init: optional global initial volume; its crop is returned by
        ``initial_reconstruction``.
    :param normal_op: optional callable (or list of callables) replacing ``S AᵀA Sᵀ``.
    :param normal_scaling: factor applied to ``normal_op`` (e.g. ``‖A‖²`` when H was fitted to
        the normalised operator).
    :param bool y_is_residual: ``y`` is the whole volume's residual ``y − A x_context``
        (computed once per volume): ``ỹ = y + Ã S x_context`` then reads ``x_context`` inside
        the patch only (the same ỹ up to rounding), so a training step needs the ground truth's
        patch, not the volume.
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
        y_is_residual: bool = False,
        **kwargs,
    ):
        spatial, patch = spatial_sizes(img_size, patch_size)
        nd = len(patch)
        starts = [tuple(int(v) for v in start)] if is_corner(start) else [tuple(s) for s in start]
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
        self.batched = not is_corner(start)
        self.batch = y.shape[0]
        if normal_op is not None and callable(normal_op):
            normal_op = [normal_op] * len(starts) if len(starts) > 1 else [normal_op]
        if normal_op is not None and len(normal_op) != len(starts):
            raise ValueError(f"got {len(normal_op)} normal operators for {len(starts)} patches")
        self.normal_op = normal_op
        self.normal_scaling = normal_scaling
        self.y_is_residual = bool(y_is_residual)

        with torch.no_grad():
            self.x_init_patch = None if x_init is None else self.crop(x_init.detach())
            # ỹ is formed on first use from references (not copies) to y and x_context:
            # non-persistent buffers, so .to() and clone() carry them; ỹ itself is a buffer
            # (state_dict() forms it), so a base that never reads it costs no global forward
            self.register_buffer("_y_source", y.detach(), persistent=False)
            self.register_buffer("_context_source", x_context.detach(), persistent=False)
            self._buffers["y_tilde"] = None
            # 3D MRI with a (ky, kz) mask: Ãᵀỹ on the patch's readout slab, without ỹ
            self.context_on_slabs = self._slabs() and physics.readout_mask() is not None
            if self.context_on_slabs:
                self.register_buffer(
                    "_back_projection", self._slab_back_projection(), persistent=False
                )
            else:
                self._back_projection = None
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

    @property
    def y_tilde(self) -> Tensor:
        """``ỹ = y − A S⊥ᵀ S⊥ x_context`` (patch-major), a buffer formed on first use from
        ``y`` and ``x_context`` (do not modify them before), in fp32 outside any autocast."""
        if self._buffers.get("y_tilde") is None:
            device = self._y_source.device.type
            with torch.no_grad(), torch.autocast(device, enabled=False):
                self._buffers["y_tilde"] = self._context_corrected(
                    self._y_source, self._context_source
                )
        return self._buffers["y_tilde"]

    def _context_corrected(self, y: Tensor, x_context: Tensor) -> Tensor:
        """``y − A(x_context with the patch zeroed)``: one global forward per patch (with
        ``y_is_residual``: ``y + Ã S x_context``)."""
        n = len(self.starts)
        y_rep = y.detach() if n == 1 else y.detach().repeat(n, *([1] * (y.ndim - 1)))
        if self.y_is_residual:  # ỹ = (y − A x) + Ã S x: the patch of x_context only
            return y_rep + self.A(self.crop(x_context.detach()))
        ctx = x_context.detach().repeat(n, *([1] * (x_context.ndim - 1)))
        for i, st in enumerate(self.starts):
            crop_patch(ctx[i * self.batch : (i + 1) * self.batch], st, self.patch_size).zero_()
        return y_rep - self._global(self.physics.A, ctx)

    def _slab_back_projection(self) -> Tensor:
        """``Ãᵀỹ = S Aᵀy − S AᵀA S⊥ᵀS⊥ x`` on each patch's readout slab: AᵀA acts per readout
        slice, so only the context's slab slices enter, and ``S Aᵀy`` needs one 1D inverse FFT
        along the readout and 2D ones on the slab (no global forward). With ``y_is_residual``:
        ``S Aᵀy + S AᵀA Sᵀ S x``."""
        p0, y, ctx = self.patch_size[0], self._y_source, self._context_source
        out = []
        for st in self.starts:
            slab = self.physics.A_adjoint_slab(y, st[0], p0)
            if self.y_is_residual:
                inside = self._to_slab(crop_patch(ctx, st, self.patch_size), st)
                slab = slab + self.physics.normal_slab(inside, st[0])
            else:
                context = ctx[:, :, st[0] : st[0] + p0].clone()
                crop_patch(context, (0, *st[1:]), self.patch_size).zero_()
                slab = slab - self.physics.normal_slab(context, st[0])
            out.append(self._from_slab(slab, st))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D102
        if prefix + "y_tilde" in state_dict:  # a loaded ỹ is the data: Ãᵀỹ is formed from it
            self.y_tilde  # noqa: B018 (materialise the buffer it is loaded into)
            self._back_projection = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: D102
        self.y_tilde  # noqa: B018 (the state carries ỹ)
        super()._save_to_state_dict(destination, prefix, keep_vars)

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

    # -- readout slabs: a physics with ``A_slab``/``A_adjoint_slab``/``normal_slab`` (3D MRI) is
    # applied to the patch's slices along the first spatial axis only (same maps, less work)
    def _slabs(self) -> bool:
        return len(self.spatial) == 3 and bool(getattr(self.physics, "readout_slabs", False))

    def _per_slab(self, fn: Callable, t: Tensor) -> Tensor:
        """``fn(chunk, start)`` over the patch-major chunks, concatenated."""
        if len(self.starts) == 1:
            return fn(t, self.starts[0])
        return torch.cat(
            [fn(c, st) for c, st in zip(t.split(self.batch), self.starts, strict=True)]
        )

    def _to_slab(self, x_patch: Tensor, st: Start) -> Tensor:
        """The patch zero-padded to its full readout slices ``(B, C, P_0, N_1, N_2)``."""
        return embed_patch(x_patch, (0, *st[1:]), (self.patch_size[0], *self.spatial[1:]))

    def _from_slab(self, slab: Tensor, st: Start) -> Tensor:
        return crop_patch(slab, (0, *st[1:]), self.patch_size)

    def _fwd(self, x_patch: Tensor) -> Tensor:
        if self._slabs():
            return self._per_slab(
                lambda c, st: self.physics.A_slab(self._to_slab(c, st), st[0]), x_patch
            )
        return self._global(self.physics.A, self.embed(x_patch))

    def _adj(self, y: Tensor) -> Tensor:
        if self._slabs() and y.shape[0] == len(self.starts) * self.batch:
            p0 = self.patch_size[0]
            return self._per_slab(
                lambda c, st: self._from_slab(self.physics.A_adjoint_slab(c, st[0], p0), st), y
            )
        return self.crop(self._global(self.physics.A_adjoint, y))

    def _normal(self, x_patch: Tensor) -> Tensor:
        if self._slabs() and self.physics.readout_mask() is not None:
            return self._per_slab(
                lambda c, st: self._from_slab(
                    self.physics.normal_slab(self._to_slab(c, st), st[0]), st
                ),
                x_patch,
            )
        full = self.embed(x_patch)
        return self.crop(self._global(lambda t: self.physics.A_adjoint(self.physics.A(t)), full))

    # -- LinearPhysics interface -------------------------------------------------------------
    def A(self, x: Tensor, **kwargs) -> Tensor:
        """``Ã x = A Sᵀ x``."""
        return _linear(x, self._fwd, self._adj)

    def A_adjoint(self, y: Tensor | None, **kwargs) -> Tensor:
        """``Ãᵀ y = S Aᵀ y``; ``y=None`` stands for ``ỹ`` (on the readout-slab path ``Ãᵀỹ`` was
        computed without forming ỹ)."""
        if y is None:
            if self._back_projection is not None:
                return self._back_projection
            y = self.y_tilde
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

    def initial_reconstruction(self, y: Tensor | None, **kwargs) -> Tensor:
        """The patch network's first iterate: the crop ``S x_init`` when ``x_init`` was given,
        else ``A_dagger(y)`` (deepinv's least-squares solve; ``y=None`` stands for ``ỹ``)."""
        if self.x_init_patch is not None:
            return self.x_init_patch
        return self.A_dagger(self.y_tilde if y is None else y, **kwargs)
