"""``unroll3d fit-normal``: fit H to AᵀA/‖A‖² of one preprocessed volume
(:func:`unroll3d.normal.fit_normal_operator`) and write the fit and its history.

The fit's settings are the config's ``normal`` keys and ``seed``
(:func:`unroll3d.config.fit_normal_config`): the rules pass them as one validated
``--config-json``; run by hand, ``--config FILE`` reads them from a config file, or each has its
own option whose default is the schema's. An option given beside ``--config``/``--config-json``
overrides that key."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unroll3d.cli.common import (
    add_config_args,
    add_progress_args,
    add_runtime_args,
    positive_int,
    setup_runtime,
)
from unroll3d.config import section_defaults

if TYPE_CHECKING:  # torch, deepinv and the fit load when the verb runs, not for --help
    import torch
    from deepinv.physics import LinearPhysics

__all__ = ["build_parser", "main", "parse_args"]

#: option dest -> its key in :func:`unroll3d.config.fit_normal_config` (the fit's settings)
SETTINGS: dict[str, tuple[str, ...]] = {
    "steps": ("normal", "steps"),
    "lr": ("normal", "lr"),
    "lr_schedule": ("normal", "lr_schedule"),
    "plateau_patience": ("normal", "plateau", "patience"),
    "plateau_min_improvement": ("normal", "plateau", "min_improvement"),
    "plateau_decay": ("normal", "plateau", "decay"),
    "eval_every": ("normal", "eval_every"),
    "floor_rows": ("normal", "floor_rows"),
    "batch": ("normal", "batch"),
    "heldout": ("normal", "heldout"),
    "checkpoint_every": ("normal", "checkpoint_every"),
    "grid": ("normal", "grid"),
    "seed": ("seed",),
}
_UNSET = object()  # an option not given on the command line


def _load_physics(
    path: str | Path, setting: str, device: torch.device
) -> tuple[LinearPhysics, Any]:
    """The operator of a preprocessed volume (``unroll3d.data.load_sample``) and its sample."""
    from unroll3d.data import load_sample

    sample = load_sample(path, setting, device=device)
    return sample.physics, sample


def build_parser() -> argparse.ArgumentParser:
    """The verb's options; every default of a ``normal`` config key is the schema's, stated once
    there."""
    d = section_defaults("normal")
    plateau = d["plateau"]
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
    p.add_argument(
        "--steps",
        type=positive_int,
        default=d["steps"],
        help="Adam steps (plateau schedule: the maximum)",
    )
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument(
        "--lr-schedule",
        default=d["lr_schedule"],
        choices=["plateau", "cosine", "constant"],
        help="plateau: constant lr, stop on the held-out error's plateau after a cosine decay "
        "(normal.plateau); cosine / constant: exactly --steps steps",
    )
    p.add_argument(
        "--plateau-patience",
        type=positive_int,
        default=plateau["patience"],
        help="held-out evaluations without improvement that make a plateau",
    )
    p.add_argument(
        "--plateau-min-improvement",
        type=float,
        default=plateau["min_improvement"],
        help="relative decrease of the best held-out error that counts as an improvement",
    )
    p.add_argument(
        "--plateau-decay",
        type=float,
        default=plateau["decay"],
        help="final cosine decay, as a fraction of the steps before it",
    )
    p.add_argument(
        "--eval-every",
        type=positive_int,
        default=d["eval_every"],
        help="steps between held-out evaluations",
    )
    p.add_argument(
        "--floor-rows",
        type=int,
        default=d["floor_rows"],
        help="estimate H's error floor from this many exact rows of AᵀA (real images; "
        "unroll3d.normal.floor.error_floor) and report the fit's gap to it; 0 = not",
    )
    p.add_argument("--batch", type=positive_int, default=d["batch"])
    p.add_argument("--heldout", type=positive_int, default=d["heldout"])
    p.add_argument("--seed", type=int, default=_schema_seed())
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
        default=d["grid"],
        help="FFT grid of λ: padded (≥ 2N − 1 per axis, H a linear convolution; default) or "
        "circular (N per axis, the paper's F on ℝⁿ; 8× less memory for λ in 3D)",
    )
    p.add_argument("--checkpoint", help="resumable state (default: --out with .ckpt)")
    p.add_argument("--checkpoint-every", type=positive_int, default=d["checkpoint_every"])
    add_config_args(p, required=False, cut="unroll3d.config.fit_normal_config")
    add_runtime_args(p, lock=True)
    add_progress_args(p)
    return p


def _schema_seed() -> int:
    from unroll3d.config import schema

    return schema()["properties"]["seed"]["default"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The verb's arguments, each fit setting (:data:`SETTINGS`) taken from the option when it
    is given, else from ``--config``/``--config-json``, else the schema's default."""
    from unroll3d.config import ConfigError, config_from_json, fit_normal_config, load_config

    parser = build_parser()
    args = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(SETTINGS, _UNSET)))
    try:
        if args.config:
            config = fit_normal_config(load_config(args.config))
        else:
            config = fit_normal_config(config_from_json(args.config_json or "{}"))
    except ConfigError as err:  # one line naming the key, no traceback
        raise SystemExit(f"unroll3d fit-normal: {err}") from None
    types = {a.dest: a.type for a in parser._actions}
    for dest, key in SETTINGS.items():
        if getattr(args, dest) is _UNSET:
            value = config
            for part in key:
                value = value[part]
            setattr(args, dest, value if types[dest] is None else types[dest](value))
    return args


def _floor(
    physics: LinearPhysics, img_size: tuple[int, ...], rows: int, seed: int, device
) -> tuple[float | None, str]:
    """H's error floor for ``physics`` from ``rows`` exact rows of AᵀA (measured on rows / 2
    others), or None and why it was not computed."""
    if rows <= 0:
        return None, "floor not computed (--floor-rows 0)"
    if img_size[0] != 1:
        return None, "floor not computed: error_floor handles real images only (not MRI)"
    from unroll3d.normal.floor import error_floor

    n_vox = math.prod(img_size[1:])
    n_rows = min(int(rows), max(1, (2 * n_vox) // 3))
    n_held = min(max(1, n_rows // 2), n_vox - n_rows)
    t0 = time.perf_counter()
    out = error_floor(physics, img_size, n_rows=n_rows, n_heldout=n_held, seed=seed, device=device)
    return float(out["heldout_rel_error"]), (
        f"error_floor from {n_rows} exact rows of AᵀA, measured on {n_held} other rows "
        f"({time.perf_counter() - t0:.1f} s)"
    )


def _run(args: argparse.Namespace, device: torch.device) -> int:
    from unroll3d.normal import (
        fit_normal_operator,
        load_normal,
        operator_hash,
        plot_normal,
        save_normal,
        write_history_csv,
    )

    physics, sample = _load_physics(args.input, args.setting, device)
    img_size = (
        tuple(sample.x.shape[1:])
        if getattr(sample, "x", None) is not None
        else tuple(physics.img_size)
    )
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    two_sided = {"auto": None, "yes": True, "no": False}[args.two_sided]
    floor, floor_note = _floor(physics, img_size, args.floor_rows, args.seed, device)
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
        plateau_patience=args.plateau_patience,
        plateau_min_improvement=args.plateau_min_improvement,
        plateau_decay=args.plateau_decay,
        floor=floor,
        floor_note=floor_note,
        eval_every=args.eval_every,
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
    op_hash = operator_hash(physics, img_size)
    save_normal(
        out,
        lam,
        m,
        img_size,
        history["sqnorm"],
        history=history,
        operator_hash=op_hash,
        two_sided=history["two_sided"],
        grid=history["grid"],
        meta=meta,
    )
    write_history_csv(Path(args.history) if args.history else out.with_suffix(".csv"), history)
    if args.figure and getattr(sample, "x", None) is not None:
        plot_normal(
            load_normal(out, expected_operator_hash=op_hash), physics, sample.x, args.figure
        )
    gap = (
        f"floor {history['floor']:.4f}, gap {history['floor_gap']:+.4f}"
        if history["floor"] is not None
        else history["floor_note"]
    )
    print(
        f"fit-normal: held-out relative error {history['heldout_rel_error'][0]:.4f} (init) -> "
        f"{history['final_heldout_rel_error']:.4f} after {history['stop_step']} steps "
        f"(stopped: {history['stop_reason'].replace('_', ' ')}; kept step {history['best_step']}, "
        f"{history['best_heldout_rel_error']:.4f}); {gap}; "
        f"‖A‖² = {history['sqnorm']:.6g}; {history['seconds']:.1f} s; wrote {out}",
        file=sys.stderr,
    )
    if ckpt.exists():
        ckpt.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``unroll3d fit-normal``: see :func:`build_parser` and :func:`parse_args`."""
    args = parse_args(argv)
    if args.device == "lock":  # pick and lock a free GPU here (not under `unroll3d device run`)
        import torch

        from unroll3d.devices import job_device

        if args.threads:
            torch.set_num_threads(args.threads)
        with job_device() as device:
            return _run(args, torch.device(device))
    return _run(args, setup_runtime(args))


if __name__ == "__main__":
    sys.exit(main())
