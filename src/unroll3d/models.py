"""Reconstruction models: unrolled PGD with a shared 3D DRUNet, baselines and the variant registry.

Every model follows the ``(y, physics)`` contract of :class:`deepinv.models.Reconstructor`
and touches the operator only through

- ``physics.A_dagger(y)`` for the initial iterate :math:`x_0` (skipped when ``x_init`` is given),
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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from deepinv.models import Reconstructor
from torch import nn

from unroll3d.config import section_defaults, train_settings
from unroll3d.variants import VARIANTS, VariantSpec, variant_spec

__all__ = [
    "DRUNet3D",
    "UnrolledPGD",
    "PostProcess",
    "Analytical",
    "TVReconstructor",
    "VariantSpec",
    "VARIANTS",
    "variant_spec",
    "build_variant",
    "BUILDERS",
    "BuildContext",
    "resolve_model_config",
    "apply_tiled",
    "count_parameters",
]


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


class DRUNet3D(nn.Module):
    """A 3D :class:`deepinv.models.DRUNet` with padding to a multiple of 8 and a noise-level map.

    deepinv's ``DRUNet.forward`` pads by replication to a multiple of 16 only for small inputs and
    refuses 3D inputs >= 64 that are not multiples of 8 in eval mode. This wrapper always pads
    (replicate) each spatial axis to a multiple of ``multiple`` (8 = three 2× down-samplings),
    appends the constant noise-level channel and calls ``forward_unet``, then crops back.

    :param int channels: image channels (1 for CBCT, 2 = real/imag for MRI).
    :param Sequence[int] nc: widths of the 4 scales.
    :param int nb: residual blocks per scale.
    :param int multiple: padding multiple.
    :param bool residual: return ``x + net(x)`` (a global skip, ours) instead of ``net(x)``;
        the network then starts close to the identity, which matters for short trainings.
    """

    def __init__(
        self,
        channels: int = 1,
        nc: Sequence[int] = (64, 128, 256, 512),
        nb: int = 4,
        multiple: int = 8,
        residual: bool = False,
    ):
        super().__init__()
        from deepinv.models import DRUNet

        if len(nc) != 4:
            raise ValueError(f"DRUNet needs 4 widths (one per scale), got nc={list(nc)}")
        self.net = DRUNet(
            in_channels=channels,
            out_channels=channels,
            nc=tuple(int(c) for c in nc),
            nb=int(nb),
            pretrained=None,
            dim=3,
        )
        self.channels = channels
        self.multiple = multiple
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Denoise ``x`` (B, C, D, H, W) at noise level ``sigma`` (scalar)."""
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"DRUNet3D expects (B, {self.channels}, D, H, W), got {tuple(x.shape)}"
            )
        spatial = x.shape[2:]
        pad = [(-s) % self.multiple for s in spatial]
        if any(pad):
            # F.pad takes the last axis first.
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(1, 1, 1, 1, 1)
        noise_map = sig.expand(x.shape[0], 1, *x.shape[2:])
        out = self.net.forward_unet(torch.cat((x, noise_map), dim=1))
        if self.residual:
            out = out + x
        return out[..., : spatial[0], : spatial[1], : spatial[2]]


class DRUNetSlices(nn.Module):
    """A 2D DRUNet applied to each axial slice of a volume (DRUNet[2D] post-processing):
    ``(B, C, D, H, W)`` → the D slices ``(B·D, C, H, W)`` in one batch, padded (replicate) to a
    multiple of 8 in-plane, with the noise-level channel; the slices go back in their order.

    :param int channels: image channels (1 CBCT, 2 = real/imag for MRI).
    :param Sequence[int] nc: widths of the 4 scales.
    :param int nb: residual blocks per scale.
    :param bool residual: return ``x + net(x)``.
    """

    def __init__(self, channels=1, nc=(64, 128, 256, 512), nb=4, multiple=8, residual=False):
        super().__init__()
        from deepinv.models import DRUNet

        if len(nc) != 4:
            raise ValueError(f"DRUNet needs 4 widths (one per scale), got nc={list(nc)}")
        self.net = DRUNet(
            channels, channels, nc=tuple(int(c) for c in nc), nb=int(nb), pretrained=None, dim=2
        )
        self.channels, self.multiple, self.residual = channels, multiple, bool(residual)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ValueError(
                f"DRUNetSlices expects (B, {self.channels}, D, H, W), got {tuple(x.shape)}"
            )
        b, c, d, h, w = x.shape
        s = x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        pad = [(-n) % self.multiple for n in (h, w)]
        if any(pad):
            s = F.pad(s, (0, pad[1], 0, pad[0]), mode="replicate")
        sig = torch.as_tensor(sigma, dtype=s.dtype, device=s.device).reshape(1, 1, 1, 1)
        out = self.net.forward_unet(torch.cat((s, sig.expand(s.shape[0], 1, *s.shape[2:])), 1))
        if self.residual:
            out = out + s
        out = out[..., :h, :w].reshape(b, d, c, h, w).permute(0, 2, 1, 3, 4)
        return out.contiguous()


def apply_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    patch_size: Sequence[int],
    stride: Sequence[int] | None = None,
) -> torch.Tensor:
    """Apply a shape-preserving ``fn`` patch by patch and average overlaps (count map).

    The patch grid is ``stride = patch // 2`` by default with the last patch snapped to the end
    of each axis; patches larger than the volume are clipped to it.

    :param Callable fn: maps (B, C, *p) to (B, C, *p).
    :param torch.Tensor x: (B, C, D, H, W).
    :param Sequence[int] patch_size: (pd, ph, pw).
    :param Sequence[int] stride: defaults to half the patch.
    """
    spatial = x.shape[2:]
    patch = [min(int(p), int(s)) for p, s in zip(patch_size, spatial, strict=True)]
    stride = [max(1, p // 2) for p in patch] if stride is None else [int(s) for s in stride]
    starts = []
    for n, p, s in zip(spatial, patch, stride, strict=True):
        st = list(range(0, n - p + 1, s))
        if st[-1] != n - p:
            st.append(n - p)
        starts.append(st)
    out = torch.zeros_like(x)
    count = torch.zeros((1, 1, *spatial), dtype=x.dtype, device=x.device)
    for z in starts[0]:
        for yy in starts[1]:
            for xx in starts[2]:
                sl = (
                    Ellipsis,
                    slice(z, z + patch[0]),
                    slice(yy, yy + patch[1]),
                    slice(xx, xx + patch[2]),
                )
                out[sl] += fn(x[sl])
                count[sl] += 1
    return out / count


class _Tiling:
    """Mixin: optional patch-wise application of the denoiser (no-grad inference only)."""

    tiler: Callable | None = None

    def set_tiling(self, tiler: Callable | Sequence[int] | None, stride=None):
        """Apply the prior patch by patch when gradients are off; ``None`` disables.

        :param tiler: ``tiler(fn, x) -> x`` (e.g. ``PartitionedReconstructor.apply_patchwise``)
            or a patch size for :func:`apply_tiled`.
        """
        if tiler is None or callable(tiler):
            self.tiler = tiler
        else:
            patch = tuple(int(p) for p in tiler)
            self.tiler = lambda fn, x: apply_tiled(fn, x, patch, stride)
        return self

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        amp = bool(getattr(self, "bf16", False)) and x.is_cuda

        def fn(v):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = self.denoiser(v, sigma)
            return out.float()

        if self.tiler is not None and not torch.is_grad_enabled():
            return self.tiler(fn, x)
        return fn(x)


class UnrolledPGD(_Tiling, Reconstructor):
    r"""Unrolled proximal gradient descent with one shared (tied) 3D DRUNet prior.

    .. math::

        x_0 = A^\dagger y,\qquad
        x_{k+1} = D_\phi\big(x_k - \eta_k (A^\top A x_k - A^\top y),\ \sigma_k\big),\quad k < K.

    The step size is :math:`\eta_k = \tau_k / L` with :math:`L = \|A\|^2` (buffer ``lipschitz``,
    1 for a normalised operator) and a learnable :math:`\tau_k > 0` initialised to 1, i.e.
    :math:`\eta_k = 1/\|A\|^2` at initialisation (paper.md §10). The noise level
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
        saved activations are one DRUNet call's instead of K (paper.md §6.2: the full-volume MRI
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
        self.step_raw = nn.Parameter(torch.full((self.K,), _inv_softplus(1.0)))
        self.sigma_raw = nn.Parameter(torch.full((self.K,), _inv_softplus(sigma_init)))
        self.bf16 = False
        self.checkpoint = bool(checkpoint)

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
        """Run the K iterations; ``x_init`` replaces ``physics.A_dagger(y)`` when given."""
        x = physics.A_dagger(y) if x_init is None else x_init
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


class PostProcess(_Tiling, Reconstructor):
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
        self.sigma_raw = nn.Parameter(torch.tensor(_inv_softplus(sigma_init)))
        self.register_buffer("lipschitz", torch.tensor(float(lipschitz)))
        self.bf16 = False

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        x0 = physics.A_dagger(y) if x_init is None else x_init
        return self._denoise(x0.float(), F.softplus(self.sigma_raw))


class Analytical(Reconstructor):
    """The analytical initial reconstruction ``physics.A_dagger(y)`` (FDK for cone beam)."""

    def forward(self, y, physics, x_init: torch.Tensor | None = None, **kwargs: Any):
        return physics.A_dagger(y) if x_init is None else x_init


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

        x0 = physics.A_dagger(y) if x_init is None else x_init
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


TASK_CHANNELS = {"cbct": 1, "mri": 2}


def resolve_model_config(config: dict) -> dict:
    """The ``model`` config section with every default filled in from the schema."""
    m = {**section_defaults("model"), **(config.get("model") or {})}
    return {
        "channels": [int(c) for c in m["channels"]],
        "blocks": int(m["blocks"]),
        "sigma_init": float(m["sigma_init"]),
        "residual": bool(m["residual"]),
    }


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets: the task's image channels, the resolved model section, the task's
    config section (defaults filled), the training section, ‖A‖² and the TV weight, if any."""

    task: str
    channels: int
    model: dict
    task_config: dict
    train: dict
    lipschitz: float
    alpha: float | None
    partition: bool = False
    net_dim: int = 3


def _build_analytical(c: BuildContext) -> Reconstructor:
    """The task's classical reconstruction: FDK (CBCT), zero-filled RSS (MRI, paper Table 2)."""
    return ZeroFilledRSS() if c.task == "mri" else Analytical()


def _build_adjoint(c: BuildContext) -> Reconstructor:
    return Adjoint()


def _build_tv(c: BuildContext) -> Reconstructor:
    grid = c.train["tv_grid"]
    a = grid[len(grid) // 2] if c.alpha is None else c.alpha
    return TVReconstructor(
        alpha=a, lipschitz=c.lipschitz, iters=c.train["tv_iters"], inner=c.train["tv_inner"]
    )


def _build_postproc(c: BuildContext) -> Reconstructor:
    m = c.model
    return PostProcess(
        c.channels,
        m["channels"],
        m["blocks"],
        sigma_init=m["sigma_init"],
        lipschitz=c.lipschitz,
        residual=m["residual"],
        dim=c.net_dim,
    )


def _build_unrolled(c: BuildContext) -> Reconstructor:
    m = c.model
    mode = c.train["checkpoint_unrolled"]
    return UnrolledPGD(
        int(c.task_config["K"]),
        c.channels,
        m["channels"],
        m["blocks"],
        lipschitz=c.lipschitz,
        sigma_init=m["sigma_init"],
        residual=m["residual"],
        checkpoint=mode == "all" or (mode == "full-volume" and not c.partition),
    )


#: variant kind (:attr:`unroll3d.variants.VariantSpec.kind`) -> builder. A new kind of method is
#: its registry entry plus its model code and one builder here.
BUILDERS: dict[str, Callable[[BuildContext], Reconstructor]] = {
    "analytical": _build_analytical,
    "adjoint": _build_adjoint,
    "tv": _build_tv,
    "postproc": _build_postproc,
    "unrolled": _build_unrolled,
}


def build_variant(
    name: str,
    task: str,
    config: dict,
    lipschitz: float = 1.0,
    alpha: float | None = None,
    device: torch.device | str | None = None,
) -> Reconstructor:
    """Build the reconstructor of variant ``name`` for ``task`` from the pipeline config.

    :param str name: a key of :data:`VARIANTS`.
    :param str task: ``cbct`` or ``mri`` (sets channels and K).
    :param dict config: the pipeline config (sections ``model``, ``train`` and ``<task>``;
        missing keys take the schema's defaults).
    :param float lipschitz: :math:`\\|A\\|^2` of the (unnormalised) operator.
    :param float alpha: TV weight (``tv`` only); defaults to the middle of the grid.
    """
    spec = variant_spec(name)
    if task not in TASK_CHANNELS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASK_CHANNELS)}")
    builder = BUILDERS.get(spec.kind)
    if builder is None:
        raise ValueError(
            f"variant {name!r} has kind {spec.kind!r}, which has no builder in BUILDERS"
        )
    ctx = BuildContext(
        task=task,
        channels=TASK_CHANNELS[task],
        model=resolve_model_config(config),
        task_config={**section_defaults(task), **(config.get(task) or {})},
        train=train_settings(config),
        lipschitz=lipschitz,
        alpha=alpha,
        partition=spec.partition,
        net_dim=spec.net_dim,
    )
    model = builder(ctx)
    if device is not None:
        model = model.to(device)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
