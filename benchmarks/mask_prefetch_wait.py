"""How long a fresh-mask MRI draw waits for its mask, with and without drawing it ahead.

Training with ``train.fresh_masks`` and ``mri.mask_source: seeded`` draws a Poisson-disc mask per
draw through :class:`unroll3d.engine.samples.FreshMaskLoader`. Without the prefetch every draw
draws its mask inline; with it, the loop starts the next draw's mask on the loader's worker
thread (``prefetch(path, seed)``, as ``train._prefetch_next`` does) and does the step's work
meanwhile. This script replays that loop on one preprocessed toy volume with the data set's
218 × 170 ky–kz grid (calibration radius 18; a short readout and two coils, since only the mask
draw is timed) and reports, per draw after the first (the first reads the file and always draws
inline), the time ``__call__`` spent getting its mask: the inline draw, or waiting in
``MaskPrefetch.take`` for the worker. The step's work between draws is either ``sleep`` (the
host idle, standing for the H200 partition-H MRI micro-step of 0.16 s, measured in
``benchmarks/measured/h200-2026-11-27``) or ``spin`` (a pure-Python loop holding the GIL for as
long: the worst case for a worker thread). Each mode checks that both loops drew the same masks.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mask_prefetch_wait.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import torch

import unroll3d.engine.samples as samples
from unroll3d.data import mri, toy

GRID = (218, 170)  # the Calgary-Campinas ky × kz grid
CALIB = 18


def _volume(out: Path, nx: int, coils: int) -> str:
    """One preprocessed toy volume ``(nx, 218, 170)`` in the real file format."""
    toy.write_mri_toy(out, ["e00001s3_P00001"], [], (nx, *GRID), n_coils=coils, seed=0)
    zpath = next(p for p in out.rglob("*.zip") if zipfile.is_zipfile(p))
    path = out / "vol.pt"
    mri.preprocess_mri(zpath, "e00001s3_P00001", path, partial_fourier=0.85, calib=CALIB)
    return str(path)


def _work(kind: str, seconds: float) -> None:
    if kind == "sleep":
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # holds the GIL but for the interpreter's switches
        pass


def _loop(path: str, setting: str, seeds: list[int], ahead: bool, work: str, step_s: float):
    """``(mask waits, __call__ times, worker draw times, masks)`` of one replayed loop, in s."""
    waits, calls, worker, masks = [], [], [], []
    main = threading.current_thread()
    real_draw, real_take = samples.draw_sample_mask, samples.MaskPrefetch.take

    def draw(*a, **k):  # the inline draw in __call__, or the worker's
        t = time.perf_counter()
        out = real_draw(*a, **k)
        (waits if threading.current_thread() is main else worker).append(time.perf_counter() - t)
        return out

    def take(self, key):
        t = time.perf_counter()
        out = real_take(self, key)
        if out is not None:
            waits.append(time.perf_counter() - t)
        return out

    samples.draw_sample_mask, samples.MaskPrefetch.take = draw, take
    loader = samples.FreshMaskLoader(setting, "cpu")
    try:
        for k, seed in enumerate(seeds):
            t = time.perf_counter()
            sample = loader(path, seed)
            calls.append(time.perf_counter() - t)
            masks.append(sample.physics.mask)
            if ahead and k + 1 < len(seeds):
                loader.prefetch(path, seeds[k + 1])
            _work(work, step_s)
    finally:
        loader.close()
        samples.draw_sample_mask, samples.MaskPrefetch.take = real_draw, real_take
    return waits, calls, worker, masks


def _ms(values: list[float]) -> str:
    return f"{1e3 * statistics.median(values):8.1f} {1e3 * statistics.fmean(values):8.1f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=10, help="draws per loop (the first is excluded)")
    p.add_argument("--settings", nargs="+", default=["R5", "R10"])
    p.add_argument("--work", nargs="+", default=["sleep", "spin"], choices=["sleep", "spin"])
    p.add_argument("--step-s", type=float, default=0.16, help="work between draws, seconds")
    p.add_argument("--nx", type=int, default=4, help="readout length of the toy volume")
    p.add_argument("--coils", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    seeds = [int(torch.randint(2**31 - 1, (1,), generator=gen)) for _ in range(args.draws)]
    with tempfile.TemporaryDirectory() as tmp:
        path = _volume(Path(tmp), args.nx, args.coils)
        print(
            f"volume {args.nx}×{GRID[0]}×{GRID[1]}, {args.coils} coils, calib {CALIB}; "
            f"{args.draws} draws per loop, the first excluded; {args.step_s} s of work between "
            "draws; times in ms (median, mean)"
        )
        print("setting work   loop     mask wait/draw   __call__/draw   worker draw")
        for setting in args.settings:
            for work in args.work:
                drawn = {}
                for ahead in (False, True):
                    waits, calls, worker, masks = _loop(
                        path, setting, seeds, ahead, work, args.step_s
                    )
                    drawn[ahead] = masks
                    name = "ahead " if ahead else "inline"
                    done = _ms(worker) if worker else "       -        -"
                    print(
                        f"{setting:7s} {work:6s} {name}  {_ms(waits[1:])}  {_ms(calls[1:])}"
                        f"  {done}",
                        flush=True,
                    )
                same = all(torch.equal(a, b) for a, b in zip(*drawn.values(), strict=True))
                if not same:
                    raise SystemExit(f"{setting} {work}: the masks drawn ahead differ")


if __name__ == "__main__":
    main()
