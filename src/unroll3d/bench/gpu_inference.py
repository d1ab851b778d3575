"""The GPU check's ``inference`` section: one sliding-window ``partition-H`` reconstruction
(Algorithm 1 with refinement) of the Walnut-size volume, its time and peak memory.
"""

from __future__ import annotations

import time

from unroll3d.bench.gpu_recorder import free, peak_gb, sync
from unroll3d.bench.gpu_samples import SAMPLES, cbct_sample, check_config, impulse_H


def section_inference(rec, device, backend, prof, min_left_s: float) -> None:
    import torch

    from unroll3d.engine.operators import physics_for
    from unroll3d.engine.reconstruct import reconstruct
    from unroll3d.models import build_variant
    from unroll3d.partition import patch_grid
    from unroll3d.variants import variant_spec

    n = prof["volume"]
    case = f"partition-H, {n}³, patch {'×'.join(map(str, prof['patch']))}, refinement on"
    if rec.left() < min_left_s:
        rec.add(
            "inference",
            case,
            "all",
            "",
            status="skipped",
            note=f"time budget ({rec.left():.0f} s left, needs ~{min_left_s:.0f} s)",
        )
        return
    config = check_config(prof)
    spec = variant_spec("partition-H")
    sample, x0, lip = cbct_sample(n, prof, backend, device)
    H = impulse_H(sample.physics, tuple(sample.x.shape[1:]), lip, device, sample.meta["setting"])
    model = build_variant("partition-H", "cbct", config, lipschitz=lip, device=device).eval()
    physics = physics_for(sample, spec, H, lip)
    windows = len(patch_grid((1, n, n, n), prof["patch"]))
    free(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        est = reconstruct(model, spec, "cbct", config, sample, physics, x0, refine=True)
    sync(device)
    rec.add("inference", case, "time", time.perf_counter() - t0, "s", note=f"{windows} windows")
    if device.type == "cuda":
        rec.add("inference", case, "peak memory", peak_gb(device), "GB")
    ok = bool(torch.isfinite(est).all()) and tuple(est.shape) == tuple(sample.x.shape)
    rec.add("inference", case, "output finite, right shape", ok, status="ok" if ok else "failed")
    del H, model, physics, est
    SAMPLES.clear()
    free(device)
