"""What a configuration's DAG costs on one GPU: jobs × estimated hours per rule, and the total.

Per-step times come from a GPU check (``gpu_check.csv`` of ``make gpu-check``: training micro-steps
of each variant at the data set's size, the projector, the sliding-window inference) and, where
that has no row, from the paper's own s/step (H100, :mod:`unroll3d.paper_numbers`). Every row says
which. The estimate counts the heavy parts only:

- ``train``: ``steps × accumulate`` micro-steps per job, one job per task × learned variant
  (``train.share_across_settings``; else per setting too; a variant whose training OOMs costs
  nothing: it stops at once);
- ``train_sweep``: the same per swept patch other than the main one (which reuses the main
  model), scaled by the patch's voxels against the main patch;
- ``evaluate``: for a learned variant, one inference per test volume (the measured 501³
  ``partition-H`` inference, scaled by the volume's voxels for MRI) plus
  ``evaluate.timing_steps`` micro-steps; for TV, ``tv_iters`` applications of AᵀA; FDK is seconds;
- ``fit_normal``: ``normal.steps`` applications of AᵀA (measured A + Aᵀ at the Walnut size), and
  as many per test volume of a ``normal.per_sample`` task (``fit_normal_sample``);
- TV's weight search, FDK, data preparation and the report are minutes and are left out.

    unroll3d bench cost --config config/config.yaml \\
        --gpu-check benchmarks/measured/h200-2026-11-27/run1/gpu_check.csv \\
        --gpu-check benchmarks/measured/h200-2026-11-27/run3/gpu_check.csv --out cost.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from unroll3d.config import SHARED_SETTING, shares_settings, sweep_reuses_main, train_object
from unroll3d.paper_numbers import paper_value
from unroll3d.utils import atomic_write_csv, atomic_write_text
from unroll3d.variants import variant_spec

FIELDS = ["rule", "task", "setting", "variant", "jobs", "hours_per_job", "hours", "basis"]
#: voxels of the data sets (D, H, W)
VOXELS = {"cbct": 501**3, "mri": 256 * 218 * 170}


def read_gpu_check(paths: list[Path]) -> dict[tuple[str, str], dict]:
    """{(case, setup): {metric: (value, status, note)}} from ``gpu_check.csv`` files (later
    wins); ``setup`` is a training row's "K=…, DRUNet …, precision, batch 1" note, else ""."""
    out: dict[str, dict] = {}
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                try:
                    value = float(r["value"])
                except ValueError:  # names, flags, empty cells
                    value = None
                setup = r["note"].split(";")[0] if r["note"].startswith("K=") else ""
                out.setdefault((r["case"], setup), {})[r["metric"]] = (
                    value,
                    r["status"],
                    r["note"],
                )
    return out


def _train_step(gc: dict, task: str, variant: str, config: dict) -> tuple[float | None, str]:
    """Seconds per training micro-step at the data set's size, and where it comes from."""
    ckpt = config.get("train", {}).get("checkpoint_unrolled", "none")
    spec = variant_spec(variant)
    wants_ckpt = ckpt == "all" or (ckpt == "full-volume" and not spec.partition)
    bf16 = bool(config.get("train", {}).get("bf16", False))
    size = "501×501×501" if task == "cbct" else "256×218×170"
    for name in (variant, variant.replace("-H", "")):  # unrolled-H: unrolled's cost
        for (case, setup), metrics in gc.items():
            names = [f"{name}, {task} {size}"] + ([f"{name}, 501³"] if task == "cbct" else [])
            if not case.startswith(tuple(names)):  # (the first GPU check named CBCT cases n³)
                continue
            if ("checkpointed" in setup) != wants_ckpt or ("bf16" in setup) != bf16:
                continue
            if metrics.get("peak memory", (None, ""))[1] == "oom":
                return 0.0, f"OOM on the GPU check ({case}): the job stops at once"
            t = metrics.get("time per micro-step", (None,))[0]
            if t is not None:
                same = "" if name == variant else f" ({name}'s, H not measured)"
                return t, f"GPU check: {case}, {setup}{same}"
    p = paper_value(task, variant, "train_step_s", "all")
    if p is not None and p.status == "ok":
        return p.value, "paper's s/step (H100)"
    if spec.kind == "pnp":  # the post-processing network on the same patches (paper §6.1)
        p = paper_value(task, "postproc", "train_step_s", "all")
        if p is not None and p.status == "ok":
            return p.value, "paper's post-processing s/step (H100; the same network on patches)"
    if p is not None and p.status == "oom":
        return 0.0, "OOM in the paper"
    return None, "no measurement"


def _metric(gc: dict, prefix: str, metric: str) -> tuple[float | None, str]:
    for (case, _), metrics in gc.items():
        if case.startswith(prefix) and metric in metrics and metrics[metric][0] is not None:
            return metrics[metric][0], case
    return None, ""


def estimate(config: dict, gc: dict) -> list[dict]:
    """One row per (rule, task, setting, variant) with the estimated GPU hours."""
    from unroll3d.config import section_defaults

    train = {**section_defaults("train"), **(config.get("train") or {})}
    ev = {**section_defaults("evaluate"), **(config.get("evaluate") or {})}
    normal = {**section_defaults("normal"), **(config.get("normal") or {})}
    micro = int(train["steps"]) * int(train["accumulate"])
    pnp = train_object(train, "pnp_grid")
    pnp_iters = max(pnp["iters"])
    pnp_combos = len(pnp["alpha"]) * len(pnp["stepsize"]) * len(pnp["sigma"])
    rows = []
    infer_cbct, infer_case = _metric(gc, "partition-H, 501", "time")
    a_time, _ = _metric(gc, "501³", "A time")
    at_time, _ = _metric(gc, "501³", "Aᵀ time")
    for task in config.get("tasks", []):
        key = "views" if task == "cbct" else "accelerations"
        settings = [("v" if task == "cbct" else "R") + str(s) for s in config[task][key]]
        tests = len(config[task]["splits"]["test"])
        patch = config[task]["patch_size"]
        scale = VOXELS[task] / VOXELS["cbct"]
        # PnP: one denoiser pass over the volume ≈ the partition-H inference / (2K)
        # (Algorithm 1 runs K network calls in each of its two passes)
        k = int(config[task].get("K", 5))
        pnp_pass = None if infer_cbct is None else infer_cbct * scale / (2 * k)
        for setting in settings:
            for variant in config.get("variants", []):
                spec = variant_spec(variant)
                step, basis = _train_step(gc, task, variant, config) if spec.learned else (0, "")
                shared = shares_settings(config, variant)  # one job for all settings
                if spec.learned and (not shared or setting == settings[0]):
                    hours = None if step is None else micro * step / 3600
                    text = basis if step is None else f"{micro} micro-steps × {step:.3g} s; {basis}"
                    if spec.kind == "pnp" and hours is not None and pnp_pass is not None:
                        runs = pnp_combos * int(train["val_max"]) * (len(settings) if shared else 1)
                        hours += runs * pnp_iters * pnp_pass / 3600
                        text += (
                            f"; + validation grid: {runs} runs × {pnp_iters} iterations × "
                            f"{pnp_pass:.0f} s per denoiser pass (partition-H inference / 2K)"
                        )
                    label = SHARED_SETTING if shared else setting
                    rows.append(_row("train", task, label, variant, 1, hours, text))
                if spec.kind == "pnp" and pnp_pass is not None:
                    per = pnp_iters * pnp_pass + int(ev["timing_steps"]) * (step or 0)
                    basis = (
                        f"≤{pnp_iters} α-PGD iterations × {pnp_pass:.0f} s per denoiser pass "
                        "(partition-H inference / 2K)"
                    )
                    rows.append(_row("evaluate", task, setting, variant, tests, per / 3600, basis))
                elif spec.kind in ("inr", "dpir"):
                    why = {
                        "inr": "per-volume INR fit not measured on a GPU (CPU: benchmarks/bench_inr.py)",
                        "dpir": "needs the pretrained weights; not measured",
                    }[spec.kind]
                    rows.append(_row("evaluate", task, setting, variant, tests, None, why))
                elif spec.learned and infer_cbct is not None:
                    per = infer_cbct * scale + int(ev["timing_steps"]) * (step or 0)
                    basis = f"inference {infer_cbct * scale:.0f} s ({infer_case}"
                    basis += ", scaled by voxels)" if task != "cbct" else ")"
                    rows.append(_row("evaluate", task, setting, variant, tests, per / 3600, basis))
                elif spec.kind == "tv" and a_time is not None and at_time is not None:
                    per = int(train["tv_iters"]) * (a_time + at_time) * scale
                    basis = f"{train['tv_iters']} TV iterations × AᵀA (prox steps not counted)"
                    rows.append(_row("evaluate", task, setting, variant, tests, per / 3600, basis))
            if (
                a_time is not None
                and at_time is not None
                and any(variant_spec(v).use_H for v in config.get("variants", []))
            ):
                per = int(normal["steps"]) * (a_time + at_time) * VOXELS[task] / VOXELS["cbct"]
                rows.append(
                    _row(
                        "fit_normal",
                        task,
                        setting,
                        "H",
                        1,
                        per / 3600,
                        f"{normal['steps']} × AᵀA ({a_time + at_time:.3f} s at 501³, "
                        "scaled by voxels)",
                    )
                )
                mri_h = normal.get("mri_h", "mask") if task == "mri" else "fit"
                if task in normal.get("per_sample", ["mri"]) and mri_h == "fit":  # per volume
                    rows.append(
                        _row(
                            "fit_normal_sample",
                            task,
                            setting,
                            "H",
                            tests,
                            per / 3600,
                            f"{normal['steps']} × AᵀA per test volume (normal.per_sample)",
                        )
                    )
        sweep = config.get("sweep") or {}
        if sweep.get("enabled"):
            variant = sweep.get("variant", "partition-H")
            step, basis = _train_step(gc, task, variant, config)
            for p in sweep.get(task, []):
                if step is None or sweep_reuses_main(config, task, p):  # the main model
                    continue
                ratio = math.prod(p) / math.prod(patch)
                rows.append(
                    _row(
                        "train_sweep",
                        task,
                        SHARED_SETTING if shares_settings(config, variant) else settings[0],
                        f"{variant} {p}",
                        1,
                        micro * step * ratio / 3600,
                        f"{micro} micro-steps × {step:.3g} s × {ratio:.2f} (patch "
                        f"voxels vs the main patch); {basis}",
                    )
                )
    return rows


def _row(rule, task, setting, variant, jobs, hours_per_job, basis) -> dict:
    hours = None if hours_per_job is None else jobs * hours_per_job
    return dict(
        rule=rule,
        task=task,
        setting=setting,
        variant=variant,
        jobs=jobs,
        hours_per_job=None if hours_per_job is None else round(hours_per_job, 3),
        hours=None if hours is None else round(hours, 3),
        basis=basis,
    )


def summarise(rows: list[dict], name: str) -> str:
    """Markdown: hours per rule and task, the total, and the unknowns."""
    totals: dict[tuple[str, str], list] = {}
    for r in rows:
        t = totals.setdefault((r["rule"], r["task"]), [0, 0.0])
        t[0] += r["jobs"]
        t[1] += r["hours"] or 0.0
    total = sum(t[1] for t in totals.values())
    lines = [
        f"**Estimated GPU cost of configuration {name!r} on one card**",
        "",
        "| rule | task | jobs | GPU hours |",
        "|---|---|---|---|",
    ]
    for (rule, task), (jobs, hours) in totals.items():
        lines.append(f"| {rule} | {task} | {jobs} | {hours:.1f} |")
    lines.append(
        f"| **total** | | {sum(t[0] for t in totals.values())} | **{total:.1f}** "
        f"(≈ {total / 24:.1f} GPU-days) |"
    )
    unknown = [r for r in rows if r["hours"] is None]
    if unknown:
        lines += [
            "",
            "Not estimated: "
            + "; ".join(
                f"{r['rule']} {r['task']} {r['setting']} {r['variant']} ({r['basis']})"
                for r in unknown
            ),
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unroll3d bench cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="workflow config YAML")
    p.add_argument(
        "--gpu-check",
        type=Path,
        nargs="+",
        required=True,
        dest="gpu_check",
        help="gpu_check.csv files (later ones win)",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV; the summary goes beside it (.md)")
    return p


def run(args: argparse.Namespace) -> int:
    from unroll3d.config import load_config

    config = load_config(args.config)
    rows = estimate(config, read_gpu_check(args.gpu_check))
    atomic_write_csv(args.out, rows, FIELDS)
    text = summarise(rows, config.get("name", str(args.config)))
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
