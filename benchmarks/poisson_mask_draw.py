"""CPU time of one seeded Poisson-disc mask draw (``mri.mask_source: seeded``), one thread.

Training with fresh masks draws one on the host per sample, so its cost adds to every MRI
training micro-step. Sizes: the smoke and mini toy grids and the data set's 218 × 170 ky–kz
grid with its calibration radius 18; R = 5 and 10. ``--reference`` also times the original
per-candidate loop (kept in ``tests/test_poisson_mask_reference.py``) and checks the masks are
equal.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/poisson_mask_draw.py --reference
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import time

import torch

CASES = [  # (name, (ny, nz), R, calib)
    ("smoke", (20, 18), 5, 3),
    ("mini", (32, 28), 5, 4),
    ("mini", (32, 28), 10, 4),
    ("full", (218, 170), 5, 18),
    ("full", (218, 170), 10, 18),
]


def _reference():
    path = pathlib.Path(__file__).parents[1] / "tests" / "test_poisson_mask_reference.py"
    spec = importlib.util.spec_from_file_location("poisson_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._reference_mask


def _cpu_ms(draw, shape, r, calib, seeds) -> tuple[float, list]:
    times, masks = [], []
    for seed in seeds:
        t = time.process_time()
        masks.append(draw(shape, r, calib=calib, seed=seed))
        times.append(1e3 * (time.process_time() - t))
    return statistics.median(times), masks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="draws per case (median reported)")
    p.add_argument("--reference", action="store_true", help="also time the original loop")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from unroll3d.physics import poisson_disc_mask

    reference = _reference() if args.reference else None
    print("size   ny×nz     R   calib  new ms/draw" + ("  old ms/draw  speed-up" * bool(reference)))
    for name, shape, r, calib in CASES:
        seeds = range(args.seeds)
        new_ms, new = _cpu_ms(poisson_disc_mask, shape, r, calib, seeds)
        row = f"{name:6s} {shape[0]}×{shape[1]:<6d} {r:<3g} {calib:<6d} {new_ms:11.1f}"
        if reference is not None:
            old_ms, old = _cpu_ms(reference, shape, r, calib, seeds)
            if not all(torch.equal(a, b) for a, b in zip(new, old, strict=True)):
                raise SystemExit(f"{name} R{r}: the masks differ from the original loop's")
            row += f"  {old_ms:11.1f}  {old_ms / new_ms:7.1f}×"
        print(row, flush=True)


if __name__ == "__main__":
    main()
