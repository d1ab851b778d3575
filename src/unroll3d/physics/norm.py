"""Operator norms by the power method: ‖A‖ (:func:`operator_norm`) and ‖A‖² (:func:`sqnorm`)."""

from __future__ import annotations

import math
import warnings

import torch
from deepinv.physics import LinearPhysics

__all__ = ["operator_norm", "sqnorm"]


def operator_norm(
    physics: LinearPhysics,
    img_size=None,
    max_iter: int = 50,
    rtol: float = 1e-4,
    seed: int = 0,
    device=None,
    verbose: bool = False,
) -> float:
    r"""Spectral norm :math:`\|A\|_2` by the power method on :math:`A^\top A`, seeded.

    Unlike deepinv's ``compute_norm`` (absolute tolerance, returns the *squared* norm by default),
    this stops on a *relative* change of the estimate of :math:`\|A^\top A\|_2` and returns the
    (non-squared) norm as a float.

    :param physics: any linear physics with ``A_adjoint_A``.
    :param tuple img_size: ``(C, ...)`` of x; default ``physics.img_size``.
    :param int max_iter: maximum number of iterations.
    :param float rtol: relative tolerance on the squared-norm estimate.
    :param int seed: seed of the random start.
    """
    img_size = tuple(img_size or physics.img_size)
    if device is None:
        bufs = list(physics.buffers())
        device = bufs[0].device if bufs else "cpu"
    gen = torch.Generator("cpu").manual_seed(int(seed))
    x = torch.randn((1, *img_size), generator=gen).to(device)
    x /= torch.linalg.vector_norm(x)
    old = 0.0
    sq = 0.0
    with torch.no_grad():
        for it in range(max_iter):
            z = physics.A_adjoint_A(x)
            sq = float(torch.vdot(x.flatten(), z.flatten()).real)
            if it > 0 and abs(sq - old) <= rtol * abs(sq):
                break
            old = sq
            x = z / torch.linalg.vector_norm(z)
        else:
            warnings.warn(
                f"operator_norm: power method did not reach rtol={rtol} in {max_iter} iterations",
                stacklevel=2,
            )
    if verbose:
        print(f"operator_norm: ||A||^2 = {sq:.6g} after {it + 1} iterations")
    return math.sqrt(max(sq, 0.0))


def sqnorm(physics: LinearPhysics, img_size=None, **kwargs) -> float:
    r""":math:`\|A\|_2^2` (the Lipschitz constant of the data term's gradient), by
    :func:`operator_norm`; the one place the pipeline computes it."""
    return operator_norm(physics, img_size=img_size, **kwargs) ** 2
