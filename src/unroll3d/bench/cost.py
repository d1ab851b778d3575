"""What a configuration's DAG costs on one GPU, priced only from measurements: jobs × hours per
rule where a GPU-check row measured the same thing, and "not measured" everywhere else.

Per-step times come from GPU checks (``gpu_check.csv`` of ``make gpu-check``). A row is priced
only from a measurement of the same variant, at the same size (the data set's volume; for patch
training the config's patch), in the same precision (bf16 network, TF32 or strict fp32
convolutions) and layout (contiguous or channels_last_3d), with the same K, DRUNet and gradient
checkpointing when the GPU-check row states them. No paper number, no scaling from another size
or variant: a row without such a measurement has no hours and says what is missing, and the
total counts the measured rows only and says how many are not measured.

- ``train``: ``steps × accumulate`` micro-steps per job × the measured s/step (one job per task ×
  learned variant, or per setting without ``train.share_across_settings``; a variant whose
  measured training OOMs at the same size costs nothing: it stops at once);
- ``train_sweep``: each swept patch other than the main one, from a training row at that patch;
- ``evaluate``: for a learned variant, one measured sliding-window inference of the same variant
  and size per test volume plus ``evaluate.timing_steps`` measured micro-steps;
- ``fit_normal``: ``normal.steps`` applications of AᵀA where A and Aᵀ were timed at the data set's
  size and view count (CBCT; the MRI operator has no timing row);
- TV, PnP's validation grid, INR and DPIR have no GPU-check row and are listed as not measured;
  FDK, data preparation and the report are minutes and are left out.

The GPU-check rows of ``benchmarks/measured/h200-2026-11-27`` predate the precision labels: their
"fp32" is torch's default there, TF32 cuDNN convolutions, contiguous layout, and their inference
row ran the same fp32 network (``gpu_samples.check_config``'s ``bf16: false``).

    unroll3d bench cost --config config/config.yaml \\
        --gpu-check benchmarks/measured/h200-2026-11-27/run*/gpu_check.csv --out cost.csv
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unroll3d.config import SHARED_SETTING, shares_settings, sweep_reuses_main, train_object
from unroll3d.utils import atomic_write_csv, atomic_write_text
from unroll3d.variants import variant_spec

FIELDS = ["rule", "task", "setting", "variant", "jobs", "hours_per_job", "hours", "basis"]
#: the data sets' volumes (D, H, W)
SHAPES = {"cbct": (501, 501, 501), "mri": (256, 218, 170)}
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Setup:
    """What a GPU-check row measured (``None``: the row does not say)."""

    section: str
    variant: str
    task: str
    shape: tuple | None
    patch: tuple | None  # None: whole volume
    precision: str  # bf16 | tf32 | fp32-strict
    layout: str  # contiguous | channels_last_3d
    checkpointed: bool
    K: int | None
    widths: tuple | None
    blocks: int | None
    views: int | None
    refine: bool | None


def _dims(text: str) -> tuple:
    return tuple(int(v) for v in text.split("×"))


def precision_of(text: str) -> str:
    """The precision a note names: ``bf16``, ``fp32-strict`` or ``tf32`` (plain "fp32" = torch's
    default TF32 cuDNN convolutions, the label of the first GPU checks)."""
    if "bf16" in text:
        return "bf16"
    return "fp32-strict" if "strict" in text else "tf32"


def layout_of(text: str) -> str:
    return "channels_last_3d" if "channels_last" in text else "contiguous"


def parse_setup(section: str, case: str, note: str) -> Setup:
    """The :class:`Setup` of one GPU-check row from its case and note texts."""
    variant = case.split(",")[0].strip()
    task = "mri" if " mri " in f" {case} " else "cbct"
    shape = None
    if m := re.search(r"(?:cbct|mri) (\d+(?:×\d+){2})", case):
        shape = _dims(m.group(1))
    elif m := re.search(r"(\d+)³", case):
        shape = (int(m.group(1)),) * 3
    patch = _dims(m.group(1)) if (m := re.search(r"patch (\d+(?:×\d+){2})", case)) else None
    k = int(m.group(1)) if (m := re.search(r"\bK=(\d+)", note)) else None
    widths = blocks = None
    if m := re.search(r"DRUNet \[([\d, ]+)\]×(\d+)", note):
        widths = tuple(int(v) for v in m.group(1).split(","))
        blocks = int(m.group(2))
    views = int(m.group(1)) if (m := re.search(r"(\d+) views", f"{case} {note}")) else None
    refine = (
        {"on": True, "off": False}.get(m.group(1))
        if (m := re.search(r"refinement (on|off)", case))
        else None
    )
    return Setup(
        section,
        variant,
        task,
        shape,
        patch,
        precision_of(note),
        layout_of(note),
        "checkpointed" in note,
        k,
        widths,
        blocks,
        views,
        refine,
    )


def read_gpu_check(paths: list[Path]) -> list[tuple[Setup, dict]]:
    """[(setup, {metric: (value, status, note)})] of the ``train`` and ``inference`` rows and the
    projector timings of ``gpu_check.csv`` files (a later file's row of the same setup wins)."""
    out: dict[Setup, dict] = {}
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                if r["section"] not in ("train", "inference", "projector"):
                    continue
                try:
                    value = float(r["value"])
                except ValueError:  # names, flags, empty cells
                    value = None
                note = r["note"].split(";")[0]
                setup = parse_setup(r["section"], r["case"], note)
                metrics = out.setdefault(setup, {"_case": (r["case"], "", "")})
                metrics[r["metric"]] = (value, r["status"], r["note"])
    return list(out.items())


def wanted_setup(config: dict, task: str, variant: str, patch=None, section="train") -> Setup:
    """The setup a config's job of ``variant`` runs: the data set's size, the config's patch for
    patch-trained variants, the network's precision and layout, K, DRUNet, checkpointing."""
    from unroll3d.config import section_defaults, train_settings
    from unroll3d.models.build import resolve_model_config

    t = train_settings(config)
    spec = variant_spec(variant)
    task_cfg = {**section_defaults(task), **(config.get(task) or {})}
    on_patches = spec.partition or spec.kind in ("postproc", "pnp")
    if on_patches or section == "inference":
        patch = tuple(int(p) for p in (patch or task_cfg["patch_size"]))
    ckpt = t["checkpoint_unrolled"]
    precision = "bf16" if t["bf16"] else ("tf32" if t["tf32"] else "fp32-strict")
    model = resolve_model_config(config)
    return Setup(
        section,
        variant,
        task,
        SHAPES[task],
        patch if (on_patches or section == "inference") else None,
        precision,
        "channels_last_3d" if t["channels_last"] else "contiguous",
        section == "train" and (ckpt == "all" or (ckpt == "full-volume" and not spec.partition)),
        int(task_cfg["K"]),
        tuple(model["channels"]),
        model["blocks"],
        None,
        None,
    )


def _same(want: Setup, got: Setup) -> bool:
    """Same variant, task, size, patch, precision, layout and checkpointing; K, DRUNet and
    refinement where the measured row states them."""
    if (want.section, want.variant, want.task, want.shape, want.patch) != (
        got.section,
        got.variant,
        got.task,
        got.shape,
        got.patch,
    ):
        return False
    if (want.precision, want.layout, want.checkpointed) != (
        got.precision,
        got.layout,
        got.checkpointed,
    ):
        return False
    return all(
        g is None or w is None or w == g
        for w, g in ((want.K, got.K), (want.widths, got.widths), (want.blocks, got.blocks))
    )


def describe(s: Setup) -> str:
    size = "×".join(map(str, s.shape)) + (
        f", patch {'×'.join(map(str, s.patch))}" if s.patch else ", whole volume"
    )
    ckpt = ", checkpointed" if s.checkpointed else ""
    return f"{s.variant}, {s.task} {size}, {s.precision}, {s.layout}{ckpt}"


def _labels(s: Setup) -> str:
    return f"{s.precision}, {s.layout}" + (", checkpointed" if s.checkpointed else "")


def find(gc: list, want: Setup, metric: str) -> tuple[float | None, str, str]:
    """(value, status, the measured case) of the first row matching ``want``; value None when
    nothing matches."""
    for got, metrics in gc:
        if _same(want, got) and metric in metrics:
            value, status, note = metrics[metric]
            return value, status, f"{got.section}: {metrics['_case'][0]}, {_labels(got)}"
    return None, "", ""


def train_step(gc: list, want: Setup) -> tuple[float | None, str]:
    """Measured seconds per training micro-step of ``want`` (0 after a measured OOM) and its
    source, or (None, why not)."""
    _, status, where = find(gc, want, "peak memory")
    if status == "oom":
        return 0.0, f"OOM on the GPU check ({where}): the job stops at once"
    t, _, where = find(gc, want, "time per micro-step")
    if t is not None:
        return t, f"GPU check ({where})"
    return None, f"{NOT_MEASURED}: no GPU-check training row of {describe(want)}"


def projector_time(gc: list, task: str, views: int) -> tuple[float | None, str]:
    """Measured A + Aᵀ seconds at the data set's size and view count (CBCT), else None."""
    for got, metrics in gc:
        if got.section != "projector" or got.shape != SHAPES[task] or got.views != views:
            continue
        a, at = (metrics.get(m, (None,))[0] for m in ("A time", "Aᵀ time"))
        if a is not None and at is not None:
            return a + at, metrics["_case"][0]
    return None, ""


def estimate(config: dict, gc: list) -> list[dict]:
    """One row per (rule, task, setting, variant): measured GPU hours, or None and why not."""
    from unroll3d.config import evaluate_settings, section_defaults, train_settings

    train = train_settings(config)
    ev = evaluate_settings(config)
    normal = {**section_defaults("normal"), **(config.get("normal") or {})}
    micro = int(train["steps"]) * int(train["accumulate"])
    pnp = train_object(train, "pnp_grid")
    rows = []
    for task in config.get("tasks", []):
        key = "views" if task == "cbct" else "accelerations"
        counts = [int(s) for s in config[task][key]]
        settings = [("v" if task == "cbct" else "R") + str(s) for s in counts]
        tests = len(config[task]["splits"]["test"])
        for setting, count in zip(settings, counts, strict=True):
            for variant in config.get("variants", []):
                spec = variant_spec(variant)
                step, basis = None, ""
                if spec.learned:
                    step, basis = train_step(gc, wanted_setup(config, task, variant))
                shared = shares_settings(config, variant)  # one job for all settings
                if spec.learned and (not shared or setting == settings[0]):
                    label = SHARED_SETTING if shared else setting
                    hours = None if step is None else micro * step / 3600
                    text = basis if step is None else f"{micro} micro-steps × {step:.3g} s; {basis}"
                    if spec.kind == "pnp" and hours is not None:
                        runs = len(pnp["alpha"]) * len(pnp["stepsize"]) * len(pnp["sigma"])
                        hours = None
                        text = (
                            f"{NOT_MEASURED}: the validation grid ({runs} α-PGD runs per "
                            f"setting) has no GPU-check row; training alone: {text}"
                        )
                    rows.append(_row("train", task, label, variant, 1, hours, text))
                if spec.learned:
                    rows.append(_evaluate_row(gc, config, ev, task, setting, variant, tests, step))
                elif spec.kind in ("tv", "inr", "dpir"):
                    why = {
                        "tv": "no GPU-check row of the TV reconstruction",
                        "inr": "no GPU-check row of the per-volume INR fit (CPU: "
                        "unroll3d bench inr)",
                        "dpir": "needs the pretrained weights; no GPU-check row",
                    }[spec.kind]
                    rows.append(
                        _row(
                            "evaluate",
                            task,
                            setting,
                            variant,
                            tests,
                            None,
                            f"{NOT_MEASURED}: {why}",
                        )
                    )
            if any(variant_spec(v).use_H for v in config.get("variants", [])):
                rows += _normal_rows(gc, normal, task, setting, count, tests)
        rows += _sweep_rows(gc, config, task, settings, micro)
    return rows


def _evaluate_row(gc, config, ev, task, setting, variant, tests, step) -> dict:
    want = wanted_setup(config, task, variant, section="inference")
    infer, _, where = find(gc, want, "time")
    if infer is None:
        why = f"{NOT_MEASURED}: no GPU-check inference row of {describe(want)}"
        return _row("evaluate", task, setting, variant, tests, None, why)
    timing = int(ev["timing_steps"])
    if timing and step is None:
        why = f"{NOT_MEASURED}: inference {infer:.0f} s ({where}) but its {timing} timed "
        why += "training micro-steps have no GPU-check row"
        return _row("evaluate", task, setting, variant, tests, None, why)
    per = infer + timing * (step or 0.0)
    basis = f"inference {infer:.0f} s ({where}) + {timing} micro-steps × {step or 0:.3g} s"
    return _row("evaluate", task, setting, variant, tests, per / 3600, basis)


def _normal_rows(gc, normal, task, setting, count, tests) -> list[dict]:
    """fit_normal (and fit_normal_sample per test volume with normal.per_sample): normal.steps
    applications of AᵀA at the measured projector time of the same size and view count."""
    ata, where = projector_time(gc, task, count) if task == "cbct" else (None, "")
    steps = int(normal["steps"])
    if ata is None:
        what = "the MRI operator" if task == "mri" else f"the projector at {count} views"
        basis = (
            f"{NOT_MEASURED}: no GPU-check timing of {what} at {'×'.join(map(str, SHAPES[task]))}"
        )
        per = None
    else:
        per = steps * ata / 3600
        basis = f"{steps} × AᵀA ({ata:.3f} s, projector: {where})"
    out = [_row("fit_normal", task, setting, "H", 1, per, basis)]
    mri_h = normal.get("mri_h", "mask") if task == "mri" else "fit"
    if task in normal.get("per_sample", ["mri"]) and mri_h == "fit":  # one fit per test volume
        out.append(_row("fit_normal_sample", task, setting, "H", tests, per, basis))
    return out


def _sweep_rows(gc, config, task, settings, micro) -> list[dict]:
    sweep = config.get("sweep") or {}
    if not sweep.get("enabled"):
        return []
    variant = sweep.get("variant", "partition-H")
    rows = []
    for p in sweep.get(task, []):
        if sweep_reuses_main(config, task, p):  # the main model
            continue
        step, basis = train_step(gc, wanted_setup(config, task, variant, patch=p))
        hours = None if step is None else micro * step / 3600
        text = basis if step is None else f"{micro} micro-steps × {step:.3g} s; {basis}"
        label = SHARED_SETTING if shares_settings(config, variant) else settings[0]
        rows.append(_row("train_sweep", task, label, f"{variant} {p}", 1, hours, text))
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
    """Markdown: measured hours per rule and task, the total of the measured rows, and every row
    that is not measured (its cost is in no total)."""
    totals: dict[tuple[str, str], list] = {}
    for r in rows:
        t = totals.setdefault((r["rule"], r["task"]), [0, 0.0, 0])
        t[0] += 1
        t[1] += r["hours"] or 0.0
        t[2] += r["hours"] is None
    total = sum(t[1] for t in totals.values())
    unknown = [r for r in rows if r["hours"] is None]
    lines = [
        f"**Estimated GPU cost of configuration {name!r} on one card, measured rows only**",
        "",
        "| rule | task | rows | not measured | GPU hours of the measured rows |",
        "|---|---|---|---|---|",
    ]
    for (rule, task), (n, hours, missing) in totals.items():
        lines.append(f"| {rule} | {task} | {n} | {missing} | {hours:.1f} |")
    lines.append(
        f"| **total** | | {len(rows)} | **{len(unknown)}** | **{total:.1f}** "
        f"(≈ {total / 24:.2f} GPU-days, a lower bound while rows are not measured) |"
    )
    if unknown:
        groups: dict[tuple, list] = {}  # the same gap in every setting is listed once
        for r in unknown:
            groups.setdefault((r["rule"], r["task"], r["variant"], r["basis"]), []).append(r)
        lines += ["", f"Not measured ({len(unknown)} of {len(rows)} rows; in no total):", ""]
        for (rule, task, variant, basis), rs in groups.items():
            where = ", ".join(r["setting"] for r in rs)
            lines.append(f"- {rule} {task} {variant} ({where}): {basis}")
    return "\n".join(lines) + "\n"


def run_cost(config_file: str | Path, gpu_check: Sequence[str | Path], out: str | Path) -> list[dict]:
    """:func:`estimate` for the config file from the ``gpu_check`` CSVs (later ones win): the CSV
    at ``out``, the summary beside it (.md) and printed; returns the rows."""
    from unroll3d.config import load_config

    checks = [Path(p) for p in gpu_check]
    for path in checks:
        if not path.is_file():
            raise FileNotFoundError(f"--gpu-check {path}: no such file")
    config = load_config(config_file)
    rows = estimate(config, read_gpu_check(checks))
    atomic_write_csv(out, rows, FIELDS)
    text = summarise(rows, config.get("name", str(config_file)))
    atomic_write_text(Path(out).with_suffix(".md"), text)
    print(text)
    return rows
