"""Full-volume reconstruction of a sample by a variant (Algorithm 1 for the partitioned
unrolled variants) and whether its refinement pass runs."""

from __future__ import annotations

import torch

from unroll3d.config import evaluate_settings
from unroll3d.engine.operators import h_kwargs
from unroll3d.engine.partitioning import make_partitioner, tiled
from unroll3d.variants import VariantSpec

__all__ = ["reconstruct", "refine_enabled", "refine_record"]


def refine_enabled(task: str, config: dict, spec: VariantSpec | None = None) -> bool:
    """Whether Algorithm 1's refinement pass runs for ``spec``: ``evaluate.refine`` and, for MRI,
    ``evaluate.mri_refine``: false = the paper's protocol (first pass only: its data steps are
    exact, so H never acts), true = every partitioned variant, ``H`` = only the variants that
    use H (their refinement uses H, so the H rows measure H at test time)."""
    ecfg = evaluate_settings(config)
    on = bool(ecfg["refine"])
    if task == "mri":
        mode = ecfg["mri_refine"]
        if mode == "H":
            return on and spec is not None and spec.use_H
        on = on and bool(mode)
    return on


def refine_record(task: str, config: dict, spec: VariantSpec) -> str:
    """What a partitioned unrolled variant's test time ran (the eval JSON's ``refinement``):
    ``first pass only``, ``exact refinement`` or ``H refinement``; ``n/a`` for the others."""
    if spec.kind != "unrolled" or not spec.partition:
        return "n/a"
    if not refine_enabled(task, config, spec):
        return "first pass only"
    return "H refinement" if spec.use_H else "exact refinement"


def reconstruct(
    model,
    spec: VariantSpec,
    task: str,
    config: dict,
    sample,
    physics,
    x0: torch.Tensor,
    refine: bool | None = None,
) -> torch.Tensor:
    """Full-volume reconstruction of ``sample`` by a variant (no gradient).

    Partitioned unrolled variants follow Algorithm 1 (paper §4.4): a first pass of the network on
    the whole problem (data steps on the full volume with the exact operator, prior step patch
    by patch), then, when ``refine`` (default: :func:`refine_enabled`), one refinement pass per
    patch with that estimate as context (with H when the variant uses it: ``physics`` is then
    the :class:`~unroll3d.normal.DiagCirculantWrapper` of :func:`~unroll3d.engine.operators.physics_for`). ``postproc`` is the
    DRUNet applied patch by patch to x0 (the same grid and blending); ``pnp`` runs α-PGD on the
    whole volume with its denoiser applied the same way; ``inr`` and ``dpir`` reconstruct the
    whole volume themselves.
    """
    refine = refine_enabled(task, config, spec) if refine is None else refine
    with torch.no_grad():
        if spec.kind in ("analytical", "adjoint"):  # FDK returns x0; RSS and Aᵀy compute theirs
            return model(sample.y, sample.physics, x_init=x0)
        if not spec.partition:
            return model(sample.y, physics, x_init=x0)
        partitioner = make_partitioner(model, task, config, sample.x.shape[1:])
        with tiled(model, partitioner):
            est = model(sample.y, sample.physics, x_init=x0)
        if spec.kind != "unrolled" or not refine:  # post-processing, PnP: one pass
            return est
        return partitioner(
            sample.y,
            physics,
            x0=x0,
            x_init=est,
            refine=True,
            **h_kwargs(spec, physics),
        )
