"""From a variant name to a model: the builders of each variant kind and ``build_variant``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from deepinv.models import Reconstructor
from torch import nn

from unroll3d.config import section_defaults, train_object, train_settings
from unroll3d.models.classical import Adjoint, Analytical, TVReconstructor, ZeroFilledRSS
from unroll3d.models.dpir import DPIRSlices, SliceDenoiser, checked_weights, load_denoiser2d
from unroll3d.models.drunet import DRUNet3D, DRUNetSlices
from unroll3d.models.inr import INRReconstructor
from unroll3d.models.pnp import PnPAlphaPGD
from unroll3d.models.unrolled import PostProcess, UnrolledPGD
from unroll3d.variants import variant_spec

__all__ = [
    "TASK_CHANNELS",
    "BuildContext",
    "BUILDERS",
    "build_variant",
    "resolve_model_config",
    "count_parameters",
    "configure_network",
    "network_settings",
]


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
    seed: int = 0


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


def _build_pnp(c: BuildContext) -> Reconstructor:
    """PnP-αPGD: the post-processing network's size, trained as a Gaussian denoiser."""
    m = c.model
    return PnPAlphaPGD(
        c.channels,
        m["channels"],
        m["blocks"],
        lipschitz=c.lipschitz,
        residual=m["residual"],
        sigma_max=c.train["pnp_sigma_max"],
    )


def _build_dpir(c: BuildContext) -> Reconstructor:
    """DPIR with the pretrained 2D denoiser of ``train.dpir_weights`` (SHA-256 checked)."""
    t = c.train
    weights = checked_weights(t["dpir_weights"], t["dpir_sha256"], t["dpir_denoiser"])
    if weights is None:
        raise ValueError(f"DPIR: weights not available ({t['dpir_weights'] or 'not set'})")
    net = load_denoiser2d(t["dpir_denoiser"], weights)
    return DPIRSlices(SliceDenoiser(net, t["dpir_denoiser"]), t["dpir_noise_level"], c.lipschitz)


def _build_inr(c: BuildContext) -> Reconstructor:
    """INR[3D]: a hash-grid INR fitted per volume (``train.inr``, instant-NGP defaults)."""
    return INRReconstructor(seed=c.seed, **train_object(c.train, "inr"))


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
    "pnp": _build_pnp,
    "dpir": _build_dpir,
    "inr": _build_inr,
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
        seed=int(config.get("seed", 0)),
    )
    model = builder(ctx)
    if device is not None:
        model = model.to(device)
    return configure_network(model, ctx.train, device)


#: the ``train`` keys that set how the network runs (not what it computes)
NETWORK_KEYS = ("bf16", "tf32", "channels_last", "cudnn_benchmark", "compile")


def network_settings(train: dict, device: torch.device | str | None) -> dict:
    """What :func:`configure_network` applies on ``device`` for the ``train`` section: the
    CUDA-only keys (``tf32``, ``cudnn_benchmark``, ``compile``) are ``None`` elsewhere."""
    cuda = device is not None and torch.device(device).type == "cuda"
    out = {k: bool(train[k]) for k in NETWORK_KEYS}
    for key in ("tf32", "cudnn_benchmark", "compile"):
        out[key] = out[key] if cuda else None
    return out


def configure_network(model: nn.Module, train: dict, device=None) -> nn.Module:
    """Apply the ``train`` section's network keys to ``model`` (in place, returned): bf16
    autocast around its denoiser only, the channels-last layout, and on CUDA the TF32 and
    cudnn.benchmark switches (process-wide) and ``torch.compile`` of the denoiser. On the CPU a
    requested compile is skipped with one log line. Models without a DRUNet keep ``bf16`` only."""
    want = network_settings(train, device)
    if hasattr(model, "bf16"):
        model.bf16 = want["bf16"]
    if want["tf32"] is not None:
        torch.backends.cudnn.allow_tf32 = want["tf32"]
        torch.backends.cudnn.benchmark = want["cudnn_benchmark"]
    denoiser = getattr(model, "denoiser", None)
    if isinstance(denoiser, (DRUNet3D, DRUNetSlices)):
        denoiser.use_channels_last(want["channels_last"])
        if want["compile"]:
            denoiser.compile()
        elif train["compile"] and want["compile"] is None:
            print(
                "train.compile: skipped on the CPU (torch.compile is used on CUDA only)",
                file=sys.stderr,
            )
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
