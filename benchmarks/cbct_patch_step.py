"""Time of one cone-beam training step (post-processing and partition) on a random patch.

One step is the engine's training pair (``estimate_pair``: the patch problem, the network on
the patch), the loss, its backward and an Adam step, on a seeded 32³ phantom with 30 views
(RTK, CPU). Also counts the global forward projections per step. CPU, one thread unless
``--threads``. Before/after a change: run it with ``PYTHONPATH`` at each tree's ``src``.

    PYTHONPATH=src python benchmarks/cbct_patch_step.py --size 32 --views 30 --patch 8 16 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace


def measure(variant: str, args) -> dict:
    import torch

    import unroll3d
    from unroll3d.engine.partitioning import estimate_pair
    from unroll3d.models import PostProcess, UnrolledPGD
    from unroll3d.partition import PartitionedReconstructor
    from unroll3d.physics import ConeBeam, initial_reconstruction
    from unroll3d.variants import variant_spec

    n = args.size
    physics = ConeBeam.circular(
        args.views, (n, n, n), 4.0 * n, 2.0 * n, backend="rtk", num_threads=args.threads
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, n, n, n, generator=gen)
    y = physics.A(x)
    x0 = initial_reconstruction(physics, y)
    calls = []
    real = physics.A
    physics.A = lambda t, **kw: calls.append(1) or real(t, **kw)
    torch.manual_seed(0)
    nc = tuple(args.nc)
    if variant == "partition":
        model = UnrolledPGD(K=args.K, channels=1, nc=nc, nb=args.nb, lipschitz=1.0)
    else:
        model = PostProcess(channels=1, nc=nc, nb=args.nb)
    rec = PartitionedReconstructor(model, (1, n, n, n), tuple(args.patch))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    draws = torch.Generator().manual_seed(1)
    sample = SimpleNamespace(x=x, y=y)

    def step():
        opt.zero_grad(set_to_none=True)
        est, target = estimate_pair(model, variant_spec(variant), sample, physics, x0, draws, rec)
        torch.mean((est - target) ** 2).backward()
        opt.step()

    step()  # warm-up
    times, counts = [], []
    for _ in range(args.repeat):
        calls.clear()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        counts.append(len(calls))
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        with torch.no_grad():
            real(x)
    forward_s = (time.perf_counter() - t0) / args.repeat
    return {
        "src": os.path.dirname(os.path.dirname(unroll3d.__file__)),
        "variant": variant,
        "size": n,
        "views": args.views,
        "patch": list(args.patch),
        "nc": list(nc),
        "nb": args.nb,
        "K": args.K if variant == "partition" else None,
        "threads": args.threads,
        "repeat": args.repeat,
        "s_median": round(statistics.median(times), 4),
        "s_min": round(min(times), 4),
        "global_forwards_per_step": counts[0],
        "one_global_forward_s": round(forward_s, 4),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--patch", type=int, nargs=3, default=[8, 16, 16])
    ap.add_argument("--nc", type=int, nargs=4, default=[8, 16, 32, 64])
    ap.add_argument("--nb", type=int, default=1)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["postproc", "partition"])
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for variant in args.variants:
        print(json.dumps(measure(variant, args)), flush=True)


if __name__ == "__main__":
    main()
