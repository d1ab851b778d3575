"""``unroll3d evaluate``: one variant on one test volume -> one JSON (validated) and slices.

- Full-volume inference: ``fdk``/``adjoint`` is x0 = A†y; ``tv`` runs FISTA with the weight chosen
  on validation; ``unrolled``/``unrolled-H`` run the network on the whole volume (``-H``: the
  physics wrapped by :class:`unroll3d.normal.DiagCirculantWrapper`); ``partition``,
  ``partition-H`` and ``postproc`` run through
  :class:`unroll3d.partition.PartitionedReconstructor` (with H when the variant uses it).
- Metrics: PSNR, 3D SSIM and slice-mean SSIM under the task's convention
  (:mod:`unroll3d.metrics`: CBCT fixed range and central crop, MRI magnitude with per-volume max).
- Cost: inference time and peak memory (CUDA ``max_memory_allocated``), and for learned variants
  the time and peak memory of ``evaluate.timing_steps`` training micro-steps (batch 1, after one
  warm-up step) on this volume, plus the numbers of the training run (its stats JSON).
- CUDA out-of-memory is caught and recorded (``status: oom``) with exit 0.

The JSON follows ``unroll3d/schemas/eval.schema.json`` (package data).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from unroll3d.metrics import compute_metrics, convention_for
from unroll3d.models import VariantSpec, count_parameters, variant_spec
from unroll3d.train import (
    _sync,
    add_common_args,
    default_loader,
    device_name,
    estimate_pair,
    h_kwargs,
    lipschitz_of,
    load_H,
    load_trained,
    make_partitioner,
    peak_memory_gb,
    physics_for,
    read_config,
    resolve_device,
)
from unroll3d.utils import atomic_path, atomic_write_json

__all__ = ["reconstruct", "evaluate_volume", "load_schema", "validate_result", "main"]

SCHEMA_VERSION = 1


def load_schema(name: str = "eval") -> dict:
    """The JSON schema ``unroll3d/schemas/<name>.schema.json`` (package data)."""
    text = resources.files("unroll3d").joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)


def validate_result(result: dict, name: str = "eval") -> None:
    """Raise ``jsonschema.ValidationError`` if ``result`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(result, load_schema(name))


def reconstruct(
    model,
    spec: VariantSpec,
    task: str,
    config: dict,
    sample,
    physics,
    x0: torch.Tensor,
    H: dict | None = None,
) -> torch.Tensor:
    """Full-volume reconstruction of ``sample`` by a variant (no gradient).

    Partitioned unrolled variants follow Algorithm 1 (paper §4.4): a first pass of the network on
    the whole problem (data steps on the full volume with the exact operator, prior step patch
    by patch), then, when ``evaluate.refine``, one refinement pass per patch with that estimate
    as context (with H when the variant uses it). ``postproc`` is the DRUNet applied patch by
    patch to x0 (the same grid and blending).
    """
    with torch.no_grad():
        if spec.kind == "analytical":
            return x0
        if not spec.partition:
            return model(sample.y, physics, x_init=x0)
        partitioner = make_partitioner(model, task, config, sample.x.shape[1:])
        model.set_tiling(lambda fn, v: partitioner.apply_patchwise(fn, v, progress=False))
        try:
            est = model(sample.y, sample.physics, x_init=x0)
        finally:
            model.set_tiling(None)
        if spec.kind == "postproc" or not refine_enabled(task, config):
            return est
        return partitioner(
            sample.y,
            physics,
            x0=x0,
            x_init=est,
            refine=True,
            **h_kwargs(spec, H, sample.x.shape[1:]),
        )


def refine_enabled(task: str, config: dict) -> bool:
    """Whether Algorithm 1's refinement pass runs: ``evaluate.refine`` and, for MRI,
    ``evaluate.mri_refine`` (off by default: the paper finds it adds almost nothing there)."""
    ecfg = config.get("evaluate", {})
    on = bool(ecfg.get("refine", True))
    if task == "mri":
        on = on and bool(ecfg.get("mri_refine", False))
    return on


def time_train_steps(
    model, spec: VariantSpec, task, config, prep_sample, physics, x0, H, n_steps: int, device
) -> dict:
    """Time ``n_steps`` training micro-steps (batch 1) after one warm-up, on a copy of ``model``."""
    from unroll3d.train import _tcfg

    t = _tcfg(config)
    net = copy.deepcopy(model).train()
    net.bf16 = bool(t["bf16"]) and device.type == "cuda"
    opt = torch.optim.Adam(net.parameters(), lr=1e-12)
    partitioner = (
        make_partitioner(net, task, config, prep_sample.x.shape[1:]) if spec.partition else None
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(n_steps + 1):
            gen = torch.Generator(device="cpu").manual_seed(i)
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            est, target = estimate_pair(net, spec, prep_sample, physics, x0, gen, partitioner, H)
            loss = torch.mean((est.float() - target.float()) ** 2)
            loss.backward()
            opt.step()
            _sync(device)
            if i > 0:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        return {
            "status": "oom",
            "message": f"OOM at volume {_shape(prep_sample.x)}, peak {peak:.2f} GB",
            "step_time_s": None,
            "peak_memory_gb": peak,
            "steps": len(times),
        }
    finally:
        del net, opt
    return {
        "status": "ok",
        "message": None,
        "step_time_s": float(np.mean(times)),
        "peak_memory_gb": peak_memory_gb(device),
        "steps": len(times),
    }


def _shape(x: torch.Tensor) -> str:
    s = list(x.shape[-3:])
    return f"{s[0]}³" if len(set(s)) == 1 else "×".join(str(v) for v in s)


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


def _train_stats(path: str | None) -> dict | None:
    if not path or not Path(path).exists():
        return None
    stats = json.loads(Path(path).read_text())
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
    ecfg = config.get("evaluate", {})
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
        "config_name": config.get("name"),
        "metric_convention": conv.describe(),
        "psnr": None,
        "ssim": None,
        "ssim_slices": None,
        "psnr_x0": None,
        "data_range": None,
        "inference_time_s": None,
        "inference_peak_memory_gb": None,
        "train_step": None,
        "train_accumulate": int(config.get("train", {}).get("accumulate", 1)),
        "train_stats": _train_stats(train_stats_path),
        "n_params": 0,
    }
    model, payload = load_trained(model_path, task, config, device=device)
    if model is None:
        result["status"] = payload.get("status", "failed")
        result["message"] = payload.get("message")
        return _finish(result, slices_path)
    result["n_params"] = count_parameters(model)
    H = load_H(normal_path, device) if spec.use_H else None
    try:
        with torch.no_grad():  # warm-up: lazy backend imports (ITK takes ~15 s) and CUDA context
            sample.physics.A_adjoint(sample.y)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            x0 = sample.physics.A_dagger(sample.y).float()
        lip = payload.get("lipschitz") or lipschitz_of(sample, x0)
        physics = physics_for(sample, spec, H, lip)
        rec = reconstruct(model, spec, task, config, sample, physics, x0, H)
        _sync(device)
        result["inference_time_s"] = time.perf_counter() - t0
        result["inference_peak_memory_gb"] = peak_memory_gb(device)
    except torch.OutOfMemoryError:
        peak = peak_memory_gb(device) or 0.0
        result["status"] = "oom"
        result["message"] = f"OOM at volume {_shape(sample.x)} (inference), peak {peak:.2f} GB"
        return _finish(result, slices_path)
    m = compute_metrics(rec, sample.x, conv)
    result.update(
        psnr=m["psnr"],
        ssim=m["ssim"],
        ssim_slices=m["ssim_slices"],
        data_range=m["data_range"],
        ssim_window=m["ssim_window"],
        metric_shape=m["metric_shape"],
        psnr_x0=compute_metrics(x0, sample.x, conv)["psnr"],
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
    if spec.learned and int(ecfg.get("timing_steps", 0)) > 0:
        result["train_step"] = time_train_steps(
            model, spec, task, config, sample, physics, x0, H, int(ecfg["timing_steps"]), device
        )
    if slices_path is not None:
        save_slices(
            Path(slices_path),
            rec,
            sample.x,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unroll3d evaluate", description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--model", required=True, help="model file written by unroll3d train")
    p.add_argument("--sample", required=True, help="test volume file (results/data/...)")
    p.add_argument("--volume", default=None, help="volume id (default: the file stem)")
    p.add_argument("--train-stats", default=None, help="train stats JSON of the model")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--slices", default=None, help="optional .npz of axial/vertical slices")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = read_config(args)
    variant_spec(args.variant)
    device = resolve_device(args.device)
    sample = default_loader(args.setting, device)(args.sample)
    volume = args.volume or Path(args.sample).stem
    result = evaluate_volume(
        args.task,
        args.setting,
        args.variant,
        config,
        args.model,
        sample,
        volume,
        device,
        normal_path=args.normal,
        train_stats_path=args.train_stats,
        slices_path=args.slices,
    )
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("status", "psnr", "ssim")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
