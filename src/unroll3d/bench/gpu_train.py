"""The GPU check's training sections: the ``normal_step`` §6.4 patch data step (exact against H),
and ``train``/``train_mri`` peak memory and time of one training micro-step per variant.
"""

from __future__ import annotations

from unroll3d.bench.gpu_geometry import walnut_physics
from unroll3d.bench.gpu_recorder import free, peak_gb
from unroll3d.bench.gpu_samples import SAMPLES, cbct_sample, check_config, impulse_H, mri_sample


def section_normal_step(rec, device, backend, prof) -> None:
    from unroll3d.bench.normal import bench_one

    n, p = prof["volume"], prof["normal_patch"]
    if rec.left() < 30:
        rec.add("normal_step", f"{p}³ in {n}³", "all", "", status="skipped", note="time budget")
        return
    physics = walnut_physics(n, prof["views"], backend, device)
    rows = bench_one(
        n,
        p,
        prof["views"],
        iters=prof["repeats"],
        warmup=1,
        device=device,
        backward=True,
        physics=physics,
    )
    case = f"{p}³ patch in {n}³, {prof['views']} views, with backward"
    for r in rows:
        rec.add(
            "normal_step",
            case,
            f"{r['method']} data step",
            r["it_per_s"],
            "it/s",
            note="paper §6.4: exact 4.19, H 12.5 it/s",
        )
    rec.add(
        "normal_step",
        case,
        "H / exact speed-up",
        rows[-1]["speedup_H_vs_exact"],
        "×",
        status="ok" if rows[-1]["speedup_H_vs_exact"] >= 3 else "below 3×",
        note="issue target ≥ 3× (paper 2.98×)",
    )
    del physics
    free(device)


def train_case(
    rec, variant, task, size, prof, backend, device, config, bf16=False, checkpoint=False
) -> str:
    """One training micro-step of ``variant`` on a synthetic ``size`` volume: memory, time
    (``checkpoint``: gradient checkpointing per unrolled iteration)."""
    from unroll3d.engine.operators import physics_for
    from unroll3d.engine.timing import time_train_steps
    from unroll3d.models import build_variant
    from unroll3d.variants import variant_spec

    spec = variant_spec(variant)
    train = {"bf16": bool(bf16), "checkpoint_unrolled": "all" if checkpoint else "none"}
    config = {**config, "train": {**config["train"], **train}}
    if task == "cbct":
        sample, x0, lip = cbct_sample(size, prof, backend, device)
        shape, patch, K = (size,) * 3, prof["patch"], prof["K"]
    else:
        sample, x0, lip = mri_sample(size, prof, device)
        shape, patch, K = tuple(size), prof["mri_patch"], prof["mri_K"]
    H = None
    if spec.use_H:
        H = impulse_H(
            sample.physics, tuple(sample.x.shape[1:]), lip, device, sample.meta["setting"]
        )
    model = build_variant(variant, task, config, lipschitz=lip, device=device)
    physics = physics_for(sample, spec, H, lip)
    free(device)
    base = peak_gb(device)
    stats = time_train_steps(model, spec, task, config, sample, physics, x0, prof["steps"], device)
    case = f"{variant}, {task} {'×'.join(map(str, shape))}" + (
        f", patch {'×'.join(map(str, patch))}" if spec.partition else ", whole volume"
    )
    precision = "bf16 network" if bf16 else "fp32"
    precision += ", channels_last_3d" if config["train"].get("channels_last") else ""
    precision += ", cudnn.benchmark" if config["train"].get("cudnn_benchmark") else ""
    precision += ", checkpointed iterations" if checkpoint else ""
    note = f"K={K}, DRUNet {prof['channels']}×{prof['blocks']}, {precision}, batch 1"
    ok = stats["status"] == "ok"  # else "oom": the peak reached, and no time
    detail = f"held before the step {base or 0:.2f} GB" if ok else stats["message"]
    peak = stats["peak_memory_gb"]
    rec.add("train", case, "peak memory", peak, "GB", "ok" if ok else "oom", f"{note}; {detail}")
    if ok:
        rec.add("train", case, "time per micro-step", stats["step_time_s"], "s", note=note)
    del H, model, physics, sample, x0
    if task != "cbct" or size != prof["volume"]:
        SAMPLES.clear()
    free(device)
    return stats["status"]


def section_train(rec, device, backend, prof) -> None:
    config = check_config(prof)
    for n in prof["train_sizes"]:
        if rec.left() < 40:
            rec.add("train", f"unrolled, {n}³", "all", "", status="skipped", note="time budget")
            break
        if train_case(rec, "unrolled", "cbct", n, prof, backend, device, config) == "oom":
            break
    for variant in ("partition", "partition-H"):
        if rec.left() < 40:
            rec.add(
                "train",
                f"{variant}, {prof['volume']}³",
                "all",
                "",
                status="skipped",
                note="time budget",
            )
            continue
        train_case(rec, variant, "cbct", prof["volume"], prof, backend, device, config)


def section_train_mri(rec, device, backend, prof) -> None:
    """MRI at the data set's size (256 × 218 × 170, 12 coils, K = 5): full-volume unrolled in
    fp32 and with the bf16 network, each without and with gradient checkpointing per iteration
    (Table 2: 75.93 GB on an 80 GB card), then partition and partition-H with the paper's MRI
    patch."""
    config = check_config(prof)
    shape = tuple(prof["mri_shape"])
    cases = [("unrolled", bf16, ckpt) for ckpt in (False, True) for bf16 in (False, True)]
    cases += [("partition", False, False), ("partition-H", False, False)]
    for variant, bf16, ckpt in cases:
        if rec.left() < 30:
            rec.add("train", f"{variant}, mri", "all", "", status="skipped", note="time budget")
            continue
        train_case(rec, variant, "mri", shape, prof, backend, device, config, bf16, ckpt)
