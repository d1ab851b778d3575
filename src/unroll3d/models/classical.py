"""The classical reconstructions: FDK / zero-filled RSS, the adjoint, and TV with FISTA."""

from __future__ import annotations

from typing import Any

import torch
from deepinv.models import Reconstructor

from unroll3d.physics import initial_reconstruction

__all__ = ["Analytical", "ZeroFilledRSS", "Adjoint", "TVReconstructor"]


class Analytical(Reconstructor):
    """The analytical initial reconstruction ``initial_reconstruction(physics, y)`` (FDK for cone beam,
    zero-filled Aᴴy for MRI)."""

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        return initial_reconstruction(physics, y) if x_init is None else x_init


class ZeroFilledRSS(Reconstructor):
    r"""The classical MRI reconstruction: root-sum-of-squares of the zero-filled coil images,
    :math:`\sqrt{\sum_c |F^{-1} M y_c|^2}` (``MultiCoilMRI3D.rss_zero_filled``), returned as
    (real, imag) = (RSS, 0) so that the magnitude metrics read it like any MRI estimate."""

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        rss = physics.rss_zero_filled(y)
        return torch.cat([rss, torch.zeros_like(rss)], dim=1)


class Adjoint(Reconstructor):
    r""":math:`A^\top y` (CBCT back projection; MRI: the coil-combined zero-filled image Aᴴy)."""

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        return physics.A_adjoint(y)


class TVReconstructor(Reconstructor):
    r"""TV-regularised reconstruction with deepinv's FISTA and ``TVPrior``.

    Solves :math:`\min_x \tfrac12\|Ax - y\|^2 + \lambda\,\mathrm{TV}(x)` from :math:`x_0 = A^\dagger y`
    with step :math:`1/L`, :math:`L = \|A\|^2`. The regularisation is parametrised scale-free as
    :math:`\lambda = \alpha L`, so the TV prox threshold per iteration is :math:`\alpha`.

    :param float alpha: normalised regularisation weight.
    :param float lipschitz: :math:`\|A\|^2`.
    :param int iters: FISTA iterations.
    :param int inner: Chambolle-Pock iterations of each TV prox.
    """

    def __init__(
        self, alpha: float = 0.01, lipschitz: float = 1.0, iters: int = 50, inner: int = 20
    ):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.iters = int(iters)
        self.inner = int(inner)

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        from deepinv.optim import FISTA, L2, TVPrior

        x0 = initial_reconstruction(physics, y) if x_init is None else x_init
        L = float(self.lipschitz)
        prior = TVPrior(n_it_max=self.inner)
        algo = FISTA(
            data_fidelity=L2(),
            prior=prior,
            lambda_reg=float(self.alpha) * L,
            stepsize=1.0 / L,
            max_iter=self.iters,
            early_stop=False,
        )
        with torch.no_grad():
            x0 = x0.float()
            return algo(y, physics, init=(x0, x0.clone()))
