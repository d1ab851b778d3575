"""Accuracy A/B of the network's speed keys: the same training through the engine in the old mode
(fp32, contiguous) and in the new one (``train.bf16`` + ``train.channels_last``), on a prepared
run's data (a ``make study`` or ``make mini`` run directory), with the validation PSNR of each.

Both runs share the seed, the data, the H and every other key, so their difference is the mode's.
On the CPU, bf16 runs through CPU autocast (slower than fp32 there: this measures accuracy, not
speed). Writes ``precision_ab.csv`` (one row per task, variant and mode) and, per run, the
engine's per-step CSV and stats JSON.

    unroll3d bench precision_ab --run-dir runs/study/cbct16/s100 --task cbct \\
        --variants partition-H partition --steps 300 --out-dir results/benchmarks/precision_ab
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from unroll3d.utils import atomic_write_csv

#: the modes compared: name -> the train keys it sets
MODES = {
    "fp32": {"bf16": False, "channels_last": False},
    "bf16+channels_last": {"bf16": True, "channels_last": True},
}
FIELDS = [
    "task",
    "variant",
    "mode",
    "steps",
    "val_psnr_last",
    "val_psnr_history",
    "loss_last",
    "step_time_mean_s",
    "device",
]


def _volumes(config: dict, task: str, split: str) -> list[str]:
    names = config[task]["splits"][split]
    return [f"walnut{v}" if task == "cbct" else str(v) for v in names]


def run_ab(run_dir: Path, task: str, variant: str, steps: int, val_every: int, out_dir: Path):
    """Train ``variant`` once per mode on ``run_dir``'s data; returns one row per mode."""
    import csv

    import yaml

    from unroll3d import paths
    from unroll3d.config import job_config, validate
    from unroll3d.engine.train import TrainJob, train
    from unroll3d.variants import variant_spec

    full = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    root = str(run_dir / "results")
    key = "views" if task == "cbct" else "accelerations"
    settings = [("v" if task == "cbct" else "R") + str(s) for s in full[task][key]]
    train_paths = [paths.sample(root, task, v) for v in _volumes(full, task, "train")]
    val_paths = [paths.sample(root, task, v) for v in _volumes(full, task, "val")]
    for p in train_paths + val_paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p} does not exist: prepare the run's data first")
    normal = None
    if variant_spec(variant).use_H:  # the setting's fits (MRI's mask H takes m from them too)
        normal = [paths.normal_fit(root, task, s) for s in settings]
    rows = []
    for mode, keys in MODES.items():
        config = job_config(full, task)
        config["train"].update(steps=steps, val_every=val_every, **keys)
        out = out_dir / task / variant / mode / "model.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        job = TrainJob(
            task=task,
            setting="all",
            variant=variant,
            config=config,
            train_paths=train_paths,
            val_paths=val_paths,
            out=out,
            normal_path=normal,
            settings=settings,
            progress=False,
        )
        stats = train(job)
        with open(job.csv_path) as f:
            history = [
                f"{r['step']}:{float(r['val_psnr']):.3f}"
                for r in csv.DictReader(f)
                if r["val_psnr"]
            ]
        rows.append(
            dict(
                task=task,
                variant=variant,
                mode=mode,
                steps=stats["steps"],
                val_psnr_last=stats["val_psnr_last"],
                val_psnr_history=" ".join(history),
                loss_last=stats["loss_last"],
                step_time_mean_s=stats["step_time_mean_s"],
                device=stats["device"],
            )
        )
        print(f"{task} {variant} {mode}: val PSNR {stats['val_psnr_last']:.3f} dB", file=sys.stderr)
    return rows


def run_precision_ab(
    run_dir: str | Path,
    task: str,
    *,
    variants: Sequence[str],
    steps: int,
    val_every: int,
    out_dir: str | Path,
) -> list[dict]:
    """:func:`run_ab` for each variant; ``precision_ab_{task}.csv`` in ``out_dir`` and the
    bf16+channels_last − fp32 gap of each printed; returns the rows."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--run-dir {run_dir}: no config.yaml there")
    if steps < 1 or val_every < 1:
        raise ValueError("--steps and --val-every must be ≥ 1")
    rows = []
    for variant in variants:
        rows += run_ab(run_dir, task, variant, steps, val_every, out_dir)
    out = out_dir / f"precision_ab_{task}.csv"
    atomic_write_csv(out, rows, FIELDS)
    for variant in variants:
        by = {r["mode"]: r["val_psnr_last"] for r in rows if r["variant"] == variant}
        gap = by["bf16+channels_last"] - by["fp32"]
        print(f"{task} {variant}: bf16+channels_last − fp32 = {gap:+.3f} dB")
    print(f"wrote {out}")
    return rows
