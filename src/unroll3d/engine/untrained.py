"""The model file of a variant without trained weights (``fdk``/``adjoint``, ``tv``, ``inr``,
``dpir``): what ``unroll3d train`` records for it instead of training."""

from __future__ import annotations

import sys

from unroll3d.engine.operators import lipschitz_of
from unroll3d.engine.samples import SampleCache
from unroll3d.engine.tuning import select_tv
from unroll3d.models.dpir import checked_weights, expected_sha256, weights_file
from unroll3d.variants import VariantSpec

__all__ = ["untrained_record"]


def untrained_record(job, spec: VariantSpec, t: dict, result: dict, H) -> tuple[dict, dict]:
    """(model file payload, stats) of a variant without trained weights for a
    :class:`~unroll3d.engine.train.TrainJob`: ``tv`` the weight chosen on the validation volumes,
    ``dpir`` its checked weights file (or status ``unavailable``), the iterative ones ‖A‖²."""
    extra = {"lipschitz": None}
    status, message = "ok", None
    if spec.kind == "dpir":  # pretrained elsewhere: only its weights file is checked
        weights = checked_weights(t["dpir_weights"], t["dpir_sha256"], t["dpir_denoiser"])
        if weights is None:
            status = "unavailable"
            where = (
                "train.dpir_weights is not set"
                if not t["dpir_weights"]
                else f"{weights_file(t['dpir_weights'], t['dpir_denoiser'])} does not exist"
            )
            message = (
                f"weights not available: {where} (train.dpir_weights: download fetches "
                "deepinv's published file; no others are used)"
            )
            print(f"dpir: {message}", file=sys.stderr)
        else:
            extra = {"lipschitz": lipschitz_of(job.loader(job.train_paths[0]))}
            sha, how = expected_sha256(weights, t["dpir_sha256"])
            extra.update(weights=weights, weights_sha256=sha, weights_checked_against=how)
    elif spec.kind == "tv":
        val = job.val_paths or job.train_paths
        cache = SampleCache(val[: max(1, t["val_max"])], job.loader, spec, H)
        extra = select_tv(job.variant, job.task, job.config, cache, job.device)
    elif spec.kind not in ("analytical", "adjoint"):  # iterative, no weights: needs ‖A‖²
        extra = {"lipschitz": lipschitz_of(job.loader(job.train_paths[0]))}
    payload = {**result, **extra, "status": status, "message": message, "state_dict": None}
    stats = {**result, **extra, "status": status, "message": message, "steps": 0}
    stats.update(peak_memory_gb=None, step_time_mean_s=None, n_params=0)
    return payload, stats
