"""Forward / adjoint time and peak memory of the physics operators vs volume size and views.

Cone-beam CT on every available backend (rtk on the CPU; astra when CUDA and astra-toolbox are
present), and 3D multi-coil MRI (deepinv FFTs) for reference. One CSV row per
(modality, backend, N, n_views, op) with the median time over ``--repeats`` runs after one
warm-up, the peak memory of the op, and the CPU/GPU name.

Peak memory: on the CPU the growth of the process's peak RSS during the op (the peak is reset
through ``/proc/self/clear_refs`` before each op on Linux); on CUDA
``torch.cuda.max_memory_allocated`` growth (astra's own device buffers are not seen by torch's
allocator and are reported separately as the drop in free device memory, ``cuda_free_drop_gb``).

    unroll3d bench physics --sizes 16 32 --views 30 90 --out results/benchmarks/bench_physics.csv
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from unroll3d.bench.memory import gb, peak_rss_gb, reset_peak_rss, rss_gb
from unroll3d.utils import device_name

FIELDS = [
    "modality",
    "backend",
    "device",
    "device_name",
    "n",
    "n_views",
    "n_coils",
    "op",
    "time_s",
    "time_min_s",
    "peak_memory_gb",
    "cuda_free_drop_gb",
    "threads",
    "repeats",
]


def measure(fn, arg, repeats: int, cuda: bool) -> dict:
    """Median/min time of ``fn(arg)`` and its peak memory growth."""
    import torch

    fn(arg)  # warm-up (RTK lazy loading, astra/cuFFT plans)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(arg)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del out
    row = {"time_s": statistics.median(times), "time_min_s": min(times)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        free0 = torch.cuda.mem_get_info()[0]
        out = fn(arg)
        torch.cuda.synchronize()
        free1 = torch.cuda.mem_get_info()[0]
        row["peak_memory_gb"] = gb(torch.cuda.max_memory_allocated() - base)
        row["cuda_free_drop_gb"] = gb(max(0, free0 - free1))
        del out
    else:
        ok = reset_peak_rss()
        base = rss_gb()
        out = fn(arg)
        peak = peak_rss_gb()
        row["peak_memory_gb"] = (peak - base) if (ok and peak is not None and base) else ""
        row["cuda_free_drop_gb"] = ""
        del out
    return row


def bench_conebeam(sizes, views, backends, repeats, threads):
    import torch

    from unroll3d.physics import ConeBeam

    rows = []
    for backend in backends:
        cuda = backend == "astra"
        dev = torch.device("cuda" if cuda else "cpu")
        name = device_name(dev)
        for n in sizes:
            for nv in views:
                physics = ConeBeam.circular(
                    n_views=nv,
                    img_size=(n, n, n),
                    source_origin=4.0 * n,
                    origin_detector=2.0 * n,
                    det_shape=(n, int(1.5 * n)),
                    det_spacing=2.0,
                    backend=backend,
                    num_threads=threads if backend == "rtk" else None,
                )
                g = torch.Generator().manual_seed(0)
                x = torch.rand((1, 1, n, n, n), generator=g).to(dev)
                y = torch.rand((1, *physics.meas_shape), generator=g).to(dev)
                for op, fn, arg in [
                    ("A", physics.A, x),
                    ("A_adjoint", physics.A_adjoint, y),
                    ("fdk", physics.fdk, y),
                ]:
                    with torch.no_grad():
                        m = measure(fn, arg, repeats, cuda)
                    rows.append(
                        dict(
                            modality="cbct",
                            backend=backend,
                            device=dev.type,
                            device_name=name,
                            n=n,
                            n_views=nv,
                            n_coils="",
                            op=op,
                            threads=threads or "",
                            repeats=repeats,
                            **m,
                        )
                    )
                    print(f"cbct {backend} N={n} views={nv} {op}: {m['time_s']:.4f} s", flush=True)
    return rows


def bench_mri(sizes, coils, repeats, device):
    import torch

    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    name = device_name(dev)
    rows = []
    for n in sizes:
        mask = poisson_disc_mask((n, n), 5, calib=max(1, n // 16), seed=0)
        maps = torch.ones(coils, n, n, n, dtype=torch.complex64) / coils**0.5
        physics = MultiCoilMRI3D(mask, maps, (n, n, n)).to(dev)
        x = torch.rand(1, 2, n, n, n, device=dev)
        y = physics.A(x)
        for op, fn, arg in [("A", physics.A, x), ("A_adjoint", physics.A_adjoint, y)]:
            with torch.no_grad():
                m = measure(fn, arg, repeats, cuda)
            rows.append(
                dict(
                    modality="mri",
                    backend="deepinv",
                    device=dev.type,
                    device_name=name,
                    n=n,
                    n_views="",
                    n_coils=coils,
                    op=op,
                    threads="",
                    repeats=repeats,
                    **m,
                )
            )
            print(f"mri N={n} coils={coils} {op}: {m['time_s']:.4f} s", flush=True)
    return rows


def run_physics(
    sizes: Sequence[int],
    out: str | Path,
    *,
    views: Sequence[int],
    backends: Sequence[str] = ("auto",),
    coils: int,
    repeats: int,
    threads: int | None = None,
) -> list[dict]:
    """Cone-beam ``backends`` (``auto``: rtk, plus astra when CUDA and astra are available),
    then MRI with ``coils`` coils (0: none) on the CPU and CUDA when available; CSV at ``out``."""

    import torch

    from unroll3d.physics import cuda_astra_available
    from unroll3d.utils import atomic_write_csv

    if threads:
        torch.set_num_threads(threads)
    chosen = []
    for b in backends:
        if b == "auto":
            chosen += ["rtk"] + (["astra"] if cuda_astra_available() else [])
        else:
            chosen.append(b)
    chosen = list(dict.fromkeys(chosen))
    rows = bench_conebeam(sizes, views, chosen, repeats, threads)
    if coils > 0:
        rows += bench_mri(sizes, coils, repeats, "cpu")
        if torch.cuda.is_available():
            rows += bench_mri(sizes, coils, repeats, "cuda")
    atomic_write_csv(out, rows, FIELDS)
    print(f"wrote {len(rows)} rows to {out}")
    return rows
