"""Fig. 1 of the paper: memory and time of one data-consistency step vs one 3D DRUNet step.

For each cubic volume N³, measures forward + backward through
  * the data step  x − η Aᵀ(A x − y)  with the cone-beam operator (exact, as in unrolling), and
  * the prior step D_φ(x) with a 3D DRUNet,
each in a fresh subprocess so peak memory is the step's own: peak RSS growth on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU. Writes one CSV row per (N, step).

    unroll3d bench steps --sizes 16 24 32 --channels 4 8 8 8 --out results/benchmarks/bench_steps.csv
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from unroll3d.bench.memory import gb, peak_rss_gb, reset_peak_rss, rss_gb
from unroll3d.utils import device_name

#: CSV columns, one row per (N, step); memory in GB (10⁹ B)
FIELDS = ["n", "step", "time_s", "peak_memory_gb", "mem_method", "status", "views", "device"]


def _measure(step: str, n: int, views: int, channels: list[int], blocks: int, device: str,
             repeats: int) -> dict:
    """Run one step kind ``repeats`` times in this process; return time and peak memory."""
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    if step == "data":
        from unroll3d.physics import ConeBeam

        physics = ConeBeam.circular(
            n_views=views, img_size=(n, n, n), source_origin=4.0 * n, origin_detector=2.0 * n,
            det_shape=(n, int(1.5 * n)), det_spacing=2.0,
        ).to(dev)
        y = physics.A(torch.rand(1, 1, n, n, n, device=dev))

        def run(x):
            return x - 0.1 * physics.A_adjoint(physics.A(x) - y)
    else:
        from deepinv.models import DRUNet

        net = DRUNet(in_channels=1, out_channels=1, nc=channels, nb=blocks, pretrained=None,
                     dim=3, device=dev)

        def run(x):
            return net(x, sigma=0.05)

    x = torch.rand(1, 1, n, n, n, device=dev, requires_grad=True)
    run(x).sum().backward()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # the peak counter restarts here; base = what is resident after the warm-up
        import gc

        gc.collect()
        reset_peak_rss()
        base = rss_gb() or 0.0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.grad = None
        run(x).sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = gb(torch.cuda.max_memory_allocated() - base)
    else:  # RSS high-water mark during the timed steps above the level after the warm-up
        peak = max((peak_rss_gb() or 0.0) - base, 0.0)
    return {"time_s": min(times), "peak_memory_gb": peak, "mem_method":
            "cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS growth"}


def run_steps(
    sizes: Sequence[int],
    out: str | Path,
    *,
    views: int,
    channels: Sequence[int],
    blocks: int,
    device: str = "auto",
    repeats: int,
) -> list[dict]:
    """One fresh subprocess per (N, step) (:func:`_child`), then the CSV at ``out``; returns
    its rows."""
    from unroll3d.utils import atomic_write_csv

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    name = device_name(device)
    for n in sizes:
        for step in ("data", "network"):
            job = dict(step=step, n=n, views=views, channels=list(channels), blocks=blocks,
                       device=device, repeats=repeats)  # fmt: skip
            # glibc returns freed blocks >= 128 kB to the OS, so RSS follows live memory
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="262144")
            res = subprocess.run([sys.executable, "-m", "unroll3d.bench.steps"],
                                 input=json.dumps(job), capture_output=True, text=True, env=env)  # fmt: skip
            row = {"n": n, "step": step, "views": views, "device": name}
            if res.returncode != 0:
                err = res.stderr.strip().splitlines()[-1:] or ["?"]
                status = "oom" if "out of memory" in res.stderr.lower() else f"error: {err[0]}"
                rows.append({**row, "status": status})
                print(f"N={n} {step}: {status}", file=sys.stderr)
                continue
            record = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({**row, **record, "status": "ok"})
            print(f"N={n} {step}: {record['time_s']:.3f} s, {record['peak_memory_gb']:.3f} GB",
                  file=sys.stderr)
    atomic_write_csv(out, rows, FIELDS)
    return rows


def _child() -> None:
    """One measurement in this fresh process: the job (JSON on stdin), its record on stdout."""
    job = json.load(sys.stdin)
    print(json.dumps(_measure(job["step"], int(job["n"]), job["views"], job["channels"],
                              job["blocks"], job["device"], job["repeats"])))  # fmt: skip


if __name__ == "__main__":
    _child()
