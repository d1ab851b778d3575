"""Evaluation of one trained variant on one test volume (the ``unroll3d evaluate`` verb's library
call): PSNR / SSIM under the task's convention (:mod:`unroll3d.metrics`), inference time and peak
memory, timed training micro-steps on the volume, and the training run's own stats. The result is
validated against ``unroll3d/schemas/eval.schema.json``; axial/vertical slices go to an ``.npz``
for the qualitative figures.
"""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from unroll3d.config import evaluate_settings, train_settings
from unroll3d.data import DataError
from unroll3d.data.mri import rss_reference
from unroll3d.data.sample import check_sample_task
from unroll3d.engine.model_file import ModelFileError, load_trained
from unroll3d.engine.operators import h_builder, h_record, lipschitz_of, load_H, physics_for
from unroll3d.engine.reconstruct import reconstruct, refine_record
from unroll3d.engine.timing import peak_memory_gb, shape_text, sync, time_train_steps
from unroll3d.metrics import compute_metrics, convention_for
from unroll3d.models import count_parameters
from unroll3d.physics import initial_reconstruction
from unroll3d.utils import atomic_path, device_name
from unroll3d.variants import variant_spec

__all__ = ["evaluate_volume", "load_schema", "validate_result", "save_slices"]

SCHEMA_VERSION = 1


def load_schema(name: str = "eval") -> dict:
    """The JSON schema ``unroll3d/schemas/<name>.schema.json`` (package data)."""
    text = resources.files("unroll3d").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


def validate_result(result: dict, name: str = "eval") -> None:
    """Raise ``jsonschema.ValidationError`` if ``result`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(result, load_schema(name))


def _slices(x: torch.Tensor, task: str) -> dict:
    v = x.detach().float().cpu()[0]
    if task == "mri" and v.shape[0] == 2:
        v = torch.sqrt(v[0] ** 2 + v[1] ** 2)
    else:
        v = v[0]
    d, h, _ = v.shape
    return {"axial": v[d // 2].numpy(), "vertical": v[:, h // 2, :].numpy()}


def save_slices(path: Path, rec: torch.Tensor, gt: torch.Tensor, task: str, meta: dict) -> None:
    """Axial (middle z) and vertical (middle y) slices of reconstruction and ground truth (.npz)."""
    r, g = _slices(rec, task), _slices(gt, task)
    arrays = {
        "rec_axial": r["axial"],
        "rec_vertical": r["vertical"],
        "gt_axial": g["axial"],
        "gt_vertical": g["vertical"],
        "meta": np.array(json.dumps(meta)),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def _train_stats(path: str | None, task: str, variant: str) -> dict | None:
    """The training run's stats kept in the result; the file must be that of ``variant`` on
    ``task`` (it is not trusted by its name)."""
    if not path or not Path(path).exists():
        return None
    try:
        stats = json.loads(Path(path).read_text())
    except (ValueError, OSError) as err:
        raise ModelFileError(f"{path} is not a readable train stats file: {err}") from err
    if not isinstance(stats, dict):
        raise ModelFileError(f"{path} is not a train stats file written by unroll3d train")
    wrote = (stats.get("task"), stats.get("variant"))
    if wrote != (task, variant):
        raise ModelFileError(
            f"{path} holds the train stats of {wrote[1]} on task {wrote[0]}, but they are "
            f"reported for {variant} on task {task}; rerun its train job"
        )
    keep = [
        "status",
        "message",
        "steps",
        "step_time_mean_s",
        "peak_memory_gb",
        "peak_rss_growth_gb",
        "accumulate",
        "device",
        "n_params",
        "val_psnr_last",
        "volume",
    ]
    return {k: stats.get(k) for k in keep}


def _check_trained_shape(stats: dict | None, sample, stats_path) -> None:
    """The test volume has the shape of the training volumes of its data set (recorded as
    ``volume``, e.g. ``24³`` or ``16×20×18``, in the train stats; MRI: all but kz)."""
    text = str((stats or {}).get("volume") or "")
    try:
        trained = (int(text[:-1]),) * 3 if text.endswith("³") else tuple(map(int, text.split("×")))
    except ValueError:
        return  # no shape recorded (non-learned variants)
    if len(trained) != 3:
        return
    shape = tuple(int(n) for n in sample.x.shape[-3:])
    n = 2 if sample.x.shape[1] == 2 else 3  # real/imag images: MRI, whose kz may differ
    if shape[:n] != trained[:n]:
        where = (sample.meta or {}).get("source", "the test volume")
        raise DataError(
            f"{where}: volume of {' × '.join(map(str, shape))}, but the model was trained on "
            f"volumes of {' × '.join(map(str, trained))} ({stats_path}); check its raw data "
            "and preprocess it again"
        )


def _finish(result: dict, slices_path) -> dict:
    """Validate a result without metrics and write empty slices so the rule's outputs exist."""
    if slices_path is not None:
        meta = {k: result[k] for k in ("task", "setting", "variant", "volume", "status")}
        with atomic_path(slices_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(json.dumps(meta)))
    validate_result(result)
    return result


def evaluate_volume(
    task: str,
    setting: str,
    variant: str,
    config: dict,
    model_path: str | Path,
    sample,
    volume: str,
    device: torch.device,
    normal_path: str | None = None,
    train_stats_path: str | None = None,
    slices_path: str | Path | None = None,
) -> dict:
    """Evaluate one variant on one loaded sample; returns the (validated) result dict."""
    spec = variant_spec(variant)
    ecfg = evaluate_settings(config)
    conv = convention_for(task, ecfg)
    result = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "setting": setting,
        "variant": variant,
        "volume": volume,
        "status": "ok",
        "message": None,
        "shape": list(sample.x.shape[-3:]),
        "device": device_name(device),
        "metric_convention": conv.describe(),
        "psnr": None,
        "ssim": None,
        "ssim_slices": None,
        "psnr_x0": None,
        "data_range": None,
        "inference_time_s": None,
        "inference_peak_memory_gb": None,
        "train_step": None,
        "train_accumulate": int(train_settings(config)["accumulate"]),
        "train_stats": _train_stats(train_stats_path, task, variant),
        "n_params": 0,
    }
    check_sample_task(sample, task)
    if task == "mri" and sample.meta.get("mask_source"):  # mri.mask_source, as the sample used it
        result["mask_source"] = sample.meta["mask_source"]
        result["mask"] = str(sample.meta.get("mask") or sample.meta["mask_source"])
    _check_trained_shape(result["train_stats"], sample, train_stats_path)
    model, payload = load_trained(
        model_path, task, config, device=device, setting=setting, variant=variant
    )
    if model is None:
        result["status"] = payload.get("status", "failed")
        result["message"] = payload.get("message")
        return _finish(result, slices_path)
    result["n_params"] = count_parameters(model)
    H = load_H(normal_path, device) if spec.use_H else None
    build = h_builder(spec, task, config)  # normal.mri_h mask: the test volume's own H
    if build is not None:
        H = build(sample, H)
        result["normal_fit"] = h_record(H, sample)
    elif H is not None:  # which fit was used, and its held-out error (per sample or not)
        history = H.history or {}
        heldout = list(history.get("heldout_rel_error") or [])  # a fit keeps its best step's
        kept = history.get("best_heldout_rel_error", heldout[-1] if heldout else None)
        result["normal_fit"] = {
            "file": str(normal_path),
            "fitted_on": Path(str(H.meta.get("input", "?"))).stem,
            "heldout_rel_error": None if kept is None else float(kept),
            "h": "fit",
        }
    result["refinement"] = refine_record(task, config, spec)
    try:
        with torch.no_grad():  # warm-up: lazy backend imports (ITK takes ~15 s) and CUDA context
            sample.physics.A_adjoint(sample.y)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            x0 = initial_reconstruction(sample.physics, sample.y).float()
        lip = payload.get("lipschitz") or lipschitz_of(sample, x0)
        physics = physics_for(sample, spec, H, lip)
        rec = reconstruct(model, spec, task, config, sample, physics, x0)
        sync(device)
        result["inference_time_s"] = time.perf_counter() - t0
        result["inference_peak_memory_gb"] = peak_memory_gb(device)
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        result["status"] = "oom"
        result["message"] = f"OOM at volume {shape_text(sample.x)} (inference), peak {peak:.2f} GB"
        return _finish(result, slices_path)
    target = sample.x if conv.reference != "rss" else rss_reference(sample).to(sample.x.device)
    m = compute_metrics(rec, target, conv)
    result.update(
        psnr=m["psnr"],
        ssim=m["ssim"],
        ssim_slices=m["ssim_slices"],
        data_range=m["data_range"],
        ssim_window=m["ssim_window"],
        metric_shape=m["metric_shape"],
        psnr_x0=compute_metrics(x0, target, conv)["psnr"],
    )
    bad = {k: result[k] for k in ("psnr", "ssim", "ssim_slices", "psnr_x0")}
    bad = {k: v for k, v in bad.items() if v is not None and not math.isfinite(v)}
    if bad:  # JSON has no NaN/Infinity: record the failure instead of writing invalid JSON
        result.update(dict.fromkeys(bad))
        result["status"] = "failed"
        result["message"] = (
            "non-finite metrics "
            + ", ".join(f"{k} = {v}" for k, v in sorted(bad.items()))
            + " (nan: a diverged estimate; inf: an exact match, whose PSNR is unbounded)"
        )
    if spec.learned and int(ecfg["timing_steps"]) > 0:
        result["train_step"] = time_train_steps(
            model, spec, task, config, sample, physics, x0, int(ecfg["timing_steps"]), device
        )
    if slices_path is not None:
        save_slices(
            Path(slices_path),
            rec,
            target,
            task,
            {
                "task": task,
                "setting": setting,
                "variant": variant,
                "volume": volume,
                "psnr": result["psnr"],
                "data_range": result["data_range"],
            },
        )
    validate_result(result)
    return result
