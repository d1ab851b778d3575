"""Time and peak memory of one exact MRI patch data step, readout-slab path against full volume.

A (ky, kz) mask makes AᵀA act slice by slice along the readout, so a partitioned patch's exact
``S AᵀA Sᵀ`` (and Ã, Ãᵀ) need only the patch's readout slices. Each (path, operation) runs in a
fresh interpreter: the inputs are built first, the peak resident size is reset
(``/proc/self/clear_refs``), and the peak after a warm-up and the timed calls minus the resident
size before them is the operation's extra peak memory. CPU, one thread unless ``--threads``.

Operations: ``normal`` one ``S AᵀA Sᵀ u``; ``setup`` building the patch problem and ``Ãᵀỹ`` as
the unrolled network asks for it (``A_adjoint(None)`` where the patch problem gets it on the
readout slab without forming ỹ, else ỹ = y − A S⊥ᵀx, a full forward, then ``Ãᵀỹ``); ``unrolled``
K gradient steps ``z − η(ÃᵀÃ z − Ãᵀỹ)`` forward and backward (a training step without the
network); ``step`` the setup and the K steps together.

    python benchmarks/mri_slab_step.py --size 64 128 128 --coils 8 --patch 8 64 64

Before/after a change: run it with ``PYTHONPATH`` at each tree's ``src`` (each child imports
from there); ``--paths slab`` measures the readout-slab path only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> bool:
    """Reset the peak resident size (VmHWM) to the current one (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(args) -> dict:
    import torch

    import unroll3d
    from unroll3d.partition import PartitionedPhysics
    from unroll3d.physics import MultiCoilMRI3D, poisson_disc_mask

    torch.set_num_threads(args.threads)

    class FullVolumeMRI(MultiCoilMRI3D):
        readout_slabs = False  # PartitionedPhysics then takes the full-volume path

    d, h, w = args.size
    g = torch.Generator().manual_seed(0)
    mask = poisson_disc_mask((h, w), acceleration=5, calib=4, seed=0)
    maps = torch.randn(args.coils, d, h, w, dtype=torch.complex64, generator=g)
    cls = MultiCoilMRI3D if args.path == "slab" else FullVolumeMRI
    physics = cls(mask, maps, (d, h, w))
    del maps
    y = torch.randn(1, 2, args.coils, d, h, w, generator=g)
    ctx = torch.randn(1, 2, d, h, w, generator=g)
    patch = tuple(args.patch)
    start = tuple((n - p) // 2 for n, p in zip(args.size, patch, strict=True))
    u = torch.randn(1, 2, *patch, generator=g)

    def build():
        return PartitionedPhysics(physics, (2, d, h, w), start, patch, y, ctx, x_init=ctx)

    pp = build() if args.op not in ("setup", "step") else None

    def back_projection(p):
        """Ãᵀỹ as the unrolled network gets it (PartitionedReconstructor passes y=None for ỹ
        where the patch problem has it on the readout slab)."""
        return p.A_adjoint(None if getattr(p, "context_on_slabs", False) else p.y_tilde)

    def run():
        if args.op == "normal":
            with torch.no_grad():
                return pp.A_adjoint_A(u)
        if args.op == "setup":
            with torch.no_grad():
                return back_projection(build())
        p = build() if args.op == "step" else pp
        eta = torch.tensor(0.5, requires_grad=True)
        aty = back_projection(p)
        z = u.clone().requires_grad_(True)
        x = z
        for _ in range(args.K):
            x = x - eta * (p.A_adjoint_A(x) - aty)
        x.square().sum().backward()
        return x.detach()

    base = _status_kib("VmRSS")
    reset = _reset_peak()
    run()  # warm-up (FFT plans, allocator), inside the memory window
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "path": args.path,
        "src": os.path.dirname(os.path.dirname(unroll3d.__file__)),
        "op": args.op,
        "size": list(args.size),
        "coils": args.coils,
        "patch": list(patch),
        "threads": args.threads,
        "repeat": args.repeat,
        "s_min": round(min(times), 4),
        "s_median": round(statistics.median(times), 4),
        "extra_peak_MiB": round(max(0, peak - base) / 1024, 1),
        "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss (includes setup)",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[64, 128, 128], metavar=("D", "H", "W"))
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--patch", type=int, nargs=3, default=[8, 64, 64])
    ap.add_argument("--K", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", nargs="+", default=["normal", "setup", "unrolled", "step"])
    ap.add_argument("--paths", nargs="+", choices=["full", "slab"], default=["full", "slab"])
    ap.add_argument("--path", choices=["slab", "full"], help=argparse.SUPPRESS)
    ap.add_argument("--op", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.path is not None:  # a child: one measurement
        print(json.dumps(_child(args)))
        return
    common = ["--size", *map(str, args.size), "--coils", str(args.coils), "--patch",
              *map(str, args.patch), "--K", str(args.K), "--repeat", str(args.repeat),
              "--threads", str(args.threads)]  # fmt: skip
    for op in args.ops:
        rows = {}
        for path in args.paths:
            cmd = [sys.executable, __file__, *common, "--path", path, "--op", op]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[path] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(rows[path]), flush=True)
        if len(rows) == 2:
            speed = rows["full"]["s_median"] / max(rows["slab"]["s_median"], 1e-9)
            print(f"# {op}: {speed:.1f}x faster on readout slabs", flush=True)


if __name__ == "__main__":
    main()
