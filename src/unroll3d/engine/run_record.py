"""What a training run writes: its per-step CSV (:data:`CSV_FIELDS`), its stats record (the
``<stats>`` JSON), its model file's payload (weights, ‖A‖² per setting, config, PnP parameters),
and the result of a run that ran out of CUDA memory."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from unroll3d.engine.operators import mri_h_mode
from unroll3d.engine.timing import peak_memory_gb, rss_growth_gb
from unroll3d.models import count_parameters
from unroll3d.models.build import network_settings
from unroll3d.utils import atomic_torch_save, atomic_write_json, atomic_write_text, peak_rss_gb

__all__ = ["CSV_FIELDS", "model_payload", "stats_record", "write_csv", "write_oom"]

CSV_FIELDS = ["step", "loss", "lr", "step_time_s", "peak_memory_gb", "val_psnr"]


def stats_record(run, result: dict, tuned: dict) -> dict:
    """The stats JSON of a finished run: steps, time after warm-up, memory, losses, what ran."""
    job, t, rows, model = run.job, run.t, run.rows, run.model
    times = [r["step_time_s"] for r in rows]
    warm = t["warmup_steps"] if len(times) > t["warmup_steps"] else min(1, len(times) - 1)
    peaks = [r["peak_memory_gb"] for r in rows if r["peak_memory_gb"] is not None]
    vals = [r["val_psnr"] for r in rows if r["val_psnr"] is not None]
    stats = {
        **result,
        "status": "ok",
        "steps": len(rows),
        "accumulate": t["accumulate"],
        "volume": run.volume,
        "n_params": count_parameters(model),
        "lipschitz": run.lipschitz,
        "lipschitz_by_setting": run.by_setting,
        "settings": job.settings,
        "peak_memory_gb": max(peaks) if peaks else None,
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_growth_gb": rss_growth_gb(run.rss_base),
        "step_time_mean_s": float(np.mean(times[warm:])) if times else None,
        "warmup_steps": warm,
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "val_psnr_last": vals[-1] if vals else None,
        "bf16": bool(getattr(model, "bf16", False)),  # a model without a DRUNet has none
        "network": network_settings(t, job.device),  # what ran: None = not applicable here
        "masks": "fresh per draw" if job.redraw is not None else "fixed per volume",
        # training volumes kept on the device (train.device_cache); None on the CPU
        "resident_samples_gb": (
            None if job.device.type == "cpu" else sum(r.gb for r in run.residency)
        ),
        "device_cache": t["device_cache"],
    }
    if run.syncs is not None:  # TrainJob.sync_debug_step on CUDA: what made the host wait
        stats["host_syncs_in_step"] = {"step": job.sync_debug_step + 1, "ops": run.syncs}
    if run.spec.use_H:  # which H the data steps used (normal.mri_h)
        stats["normal_h"] = (
            "the setting's data-free fit"
            if run.h_of is None
            else f"built from each draw's own mask (normal.mri_h: {mri_h_mode(job.task, job.config)})"
        )
    if run.partitioner is not None:  # what was really trained: patch, stride, inference grid
        stats["patch_size"] = list(run.partitioner.patch_size)
        stats["stride"] = list(run.partitioner.stride)
        stats["n_patches"] = len(run.partitioner.starts)
    stats.update(tuned)
    if run.spec.kind == "unrolled":
        stats["step_sizes"] = model.step_sizes.detach().cpu().tolist()
        stats["sigmas"] = model.sigmas.detach().cpu().tolist()
    return stats


def model_payload(run, result: dict, tuned: dict) -> dict:
    """The model file of a finished run: weights, ‖A‖² per setting, config and PnP parameters."""
    job = run.job
    return {
        **result,
        "status": "ok",
        "state_dict": run.model.state_dict(),
        "lipschitz": run.lipschitz,
        "lipschitz_by_setting": run.by_setting,
        "settings": job.settings,
        "model_config": job.config.get("model", {}),
        "K": job.config.get(job.task, {}).get("K"),
        "steps": len(run.rows),
        "algo_params": tuned.get("algo_params"),
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    """The per-step rows as CSV (:data:`CSV_FIELDS`; None as empty), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    atomic_write_text(path, buf.getvalue())


def write_oom(run, result: dict) -> dict:
    """CUDA ran out of memory: status ``oom`` with the volume and peak, written as the result."""
    job, step = run.job, run.step
    peak = peak_memory_gb(job.device) or 0.0
    msg = f"OOM at volume {run.volume}, peak {peak:.2f} GB (step {step + 1})"
    print(msg, file=sys.stderr)
    stats = {**result, "status": "oom", "message": msg, "peak_memory_gb": peak}
    stats.update(steps=step, step_time_mean_s=None, n_params=None, volume=run.volume)
    atomic_torch_save({**result, "status": "oom", "message": msg, "state_dict": None}, job.out)
    run.rows = [r for r in run.rows if not isinstance(r["loss"], torch.Tensor)]  # read ones
    write_csv(job.csv_path, run.rows)
    atomic_write_json(job.stats_path, stats)
    return stats
