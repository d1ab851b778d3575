"""Choices made on the validation volumes: the validation PSNR of a model during training, the
TV weight (``train.tv_grid``) and PnP-αPGD's test-time parameters (``train.pnp_grid``), per
setting for a trained run (:func:`tune_pnp`)."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import torch

from unroll3d.config import evaluate_settings, train_object, train_settings
from unroll3d.engine.model_file import use_lipschitz
from unroll3d.engine.partitioning import make_partitioner, tiled
from unroll3d.engine.reconstruct import reconstruct
from unroll3d.engine.samples import Prepared, SampleCache
from unroll3d.metrics import convention_for, psnr_under
from unroll3d.models import build_variant
from unroll3d.variants import variant_spec

__all__ = ["validate_psnr", "select_tv", "select_pnp", "tune_pnp"]


def _name(prep: Prepared) -> str:
    meta = getattr(prep.sample, "meta", None) or {}
    return meta.get("source") or meta.get("volume", "?")


def _inputs(prep: Prepared) -> tuple:
    """``reconstruct``'s sample, physics (H included) and x0 of a prepared sample."""
    return prep.sample, prep.physics, prep.x0


def _denoised(model, task, config, prep: Prepared) -> torch.Tensor:
    """PnP's denoiser on a validation volume with seeded noise of σ = sigma_max / 2, patch by
    patch as at test time."""
    x = prep.sample.x
    sigma = model.sigma_max / 2
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
    with tiled(model, make_partitioner(model, task, config, x.shape[1:])):
        return model._denoise(x + sigma * noise, torch.tensor(sigma, device=x.device))


def validate_psnr(model, spec, task, config, prepared: list[Prepared]) -> float:
    """Mean PSNR (evaluation convention) of full-volume inference on the validation samples,
    each with its setting's ‖A‖² and H (Algorithm 1's first pass only: no per-patch refinement
    during training). PnP's is its denoiser's PSNR on the noisy validation volumes (σ =
    sigma_max / 2): α-PGD itself runs once, in :func:`select_pnp`."""
    conv = convention_for(task, evaluate_settings(config))
    vals = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for prep in prepared:
            use_lipschitz(model, prep.lipschitz)
            x = (
                _denoised(model, task, config, prep)
                if spec.kind == "pnp"
                else reconstruct(model, spec, task, config, *_inputs(prep), refine=False)
            )
            try:
                value = psnr_under(x, prep.sample.x, conv)
            except ValueError as err:  # e.g. a NaN volume under a per-volume data range
                raise ValueError(f"validation volume {_name(prep)}: {err}") from err
            if not math.isfinite(value):
                raise ValueError(
                    f"validation volume {_name(prep)}: PSNR is {value} (NaN in the volume or the "
                    "reconstruction)"
                )
            vals.append(value)
    model.train(was_training)
    return float(np.mean(vals)) if vals else float("nan")


def select_tv(variant, task, config, cache: SampleCache, device) -> dict:
    """Choose the TV weight α on the validation volumes of ``cache`` (grid search on PSNR)."""
    spec = variant_spec(variant)
    grid = list(train_settings(config)["tv_grid"])
    prepared = [cache.get(i) for i in range(len(cache))]
    scores = []
    for a in grid:
        model = build_variant(variant, task, config, cache.lipschitz, alpha=a).to(device)
        scores.append(validate_psnr(model, spec, task, config, prepared))
        print(f"tv: alpha={a:g} val PSNR {scores[-1]:.2f} dB", file=sys.stderr)
    best = int(np.nanargmax(scores))
    return {
        "alpha": grid[best],
        "tv_grid": grid,
        "tv_val_psnr": scores,
        "lipschitz": cache.lipschitz,
    }


def select_pnp(model, task, config, prepared: list[Prepared]) -> dict:
    """Choose PnP-αPGD's iteration count, α, step τ and σ on the validation samples.

    Every (α, τ, σ) of ``train.pnp_grid`` runs max(iters) iterations once per volume (the
    denoiser patch by patch, as at test time), scored after each iteration count of the grid;
    the best mean PSNR wins. Returns the chosen parameters and every score, and leaves them set
    on ``model``.
    """
    grid = train_object(train_settings(config), "pnp_grid")
    conv = convention_for(task, evaluate_settings(config))
    counts = sorted({int(n) for n in grid["iters"]})
    was_training = model.training
    model.eval()
    partitioners = [make_partitioner(model, task, config, p.sample.x.shape[1:]) for p in prepared]
    rows = []
    for alpha, tau, sigma in itertools.product(grid["alpha"], grid["stepsize"], grid["sigma"]):
        model.set_algo_params(iters=counts[-1], alpha=alpha, stepsize=tau, sigma=sigma)
        per_volume = []
        for prep, partitioner in zip(prepared, partitioners, strict=True):
            with tiled(model, partitioner):
                _, curve = model(
                    prep.sample.y,
                    prep.physics,
                    x_init=prep.x0,
                    iterate_metric=lambda v, x=prep.sample.x: psnr_under(v, x, conv),
                )
            per_volume.append([curve[n - 1] for n in counts])
        means = np.nanmean(np.asarray(per_volume, dtype=float), axis=0)
        for n, m in zip(counts, means, strict=True):
            rows.append({"iters": n, "alpha": alpha, "stepsize": tau, "sigma": sigma, "psnr": m})
        print(
            f"pnp: alpha={alpha:g} tau={tau:g} sigma={sigma:g} val PSNR "
            + ", ".join(f"{m:.2f}@{n}" for n, m in zip(counts, means, strict=True)),
            file=sys.stderr,
        )
    finite = [r for r in rows if math.isfinite(r["psnr"])]
    if not finite:
        raise ValueError("PnP-αPGD: every parameter choice diverged on the validation volumes")
    best = max(finite, key=lambda r: r["psnr"])
    chosen = {k: best[k] for k in ("iters", "alpha", "stepsize", "sigma")}
    model.set_algo_params(**chosen)
    model.train(was_training)
    return {"algo_params": chosen, "pnp_val_psnr": best["psnr"], "pnp_grid_scores": rows}


def tune_pnp(run) -> dict:
    """PnP: α-PGD's test-time parameters chosen per setting on its validation volumes (on its
    first training volume without them); ``{}`` for the other variants."""
    tuned: dict = {}
    if run.spec.kind != "pnp":
        return tuned
    job = run.job
    for s in job.settings:
        c = run.val_caches[s] if run.val_paths else run.caches[s]
        prepared = [c.get(i, whole=True) for i in range(len(c) if run.val_paths else 1)]
        use_lipschitz(run.model, run.by_setting[s])
        for key, value in select_pnp(run.model, job.task, job.config, prepared).items():
            tuned.setdefault(key, {})[s] = value
    return tuned
