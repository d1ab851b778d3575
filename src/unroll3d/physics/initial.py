"""The analytic first estimate every model starts from, kept apart from deepinv's ``A_dagger``.

deepinv's contract is that ``A_dagger`` is the least-squares pseudo-inverse (through its solvers,
honouring ``solver=``, ``max_iter=``, ``tol=``). The pipeline's initial reconstructions are
something else, cheap one-shot reconstructions: FDK for cone beam (:meth:`ConeBeam.fdk`), the
coil-combined zero-filled :math:`A^H y` for MRI (:meth:`MultiCoilMRI3D.zero_filled`), the crop
``S x_init`` for a patch problem. An operator names its own with an ``initial_reconstruction``
method; :func:`initial_reconstruction` calls it, and falls back to ``A_dagger`` for any other
deepinv physics.
"""

from __future__ import annotations

import torch

__all__ = ["initial_reconstruction"]


def initial_reconstruction(physics, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """``physics.initial_reconstruction(y)`` when the operator defines one (FDK, zero-filled
    :math:`A^H y`, the patch crop of ``x_init``), else ``physics.A_dagger(y)``.

    :param physics: a deepinv ``LinearPhysics``.
    :param torch.Tensor y: measurements of ``physics``.
    """
    own = getattr(physics, "initial_reconstruction", None)
    if callable(own):
        return own(y, **kwargs)
    return physics.A_dagger(y, **kwargs)
