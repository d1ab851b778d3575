r"""Plug-and-play α-PGD with a learned 3D DRUNet denoiser (the PnP-αPGD[3D] row of Table 1).

The denoiser is trained as a Gaussian denoiser on patches of the training volumes (noise level
drawn per sample); at test time it is the proximal step of α-PGD (relaxed proximal gradient
descent, Hurault et al. 2023), run by deepinv's optimiser (:class:`deepinv.optim.BaseOptim`)
with its :class:`deepinv.optim.PnP` prior and :class:`deepinv.optim.L2` data fidelity:

.. math::

    q_k = (1-\alpha) z_k + \alpha x_k,\qquad
    x_{k+1} = D_\sigma\big(x_k - \gamma \nabla f(q_k)\big),\qquad
    z_{k+1} = (1-\alpha) z_k + \alpha x_{k+1},

with :math:`f = \tfrac12\|Ax-y\|^2`, :math:`\gamma = \tau/\|A\|^2`; :math:`\alpha = 1` is PGD.
The iteration count, :math:`\alpha`, :math:`\tau` and :math:`\sigma` are chosen on the
validation volumes (:mod:`unroll3d.engine.train`) and stored with the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from deepinv.models import Reconstructor
from deepinv.optim import L2, BaseOptim, PnP
from deepinv.optim.optim_iterators import OptimIterator

from unroll3d.models.drunet import DRUNet3D, Tiling
from unroll3d.physics import initial_reconstruction

__all__ = ["AlphaPGDIteration", "PnPAlphaPGD", "ALGO_PARAMS"]

#: the test-time parameters chosen on the validation volumes, with their defaults.
ALGO_PARAMS = {"iters": 20, "alpha": 1.0, "stepsize": 1.0, "sigma": 0.02}


class AlphaPGDIteration(OptimIterator):
    r"""One α-PGD iteration for deepinv's :class:`~deepinv.optim.BaseOptim`: the state is
    ``(x_k, z_k)``; ``cur_params`` holds ``stepsize`` (γ), ``g_param`` (σ) and ``alpha``."""

    def __init__(self, **kwargs):
        super().__init__(has_cost=False, **kwargs)

    def forward(self, X, cur_data_fidelity, cur_prior, cur_params, y, physics, *args, **kwargs):
        x, z = X["est"][0], X["est"][1]
        a = float(cur_params["alpha"])
        gamma = cur_params["stepsize"]
        q = (1 - a) * z + a * x
        u = x - gamma * cur_data_fidelity.grad(q, y, physics)
        x_next = cur_prior.prox(u, cur_params["g_param"], gamma=gamma)
        z_next = (1 - a) * z + a * x_next
        return {"est": (x_next, z_next), "cost": None}


class PnPAlphaPGD(Tiling, Reconstructor):
    r"""PnP-αPGD with a 3D DRUNet denoiser :math:`D_\sigma` (same size as post-processing).

    :param int channels: image channels (1 CBCT, 2 MRI real/imag).
    :param Sequence[int] nc: DRUNet widths.
    :param int nb: DRUNet residual blocks per scale.
    :param float lipschitz: :math:`\|A\|^2`, normalising the step :math:`\gamma = \tau / L`.
    :param bool residual: global skip connection around the DRUNet.
    :param float sigma_max: training noise levels are drawn uniformly in ``(0, sigma_max]``.
    :param params: the test-time parameters (:data:`ALGO_PARAMS` keys).
    """

    def __init__(
        self,
        channels: int = 1,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 4,
        lipschitz: float = 1.0,
        residual: bool = False,
        sigma_max: float = 0.2,
        **params: Any,
    ):
        super().__init__()
        self.denoiser = DRUNet3D(channels, nc, nb, residual=residual)
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.sigma_max = float(sigma_max)
        self.params = dict(ALGO_PARAMS)
        self.set_algo_params(**params)
        self.bf16 = False

    def set_algo_params(self, **params: Any) -> None:
        """Set the test-time parameters; an unknown name is an error."""
        unknown = set(params) - set(ALGO_PARAMS)
        if unknown:
            raise ValueError(f"unknown PnP parameters {sorted(unknown)}; known: {ALGO_PARAMS}")
        self.params.update({k: (int(v) if k == "iters" else float(v)) for k, v in params.items()})

    def denoising_pair(
        self, x_patch: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(D_σ(x + σ n), x) for one clean patch: σ ~ U(0, sigma_max] drawn per sample,
        n ~ N(0, I), both from ``generator`` (seeded training draws)."""
        u = float(torch.rand((), generator=generator, device=generator.device))
        sigma = self.sigma_max * (1.0 - u)  # in (0, sigma_max]
        noise = torch.randn(x_patch.shape, generator=generator, device=generator.device)
        noisy = x_patch + sigma * noise.to(x_patch.device)
        return self._denoise(noisy, torch.tensor(sigma, device=x_patch.device)), x_patch

    def forward(
        self,
        y,
        physics,
        x_init: torch.Tensor | None = None,
        iterate_metric: Callable[[torch.Tensor], float] | None = None,
        **kwargs: Any,
    ):
        """Run α-PGD from ``x_init`` (default ``initial_reconstruction(physics, y)``). With ``iterate_metric(x) -> float``,
        returns ``(x, [metric of x_1, ..., x_n])`` (the validation grid's per-iteration score)."""
        p = self.params
        x0 = (initial_reconstruction(physics, y) if x_init is None else x_init).float()
        prior = PnP(denoiser=lambda v, s: self._denoise(v, torch.as_tensor(s)))
        algo = BaseOptim(
            AlphaPGDIteration(),
            params_algo={
                "stepsize": p["stepsize"] / float(self.lipschitz),
                "g_param": p["sigma"],
                "alpha": p["alpha"],
                "lambda": 1.0,
            },
            data_fidelity=L2(),
            prior=prior,
            max_iter=p["iters"],
            early_stop=False,
            custom_metrics=None
            if iterate_metric is None
            else {"score": lambda _hist, _prev, x: iterate_metric(x.unsqueeze(0))},
        )
        with torch.no_grad():
            if iterate_metric is None:
                return algo(y, physics, init=(x0, x0.clone()))
            x, metrics = algo(y, physics, init=(x0, x0.clone()), compute_metrics=True)
        return x, list(metrics["score"][0])
