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

from unroll3d.partition.grid import (
    blend_normaliser,
    blend_window,
    crop_patch,
    embed_patch,
    patch_grid,
    sample_patch_start,
)
from unroll3d.partition.physics import PartitionedPhysics, PatchNormal
from unroll3d.partition.reconstructor import PartitionedReconstructor

__all__ = [
    "patch_grid",
    "blend_window",
    "blend_normaliser",
    "crop_patch",
    "embed_patch",
    "sample_patch_start",
    "PartitionedPhysics",
    "PartitionedReconstructor",
    "PatchNormal",
]
