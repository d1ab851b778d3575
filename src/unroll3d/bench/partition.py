"""Peak memory and time of one training step: partitioned vs full-volume unrolling.

One training step = forward of an unrolled PGD (K iterations, one shared small 3D DRUNet),
squared-error loss, backward and an Adam update, either

* ``full``: on the whole volume with the global operator (standard unrolling, loss on x*), or
* ``partitioned``: on one random patch through :class:`unroll3d.partition.PartitionedReconstructor`
  (``training_pair``: ỹ from the ground-truth context, loss on S x*).

Each (size, mode) is measured in a fresh subprocess, after one warm-up step, so that the peak is
the step's own: on the CPU the peak RSS (``VmHWM``) with the kernel's peak counter
reset just before the step (``peak_scope = step``; ``process`` where the reset is unsupported)
and glibc's mmap/trim thresholds fixed so that freed blocks leave the RSS; on a GPU
``torch.cuda.max_memory_allocated`` after a reset. ``step_memory_gb`` is the peak minus the memory held
just before the step (operator, image tensors, model, optimiser state). ``image_memory_gb`` is the size
of x*, y and x₀; ``op_memory_gb`` the peak added by one no-grad ``AᵀA x`` on the whole volume (the
operator's own transient memory, which both modes pay).
``ratio_*`` = full / partitioned at the same size.

Operators: ``--op conebeam`` (:class:`unroll3d.physics.ConeBeam`; RTK on the CPU, whose first
call loads ITK, ~20 s per subprocess) or ``--op blur`` (a cheap circular 3D blur, for toy runs).

    unroll3d bench partition --sizes 32 48 64 --patch 16 --op blur \\
        --out results/benchmarks/bench_partition.csv
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

FIELDS = [
    "size",
    "mode",
    "op",
    "patch",
    "K",
    "nc",
    "nb",
    "device",
    "peak_memory_gb",
    "base_memory_gb",
    "step_memory_gb",
    "image_memory_gb",
    "op_memory_gb",
    "time_s",
    "peak_scope",
    "status",
    "ratio_peak",
    "ratio_step",
]


def _peak_of(fn, dev) -> float:
    """Peak memory (GB) that ``fn()`` adds on top of what is allocated now."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return gb(torch.cuda.max_memory_allocated(dev) - base)
    import gc

    gc.collect()
    reset_peak_rss()
    base = rss_gb()
    fn()
    return max(0.0, peak_rss_gb() - base)


def _build_operator(op: str, n: int, views: int, device):
    import torch

    if op == "conebeam":
        from unroll3d.physics import ConeBeam

        return ConeBeam.circular(
            n_views=views,
            img_size=(1, n, n, n),
            source_origin=4.0 * n,
            origin_detector=2.0 * n,
            det_shape=(n, int(1.5 * n)),
            det_spacing=2.0,
        ).to(device)
    if op == "blur":
        import deepinv as dinv

        r = torch.arange(-2, 3, dtype=torch.float32)
        g = torch.exp(-(r**2) / 2.0)
        f = g[:, None, None] * g[None, :, None] * g[None, None, :]
        return dinv.physics.Blur(
            filter=(f / f.sum())[None, None], padding="circular", use_fft=True
        ).to(device)
    raise ValueError(f"unknown operator {op!r}; use 'conebeam' or 'blur'")


def _build_model(K: int, nc: list[int], nb: int, lipschitz: float):
    """The project's UnrolledPGD (models issue); a minimal equivalent if it is unavailable."""
    try:
        from unroll3d.models import UnrolledPGD

        return UnrolledPGD(K=K, channels=1, nc=nc, nb=nb, lipschitz=lipschitz)
    except ImportError:  # pragma: no cover - fallback while the models module is missing
        import torch
        from deepinv.models import DRUNet

        from unroll3d.physics import initial_reconstruction

        class _PGD(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = DRUNet(1, 1, nc=tuple(nc), nb=nb, pretrained=None, dim=3)
                self.eta = torch.nn.Parameter(torch.tensor(1.0 / lipschitz))

            def forward(self, y, physics, x_init=None, **kw):
                x = initial_reconstruction(physics, y) if x_init is None else x_init
                aty = physics.A_adjoint(y)
                for _ in range(K):
                    x = x - self.eta * (physics.A_adjoint_A(x) - aty)
                    x = self.net(x, 0.05)
                return x

        return _PGD()


def measure(args: dict) -> dict:
    """Build operator, data and model, then time ``repeats`` training steps; return one row."""
    import torch

    from unroll3d.partition import PartitionedReconstructor

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    torch.manual_seed(0)
    dev = torch.device(args["device"])
    n, p, mode = int(args["size"]), int(args["patch"]), args["mode"]
    physics = _build_operator(args["op"], n, int(args["views"]), dev)
    x = torch.rand(1, 1, n, n, n, device=dev)
    with torch.no_grad():
        y = physics.A(x)
        x0 = physics.fdk(y) if args["op"] == "conebeam" else physics.A_adjoint(y)
        lipschitz = 1.0
        if args["op"] == "conebeam":  # ‖A‖² by a few power iterations, so η ≈ 1/‖A‖²
            lipschitz = float(
                physics.compute_sqnorm(torch.rand_like(x), max_iter=10, verbose=False)
            )
    model = _build_model(int(args["K"]), list(args["nc"]), int(args["nb"]), lipschitz).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    patch = min(p, n)
    rec = PartitionedReconstructor(model, (1, n, n, n), (patch,) * 3)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        if mode == "full":
            est, target = model(y, physics, x_init=x0), x
        else:
            est, target = rec.training_pair(y, physics, x, generator=gen, x0=x0)
        loss = torch.nn.functional.mse_loss(est, target)
        loss.backward()
        opt.step()
        return float(loss)

    image_gb = gb(sum(t.numel() * t.element_size() for t in (x, y, x0)))
    cuda = dev.type == "cuda"

    def normal_op():
        with torch.no_grad():
            physics.A_adjoint(physics.A(x))

    normal_op()  # warm-up
    op_gb = _peak_of(normal_op, dev)
    step()  # warm-up: lazy initialisation and first-touch of library code pages are not the step's
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = gb(torch.cuda.memory_allocated(dev))
        scope = "step"
    else:
        import gc

        gc.collect()
        scope = "step" if reset_peak_rss() else "process"
        base = rss_gb()
    times = []
    for _ in range(int(args["repeats"])):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = gb(torch.cuda.max_memory_allocated(dev))
    else:
        peak = peak_rss_gb()
    timed = times
    return {
        "size": n,
        "mode": mode,
        "op": args["op"],
        "patch": patch,
        "K": int(args["K"]),
        "nc": "-".join(str(c) for c in args["nc"]),
        "nb": int(args["nb"]),
        "device": device_name(str(dev)),
        "peak_memory_gb": round(peak, 6),
        "base_memory_gb": round(base, 6),
        "step_memory_gb": round(max(0.0, peak - base), 6),
        "image_memory_gb": round(image_gb, 6),
        "op_memory_gb": round(op_gb, 6),
        "time_s": round(sum(timed) / len(timed), 4),
        "peak_scope": scope,
        "status": "ok",
    }


def _run_child(job: dict) -> dict:
    cmd = [sys.executable, "-m", "unroll3d.bench.partition"]  # the job on stdin: _child
    # Fixed glibc thresholds: blocks >= 128 kB are mmapped and returned to the OS when freed, so
    # RSS follows live memory (the default adaptive threshold keeps freed blocks up to 32 MB).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="262144")
    proc = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    # out of memory (CUDA OOM, or the kernel's OOM killer: -9) or another failure: keep a row
    err = proc.stderr[-4000:]
    oom = "OutOfMemoryError" in err or "out of memory" in err or proc.returncode in (-9, 137)
    print(
        f"measurement {job['mode']} at {job['size']}³ failed (rc {proc.returncode}):\n{err}",
        file=sys.stderr,
    )
    row = {k: "" for k in FIELDS}
    row.update(
        size=job["size"],
        mode=job["mode"],
        op=job["op"],
        patch=min(job["patch"], job["size"]),
        K=job["K"],
        nc="-".join(str(c) for c in job["nc"]),
        nb=job["nb"],
        device=device_name(job["device"]),
        status="oom" if oom else "failed",
    )
    return row


def _ratios(rows: list[dict]) -> None:
    by = {(r["size"], r["mode"]): r for r in rows}
    for r in rows:
        full, part = by.get((r["size"], "full")), by.get((r["size"], "partitioned"))
        ok = full and part and full["status"] == part["status"] == "ok"
        if ok:
            r["ratio_peak"] = round(full["peak_memory_gb"] / part["peak_memory_gb"], 3)
            r["ratio_step"] = round(full["step_memory_gb"] / max(part["step_memory_gb"], 1e-9), 3)
        else:
            r["ratio_peak"] = r["ratio_step"] = ""


def run_partition(
    sizes: Sequence[int],
    out: str | Path,
    *,
    patch: int,
    modes: Sequence[str] = ("partitioned", "full"),
    op: str,
    views: int,
    K: int,
    nc: Sequence[int],
    nb: int,
    repeats: int,
    device: str = "auto",
    threads: int | None = None,
) -> list[dict]:
    """One fresh subprocess per (size, mode) (:func:`_child`), ratios, then the CSV at ``out``;
    returns its rows."""
    if patch < 1 or any(s < 1 for s in sizes):
        raise ValueError("--sizes and --patch must be positive")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for n in sizes:
        for mode in modes:
            job = dict(
                size=n,
                mode=mode,
                patch=patch,
                op=op,
                views=views,
                K=K,
                nc=list(nc),
                nb=nb,
                repeats=repeats,
                device=device,
                threads=threads,
            )
            row = _run_child(job)
            if row["status"] == "ok":
                print(
                    f"{mode:>11} {n:4d}³  peak {row['peak_memory_gb']:9.4f} GB  step "
                    f"{row['step_memory_gb']:9.4f} GB  {row['time_s']:.3f} s",
                    flush=True,
                )
            else:
                print(f"{mode:>11} {n:4d}³  {row['status']}", flush=True)
            rows.append(row)
    _ratios(rows)
    from unroll3d.utils import atomic_write_csv

    atomic_write_csv(out, rows, FIELDS)
    print(f"wrote {out}")
    return rows


def _child() -> None:
    """One measurement in this fresh process: the job (JSON on stdin), its row on stdout."""
    print(json.dumps(measure(json.load(sys.stdin))))


if __name__ == "__main__":
    _child()
