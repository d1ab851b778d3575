"""``unroll3d fit-normal``: fit H to AᵀA/‖A‖² of one preprocessed volume
(:func:`unroll3d.normal.fit_normal_operator`) and write the fit and its history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from deepinv.physics import LinearPhysics

from unroll3d.cli.common import add_progress_args, add_runtime_args, setup_runtime
from unroll3d.data import load_sample
from unroll3d.devices import job_device
from unroll3d.normal import (
    fit_normal_operator,
    load_normal,
    operator_hash,
    plot_normal,
    save_normal,
    write_history_csv,
)

__all__ = ["build_parser", "main"]


def _load_physics(
    path: str | Path, setting: str, device: torch.device
) -> tuple[LinearPhysics, Any]:
    """The operator of a preprocessed volume (``unroll3d.data.load_sample``) and its sample."""
    sample = load_sample(path, setting, device=device)
    return sample.physics, sample


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unroll3d fit-normal",
        description="Fit H = diag(m) F⁻¹ diag(λ) F to AᵀA/‖A‖² of one preprocessed volume "
        "(data-free, Gaussian probes); write the fit (.pt) and its history (.csv).",
    )
    p.add_argument(
        "--input", required=True, help="preprocessed volume results/data/{task}/{volume}.pt"
    )
    p.add_argument("--setting", required=True, help="v30/v50/... (CBCT views) or R5/R10 (MRI)")
    p.add_argument("--out", required=True, help="output fit, e.g. results/normal/cbct/v30.pt")
    p.add_argument("--history", help="history CSV (default: --out with .csv)")
    p.add_argument("--figure", help="optional figure path (PNG + PDF) on the volume's ground truth")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--two-sided",
        choices=["auto", "yes", "no"],
        default="auto",
        help="two-sided form (auto: yes for complex/MRI images)",
    )
    p.add_argument("--symmetric-kernel", action="store_true", help="real λ (half memory)")
    p.add_argument(
        "--complex-mask",
        action="store_true",
        help="complex m for real/imag (MRI) images (an extension of the paper's real m)",
    )
    p.add_argument(
        "--grid",
        choices=["padded", "circular"],
        default="padded",
        help="FFT grid of λ: padded (≥ 2N − 1 per axis, H a linear convolution; default) or "
        "circular (N per axis, the paper's F on ℝⁿ; 8× less memory for λ in 3D)",
    )
    p.add_argument("--checkpoint", help="resumable state (default: --out with .ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    add_runtime_args(p, lock=True)
    add_progress_args(p)
    return p


def _run(args: argparse.Namespace, device: torch.device) -> int:
    physics, sample = _load_physics(args.input, args.setting, device)
    img_size = (
        tuple(sample.x.shape[1:])
        if getattr(sample, "x", None) is not None
        else tuple(physics.img_size)
    )
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    two_sided = {"auto": None, "yes": True, "no": False}[args.two_sided]
    lam, m, history = fit_normal_operator(
        physics,
        img_size,
        n_steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        heldout=args.heldout,
        two_sided=two_sided,
        symmetric_kernel=args.symmetric_kernel,
        complex_mask=args.complex_mask,
        lr_schedule=args.lr_schedule,
        grid=tuple(img_size[1:]) if args.grid == "circular" else None,
        checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every,
        device=device,
        progress=args.progress,
    )
    meta = {
        "input": str(args.input),
        "setting": args.setting,
        "device": str(device),
        "volume_meta": {
            k: v
            for k, v in dict(getattr(sample, "meta", None) or {}).items()
            if isinstance(v, (str, int, float, bool, list))
        },
    }
    save_normal(
        out,
        lam,
        m,
        img_size,
        history["sqnorm"],
        history=history,
        operator_hash=operator_hash(physics, img_size),
        two_sided=history["two_sided"],
        grid=history["grid"],
        meta=meta,
    )
    write_history_csv(Path(args.history) if args.history else out.with_suffix(".csv"), history)
    if args.figure and getattr(sample, "x", None) is not None:
        plot_normal(load_normal(out), physics, sample.x, args.figure)
    print(
        f"fit-normal: held-out relative error {history['heldout_rel_error'][0]:.4f} (init) -> "
        f"{history['heldout_rel_error'][-1]:.4f} after {history['step'][-1]} steps; "
        f"‖A‖² = {history['sqnorm']:.6g}; wrote {out}",
        file=sys.stderr,
    )
    if ckpt.exists():
        ckpt.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``unroll3d fit-normal``: see :func:`build_parser`."""
    args = build_parser().parse_args(argv)
    if args.device == "lock":  # pick and lock a free GPU here (not under `unroll3d device run`)
        if args.threads:
            torch.set_num_threads(args.threads)
        with job_device() as device:
            return _run(args, torch.device(device))
    return _run(args, setup_runtime(args))


if __name__ == "__main__":
    sys.exit(main())
