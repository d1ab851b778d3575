"""The learned reconstructors: unrolled PGD with a shared 3D DRUNet, and DRUNet post-processing.

Every model follows the ``(y, physics)`` contract of :class:`deepinv.models.Reconstructor`
and touches the operator only through

- ``initial_reconstruction(physics, y)`` (FDK, zero-filled Aᴴy) for the initial iterate :math:`x_0` (skipped when ``x_init`` is given),
- ``physics.A_adjoint(y)`` once,
- ``physics.A_adjoint_A(x)`` once per iteration,

so the same module runs unchanged on a global operator, a partitioned patch operator
(:class:`unroll3d.partition.PartitionedPhysics`) and the diagonal-circulant wrapper
(:class:`unroll3d.normal.DiagCirculantWrapper`, whose ``A_adjoint_A`` is :math:`s\\,H`).

Why not ``deepinv.optim.PGD(unfold=True)``: its data step calls ``A_adjoint(A x - y)``, i.e.
the exact ``A`` and ``Aᵀ`` at every iteration, which would bypass the cheap normal operator
``H`` the paper is about. The lean module below has the same contract and the same maths,
:math:`x_{k+1} = D_\\phi(x_k - \\eta_k (A^\\top A x_k - A^\\top y), \\sigma_k)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from deepinv.models import Reconstructor
from torch import nn

from unroll3d.models.drunet import DRUNet3D, DRUNetSlices, Tiling, inv_softplus
from unroll3d.physics import initial_reconstruction

__all__ = ["UnrolledPGD", "PostProcess"]


class UnrolledPGD(Tiling, Reconstructor):
    r"""Unrolled proximal gradient descent with one shared (tied) 3D DRUNet prior.

    .. math::

        x_0 = A^\dagger y,\qquad
        x_{k+1} = D_\phi\big(x_k - \eta_k (A^\top A x_k - A^\top y),\ \sigma_k\big),\quad k < K.

    The step size is :math:`\eta_k = \tau_k / L` with :math:`L = \|A\|^2` (buffer ``lipschitz``,
    1 for a normalised operator) and a learnable :math:`\tau_k > 0` initialised to 1, i.e.
    :math:`\eta_k = 1/\|A\|^2` at initialisation (docs/paper-notes.md §10). The noise level
    :math:`\sigma_k > 0` fed as DRUNet's noise-map channel is learnable per iteration. Both are
    positive through a softplus. The physics stays in fp32; with ``bf16 = True`` only the
    network runs under CUDA bf16 autocast.

    :param int K: unrolled iterations.
    :param int channels: image channels (1 CBCT, 2 MRI real/imag).
    :param Sequence[int] nc: DRUNet widths.
    :param int nb: DRUNet residual blocks per scale.
    :param float lipschitz: :math:`\|A\|^2` used to normalise the step size.
    :param float sigma_init: initial noise level of every iteration.
    :param bool residual: global skip connection around DRUNet (see :class:`DRUNet3D`).
    :param bool checkpoint: gradient checkpointing per iteration: during training only each
        iteration's input is kept and the iteration is recomputed in the backward pass, so the
        saved activations are one DRUNet call's instead of K (docs/paper-notes.md §6.2: the full-volume MRI
        baseline on one 80 GB card). Same gradients, about one more forward pass of time.

    :Example:

    >>> import torch, deepinv as dinv
    >>> physics = dinv.physics.Denoising()
    >>> model = UnrolledPGD(K=2, channels=1, nc=(4, 8, 8, 8), nb=1)
    >>> model(torch.zeros(1, 1, 8, 8, 8), physics).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(
        self,
        K: int = 3,
        channels: int = 1,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 4,
        lipschitz: float = 1.0,
        sigma_init: float = 0.05,
        residual: bool = False,
        checkpoint: bool = False,
    ):
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        self.K = int(K)
        self.denoiser = DRUNet3D(channels, nc, nb, residual=residual)
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.step_raw = nn.Parameter(torch.full((self.K,), inv_softplus(1.0)))
        self.sigma_raw = nn.Parameter(torch.full((self.K,), inv_softplus(sigma_init)))
        self.bf16 = False
        self.checkpoint = bool(checkpoint)

    #: ``y`` is read only as ``physics.A_adjoint(y)`` and ``initial_reconstruction(physics, y)``
    #: (a partitioned patch then passes ``None`` for ỹ: see ``PartitionedPhysics.A_adjoint``)
    reads_y_via_adjoint = True

    @property
    def step_sizes(self) -> torch.Tensor:
        """Current :math:`\\eta_k`, shape (K,)."""
        return F.softplus(self.step_raw) / self.lipschitz

    @property
    def sigmas(self) -> torch.Tensor:
        """Current :math:`\\sigma_k`, shape (K,)."""
        return F.softplus(self.sigma_raw)

    def forward(
        self, y: torch.Tensor, physics, x_init: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Run the K iterations; ``x_init`` replaces ``initial_reconstruction(physics, y)`` when
        given."""
        x = initial_reconstruction(physics, y) if x_init is None else x_init
        x = x.float()
        aty = physics.A_adjoint(y)
        eta = self.step_sizes
        sig = self.sigmas
        recompute = self.checkpoint and torch.is_grad_enabled()
        for k in range(self.K):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(
                    self._iteration, x, aty, eta[k], sig[k], physics, use_reentrant=False
                )
            else:
                x = self._iteration(x, aty, eta[k], sig[k], physics)
        return x

    def _iteration(self, x, aty, eta, sigma, physics) -> torch.Tensor:
        """One unrolled iteration: data step, then the prior."""
        return self._denoise(x - eta * (physics.A_adjoint_A(x) - aty), sigma)


class PostProcess(Tiling, Reconstructor):
    r"""Post-processing baseline: a DRUNet applied to :math:`x_0 = A^\dagger y`, in 3D or
    (``dim=2``) slice by slice.

    Trained on patches (the crop of the global :math:`x_0`, see
    :meth:`unroll3d.partition.PartitionedReconstructor.training_pair`); at inference on the whole
    volume, optionally tiled (:meth:`set_tiling`).
    """

    def __init__(
        self,
        channels: int = 1,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 4,
        sigma_init: float = 0.05,
        lipschitz: float = 1.0,
        residual: bool = False,
        dim: int = 3,
    ):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 (slice by slice) or 3, got {dim}")
        net = DRUNet3D if dim == 3 else DRUNetSlices
        self.denoiser = net(channels, nc, nb, residual=residual)
        self.sigma_raw = nn.Parameter(torch.tensor(inv_softplus(sigma_init)))
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.bf16 = False

    #: ``y`` is read only by ``initial_reconstruction(physics, y)`` (see :class:`UnrolledPGD`)
    reads_y_via_adjoint = True

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        x0 = initial_reconstruction(physics, y) if x_init is None else x_init
        return self._denoise(x0.float(), F.softplus(self.sigma_raw))
